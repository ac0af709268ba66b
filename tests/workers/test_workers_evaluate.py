from __future__ import annotations

import re

import pytest
import torch
from safetensors.torch import load as load_safetensors

from hybridnas.space import ArchSpec, LayerSpec
from hybridnas.workers.evaluate import EvalRequest, evaluate, failure_reason, task_data
from hybridnas.workers.tasks import make_task
from hybridnas.workers.trainer import EvaluationFailed

TASK = {"name": "mqar", "vocab_size": 17, "seq_len": 16, "num_kv_pairs": 2, "num_train": 500, "num_test": 64}
TRAIN = {"batch_size": 16, "lr": 3e-3, "eval_batch_size": 64}
SPEC = ArchSpec(
    d_model=16,
    layers=(LayerSpec("short_conv"), LayerSpec("attention", n_heads=2)),
    vocab_size=17,
    mlp_ratio=2.0,
)


def _request(**overrides: object) -> EvalRequest:
    fields = {"evaluation_id": 7, "spec_json": SPEC.to_json(), "task": TASK, "train": TRAIN, "steps": 20, "seed": 0}
    return EvalRequest(**{**fields, **overrides})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        (
            {"spec_json": SPEC.to_json().replace('"attention"', '"transformer"')},
            r"^invalid spec_json: mixer: got 'transformer'",
        ),
        ({"spec_json": "{not json"}, r"^invalid spec_json: "),
        ({"task": {**TASK, "name": "lm"}}, r"^invalid task: task\.name: got 'lm', allowed: mqar"),
        ({"train": {**TRAIN, "lr": -1.0}}, r"^invalid train config: train\.lr: "),
        ({"steps": 0}, r"^invalid train config: train\.steps: "),
        ({"task": {**TASK, "vocab_size": 33, "seq_len": 32, "num_kv_pairs": 4}}, r"^spec\.vocab_size 17 is smaller"),
    ],
)
def test_bad_request_is_a_failed_result_with_its_reason(overrides: dict, reason: str) -> None:
    result = evaluate(_request(**overrides))
    assert result.status == "failed" and not result.ok
    assert re.search(reason, result.error), result.error
    assert result.evaluation_id == 7 and result.metrics == {} and result.weights is None
    assert result.host and result.device.startswith("cpu") and result.wall_time_s >= 0


def test_failure_reason_formats() -> None:
    assert failure_reason(EvaluationFailed("loss became nan at step 3")) == "loss became nan at step 3"
    try:
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB\nmore detail")
    except torch.OutOfMemoryError as e:
        text = failure_reason(e)
    head, *tail = text.splitlines()
    assert head == "out of memory: CUDA out of memory. Tried to allocate 2.00 GiB"
    assert tail and tail[-1].startswith("  at test_workers_evaluate.py:")
    try:
        {}["missing"]
    except KeyError as e:
        assert failure_reason(e).splitlines()[0] == "KeyError: 'missing'"


def test_task_data_is_generated_once_per_config_and_seed() -> None:
    task = make_task(TASK)
    a, b = task_data(task, 0), task_data(make_task(dict(TASK)), 0)
    assert a is b
    assert task_data(task, 1) is not a


def test_evaluate_trains_scores_and_returns_loadable_weights(one_thread: None) -> None:
    from hybridnas.codegen import build_model
    from hybridnas.space.cost import estimate_cost

    result = evaluate(_request())
    assert result.status == "done", result.error
    m = result.metrics
    for key in (
        "accuracy", "loss", "train_loss", "params", "cost_params", "cost_flops_per_token", "cost_state_bytes",
        "prefill_tokens_per_s", "train_tokens_per_s",
    ):
        assert key in m, key
    assert 0.0 <= m["accuracy"] <= 1.0 and m["loss"] > 0 and m["steps"] == 20
    assert m["prefill_tokens_per_s"] > 0 and m["train_tokens_per_s"] > 0
    model = build_model(SPEC)
    assert m["params"] == sum(p.numel() for p in model.parameters())
    assert m["cost_params"] == estimate_cost(SPEC).params
    # The weights are the trained network: loading them reproduces the test loss exactly.
    model.load_state_dict(load_safetensors(result.weights))
    data = make_task(TASK).generate(0)
    from hybridnas.workers.trainer import score

    assert score(model, data.test_inputs, data.test_targets, 64) == (m["accuracy"], m["loss"])


def test_evaluate_is_deterministic_and_the_seed_matters(one_thread: None) -> None:
    a, b, c = evaluate(_request()), evaluate(_request()), evaluate(_request(seed=1))
    assert a.ok and b.ok and c.ok
    keys = ("accuracy", "loss", "train_loss", "params")
    assert [a.metrics[k] for k in keys] == [b.metrics[k] for k in keys]
    assert a.weights == b.weights
    assert a.metrics["train_loss"] != c.metrics["train_loss"]


def test_timeout_is_a_failed_result() -> None:
    result = evaluate(_request(steps=100_000, timeout_s=0.05))
    assert result.status == "failed"
    assert re.fullmatch(r"time limit of 0.05s exceeded at step \d+", result.error), result.error

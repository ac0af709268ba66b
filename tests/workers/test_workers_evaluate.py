from __future__ import annotations

import math
import re
import types

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load as load_safetensors
from torch import nn

import hybridnas.workers.evaluate as evaluate_module
from hybridnas.codegen import build_model
from hybridnas.space import ArchSpec, LayerSpec
from hybridnas.space.cost import estimate_cost
from hybridnas.workers.evaluate import METRICS, EvalRequest, EvalResult, evaluate, failure_reason, task_data
from hybridnas.workers.hardware import MeasureConfig, model_bytes
from hybridnas.workers.tasks import make_task
from hybridnas.workers.trainer import EvaluationFailed, score

TASK = {"name": "mqar", "vocab_size": 17, "seq_len": 16, "num_kv_pairs": 2, "num_train": 500, "num_test": 64}
TRAIN = {"batch_size": 16, "lr": 3e-3, "eval_batch_size": 64}
SPEC = ArchSpec(
    d_model=16,
    layers=(LayerSpec("short_conv"), LayerSpec("attention", n_heads=2)),
    vocab_size=17,
    mlp_ratio=2.0,
)


#: Small hardware measurements: the tests check what is recorded, not how fast.
MEASURE = {"context_len": 32, "batch_size": 2, "prompt_len": 4, "decode_tokens": 4, "repeats": 1}
#: A second MQAR task for suites: longer sequences, more pairs.
TASK_B = {**TASK, "seq_len": 24, "num_kv_pairs": 3, "num_train": 300}


def _request(**overrides: object) -> EvalRequest:
    fields = {"evaluation_id": 7, "spec_json": SPEC.to_json(), "task": TASK, "train": TRAIN, "steps": 20, "seed": 0}
    return EvalRequest(**{**fields, "measure": MEASURE, **overrides})  # type: ignore[arg-type]


def _scores(result: EvalResult, spec: ArchSpec, task: dict) -> tuple[float, float]:
    """(accuracy, loss) of the result's weights on `task`'s test set, scored afresh."""
    model = build_model(spec)
    model.load_state_dict(load_safetensors(result.weights))
    data = make_task(task).generate(0)
    return score(model, data.test_inputs, data.test_targets, 64)


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        (
            {"spec_json": SPEC.to_json().replace('"attention"', '"transformer"')},
            r"^invalid spec_json: mixer: got 'transformer'",
        ),
        ({"spec_json": "{not json"}, r"^invalid spec_json: "),
        ({"task": {**TASK, "name": "lm"}}, r"^invalid task: task\.name: got 'lm', allowed: .*\bmqar\b.*\bsuite$"),
        (
            {"task": {"name": "suite", "members": [TASK, {**TASK, "key": "b", "weight": 0}]}},
            r"^invalid task: task\.members\[1\]\.weight: got 0, must be a number > 0$",
        ),
        ({"measure": {"context_len": 0}}, r"^invalid measure config: measure\.context_len: got 0, must be"),
        ({"measure": {"prefill_len": 8}}, r"^invalid measure config: measure\.prefill_len: unknown option; allowed: "),
        ({"timeout_s": -1.0}, r"^invalid timeout_s: got -1\.0, must be a number > 0 or None$"),
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
    result = evaluate(_request(measure={}))  # the default measurements
    assert result.status == "done", result.error
    m = result.metrics
    # byte_lm only; CUDA only; only with training.target
    expected = set(METRICS) - {"bits_per_byte", "peak_memory_bytes", "steps_to_target"}
    assert set(m) == expected
    assert 0.0 <= m["accuracy"] <= 1.0 and m["loss"] > 0 and m["steps"] == 20
    assert m["prefill_tokens_per_s"] > 0 and m["decode_tokens_per_s"] > 0 and m["train_tokens_per_s"] > 0
    model = build_model(SPEC)
    assert m["params"] == sum(p.numel() for p in model.parameters())
    # The analytic cost is taken at the measured context length.
    cost = estimate_cost(SPEC, context_len=MeasureConfig().context_len)
    assert m["cost_context_len"] == MeasureConfig().context_len == 512
    assert (m["cost_params"], m["cost_state_bytes"], m["cost_flops_per_token"]) == (
        cost.params, cost.state_bytes, cost.flops_per_token
    )
    # Peak memory of the prefill forward: the weights plus at least its [B, T, V] float32 logits.
    assert m["prefill_peak_memory_bytes"] >= model_bytes(model) + 4 * 512 * 17 * 4
    # The weights are the trained network: loading them reproduces the test loss exactly.
    assert _scores(result, SPEC, TASK) == (m["accuracy"], m["loss"])


def test_measure_settings_reach_the_measurements(one_thread: None) -> None:
    small = evaluate(_request(measure={**MEASURE, "context_len": 16}))
    large = evaluate(_request(measure={**MEASURE, "context_len": 256}))
    assert small.ok and large.ok
    assert small.metrics["cost_context_len"] == 16 and large.metrics["cost_context_len"] == 256
    assert small.metrics["cost_state_bytes"] == estimate_cost(SPEC, context_len=16).state_bytes
    assert small.metrics["prefill_peak_memory_bytes"] < large.metrics["prefill_peak_memory_bytes"]
    assert small.metrics["accuracy"] == large.metrics["accuracy"]  # measurement never touches the training


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


def test_suite_timeout_names_the_member() -> None:
    suite = {"name": "suite", "members": [{**TASK, "key": "a"}, {**TASK_B, "key": "b"}]}
    result = evaluate(_request(task=suite, steps=100_000, timeout_s=0.05))
    assert result.status == "failed"
    assert re.fullmatch(r"a: time limit of 0.05s exceeded at step \d+", result.error), result.error


class _NextTokenLeak(nn.Module):
    """Wraps a generated mixer and mixes in the next position's input: not causal."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor, cache: dict | None = None, use_cache: bool = False, offset: int = 0):
        h, cache = self.inner(x, cache=cache, use_cache=use_cache, offset=offset)
        return h + 0.1 * F.pad(x, (0, 0, 0, 1))[:, 1:], cache  # [B, T, D]


@pytest.fixture
def leaky_build(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every candidate is built as generated, then its last mixer is made to look one token ahead."""
    real = evaluate_module._build_module

    def build(spec: ArchSpec) -> types.SimpleNamespace:
        module = real(spec)

        def make() -> nn.Module:
            model = module.Model()
            model.layers[-1].mixer = _NextTokenLeak(model.layers[-1].mixer)
            return model

        return types.SimpleNamespace(Model=make)

    monkeypatch.setattr(evaluate_module, "_build_module", build)


def test_a_candidate_that_fails_the_checks_is_invalid(leaky_build: None, one_thread: None) -> None:
    result = evaluate(_request())
    assert result.status == "invalid" and not result.ok
    assert result.error.startswith("not causal: changing token 1 moves the logits at position 0 by "), result.error
    assert result.metrics == {} and result.weights is None and result.device.startswith("cpu")
    # Without the checks the same candidate trains: the checks are what rejected it.
    unchecked = evaluate(_request(checks=False))
    assert unchecked.status == "done", unchecked.error


def test_the_checks_leave_the_result_unchanged(one_thread: None) -> None:
    checked, unchecked = evaluate(_request()), evaluate(_request(checks=False))
    assert checked.ok and unchecked.ok
    keys = ("accuracy", "loss", "train_loss")
    assert [checked.metrics[k] for k in keys] == [unchecked.metrics[k] for k in keys]
    assert checked.weights == unchecked.weights


def test_suite_trains_a_fresh_model_per_member(one_thread: None) -> None:
    suite = {"name": "suite", "members": [{**TASK, "key": "a"}, {**TASK_B, "key": "b", "weight": 3.0}]}
    result = evaluate(_request(task=suite))
    assert result.status == "done", result.error
    m = result.metrics
    own = ("accuracy", "loss", "val_accuracy", "val_loss", "train_loss", "steps", "lr")
    per_member = {f"{k}.{n}" for k in ("a", "b") for n in own}
    # A suite's lr is per member only: a mean learning rate would mean nothing.
    assert set(m) == per_member | (set(METRICS) - {"bits_per_byte", "peak_memory_bytes", "steps_to_target", "lr"})
    # Each member's figures are those of the task evaluated alone: same spec, same seed, fresh init.
    alone_a, alone_b = evaluate(_request()), evaluate(_request(task=TASK_B))
    for key, alone in (("a", alone_a), ("b", alone_b)):
        for name in ("accuracy", "loss", "train_loss"):
            assert m[f"{key}.{name}"] == alone.metrics[name], (key, name)
    for name in ("accuracy", "loss", "train_loss"):
        assert m[name] == pytest.approx((m[f"a.{name}"] + 3 * m[f"b.{name}"]) / 4, rel=1e-12)
    # The weights are those of the heaviest member, b.
    assert result.weights == alone_b.weights
    assert _scores(result, SPEC, TASK_B) == (m["b.accuracy"], m["b.loss"])


def test_suite_weights_on_a_tie_are_the_first_members(one_thread: None) -> None:
    members = [{**TASK_B, "key": "first", "weight": 2}, {**TASK, "key": "second", "weight": 2}]
    suite = {"name": "suite", "members": members}
    result = evaluate(_request(task=suite))
    assert result.ok, result.error
    assert _scores(result, SPEC, TASK_B) == (result.metrics["first.accuracy"], result.metrics["first.loss"])


BYTES = {"name": "byte_lm", "seq_len": 16, "num_train": 200, "num_test": 32}
SPEC_256 = ArchSpec(d_model=16, layers=(LayerSpec("short_conv"), LayerSpec("gla", n_heads=2)), vocab_size=256)


def test_task_extra_metrics_are_recorded(one_thread: None) -> None:
    alone = evaluate(_request(spec_json=SPEC_256.to_json(), task=BYTES))
    assert alone.ok, alone.error
    assert alone.metrics["bits_per_byte"] == pytest.approx(alone.metrics["loss"] / math.log(2), rel=1e-12)
    assert "bits_per_byte" in METRICS

    mixed = {"name": "suite", "members": [{**BYTES, "key": "text"}, TASK]}
    m = evaluate(_request(spec_json=SPEC_256.to_json(), task=mixed)).metrics
    assert m["text.bits_per_byte"] == alone.metrics["bits_per_byte"]
    assert "bits_per_byte" not in m and "mqar.bits_per_byte" not in m  # mqar has none: no suite average

    members = [{**BYTES, "key": "short"}, {**BYTES, "seq_len": 24, "key": "long", "weight": 3}]
    both = {"name": "suite", "members": members}
    m = evaluate(_request(spec_json=SPEC_256.to_json(), task=both)).metrics
    assert m["short.bits_per_byte"] == alone.metrics["bits_per_byte"]
    expected = (m["short.bits_per_byte"] + 3 * m["long.bits_per_byte"]) / 4
    assert m["bits_per_byte"] == pytest.approx(expected, rel=1e-12)


def test_every_evaluation_records_its_device_numerics_and_kernels(one_thread: None) -> None:
    assert evaluate(_request()).device == "cpu (1 threads), fp32, chunk kernels"
    bf16 = evaluate(_request(train={**TRAIN, "precision": "bf16"}))
    assert bf16.ok and bf16.device == "cpu (1 threads), bf16 autocast, chunk kernels"
    bad = evaluate(_request(spec_json="{}"))
    assert not bad.ok and bad.device == "cpu (1 threads)"  # the request was never read: no numerics to name

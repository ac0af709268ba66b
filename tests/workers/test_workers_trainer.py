from __future__ import annotations

import math
import re
import time
from collections.abc import Callable

import pytest
import torch
from torch import nn

from hybridnas.workers.tasks import make_task
from hybridnas.workers.trainer import Deadline, EvaluationFailed, Target, TrainConfig, fit, lr_at, param_groups, score, train

EASY = {"name": "mqar", "vocab_size": 17, "seq_len": 16, "num_kv_pairs": 2, "num_train": 1000, "num_test": 100}
FAST = TrainConfig(steps=80, batch_size=32, lr=3e-3, weight_decay=0.0, eval_batch_size=100)


@pytest.fixture(scope="module")
def easy_data():
    return make_task(EASY).generate(0)


def test_tiny_model_learns_easy_mqar(tiny_lm: Callable[..., nn.Module], easy_data, one_thread: None) -> None:
    acc0, loss0 = score(tiny_lm(17), easy_data.test_inputs, easy_data.test_targets, 100)
    model, result = fit(lambda: tiny_lm(17), easy_data, FAST, seed=0)
    # Guessing among the 8 values gives 1/8; picking one of the two values in context gives 1/2.
    assert acc0 < 0.3
    assert result.accuracy > 0.9 and result.kept.val_accuracy > 0.9
    assert result.loss < 0.25 * loss0 and result.kept.train_loss < 0.25 * loss0
    assert result.kept.steps == 80 and result.kept.tokens_per_s > 0 and result.wall_time_s > 0
    assert result.kept.lr == 3e-3 and result.runs == (result.kept,) and result.kept.steps_to_target is None


def test_validation_is_carved_from_training_never_from_test(easy_data) -> None:
    from hybridnas.workers.tasks import row_key
    from hybridnas.workers.trainer import split_validation

    train_part, val = split_validation(easy_data, 0.1)
    assert val is not None and val.test_inputs.shape[0] == 100 and train_part.train_inputs.shape[0] == 900
    rows = lambda x: {row_key(r.numpy()) for r in x}  # noqa: E731
    assert rows(val.test_inputs) <= rows(easy_data.train_inputs)
    assert rows(val.test_inputs).isdisjoint(rows(train_part.train_inputs) | rows(easy_data.test_inputs))
    assert torch.equal(train_part.test_inputs, easy_data.test_inputs)
    assert split_validation(easy_data, 0.0) == (easy_data, None)


def test_learning_rate_sweep_keeps_the_best_on_validation(tiny_lm: Callable[..., nn.Module], easy_data, one_thread: None) -> None:
    cfg = TrainConfig(steps=60, batch_size=32, lr=(1e-5, 3e-3), weight_decay=0.0, eval_batch_size=100)
    model, result = fit(lambda: tiny_lm(17), easy_data, cfg, seed=0)
    assert [r.lr for r in result.runs] == [1e-5, 3e-3]
    low, high = result.runs
    assert high.val_accuracy > low.val_accuracy + 0.3  # 1e-5 barely moves in 60 steps
    assert result.kept is high
    # The test set scores the kept model: the same figure its weights give.
    assert score(model, easy_data.test_inputs, easy_data.test_targets, 100)[0] == result.accuracy
    # Each rate starts from the same initial weights (the factory is seeded).
    again = fit(lambda: tiny_lm(17), easy_data, TrainConfig(**{**cfg.to_dict(), "lr": 3e-3}), seed=0)[1]
    assert again.accuracy == result.accuracy


def test_target_stops_early_and_counts_steps(tiny_lm: Callable[..., nn.Module], easy_data, one_thread: None) -> None:
    cfg = TrainConfig(steps=400, batch_size=32, lr=3e-3, weight_decay=0.0, eval_batch_size=100, target=Target("accuracy", 0.9), eval_every=10)
    _, result = fit(lambda: tiny_lm(17), easy_data, cfg, seed=0)
    run = result.kept
    assert run.steps_to_target is not None and run.steps == run.steps_to_target < 400 and run.steps % 10 == 0
    assert run.val_accuracy >= 0.9
    unreachable = TrainConfig(**{**cfg.to_dict(), "steps": 20, "target": {"metric": "loss", "value": 0.0}})
    assert fit(lambda: tiny_lm(17), easy_data, unreachable, seed=0)[1].kept.steps_to_target is None


def test_same_seed_gives_bit_identical_metrics(tiny_lm: Callable[..., nn.Module], easy_data, one_thread: None) -> None:
    cfg = TrainConfig(steps=20, batch_size=16, lr=3e-3, eval_batch_size=50)
    runs = []
    for seed in (5, 5, 6):
        model = tiny_lm(17, seed=0)
        runs.append((train(model, easy_data, cfg, seed=seed), model.state_dict()))
    (a, wa), (b, wb), (c, _) = runs
    assert (a.val_accuracy, a.val_loss, a.train_loss) == (b.val_accuracy, b.val_loss, b.train_loss)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    # Another seed reorders the batches, which must show in the training loss.
    assert a.train_loss != c.train_loss


class _NanAfter(nn.Module):
    """Wraps a model; from forward call `n` on, its logits are NaN (as after a divergent update)."""

    def __init__(self, inner: nn.Module, n: int) -> None:
        super().__init__()
        self.inner, self.n, self.calls = inner, n, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        out = self.inner(x)
        return out * float("nan") if self.calls >= self.n else out


def test_nan_loss_raises_with_its_step(tiny_lm: Callable[..., nn.Module], easy_data) -> None:
    model = _NanAfter(tiny_lm(17), n=21)
    with pytest.raises(EvaluationFailed, match=r"^loss became nan at step 21$"):
        train(model, easy_data, TrainConfig(steps=40, batch_size=4), seed=0)


class _Slow(nn.Module):
    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        import time

        time.sleep(0.02)
        return self.inner(x)


def test_time_limit_raises_with_its_step(tiny_lm: Callable[..., nn.Module], easy_data) -> None:
    cfg = TrainConfig(steps=10_000, batch_size=4)
    # Long enough to cover the set-up on a loaded machine; each step sleeps 0.02 s, so it ends mid-run.
    deadline = Deadline(time.perf_counter() + 3.0, 3.0)
    with pytest.raises(EvaluationFailed, match=r"^time limit of 3s exceeded at step \d+$") as err:
        train(_Slow(tiny_lm(17)), easy_data, cfg, seed=0, deadline=deadline)
    step = int(re.search(r"step (\d+)", err.value.reason).group(1))
    assert 1 < step < 10_000


def test_lr_schedule_warms_up_then_decays_to_the_floor() -> None:
    cfg = TrainConfig(steps=100, lr=1.0, warmup_frac=0.1, min_lr_frac=0.1)
    lrs = [lr_at(s, cfg) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(x < y for x, y in zip(lrs[:10], lrs[1:10]))
    assert all(x >= y for x, y in zip(lrs[10:], lrs[11:]))
    assert lrs[-1] == pytest.approx(0.1, abs=1e-3) and min(lrs[10:]) >= 0.1
    no_warmup = TrainConfig(steps=10, lr=1.0, warmup_frac=0.0)
    assert lr_at(0, no_warmup) == 1.0


def test_no_decay_on_norms_biases_embeddings(tiny_lm: Callable[..., nn.Module]) -> None:
    model = tiny_lm(17)
    model.head.weight = model.emb.weight  # tied: still an embedding, still counted once
    decay, keep = param_groups(model, 0.1)
    assert decay["weight_decay"] == 0.1 and keep["weight_decay"] == 0.0
    decayed = {id(p) for p in decay["params"]}
    names = {id(p): n for n, p in model.named_parameters()}
    assert {names[i] for i in decayed} == {"prev.weight", "qkv.weight", "out.weight"}
    assert len(decay["params"]) + len(keep["params"]) == len(list(model.parameters()))


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("steps", 0),
        ("batch_size", 2.0),
        ("lr", 0.0),
        ("lr", math.inf),
        ("warmup_frac", 1.5),
        ("grad_clip", -1.0),
        ("steps", True),
        ("lr", ()),
        ("lr", (1e-3, 1e-3)),
        ("val_fraction", 0.9),
        ("eval_every", 0),
    ],
)
def test_train_config_validation_names_the_field(key: str, value: object) -> None:
    with pytest.raises(ValueError, match=f"^{key}:"):
        TrainConfig(**{key: value})
    with pytest.raises(ValueError, match=f"^train.{key}:"):
        TrainConfig.from_dict({key: value})


def test_train_config_from_dict() -> None:
    assert TrainConfig.from_dict({"steps": 7, "lr": 1}) == TrainConfig(steps=7, lr=1.0)
    assert TrainConfig.from_dict({"lr": [1e-3, 3e-3]}).lrs == (1e-3, 3e-3)
    assert TrainConfig.from_dict({"lr": [2e-3]}).lr == 2e-3  # a one-item list is that rate
    cfg = TrainConfig(lr=(1e-3, 3e-3), target=Target("loss", 0.5))
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg  # round-trips through JSON values
    with pytest.raises(ValueError, match="val_fraction: 0 leaves no validation split"):
        TrainConfig(val_fraction=0.0, lr=(1e-3, 3e-3))
    with pytest.raises(ValueError, match="target.metric"):
        Target("f1", 0.5)
    with pytest.raises(ValueError, match=r"^train\.epochs: unknown option; allowed: .*steps"):
        TrainConfig.from_dict({"epochs": 3})


def test_precision_plumbing(easy_data, one_thread: None) -> None:
    """auto: bf16 autocast on CUDA, fp32 on CPU; bf16 asked for runs on CPU too, the kernels' state in float32."""
    from hybridnas.codegen import build_model
    from hybridnas.kernels.chunk import chunk_gated_delta_rule
    from hybridnas.space import ArchSpec, HybridGenes
    from hybridnas.workers.trainer import autocast, autocast_dtype, precision_label

    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert autocast_dtype(TrainConfig(), cuda) is torch.bfloat16 and autocast_dtype(TrainConfig(), cpu) is None
    assert autocast_dtype(TrainConfig(precision="fp32"), cuda) is None
    assert autocast_dtype(TrainConfig(precision="bf16"), cpu) is torch.bfloat16
    assert precision_label(TrainConfig(), cuda) == "bf16 autocast" and precision_label(TrainConfig(), cpu) == "fp32"
    with pytest.raises(ValueError, match="precision"):
        TrainConfig(precision="fp8")  # type: ignore[arg-type]
    # Under bf16 autocast the kernel gets bf16 inputs and still accumulates in float32.
    q = torch.randn(1, 20, 2, 8)
    k = torch.nn.functional.normalize(torch.randn(1, 20, 2, 8), dim=-1)
    v, beta = torch.randn(1, 20, 2, 8), torch.rand(1, 20, 2)
    ref, _ = chunk_gated_delta_rule(q, k, v, beta)
    with autocast(cpu, torch.bfloat16):
        out, state = chunk_gated_delta_rule(q.bfloat16(), k.bfloat16(), v.bfloat16(), beta.bfloat16(), output_final_state=True)
    assert out.dtype == torch.bfloat16 and state.dtype == torch.float32
    torch.testing.assert_close(out.float(), ref, rtol=0.05, atol=0.05)
    spec = ArchSpec.from_hybrid(HybridGenes(ratio=1, linear_mixer="gated_deltanet", short_conv=True), d_model=16, n_layers=2, n_heads=2, vocab_size=17)
    _, result = fit(lambda: build_model(spec), easy_data, TrainConfig(steps=10, batch_size=16, precision="bf16", eval_batch_size=100), seed=0)
    assert math.isfinite(result.loss) and 0 <= result.accuracy <= 1

from __future__ import annotations

import math
import re
from collections.abc import Callable

import pytest
import torch
from torch import nn

from hybridnas.workers.tasks import make_task
from hybridnas.workers.trainer import EvaluationFailed, TrainConfig, lr_at, param_groups, score, train

EASY = {"name": "mqar", "vocab_size": 17, "seq_len": 16, "num_kv_pairs": 2, "num_train": 1000, "num_test": 100}
FAST = TrainConfig(steps=80, batch_size=32, lr=3e-3, weight_decay=0.0, eval_batch_size=100)


@pytest.fixture(scope="module")
def easy_data():
    return make_task(EASY).generate(0)


def test_tiny_model_learns_easy_mqar(tiny_lm: Callable[..., nn.Module], easy_data, one_thread: None) -> None:
    model = tiny_lm(17)
    acc0, loss0 = score(model, easy_data.test_inputs, easy_data.test_targets, 100)
    result = train(model, easy_data, FAST, seed=0)
    # Guessing among the 8 values gives 1/8; picking one of the two values in context gives 1/2.
    assert acc0 < 0.3
    assert result.accuracy > 0.9
    assert result.loss < 0.25 * loss0 and result.train_loss < 0.25 * loss0
    assert result.steps == 80 and result.tokens_per_s > 0 and result.wall_time_s > 0


def test_same_seed_gives_bit_identical_metrics(tiny_lm: Callable[..., nn.Module], easy_data, one_thread: None) -> None:
    cfg = TrainConfig(steps=20, batch_size=16, lr=3e-3, eval_batch_size=50)
    runs = []
    for seed in (5, 5, 6):
        model = tiny_lm(17, seed=0)
        runs.append((train(model, easy_data, cfg, seed=seed), model.state_dict()))
    (a, wa), (b, wb), (c, _) = runs
    assert (a.accuracy, a.loss, a.train_loss) == (b.accuracy, b.loss, b.train_loss)
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
    cfg = TrainConfig(steps=10_000, batch_size=4, time_limit_s=0.1)
    with pytest.raises(EvaluationFailed, match=r"^time limit of 0.1s exceeded at step \d+$") as err:
        train(_Slow(tiny_lm(17)), easy_data, cfg, seed=0)
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
        ("time_limit_s", 0),
    ],
)
def test_train_config_validation_names_the_field(key: str, value: object) -> None:
    with pytest.raises(ValueError, match=f"^{key}:"):
        TrainConfig(**{key: value})
    with pytest.raises(ValueError, match=f"^train.{key}:"):
        TrainConfig.from_dict({key: value})


def test_train_config_from_dict() -> None:
    assert TrainConfig.from_dict({"steps": 7, "lr": 1}) == TrainConfig(steps=7, lr=1.0)
    with pytest.raises(ValueError, match=r"^train\.epochs: unknown option; allowed: .*steps"):
        TrainConfig.from_dict({"epochs": 3})

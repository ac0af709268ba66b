"""Train a token model on a task's data, choose its learning rate on validation, score it on test.

One plain loop: AdamW (no decay on norms, biases and embeddings), linear warmup then cosine decay, gradient clipping. On CPU a fixed seed gives
bit-identical metrics: torch is seeded and the batch order comes from its own generator.

The protocol (`fit`), as careful as Zoology's and cheap enough for a CPU: a validation split is
carved from the training examples; with several learning rates each trains a fresh model from the
same initial weights, and the one that does best on validation is kept; an optional target (say
validation accuracy 0.99) stops training early and records the steps it took. The test set scores
only the kept model, once. Divergence and overtime raise `EvaluationFailed`, which the evaluator
records as a failed evaluation.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Annotated, Any, Literal

import torch
import torch.nn.functional as F
from pydantic import ConfigDict, Strict
from torch import nn

from hybridnas.workers.tasks import IGNORE_INDEX, TaskData

_CHECK_EVERY = 16  # steps between host syncs that look for a non-finite loss (one sync per step is slow on GPU)

#: Upper bounds of the integer settings: beyond them a campaign would only exhaust memory or time.
LIMITS: dict[str, int] = {"steps": 10_000_000, "batch_size": 1 << 16, "eval_batch_size": 1 << 16, "eval_every": 10_000_000}
MAX_LRS = 32  # learning rates in one sweep: each trains its own model per evaluation

# Strict for the campaign file's validation (pydantic): `steps: true` or `"3"` is an error, not 1 or 3.
Int = Annotated[int, Strict()]
Float = Annotated[float, Strict()]


class EvaluationFailed(Exception):
    """The candidate could not be scored; `reason` is the one line the store records."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _check_number(name: str, v: Any, lo: float, hi: float | None = None, lo_ok: bool = True, integer: bool = False) -> None:
    ok = isinstance(v, int if integer else (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    ok = ok and (v >= lo if lo_ok else v > lo) and (hi is None or v <= hi)
    if not ok:
        kind = "an integer" if integer else "a number"
        rng = f"{'[' if lo_ok else '('}{lo:g}, {f'{hi:g}]' if hi is not None else 'inf)'}"
        raise ValueError(f"{name}: got {v!r}, must be {kind} in {rng}")


@dataclass(frozen=True)
class Target:
    """Stop training as soon as a validation metric reaches `value` (checked every `eval_every` steps)."""

    __pydantic_config__ = ConfigDict(extra="forbid")

    metric: Literal["accuracy", "loss"] = "accuracy"  # validation accuracy (>= value) or loss (<= value)
    value: Float = 0.99

    def __post_init__(self) -> None:
        if self.metric not in ("accuracy", "loss"):
            raise ValueError(f"target.metric: got {self.metric!r}, allowed: accuracy, loss")
        _check_number("target.value", self.value, 0.0, 1.0 if self.metric == "accuracy" else None)
        object.__setattr__(self, "value", float(self.value))

    def reached(self, accuracy: float, loss: float) -> bool:
        return accuracy >= self.value if self.metric == "accuracy" else loss <= self.value


@dataclass(frozen=True)
class TrainConfig:
    """How every candidate is trained: the `training:` section of a campaign file, and what a worker runs.

    The one definition of these settings and their defaults. Errors name the field.
    """

    __pydantic_config__ = ConfigDict(extra="forbid")

    steps: Int = 300  # optimizer steps: the cap, and the top fidelity (successive halving's rungs train fewer)
    batch_size: Int = 32  # sequences per step
    lr: Float | tuple[Float, ...] = 3e-3  # peak AdamW learning rate; a list: each is tried, the best on validation kept
    weight_decay: Float = 0.1  # AdamW decay on matrices only (not norms, biases, embeddings)
    warmup_frac: Float = 0.1  # fraction of steps with a linear ramp from ~0 to lr
    min_lr_frac: Float = 0.1  # the cosine ends at lr * min_lr_frac
    grad_clip: Float = 1.0  # max global gradient norm; 0 disables clipping
    val_fraction: Float = 0.1  # share of the training examples held out for validation (lr choice, target)
    target: Target | None = None  # stop early once validation reaches it; steps_to_target is recorded
    eval_every: Int = 25  # steps between validation checks when there is a target
    eval_batch_size: Int = 256  # sequences per forward pass when scoring
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto: bf16 autocast on CUDA (fp32 kernel states), fp32 on CPU

    def __post_init__(self) -> None:
        for name, hi in LIMITS.items():
            _check_number(name, getattr(self, name), 1, hi, integer=True)
        lrs = self.lr if isinstance(self.lr, (tuple, list)) else (self.lr,)
        if not lrs:
            raise ValueError("lr: got an empty list, give at least one learning rate")
        if len(lrs) > MAX_LRS:
            raise ValueError(f"lr: got {len(lrs)} learning rates, at most {MAX_LRS} are allowed")
        for v in lrs:
            _check_number("lr", v, 0.0, lo_ok=False)
        if len(set(lrs)) != len(lrs):
            raise ValueError(f"lr: got {list(lrs)}, the rates must differ")
        lrs = tuple(float(v) for v in lrs)
        object.__setattr__(self, "lr", lrs[0] if len(lrs) == 1 else lrs)
        bounds = {"weight_decay": (0.0, None), "warmup_frac": (0.0, 1.0), "min_lr_frac": (0.0, 1.0), "grad_clip": (0.0, None)}
        for name, (lo, hi) in bounds.items():
            _check_number(name, getattr(self, name), lo, hi)
            object.__setattr__(self, name, float(getattr(self, name)))
        _check_number("val_fraction", self.val_fraction, 0.0, 0.5)
        object.__setattr__(self, "val_fraction", float(self.val_fraction))
        if self.val_fraction == 0 and (len(lrs) > 1 or self.target is not None):
            raise ValueError("val_fraction: 0 leaves no validation split, which a list of lr or a target needs")
        if isinstance(self.target, dict):
            object.__setattr__(self, "target", Target(**self.target))
        if self.precision not in ("auto", "fp32", "bf16"):
            raise ValueError(f"precision: got {self.precision!r}, allowed: auto, fp32, bf16")

    @property
    def lrs(self) -> tuple[float, ...]:
        """The learning rates to try (one, unless a list was given)."""
        return self.lr if isinstance(self.lr, tuple) else (self.lr,)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        """From the `train:` block of a request; unknown keys are an error naming the key."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"train.{unknown[0]}: unknown option; allowed: {', '.join(sorted(known))}")
        try:
            return cls(**d)
        except (ValueError, TypeError) as e:
            raise ValueError(f"train.{e}") from None

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON values (lists for tuples)."""
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["lr"] = list(self.lr) if isinstance(self.lr, tuple) else self.lr
        d["target"] = None if self.target is None else {"metric": self.target.metric, "value": self.target.value}
        return d


def autocast_dtype(cfg: TrainConfig, device: torch.device) -> torch.dtype | None:
    """The dtype matmuls run in under autocast on `device`, or None for plain float32.

    bf16 pays on a GPU (tensor cores; the kernels keep their recurrent state in float32); on a CPU
    it is slower and is used only when asked for.
    """
    if cfg.precision == "fp32" or (cfg.precision == "auto" and device.type != "cuda"):
        return None
    return torch.bfloat16


def precision_label(cfg: TrainConfig, device: torch.device) -> str:
    """What an evaluation records of its numerics: "bf16 autocast" or "fp32"."""
    return "fp32" if autocast_dtype(cfg, device) is None else "bf16 autocast"


@dataclass(frozen=True)
class Deadline:
    """When the evaluation must end (time.perf_counter()) and the limit it came from, for the message."""

    at: float
    limit_s: float

    def passed(self) -> bool:
        return time.perf_counter() > self.at


@dataclass(frozen=True)
class TrainResult:
    """One training run at one learning rate, scored on validation."""

    lr: float  # the peak learning rate
    val_accuracy: float  # validation accuracy over target positions (nan without a validation split)
    val_loss: float  # validation cross-entropy (nan without a validation split)
    train_loss: float  # mean training loss over the last tenth of the steps taken
    steps: int  # optimizer steps taken (fewer than the cap when the target stopped training)
    steps_to_target: int | None  # the step at which validation first reached the target; None if it did not
    train_time_s: float  # time spent training (and validating) this run
    tokens_per_s: float  # training throughput: batch_size * seq_len * steps / training time


@dataclass(frozen=True)
class FitResult:
    """The learning-rate sweep's kept run, scored on test."""

    accuracy: float  # test accuracy of the kept model over target positions
    loss: float  # its test cross-entropy
    kept: TrainResult  # the run that was kept (its lr, validation scores, steps)
    runs: tuple[TrainResult, ...]  # every run of the sweep, in lr order
    wall_time_s: float  # the whole call: every run and the test scoring


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Decay matrices only. Embedding tables are excluded even when tied to the LM head."""
    no_decay = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    decay, keep = [], []
    for p in model.parameters():  # unique parameters: a tied weight appears once
        if not p.requires_grad:
            continue
        (keep if p.ndim < 2 or id(p) in no_decay else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": keep, "weight_decay": 0.0}]


def lr_at(step: int, cfg: TrainConfig, lr: float | None = None) -> float:
    """Learning rate for 0-based `step` at peak `lr` (default: the config's only one): linear warmup,
    then cosine down to lr * min_lr_frac."""
    peak = cfg.lrs[0] if lr is None else lr
    warmup = round(cfg.warmup_frac * cfg.steps)
    if step < warmup:
        return peak * (step + 1) / warmup
    decay_steps = max(1, cfg.steps - warmup)
    progress = min(1.0, (step - warmup) / decay_steps)
    min_lr = peak * cfg.min_lr_frac
    return min_lr + 0.5 * (peak - min_lr) * (1.0 + math.cos(math.pi * progress))


def _batch_order(n: int, steps: int, batch_size: int, gen: torch.Generator) -> torch.Tensor:
    """Indices of every step's batch, epoch after epoch of fresh permutations. [steps, batch_size]"""
    total = steps * batch_size
    perms = [torch.randperm(n, generator=gen) for _ in range(math.ceil(total / n))]
    return torch.cat(perms)[:total].view(steps, batch_size)


def _fusable(model: nn.Module) -> bool:
    """Whether AdamW can update every parameter in one fused kernel: on CPU that is several times
    faster than its default per-parameter loop, and the same update up to float roundoff."""
    return all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in model.parameters())


def _loss_fn(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    # logits [B, T, V], targets [B, T]; mean over target positions only.
    return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=IGNORE_INDEX)


class _Overtime(Exception):
    """Raised inside `score` when the deadline passes; callers turn it into EvaluationFailed."""


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """torch.autocast to `dtype` on `device`, or nothing for plain float32."""
    return contextlib.nullcontext() if dtype is None else torch.autocast(device.type, dtype=dtype)


@torch.no_grad()
def score(
    model: nn.Module,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    batch_size: int,
    deadline: Deadline | None = None,
    amp: torch.dtype | None = None,
) -> tuple[float, float]:
    """(accuracy, mean cross-entropy) over the target positions of `inputs`, in eval mode (under
    autocast to `amp` when given, as in training)."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    count = 0
    try:
        for i in range(0, inputs.shape[0], batch_size):
            if deadline is not None and deadline.passed():
                raise _Overtime()
            x = inputs[i : i + batch_size].to(device)  # [B, T]
            y = targets[i : i + batch_size].to(device)  # [B, T]
            with autocast(device, amp):
                logits = model(x).float()  # [B, T, V]
            mask = y != IGNORE_INDEX  # [B, T]
            loss_sum += F.cross_entropy(
                logits.flatten(0, 1), y.flatten(), ignore_index=IGNORE_INDEX, reduction="sum"
            ).double()
            correct += ((logits.argmax(-1) == y) & mask).sum()
            count += int(mask.sum())
    finally:
        model.train(was_training)
    if count == 0:
        raise EvaluationFailed("the scored set has no target positions")
    return float(correct) / count, float(loss_sum) / count


def split_validation(data: TaskData, fraction: float) -> tuple[TaskData, TaskData | None]:
    """(training data without the validation rows, the validation rows as a TaskData's test part).

    The last `fraction` of the training examples (at least one) are held out; a task's generator
    draws them in random order, so the split is random and the same for every design and rate.
    """
    n = data.train_inputs.shape[0]
    n_val = 0 if fraction == 0 else max(1, round(n * fraction))
    if n_val >= n:
        raise EvaluationFailed(f"val_fraction {fraction:g} of {n} training examples leaves none to train on")
    if n_val == 0:
        return data, None
    keep = n - n_val
    scored = data.train_targets if data.train_scored is None else data.train_scored
    train_scored = None if data.train_scored is None else data.train_scored[:keep]
    train = TaskData(data.train_inputs[:keep], data.train_targets[:keep], data.test_inputs, data.test_targets, train_scored)
    # Validation is scored where the test set is (not on every token where a task trains on them all).
    val = TaskData(data.train_inputs[keep:], data.train_targets[keep:], data.train_inputs[keep:], scored[keep:])
    return train, val


def train(
    model: nn.Module,
    data: TaskData,
    cfg: TrainConfig,
    seed: int,
    lr: float | None = None,
    deadline: Deadline | None = None,
) -> TrainResult:
    """Train `model` (token ids [B, T] -> logits [B, T, V]) in place at peak `lr` (default: the
    config's only rate) on the training part of `data`, validating on the held-out part.

    Runs on the device of the model's parameters. Raises EvaluationFailed when the loss stops
    being finite or the deadline passes. The test set is not touched (see `fit`).
    """
    t0 = time.perf_counter()
    if lr is None:
        if len(cfg.lrs) > 1:
            raise ValueError(f"lr: the config has {len(cfg.lrs)} rates; pass the one to train at, or use fit()")
        lr = cfg.lrs[0]
    data, val = split_validation(data, cfg.val_fraction)
    device = next(model.parameters()).device
    amp = autocast_dtype(cfg, device)  # bf16 autocast on CUDA by default; the kernels keep fp32 states
    torch.manual_seed(seed)  # dropout or any other randomness inside the model
    gen = torch.Generator().manual_seed(seed)  # batch order, independent of the model's RNG use
    order = _batch_order(data.train_inputs.shape[0], cfg.steps, cfg.batch_size, gen).to(device)  # [steps, B]
    train_inputs = data.train_inputs.to(device)
    train_targets = data.train_targets.to(device)

    opt = torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=lr, betas=(0.9, 0.95), fused=_fusable(model))
    model.train()
    pending: list[torch.Tensor] = []  # losses not yet checked on the host
    history: list[float] = []
    reached: int | None = None

    def check(upto_step: int) -> None:
        # Finds the first non-finite loss among the pending ones (one host sync per batch of steps).
        values = torch.stack(pending).tolist()
        first = upto_step - len(values) + 1
        for j, v in enumerate(values):
            if not math.isfinite(v):
                raise EvaluationFailed(f"loss became {v} at step {first + j}")
        history.extend(values)
        pending.clear()

    def overtime(step: int) -> EvaluationFailed:
        return EvaluationFailed(f"time limit of {deadline.limit_s:g}s exceeded at step {step}")  # type: ignore[union-attr]

    steps = cfg.steps
    try:
        for step in range(cfg.steps):
            if deadline is not None and deadline.passed():
                raise overtime(step + 1)
            current = lr_at(step, cfg, lr)
            for group in opt.param_groups:
                group["lr"] = current
            idx = order[step]  # [B]
            with autocast(device, amp):
                loss = _loss_fn(model(train_inputs[idx]), train_targets[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip > 0:
                nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            pending.append(loss.detach())
            done = step + 1  # steps are reported 1-based
            if len(pending) == _CHECK_EVERY or done == cfg.steps:
                check(done)
            if cfg.target is not None and val is not None and (done % cfg.eval_every == 0 or done == cfg.steps):
                if cfg.target.reached(*score(model, val.test_inputs, val.test_targets, cfg.eval_batch_size, deadline, amp)):
                    if pending:
                        check(done)
                    reached, steps = done, done
                    break
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        train_time = time.perf_counter() - t0
        val_acc, val_loss = (math.nan, math.nan)
        if val is not None:
            val_acc, val_loss = score(model, val.test_inputs, val.test_targets, cfg.eval_batch_size, deadline, amp)
    except _Overtime:
        raise overtime(steps) from None
    if val is not None and not math.isfinite(val_loss):
        raise EvaluationFailed(f"validation loss became {val_loss} after step {steps}")
    tail = history[-max(1, steps // 10) :]
    return TrainResult(
        lr=lr,
        val_accuracy=val_acc,
        val_loss=val_loss,
        train_loss=sum(tail) / len(tail),
        steps=steps,
        steps_to_target=reached,
        train_time_s=train_time,
        tokens_per_s=steps * cfg.batch_size * data.seq_len / max(train_time, 1e-9),
    )


def _selection_key(run: TrainResult, target: Target | None) -> tuple[float, ...]:
    """Smaller is better: reached the target (sooner), then validation accuracy, then validation loss."""
    reached = run.steps_to_target is not None
    return (
        0.0 if reached or target is None else 1.0,
        float(run.steps_to_target) if reached else 0.0,
        -run.val_accuracy if math.isfinite(run.val_accuracy) else 0.0,
        run.val_loss if math.isfinite(run.val_loss) else 0.0,
    )


def fit(
    make_model: Callable[[], nn.Module],
    data: TaskData,
    cfg: TrainConfig,
    seed: int,
    deadline: Deadline | None = None,
) -> tuple[nn.Module, FitResult]:
    """Train a fresh `make_model()` at each learning rate of `cfg` (same seed, same initial weights),
    keep the run that does best on validation (see `_selection_key`), score it on the test set.

    Returns the kept model and the result. With a single rate, one run and no choice.
    """
    t0 = time.perf_counter()
    runs: list[TrainResult] = []
    kept: tuple[tuple[float, ...], nn.Module, TrainResult] | None = None
    for lr in cfg.lrs:
        model = make_model()
        run = train(model, data, cfg, seed, lr=lr, deadline=deadline)
        runs.append(run)
        key = _selection_key(run, cfg.target)
        if kept is None or key < kept[0]:
            kept = (key, model, run)
    assert kept is not None
    _, model, run = kept
    try:
        amp = autocast_dtype(cfg, next(model.parameters()).device)
        accuracy, test_loss = score(model, data.test_inputs, data.test_targets, cfg.eval_batch_size, deadline, amp)
    except _Overtime:
        raise EvaluationFailed(f"time limit of {deadline.limit_s:g}s exceeded while scoring the test set") from None  # type: ignore[union-attr]
    if not math.isfinite(test_loss):
        raise EvaluationFailed(f"test loss became {test_loss} after step {run.steps}")
    return model, FitResult(accuracy, test_loss, run, tuple(runs), time.perf_counter() - t0)


__all__ = [
    "Deadline",
    "EvaluationFailed",
    "FitResult",
    "Target",
    "TrainConfig",
    "TrainResult",
    "autocast_dtype",
    "fit",
    "lr_at",
    "param_groups",
    "precision_label",
    "score",
    "split_validation",
    "train",
]

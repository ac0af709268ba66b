"""Train a token model on a task's data and score it on the held-out set.

One plain loop: AdamW (no decay on norms, biases and embeddings), linear warmup then cosine decay,
gradient clipping. On CPU a fixed seed gives bit-identical metrics: torch is seeded and the batch
order comes from its own generator. Divergence and overtime raise `EvaluationFailed`, which the
evaluator records as a failed evaluation.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from hybridnas.workers.tasks import IGNORE_INDEX, TaskData

_CHECK_EVERY = 16  # steps between host syncs that look for a non-finite loss (one sync per step is slow on GPU)


class EvaluationFailed(Exception):
    """The candidate could not be scored; `reason` is the one line the store records."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 1_000  # optimizer steps (the fidelity)
    batch_size: int = 32  # sequences per step
    lr: float = 1e-3  # peak learning rate, reached at the end of warmup
    weight_decay: float = 0.1  # AdamW decay on matrices only (not norms, biases, embeddings)
    warmup_frac: float = 0.1  # fraction of steps with a linear ramp from ~0 to lr
    min_lr_frac: float = 0.1  # the cosine ends at lr * min_lr_frac
    grad_clip: float = 1.0  # max global gradient norm; 0 disables clipping
    eval_batch_size: int = 256  # sequences per forward pass when scoring the test set
    time_limit_s: float | None = None  # wall-clock budget for train(); None = no limit

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "eval_batch_size"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name}: got {v!r}, must be an integer >= 1")
        bounds = {
            "lr": (0.0, None, False),
            "weight_decay": (0.0, None, True),
            "warmup_frac": (0.0, 1.0, True),
            "min_lr_frac": (0.0, 1.0, True),
            "grad_clip": (0.0, None, True),
        }
        for name, (lo, hi, lo_ok) in bounds.items():
            v = getattr(self, name)
            ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
            ok = ok and (v >= lo if lo_ok else v > lo) and (hi is None or v <= hi)
            if not ok:
                rng = f"{'[' if lo_ok else '('}{lo}, {hi if hi is not None else 'inf'}{']' if hi is not None else ')'}"
                raise ValueError(f"{name}: got {v!r}, must be a number in {rng}")
            object.__setattr__(self, name, float(v))
        t = self.time_limit_s
        if t is not None:
            if not isinstance(t, (int, float)) or isinstance(t, bool) or not t > 0:
                raise ValueError(f"time_limit_s: got {t!r}, must be a number > 0 or None")
            object.__setattr__(self, "time_limit_s", float(t))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        """From the `train:` block of a request; unknown keys are an error naming the key."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"train.{unknown[0]}: unknown option; allowed: {', '.join(sorted(known))}")
        try:
            return cls(**d)
        except ValueError as e:
            raise ValueError(f"train.{e}") from None


@dataclass(frozen=True)
class TrainResult:
    accuracy: float  # test accuracy over target positions (argmax == target)
    loss: float  # test cross-entropy over target positions
    train_loss: float  # mean training loss over the last tenth of the steps
    steps: int  # optimizer steps taken
    wall_time_s: float  # the whole call: training and scoring
    tokens_per_s: float  # training throughput: batch_size * seq_len * steps / training time


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Decay matrices only. Embedding tables are excluded even when tied to the LM head."""
    no_decay = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    decay, keep = [], []
    for p in model.parameters():  # unique parameters: a tied weight appears once
        if not p.requires_grad:
            continue
        (keep if p.ndim < 2 or id(p) in no_decay else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": keep, "weight_decay": 0.0}]


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Learning rate for 0-based `step`: linear warmup, then cosine down to lr * min_lr_frac."""
    warmup = round(cfg.warmup_frac * cfg.steps)
    if step < warmup:
        return cfg.lr * (step + 1) / warmup
    decay_steps = max(1, cfg.steps - warmup)
    progress = min(1.0, (step - warmup) / decay_steps)
    min_lr = cfg.lr * cfg.min_lr_frac
    return min_lr + 0.5 * (cfg.lr - min_lr) * (1.0 + math.cos(math.pi * progress))


def _batch_order(n: int, steps: int, batch_size: int, gen: torch.Generator) -> torch.Tensor:
    """Indices of every step's batch, epoch after epoch of fresh permutations. [steps, batch_size]"""
    total = steps * batch_size
    perms = [torch.randperm(n, generator=gen) for _ in range(math.ceil(total / n))]
    return torch.cat(perms)[:total].view(steps, batch_size)


def _loss_fn(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    # logits [B, T, V], targets [B, T]; mean over target positions only.
    return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=IGNORE_INDEX)


@torch.no_grad()
def score(
    model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, batch_size: int, deadline: float | None = None
) -> tuple[float, float]:
    """(accuracy, mean cross-entropy) over the target positions of `inputs`, in eval mode."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    count = 0
    try:
        for i in range(0, inputs.shape[0], batch_size):
            if deadline is not None and time.perf_counter() > deadline:
                raise _Overtime()
            x = inputs[i : i + batch_size].to(device)  # [B, T]
            y = targets[i : i + batch_size].to(device)  # [B, T]
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
        raise EvaluationFailed("the test set has no target positions")
    return float(correct) / count, float(loss_sum) / count


class _Overtime(Exception):
    """Raised inside `score` when the deadline passes; `train` turns it into EvaluationFailed."""


def train(model: nn.Module, data: TaskData, cfg: TrainConfig, seed: int) -> TrainResult:
    """Train `model` (token ids [B, T] -> logits [B, T, V]) in place on `data` and score it.

    Runs on the device of the model's parameters. Raises EvaluationFailed when the loss stops
    being finite or the time limit passes.
    """
    t0 = time.perf_counter()
    deadline = None if cfg.time_limit_s is None else t0 + cfg.time_limit_s
    device = next(model.parameters()).device
    torch.manual_seed(seed)  # dropout or any other randomness inside the model
    gen = torch.Generator().manual_seed(seed)  # batch order, independent of the model's RNG use
    order = _batch_order(data.train_inputs.shape[0], cfg.steps, cfg.batch_size, gen).to(device)  # [steps, B]
    train_inputs = data.train_inputs.to(device)
    train_targets = data.train_targets.to(device)

    # fused/foreach kernels are deterministic too; the default implementation picks per device.
    opt = torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=(0.9, 0.95))
    model.train()
    pending: list[torch.Tensor] = []  # losses not yet checked on the host
    history: list[float] = []

    def check(upto_step: int) -> None:
        # Called every _CHECK_EVERY steps; finds the first non-finite loss among the pending ones.
        values = torch.stack(pending).tolist()
        first = upto_step - len(values) + 1
        for j, v in enumerate(values):
            if not math.isfinite(v):
                raise EvaluationFailed(f"loss became {v} at step {first + j}")
        history.extend(values)
        pending.clear()

    def overtime(step: int) -> EvaluationFailed:
        return EvaluationFailed(f"time limit of {cfg.time_limit_s:g}s exceeded at step {step}")

    for step in range(cfg.steps):
        if deadline is not None and time.perf_counter() > deadline:
            raise overtime(step + 1)
        lr = lr_at(step, cfg)
        for group in opt.param_groups:
            group["lr"] = lr
        idx = order[step]  # [B]
        x, y = train_inputs[idx], train_targets[idx]  # [B, T]
        loss = _loss_fn(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip > 0:
            nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        pending.append(loss.detach())
        if len(pending) == _CHECK_EVERY or step == cfg.steps - 1:
            check(step + 1)  # steps are reported 1-based
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    train_time = time.perf_counter() - t0

    try:
        accuracy, test_loss = score(model, data.test_inputs, data.test_targets, cfg.eval_batch_size, deadline)
    except _Overtime:
        raise overtime(cfg.steps) from None
    if not math.isfinite(test_loss):
        raise EvaluationFailed(f"test loss became {test_loss} after step {cfg.steps}")
    tail = history[-max(1, cfg.steps // 10) :]
    tokens = cfg.steps * cfg.batch_size * data.seq_len
    return TrainResult(
        accuracy=accuracy,
        loss=test_loss,
        train_loss=sum(tail) / len(tail),
        steps=cfg.steps,
        wall_time_s=time.perf_counter() - t0,
        tokens_per_s=tokens / max(train_time, 1e-9),
    )


__all__ = ["EvaluationFailed", "TrainConfig", "TrainResult", "lr_at", "param_groups", "score", "train"]

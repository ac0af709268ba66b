"""One evaluation: (spec, task, fidelity, seed) -> metrics, weights, or a recorded failure.

`evaluate` never raises. A candidate that diverges, runs out of memory, exceeds its time limit or
breaks in any other way comes back as `status="failed"` with a one-line reason (plus a short
traceback tail for unexpected errors), so a campaign records it and goes on.
"""

from __future__ import annotations

import functools
import gc
import json
import math
import socket
import time
import traceback
from dataclasses import dataclass, field
from typing import Any

import torch
from safetensors.torch import save as save_safetensors
from torch import nn

from hybridnas.space import ArchSpec
from hybridnas.workers.hardware import (
    default_device,
    describe_device,
    measure_prefill,
    peak_memory_bytes,
    reset_peak_memory,
)
from hybridnas.workers.tasks import Task, TaskData, make_task
from hybridnas.workers.trainer import EvaluationFailed, TrainConfig, train

_PREFILL_BATCH = 8  # sequences per timed forward pass
_PREFILL_REPEATS = 5  # timed passes; the median is reported
_TRACEBACK_FRAMES = 3  # frames kept in the error text of an unexpected exception


@dataclass(frozen=True)
class EvalRequest:
    evaluation_id: int  # the store's id for this evaluation; echoed in the result
    spec_json: str  # ArchSpec.to_json() of the candidate
    task: dict[str, Any]  # task config, including "name" (see hybridnas.workers.tasks.make_task)
    train: dict[str, Any]  # TrainConfig fields; missing ones take their defaults
    steps: int  # the fidelity: optimizer steps, overrides train["steps"]
    seed: int  # seeds the model init, the batch order and the task data
    timeout_s: float | None = None  # bound on training + scoring; None = only train["time_limit_s"]


@dataclass(frozen=True)
class EvalResult:
    evaluation_id: int  # as in the request
    status: str  # "done" | "failed"
    metrics: dict[str, float]  # empty when failed
    error: str | None  # failure reason (first line) and, for unexpected errors, a traceback tail
    host: str  # hostname of the worker that ran it
    device: str  # e.g. "cpu (1 threads)" or "cuda: NVIDIA H100 80GB HBM3"
    wall_time_s: float  # the whole evaluation, data and model setup included
    weights: bytes | None = field(default=None, repr=False)  # safetensors of the trained state_dict

    @property
    def ok(self) -> bool:
        return self.status == "done"


@functools.lru_cache(maxsize=4)
def _cached_task_data(task_json: str, seed: int) -> TaskData:
    # Keyed by the canonical JSON of the task config: a long-lived worker generates each dataset once.
    return make_task(json.loads(task_json)).generate(seed)


def task_data(task: Task, seed: int) -> TaskData:
    """The task's data for `seed`, generated once per process for each (task config, seed)."""
    return _cached_task_data(json.dumps(task.to_dict(), sort_keys=True), seed)


def count_params(model: nn.Module) -> int:
    """Parameters of the network; a tied embedding/head matrix counts once."""
    return sum(p.numel() for p in model.parameters())


def state_dict_bytes(model: nn.Module) -> bytes:
    """The state_dict as safetensors bytes. Tied tensors are written under every name (each a
    copy), so `load_state_dict(strict=True)` works on a fresh model and re-ties them."""
    tensors = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in model.state_dict().items()}
    return save_safetensors(tensors)


def _is_oom(e: BaseException) -> bool:
    if isinstance(e, torch.OutOfMemoryError):
        return True
    text = str(e).lower()
    # CPU allocation failures are plain RuntimeErrors.
    return isinstance(e, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


def _first_line(e: BaseException) -> str:
    lines = [ln.strip() for ln in str(e).strip().splitlines() if ln.strip()]
    return lines[0] if lines else type(e).__name__


def failure_reason(e: BaseException) -> str:
    """One line saying what went wrong, then (for unexpected errors) the last few frames."""
    if isinstance(e, EvaluationFailed):
        return e.reason
    first = _first_line(e)
    if _is_oom(e):
        head = f"out of memory: {first}"
    else:
        head = type(e).__name__ if first == type(e).__name__ else f"{type(e).__name__}: {first}"
    frames = traceback.extract_tb(e.__traceback__)[-_TRACEBACK_FRAMES:]
    tail = [f"  at {f.filename.rsplit('/', 1)[-1]}:{f.lineno} in {f.name}: {(f.line or '').strip()}" for f in frames]
    return "\n".join([head, *tail])


def _build(spec: ArchSpec) -> nn.Module:
    from hybridnas.codegen import build_model  # imported here: codegen pulls in jinja2 and the renderer

    return build_model(spec)


#: Metric names every finished evaluation records (peak_memory_bytes only on CUDA devices).
METRICS: tuple[str, ...] = (
    "accuracy",
    "loss",
    "train_loss",
    "steps",
    "params",
    "train_tokens_per_s",
    "prefill_tokens_per_s",
    "peak_memory_bytes",
    "cost_params",
    "cost_flops_per_token",
    "cost_state_bytes",
    "cost_context_len",
)


def _cost_metrics(spec: ArchSpec) -> dict[str, float]:
    from hybridnas.space.cost import estimate_cost

    cost = estimate_cost(spec)
    return {
        "cost_params": float(cost.params),
        "cost_flops_per_token": float(cost.flops_per_token),
        "cost_state_bytes": float(cost.state_bytes),
        "cost_context_len": float(cost.context_len),
    }


def _run(request: EvalRequest, device: torch.device) -> tuple[dict[str, float], bytes]:
    # Bad requests fail with one line naming what was wrong, not a traceback into a parser.
    try:
        spec = ArchSpec.from_json(request.spec_json)
    except (ValueError, TypeError) as e:
        raise EvaluationFailed(f"invalid spec_json: {_first_line(e)}") from None
    try:
        task = make_task(request.task)
    except ValueError as e:
        raise EvaluationFailed(f"invalid task: {_first_line(e)}") from None
    if spec.vocab_size < task.vocab_size:
        raise EvaluationFailed(
            f"spec.vocab_size {spec.vocab_size} is smaller than the task's vocab_size {task.vocab_size}"
        )
    train_dict = {**request.train, "steps": request.steps}
    if request.timeout_s is not None:
        limit = train_dict.get("time_limit_s")
        train_dict["time_limit_s"] = request.timeout_s if limit is None else min(limit, request.timeout_s)
    try:
        cfg = TrainConfig.from_dict(train_dict)
    except ValueError as e:
        raise EvaluationFailed(f"invalid train config: {_first_line(e)}") from None
    data = task_data(task, request.seed)

    torch.manual_seed(request.seed)  # the initial weights
    model = _build(spec).to(device)
    reset_peak_memory(device)
    result = train(model, data, cfg, request.seed)
    metrics: dict[str, float] = {
        "accuracy": result.accuracy,
        "loss": result.loss,
        "train_loss": result.train_loss,
        "steps": float(result.steps),
        "params": float(count_params(model)),
        "train_tokens_per_s": result.tokens_per_s,
    }
    peak = peak_memory_bytes(device)
    if peak is not None:
        metrics["peak_memory_bytes"] = float(peak)
    metrics.update(_cost_metrics(spec))
    metrics["prefill_tokens_per_s"] = measure_prefill(
        model, task.vocab_size, task.seq_len, batch_size=_PREFILL_BATCH, repeats=_PREFILL_REPEATS
    )
    bad = sorted(k for k, v in metrics.items() if not math.isfinite(v))
    if bad:
        raise EvaluationFailed(f"metric {bad[0]} is not finite")
    return metrics, state_dict_bytes(model)


def evaluate(request: EvalRequest, device: torch.device | str | None = None) -> EvalResult:
    """Build, train and score one candidate. Never raises: failures come back as status "failed"."""
    t0 = time.perf_counter()
    host = socket.gethostname()
    dev = torch.device(device) if device is not None else default_device()
    try:
        metrics, weights = _run(request, dev)
        status, error = "done", None
    except Exception as e:  # noqa: BLE001 - every failure is a result, never a crash of the worker
        metrics, weights = {}, None
        status, error = "failed", failure_reason(e)
    finally:
        # Free the failed (or finished) model before the next request on a long-lived worker.
        gc.collect()
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    return EvalResult(
        evaluation_id=request.evaluation_id,
        status=status,
        metrics=metrics,
        error=error,
        host=host,
        device=describe_device(dev),
        wall_time_s=time.perf_counter() - t0,
        weights=weights,
    )


__all__ = [
    "EvalRequest",
    "EvalResult",
    "count_params",
    "evaluate",
    "failure_reason",
    "state_dict_bytes",
    "task_data",
]

"""One evaluation: (spec, task, fidelity, seed) -> metrics, weights, or a recorded failure.

The steps: build the candidate, check it (causal, decode equals forward; `hybridnas.workers.checks`),
train and score it on the task (on each member of a task suite, a fresh model each), then measure its
hardware cost on this worker's device and add the analytic cost model's figures.

`evaluate` never raises. A candidate that fails a check comes back as `status="invalid"` with the
check's reason; one that diverges, runs out of memory, exceeds its time limit or breaks in any other
way as `status="failed"` with a one-line reason (plus a short traceback tail for unexpected errors),
so a campaign records it and goes on.
"""

from __future__ import annotations

import dataclasses
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
from hybridnas.workers.checks import CheckFailed, check_model
from hybridnas.workers.hardware import (
    MeasureConfig,
    default_device,
    describe_device,
    measure_hardware,
    peak_memory_bytes,
    reset_peak_memory,
)
from hybridnas.workers.suite import SuiteMember, TaskSuite, build_task, suite_members
from hybridnas.workers.tasks import Task, TaskData, make_task
from hybridnas.workers.trainer import EvaluationFailed, TrainConfig, TrainResult, train

_TRACEBACK_FRAMES = 3  # frames kept in the error text of an unexpected exception
_CHECK_SEQ_LEN = 24  # tokens per sequence in the pre-training checks (longer than any conv width)
_CHECK_SEQ_LEN_MAX = 80  # the longest check sequence, for specs with a sliding window


@dataclass(frozen=True)
class EvalRequest:
    evaluation_id: int  # the store's id for this evaluation; echoed in the result
    spec_json: str  # ArchSpec.to_json() of the candidate
    task: dict[str, Any]  # task or suite config, including "name" (see hybridnas.workers.suite.build_task)
    train: dict[str, Any]  # TrainConfig fields; missing ones take their defaults
    steps: int  # the fidelity: optimizer steps, overrides train["steps"]
    seed: int  # seeds the model init, the batch order and the task data
    timeout_s: float | None = None  # bound on training + scoring (a suite: all members); None: train["time_limit_s"]
    measure: dict[str, Any] = field(default_factory=dict)  # MeasureConfig fields; missing ones take defaults
    checks: bool = True  # check causality and decode equivalence before training; a failure is "invalid"


@dataclass(frozen=True)
class EvalResult:
    evaluation_id: int  # as in the request
    status: str  # "done" | "failed" | "invalid" (the candidate failed a pre-training check)
    metrics: dict[str, float]  # empty unless done
    error: str | None  # failure or check reason (first line) and, for unexpected errors, a traceback tail
    host: str  # hostname of the worker that ran it
    device: str  # e.g. "cpu (1 threads)" or "cuda: NVIDIA H100 80GB HBM3"
    wall_time_s: float  # the whole evaluation, data and model setup included
    weights: bytes | None = field(default=None, repr=False)  # safetensors of the trained state_dict

    @property
    def ok(self) -> bool:
        return self.status == "done"


@functools.lru_cache(maxsize=8)
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


def _build_module(spec: ArchSpec) -> Any:
    from hybridnas.codegen import build_module  # imported here: codegen pulls in jinja2 and the renderer

    return build_module(spec)


#: Metric names a finished evaluation records at the top level. Only on CUDA: peak_memory_bytes.
#: Only for tasks that define them (`extra_metrics`): bits_per_byte. A suite adds, per member key,
#: "<key>.accuracy", "<key>.loss", "<key>.train_loss" and "<key>.<extra metric>".
METRICS: tuple[str, ...] = (
    "accuracy",  # test accuracy over target positions (a suite: weight-averaged over its members)
    "loss",  # test cross-entropy in nats (a suite: weight-averaged)
    "train_loss",  # mean training loss over the last tenth of the steps (a suite: weight-averaged)
    "bits_per_byte",  # byte_lm: test loss in bits per byte
    "steps",  # optimizer steps taken (per member for a suite)
    "params",  # parameters of the built network
    "train_tokens_per_s",  # training throughput on this device (a suite: all tokens / all training time)
    "prefill_tokens_per_s",  # no-grad forward throughput at measure.context_len, measure.batch_size
    "decode_tokens_per_s",  # one token per step through the cache, after a measure.prompt_len prefill
    "prefill_latency_ms",  # one prefill of measure.batch_size x measure.context_len tokens
    "decode_latency_ms",  # one decode step of measure.batch_size sequences
    "prefill_peak_memory_bytes",  # weights + peak extra bytes of one prefill forward (CPU and CUDA)
    "peak_memory_bytes",  # CUDA only: peak bytes allocated while training (the largest over suite members)
    "cost_params",  # analytic cost model at measure.context_len: parameters,
    "cost_flops_per_token",  # forward FLOPs per token,
    "cost_state_bytes",  # decode state (KV cache, recurrent and conv states) of one sequence,
    "cost_context_len",  # and the context length those figures are for
)


def _cost_metrics(spec: ArchSpec, context_len: int) -> dict[str, float]:
    from hybridnas.space.cost import estimate_cost

    cost = estimate_cost(spec, context_len=context_len)
    return {
        "cost_params": float(cost.params),
        "cost_flops_per_token": float(cost.flops_per_token),
        "cost_state_bytes": float(cost.state_bytes),
        "cost_context_len": float(cost.context_len),
    }


def _check_seq_len(spec: ArchSpec) -> int:
    """Long enough that a sliding window is exceeded (up to a cap), so its cache truncation is checked."""
    windows = [layer.window for layer in spec.layers if "window" in layer.definition.options]
    return max(_CHECK_SEQ_LEN, min(max(windows, default=0) + 8, _CHECK_SEQ_LEN_MAX))


def _extra_metrics(task: Task, result: TrainResult) -> dict[str, float]:
    """The task's own metrics derived from its test loss and accuracy (e.g. byte_lm's bits_per_byte)."""
    fn = getattr(task, "extra_metrics", None)
    if fn is None:
        return {}
    return {str(k): float(v) for k, v in fn(result.loss, result.accuracy).items()}


def _weighted(values: list[tuple[float, float]]) -> float:
    """Weighted mean of (weight, value) pairs."""
    return sum(w * v for w, v in values) / sum(w for w, _ in values)


#: One trained member: the member, its training result, its task's extra metrics.
_Scored = tuple[SuiteMember, TrainResult, dict[str, float]]


def _score_metrics(task: Task | TaskSuite, results: list[_Scored]) -> dict[str, float]:
    """accuracy, loss, train_loss, steps, train_tokens_per_s and extras; per member too for a suite."""
    if not isinstance(task, TaskSuite):
        _, r, extra = results[0]
        return {
            "accuracy": r.accuracy,
            "loss": r.loss,
            "train_loss": r.train_loss,
            "steps": float(r.steps),
            "train_tokens_per_s": r.tokens_per_s,
            **extra,
        }
    metrics: dict[str, float] = {}
    for m, r, extra in results:
        metrics.update({f"{m.key}.accuracy": r.accuracy, f"{m.key}.loss": r.loss})
        metrics[f"{m.key}.train_loss"] = r.train_loss
        metrics.update({f"{m.key}.{k}": v for k, v in extra.items()})
    for name in ("accuracy", "loss", "train_loss"):
        metrics[name] = _weighted([(m.weight, getattr(r, name)) for m, r, _ in results])
    # An extra metric is averaged only when every member defines it (a mean over some members misleads).
    shared = set.intersection(*(set(extra) for _, _, extra in results))
    for name in sorted(shared):
        metrics[name] = _weighted([(m.weight, extra[name]) for m, _, extra in results])
    # All training tokens over all training time; tokens per member = steps * batch * seq_len, and
    # the batch size, common to all members, cancels.
    tokens = [r.steps * m.task.seq_len for m, r, _ in results]
    seconds = sum(n / r.tokens_per_s for n, (_, r, _) in zip(tokens, results))
    metrics["steps"] = float(results[0][1].steps)
    metrics["train_tokens_per_s"] = sum(tokens) / max(seconds, 1e-12)
    return metrics


def _parse(request: EvalRequest) -> tuple[ArchSpec, Task | TaskSuite, TrainConfig, MeasureConfig]:
    """The request's parts; a bad one fails with one line naming what was wrong, not a traceback."""
    try:
        spec = ArchSpec.from_json(request.spec_json)
    except (ValueError, TypeError) as e:
        raise EvaluationFailed(f"invalid spec_json: {_first_line(e)}") from None
    try:
        task = build_task(request.task)
    except ValueError as e:
        raise EvaluationFailed(f"invalid task: {_first_line(e)}") from None
    if spec.vocab_size < task.vocab_size:
        raise EvaluationFailed(
            f"spec.vocab_size {spec.vocab_size} is smaller than the task's vocab_size {task.vocab_size}"
        )
    train_dict = {**request.train, "steps": request.steps}
    try:
        cfg = TrainConfig.from_dict(train_dict)
    except ValueError as e:
        raise EvaluationFailed(f"invalid train config: {_first_line(e)}") from None
    try:
        measure = MeasureConfig.from_dict(request.measure)
    except ValueError as e:
        raise EvaluationFailed(f"invalid measure config: {_first_line(e)}") from None
    t = request.timeout_s
    if t is not None and (isinstance(t, bool) or not isinstance(t, (int, float)) or not t > 0):
        raise EvaluationFailed(f"invalid timeout_s: got {t!r}, must be a number > 0 or None")
    if not isinstance(request.checks, bool):
        raise EvaluationFailed(f"invalid checks: got {request.checks!r}, must be true or false")
    return spec, task, cfg, measure


def _member_config(cfg: TrainConfig, timeout_s: float | None, deadline: float | None) -> TrainConfig:
    """The member's TrainConfig with its time limit: train.time_limit_s, cut to what the request has left."""
    if timeout_s is None:
        return cfg
    left = timeout_s if deadline is None else deadline - time.perf_counter()
    limit = left if cfg.time_limit_s is None else min(cfg.time_limit_s, left)
    return dataclasses.replace(cfg, time_limit_s=limit)


def _run(request: EvalRequest, device: torch.device) -> tuple[dict[str, float], bytes]:
    spec, task, cfg, measure = _parse(request)
    module = _build_module(spec)  # rendered once; every member trains a fresh Model() of it

    def fresh_model() -> nn.Module:
        torch.manual_seed(request.seed)  # the initial weights: the same for every member
        return module.Model()

    model = fresh_model()
    if request.checks:
        check_model(model, spec.vocab_size, seq_len=_check_seq_len(spec), seed=request.seed)  # raises CheckFailed

    members = suite_members(task)
    main = task.main_member() if isinstance(task, TaskSuite) else members[0]
    results: list[_Scored] = []
    kept: nn.Module | None = None  # the main member's trained model
    peak: int | None = None
    deadline: float | None = None  # set when the first member starts: timeout_s bounds them all together
    for i, member in enumerate(members):
        data = task_data(member.task, request.seed)
        if i > 0:
            model = fresh_model()
        if deadline is not None and time.perf_counter() >= deadline:
            raise EvaluationFailed(f"time limit of {request.timeout_s:g}s exceeded before training {member.key}")
        member_cfg = _member_config(cfg, request.timeout_s, deadline)
        if request.timeout_s is not None and deadline is None:
            deadline = time.perf_counter() + request.timeout_s
        model = model.to(device)
        reset_peak_memory(device)
        try:
            result = train(model, data, member_cfg, request.seed)
        except EvaluationFailed as e:
            if len(members) == 1:
                raise
            raise EvaluationFailed(f"{member.key}: {e.reason}") from None  # which member failed
        member_peak = peak_memory_bytes(device)
        if member_peak is not None:
            peak = member_peak if peak is None else max(peak, member_peak)
        results.append((member, result, _extra_metrics(member.task, result)))
        if member is main:
            kept = model.to("cpu") if i < len(members) - 1 else model  # off the device while others train
        del model

    assert kept is not None
    kept = kept.to(device)
    metrics = _score_metrics(task, results)
    metrics["params"] = float(count_params(kept))
    if peak is not None:
        metrics["peak_memory_bytes"] = float(peak)
    metrics.update(_cost_metrics(spec, measure.context_len))
    metrics.update(measure_hardware(kept, task.vocab_size, measure))
    bad = sorted(k for k, v in metrics.items() if not math.isfinite(v))
    if bad:
        raise EvaluationFailed(f"metric {bad[0]} is not finite")
    return metrics, state_dict_bytes(kept)


def evaluate(request: EvalRequest, device: torch.device | str | None = None) -> EvalResult:
    """Check, train, score and measure one candidate on `device` (default: this worker's GPU, else CPU).

    Never raises: a failed check comes back as status "invalid", every other failure as "failed".
    For a task suite, a fresh model (same spec, same seed) is trained on each member; `accuracy`,
    `loss` and `train_loss` are the weight-averaged member values, each member's are recorded as
    "<key>.accuracy" etc., and the returned weights are those of the member with the largest weight
    (the first one on ties), which is also the model whose hardware cost is measured.
    """
    t0 = time.perf_counter()
    host = socket.gethostname()
    dev = torch.device(device) if device is not None else default_device()
    try:
        metrics, weights = _run(request, dev)
        status, error = "done", None
    except CheckFailed as e:
        metrics, weights = {}, None
        status, error = "invalid", e.reason
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
    "METRICS",
    "EvalRequest",
    "EvalResult",
    "count_params",
    "evaluate",
    "failure_reason",
    "state_dict_bytes",
    "task_data",
]

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
from hybridnas.workers.checks import CheckFailed, check_init, check_model, residual_writes
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
from hybridnas.workers.trainer import Deadline, EvaluationFailed, FitResult, TrainConfig, fit, precision_label

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
    timeout_s: float | None = None  # bound on training + scoring (a suite: all members, every lr); None: no limit
    measure: dict[str, Any] = field(default_factory=dict)  # MeasureConfig fields; missing ones take defaults
    checks: bool = True  # check causality, decode equivalence and init parity before training; a failure is "invalid"


@dataclass(frozen=True)
class EvalResult:
    evaluation_id: int  # as in the request
    status: str  # "done" | "failed" | "invalid" (the candidate failed a pre-training check)
    metrics: dict[str, float]  # empty unless done
    error: str | None  # failure or check reason (first line) and, for unexpected errors, a traceback tail
    host: str  # hostname of the worker that ran it
    device: str  # e.g. "cpu (1 threads), fp32, chunk kernels" or "cuda: NVIDIA H100 80GB HBM3, bf16 autocast, triton kernels"
    wall_time_s: float  # the whole evaluation, data and model setup included
    weights: bytes | None = field(default=None, repr=False)  # safetensors of the trained state_dict
    worker: str | None = None  # the process that ran it, as its executor labels it: "<ray node id[:8]>/<pid>", "inprocess/<pid>"

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
    "val_accuracy",  # accuracy on the validation split carved from the training examples
    "val_loss",  # cross-entropy on that split
    "train_loss",  # mean training loss over the last tenth of the steps (a suite: weight-averaged)
    "lr",  # the learning rate kept (the best on validation when training.lr is a list)
    "steps_to_target",  # with training.target: steps until validation reached it (twice the cap if never)
    "bits_per_byte",  # byte_lm: test loss in bits per byte
    "steps",  # optimizer steps taken (per member for a suite)
    "params",  # parameters of the built network
    "init_write_ratio",  # at init, the largest block write into the residual stream / the embedding's RMS
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


def _member_metrics(task: Task, fit: FitResult, cfg: TrainConfig) -> dict[str, float]:
    """What one task's kept run scored: test and validation figures, the chosen rate, the sweep."""
    run = fit.kept
    metrics = {"accuracy": fit.accuracy, "loss": fit.loss, "train_loss": run.train_loss, "steps": float(run.steps)}
    if math.isfinite(run.val_accuracy):
        metrics |= {"val_accuracy": run.val_accuracy, "val_loss": run.val_loss}
    metrics["lr"] = run.lr
    if len(fit.runs) > 1:
        metrics |= {f"val_accuracy@lr={r.lr:g}": r.val_accuracy for r in fit.runs}
    if cfg.target is not None:
        # A run that never reached the target counts twice the cap (PAR-2), behind every run that did.
        metrics["steps_to_target"] = float(run.steps_to_target if run.steps_to_target is not None else 2 * cfg.steps)
    extra = getattr(task, "extra_metrics", None)  # the task's own figures, e.g. byte_lm's bits_per_byte
    if extra is not None:
        metrics |= {str(k): float(v) for k, v in extra(fit.loss, fit.accuracy).items()}
    return metrics


def _weighted(values: list[tuple[float, float]]) -> float:
    """Weighted mean of (weight, value) pairs."""
    return sum(w * v for w, v in values) / sum(w for w, _ in values)


#: One trained member: the member, its sweep's result, its metrics.
_Scored = tuple[SuiteMember, FitResult, dict[str, float]]
#: Member metrics a suite does not average (a mean learning rate or sweep entry means nothing).
_NOT_AVERAGED = ("lr", "val_accuracy@")


def _score_metrics(task: Task | TaskSuite, results: list[_Scored], batch_size: int) -> dict[str, float]:
    """The metrics of a task, or of a suite: each member's as "<key>.<metric>", and the weighted mean
    of every metric all members share; plus the training throughput over every run."""
    runs = [(m.task.seq_len, r) for m, fit, _ in results for r in fit.runs]
    tokens = sum(r.steps * batch_size * seq_len for seq_len, r in runs)
    throughput = tokens / max(sum(r.train_time_s for _, r in runs), 1e-12)
    if not isinstance(task, TaskSuite):
        return {**results[0][2], "train_tokens_per_s": throughput}
    metrics: dict[str, float] = {}
    for m, _, own in results:
        metrics |= {f"{m.key}.{k}": v for k, v in own.items()}
    shared = set.intersection(*(set(own) for _, _, own in results))
    for name in sorted(n for n in shared if not n.startswith(_NOT_AVERAGED)):
        metrics[name] = _weighted([(m.weight, own[name]) for m, _, own in results])
    metrics["train_tokens_per_s"] = throughput
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


def device_label(device: torch.device, cfg: TrainConfig) -> str:
    """What ran an evaluation: the device, its numerics and its kernels, e.g.
    "cuda: NVIDIA H100 80GB HBM3, bf16 autocast, triton kernels" or "cpu (1 threads), fp32, chunk kernels"."""
    from hybridnas.kernels.dispatch import resolve_backend

    return f"{describe_device(device)}, {precision_label(cfg, device)}, {resolve_backend('auto', device)} kernels"


def _run(request: EvalRequest, device: torch.device) -> tuple[dict[str, float], bytes, str]:
    spec, task, cfg, measure = _parse(request)
    module = _build_module(spec)  # rendered once; every member trains a fresh Model() of it

    def fresh_model() -> nn.Module:
        torch.manual_seed(request.seed)  # the initial weights: the same for every member
        return module.Model()

    model = fresh_model()
    if request.checks:
        check_model(model, spec.vocab_size, seq_len=_check_seq_len(spec), seed=request.seed)  # raises CheckFailed
        init_write = check_init(model, spec.vocab_size, seed=request.seed)  # raises CheckFailed
    else:
        init_write = max(residual_writes(model, spec.vocab_size, seed=request.seed))  # recorded, not enforced

    members = suite_members(task)
    main = task.main_member() if isinstance(task, TaskSuite) else members[0]
    results: list[_Scored] = []
    kept: nn.Module | None = None  # the main member's trained model
    peak: int | None = None
    # timeout_s bounds every member (and every learning rate) together.
    deadline = None if request.timeout_s is None else Deadline(time.perf_counter() + request.timeout_s, request.timeout_s)
    for i, member in enumerate(members):
        data = task_data(member.task, request.seed)
        if deadline is not None and deadline.passed():
            raise EvaluationFailed(f"time limit of {request.timeout_s:g}s exceeded before training {member.key}")
        reset_peak_memory(device)
        try:
            trained, result = fit(lambda: fresh_model().to(device), data, cfg, request.seed, deadline)
        except EvaluationFailed as e:
            if len(members) == 1:
                raise
            raise EvaluationFailed(f"{member.key}: {e.reason}") from None  # which member failed
        member_peak = peak_memory_bytes(device)
        if member_peak is not None:
            peak = member_peak if peak is None else max(peak, member_peak)
        results.append((member, result, _member_metrics(member.task, result, cfg)))
        if member is main:
            kept = trained.to("cpu") if i < len(members) - 1 else trained  # off the device while others train
        del trained

    assert kept is not None
    kept = kept.to(device)
    metrics = _score_metrics(task, results, cfg.batch_size)
    metrics["params"] = float(count_params(kept))
    metrics["init_write_ratio"] = init_write
    if peak is not None:
        metrics["peak_memory_bytes"] = float(peak)
    metrics.update(_cost_metrics(spec, measure.context_len))
    metrics.update(measure_hardware(kept, task.vocab_size, measure))
    bad = sorted(k for k, v in metrics.items() if not math.isfinite(v))
    if bad:
        raise EvaluationFailed(f"metric {bad[0]} is not finite")
    return metrics, state_dict_bytes(kept), device_label(device, cfg)


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
    label = describe_device(dev)  # refined once the request's training config is read
    try:
        metrics, weights, label = _run(request, dev)
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
        device=label,
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

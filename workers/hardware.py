"""Hardware measurements taken on the worker's own device: which device, prefill and decode speed, peak memory.

Every figure is recorded next to `describe_device`, so CPU and GPU numbers are never compared as one.
Peak memory means the same thing on every device: the bytes of the model's parameters and buffers
plus the most bytes torch held at once, above what it held before, during one no-grad prefill forward.
On CUDA that comes from the caching allocator's statistics (`torch.cuda.max_memory_allocated`); on CPU
from the profiler's allocation events (the autograd profiler with `profile_memory=True`), replayed in order.
"""

from __future__ import annotations

import contextlib
import math
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields
from typing import Any

import torch
from torch import nn


#: Upper bounds of MeasureConfig's fields: beyond them a measurement only exhausts memory or time on the worker.
MEASURE_LIMITS: dict[str, int] = {
    "context_len": 1 << 20,
    "batch_size": 1 << 16,
    "prompt_len": 1 << 20,
    "decode_tokens": 1 << 20,
    "repeats": 1000,
    "warmup": 1000,
}


@dataclass(frozen=True)
class MeasureConfig:
    """What the worker measures after training (the `measure:` block of a request). Defaults suit a CPU."""

    context_len: int = 512  # tokens per sequence for prefill speed, prefill peak memory and the cost model
    batch_size: int = 4  # sequences per timed forward pass and per decode step
    prompt_len: int = 32  # tokens prefilled (untimed) before the decode timing starts
    decode_tokens: int = 16  # single-token decode steps timed per repeat
    repeats: int = 3  # timed repetitions; the median is reported
    warmup: int = 1  # untimed repetitions first (allocation, kernel compilation)

    def __post_init__(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            lo, hi = (0 if f.name == "warmup" else 1), MEASURE_LIMITS[f.name]
            if not isinstance(v, int) or isinstance(v, bool) or v < lo:
                raise ValueError(f"{f.name}: got {v!r}, must be an integer >= {lo}")
            if v > hi:
                raise ValueError(f"{f.name}: got {v!r}, must be an integer <= {hi}")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> MeasureConfig:
        """From the `measure:` block of a request; errors name the field as `measure.<field>`."""
        if not isinstance(d, dict):
            raise ValueError(f"measure: expected a mapping, got {type(d).__name__}")
        known = [f.name for f in fields(cls)]
        unknown = sorted(set(d) - set(known))
        if unknown:
            raise ValueError(f"measure.{unknown[0]}: unknown option; allowed: {', '.join(known)}")
        try:
            return cls(**d)
        except ValueError as e:
            raise ValueError(f"measure.{e}") from None


def default_device() -> torch.device:
    """The device a worker trains on: its (first visible) GPU when it has one, else the CPU."""
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def describe_device(device: torch.device | str) -> str:
    """Short label recorded with every evaluation, e.g. 'cpu (2 threads)' or 'cuda: NVIDIA H100 80GB HBM3'."""
    device = torch.device(device)
    if device.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(device)}"
    return f"{device.type} ({torch.get_num_threads()} threads)"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _random_ids(vocab_size: int, batch_size: int, seq_len: int, device: torch.device) -> torch.Tensor:
    # A fixed generator so a measurement never moves the caller's global RNG.
    gen = torch.Generator().manual_seed(0)
    return torch.randint(vocab_size, (batch_size, seq_len), generator=gen).to(device)  # [B, T]


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def _check_repeats(repeats: int) -> None:
    if repeats < 1:
        raise ValueError(f"repeats: got {repeats!r}, must be >= 1")


@torch.no_grad()
def measure_prefill(
    model: nn.Module, vocab_size: int, seq_len: int, batch_size: int = 8, repeats: int = 5, warmup: int = 1
) -> float:
    """Tokens per second of a no-grad forward over `batch_size` random sequences of `seq_len`.

    The median of `repeats` timed passes after `warmup` untimed ones (first calls pay for
    allocation and kernel compilation). Runs on the device of the model's parameters.
    """
    _check_repeats(repeats)
    device = _device(model)
    x = _random_ids(vocab_size, batch_size, seq_len, device)  # [B, T]
    with _eval_mode(model):
        for _ in range(warmup):
            model(x)
        _sync(device)
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            model(x)
            _sync(device)
            times.append(time.perf_counter() - t0)
    return batch_size * seq_len / max(statistics.median(times), 1e-9)


def _cached_forward(model: nn.Module, ids: torch.Tensor, cache: dict | None) -> tuple[torch.Tensor, dict]:
    out = model(ids, cache=cache, use_cache=True)
    if not (isinstance(out, tuple) and len(out) == 2):
        raise TypeError("the model must return (logits, cache) when called with use_cache=True")
    return out


@torch.no_grad()
def measure_decode(
    model: nn.Module,
    vocab_size: int,
    prompt_len: int = 32,
    decode_tokens: int = 16,
    batch_size: int = 4,
    repeats: int = 3,
    warmup: int = 1,
) -> float:
    """Tokens per second of greedy decoding, one token per step, through the model's cache.

    Each repeat prefills `prompt_len` random tokens (untimed), then times `decode_tokens` calls of
    `model(next_ids [B, 1], cache=cache, use_cache=True)`: the recurrent step update for linear
    mixers and the KV cache for attention layers. The median over `repeats` after `warmup`.
    """
    _check_repeats(repeats)
    if prompt_len < 1 or decode_tokens < 1:
        raise ValueError(f"prompt_len and decode_tokens: got {prompt_len!r}, {decode_tokens!r}; both must be >= 1")
    device = _device(model)
    prompt = _random_ids(vocab_size, batch_size, prompt_len, device)  # [B, P]

    def once() -> float:
        logits, cache = _cached_forward(model, prompt, None)
        nxt = logits[:, -1:].argmax(-1)  # [B, 1]
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(decode_tokens):
            logits, cache = _cached_forward(model, nxt, cache)
            nxt = logits[:, -1:].argmax(-1)  # [B, 1]
        _sync(device)
        return time.perf_counter() - t0

    with _eval_mode(model):
        for _ in range(warmup):
            once()
        times = [once() for _ in range(repeats)]
    return batch_size * decode_tokens / max(statistics.median(times), 1e-9)


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """Silence file descriptor 2: the profiler's C++ side logs a line when it starts and stops."""
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def cpu_peak_bytes(fn: Callable[[], Any]) -> int:
    """The most bytes held at once by tensors that `fn()` allocates on the CPU, above the start.

    Replays the profiler's allocation and free events (`profile_memory=True`) in time order; memory
    that `fn` frees but did not allocate counts as a drop. Covers torch's CPU allocator on the
    calling thread (every tensor an op returns or keeps as a temporary), not memory that libraries
    such as oneDNN or OpenMP hold outside it.
    """
    # The autograd profiler directly: torch.profiler.profile imports torch._inductor on first use (seconds).
    from torch.autograd.profiler import profile

    prof = profile(use_kineto=True, use_cpu=True, profile_memory=True)
    with _quiet_stderr():
        prof.__enter__()
    try:
        result = fn()
    finally:
        with _quiet_stderr():
            prof.__exit__(None, None, None)
    del result  # freed after the profile: the output counts while it lived, as in the forward itself
    events = [
        e
        for e in prof.kineto_results.events()
        if e.name() == "[memory]" and e.device_type() == torch._C._autograd.DeviceType.CPU
    ]
    held = peak = 0
    for e in sorted(events, key=lambda e: e.start_ns()):
        held += e.nbytes()
        peak = max(peak, held)
    return peak


def model_bytes(model: nn.Module) -> int:
    """Bytes of the model's parameters and buffers (a tied weight counts once)."""
    tensors = {id(t): t for t in [*model.parameters(), *model.buffers()]}
    return sum(t.numel() * t.element_size() for t in tensors.values())


@torch.no_grad()
def measure_peak_memory(model: nn.Module, vocab_size: int, seq_len: int, batch_size: int = 4) -> int | None:
    """Bytes one no-grad forward over `batch_size` x `seq_len` random tokens needs: the model's own
    parameters and buffers plus the peak of what the forward allocates on top of them.

    CUDA: `max_memory_allocated` after a reset, minus what was allocated before. CPU: the profiler's
    allocation events (`cpu_peak_bytes`). Other devices: None (not measured).
    """
    device = _device(model)
    if device.type not in ("cpu", "cuda"):
        return None
    x = _random_ids(vocab_size, batch_size, seq_len, device)  # [B, T]
    with _eval_mode(model):
        model(x)  # warm-up: lazy initialization and kernel compilation are not the model's memory
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
            before = torch.cuda.memory_allocated(device)
            model(x)
            torch.cuda.synchronize(device)
            extra = torch.cuda.max_memory_allocated(device) - before
        else:
            extra = cpu_peak_bytes(lambda: model(x))
    return model_bytes(model) + int(extra)


def measure_hardware(model: nn.Module, vocab_size: int, cfg: MeasureConfig) -> dict[str, float]:
    """Every measured hardware metric of `model` on its own device, as recorded with an evaluation:
    prefill_tokens_per_s, decode_tokens_per_s, their latencies (prefill_latency_ms, decode_latency_ms)
    and (CPU and CUDA) prefill_peak_memory_bytes."""
    metrics = {
        "prefill_tokens_per_s": measure_prefill(
            model, vocab_size, cfg.context_len, batch_size=cfg.batch_size, repeats=cfg.repeats, warmup=cfg.warmup
        ),
        "decode_tokens_per_s": measure_decode(
            model,
            vocab_size,
            prompt_len=cfg.prompt_len,
            decode_tokens=cfg.decode_tokens,
            batch_size=cfg.batch_size,
            repeats=cfg.repeats,
            warmup=cfg.warmup,
        ),
    }
    # Latencies, for objectives that read more naturally as "lower is better": one batch's prefill of
    # context_len tokens, and one decode step of the batch.
    metrics["prefill_latency_ms"] = 1000.0 * cfg.batch_size * cfg.context_len / metrics["prefill_tokens_per_s"]
    metrics["decode_latency_ms"] = 1000.0 * cfg.batch_size / metrics["decode_tokens_per_s"]
    peak = measure_peak_memory(model, vocab_size, cfg.context_len, batch_size=cfg.batch_size)
    if peak is not None:
        metrics["prefill_peak_memory_bytes"] = float(peak)
    if not all(math.isfinite(v) for v in metrics.values()):
        raise ValueError(f"a hardware measurement is not finite: {metrics}")
    return metrics


def cpu_model() -> str:
    """The host CPU's model name (from /proc/cpuinfo on Linux), for benchmark and table headers."""
    import platform
    from pathlib import Path

    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_bytes(device: torch.device) -> int | None:
    """Peak bytes allocated by torch on a GPU since the last reset; None on CPU (no per-run figure)."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return None


__all__ = [
    "MEASURE_LIMITS",
    "MeasureConfig",
    "cpu_model",
    "cpu_peak_bytes",
    "default_device",
    "describe_device",
    "measure_decode",
    "measure_hardware",
    "measure_peak_memory",
    "measure_prefill",
    "model_bytes",
    "peak_memory_bytes",
    "reset_peak_memory",
]

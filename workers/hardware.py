"""Hardware measurements taken on the worker's own device: which device, prefill speed, peak memory."""

from __future__ import annotations

import statistics
import time

import torch
from torch import nn


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


@torch.no_grad()
def measure_prefill(
    model: nn.Module, vocab_size: int, seq_len: int, batch_size: int = 8, repeats: int = 5, warmup: int = 1
) -> float:
    """Tokens per second of a no-grad forward over `batch_size` random sequences of `seq_len`.

    The median of `repeats` timed passes after `warmup` untimed ones (first calls pay for
    allocation and kernel compilation). Runs on the device of the model's parameters.
    """
    if repeats < 1:
        raise ValueError(f"repeats: got {repeats!r}, must be >= 1")
    device = next(model.parameters()).device
    # A fixed generator so the measurement does not move the global RNG of the caller.
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(vocab_size, (batch_size, seq_len), generator=gen).to(device)  # [B, T]
    was_training = model.training
    model.eval()
    try:
        for _ in range(warmup):
            model(x)
        _sync(device)
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            model(x)
            _sync(device)
            times.append(time.perf_counter() - t0)
    finally:
        model.train(was_training)
    return batch_size * seq_len / max(statistics.median(times), 1e-9)


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_bytes(device: torch.device) -> int | None:
    """Peak bytes allocated by torch on a GPU since the last reset; None on CPU (no per-run figure)."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return None


__all__ = ["default_device", "describe_device", "measure_prefill", "peak_memory_bytes", "reset_peak_memory"]

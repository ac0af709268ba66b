"""Hardware measurement: what each figure runs, CPU peak memory from the profiler, the measure config."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
from torch import nn

from hybridnas.codegen import build_model
from hybridnas.space import ArchSpec, LayerSpec
from hybridnas.workers.hardware import (
    cpu_model,
    MeasureConfig,
    cpu_peak_bytes,
    describe_device,
    measure_decode,
    measure_hardware,
    measure_peak_memory,
    measure_prefill,
    model_bytes,
)

SPEC = ArchSpec(
    d_model=16,
    layers=(LayerSpec("gated_deltanet", n_heads=2, short_conv=True), LayerSpec("attention", n_heads=2)),
    vocab_size=11,
)


@pytest.fixture(autouse=True)
def _one_thread(one_thread: None) -> None:
    """Single-threaded like a one-CPU worker."""


def _model() -> nn.Module:
    torch.manual_seed(0)
    return build_model(SPEC)


def _record_calls(model: nn.Module) -> list[tuple[tuple[int, ...], bool]]:
    """(input shape, whether a cache was passed in) of every top-level forward call of `model`."""
    calls: list[tuple[tuple[int, ...], bool]] = []

    def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
        calls.append((tuple(args[0].shape), kwargs.get("cache") is not None))

    model.register_forward_pre_hook(hook, with_kwargs=True)
    return calls


def test_cpu_peak_bytes_is_a_peak_not_a_total() -> None:
    def fn() -> torch.Tensor:
        a = torch.empty(1_000_000)  # 4 MB, freed before the next two
        a.fill_(1.0)
        del a
        b = torch.empty(2_000_000)  # 8 MB
        c = torch.empty(500_000)  # 2 MB, alive together with b
        b.fill_(0.0), c.fill_(0.0)
        return torch.ones(4)  # 16 bytes, still alive when fn returns

    peak = cpu_peak_bytes(fn)
    assert 10_000_016 <= peak < 10_000_016 + 4096, peak


def test_cpu_peak_bytes_sees_temporaries_inside_ops() -> None:
    x = torch.randn(500, 500)
    # The 1 MB product exists only inside the expression; the result is one scalar.
    peak = cpu_peak_bytes(lambda: (x @ x).sum())
    assert 1_000_000 <= peak < 1_000_000 + 4096, peak
    assert cpu_peak_bytes(lambda: None) == 0


def test_peak_memory_holds_the_weights_and_grows_with_context() -> None:
    model = _model()
    assert model_bytes(model) == 4 * sum(p.numel() for p in model.parameters())  # tied embedding once
    short = measure_peak_memory(model, 11, seq_len=64, batch_size=2)
    long = measure_peak_memory(model, 11, seq_len=512, batch_size=2)
    assert short is not None and long is not None
    logits_bytes = 2 * 64 * 11 * 4  # the output [B, T, V] float32 alone
    assert short >= model_bytes(model) + logits_bytes
    # Activations are linear in T here (SDPA, chunked recurrences): 8x the tokens, well over 4x the extra bytes.
    assert long - model_bytes(model) > 4 * (short - model_bytes(model))


def test_decode_runs_single_token_steps_through_the_cache() -> None:
    model = _model()
    calls = _record_calls(model)
    rng = torch.get_rng_state()
    tps = measure_decode(model, 11, prompt_len=5, decode_tokens=3, batch_size=2, repeats=2, warmup=1)
    assert math.isfinite(tps) and tps > 0
    # Each of the 3 runs (1 warm-up + 2 timed): a 5-token prefill without a cache, then 3 cached steps.
    assert calls == [((2, 5), False), ((2, 1), True), ((2, 1), True), ((2, 1), True)] * 3
    assert model.training and torch.equal(torch.get_rng_state(), rng)


def test_prefill_runs_the_context_length() -> None:
    model = _model()
    calls = _record_calls(model)
    assert measure_prefill(model, 11, seq_len=7, batch_size=3, repeats=2, warmup=1) > 0
    assert calls == [((3, 7), False)] * 3


def test_decode_needs_a_model_with_a_cache(tiny_lm: Callable[..., nn.Module]) -> None:
    with pytest.raises(TypeError):
        measure_decode(tiny_lm(11), 11, prompt_len=2, decode_tokens=1, repeats=1)


def test_measure_hardware_on_cpu() -> None:
    cfg = MeasureConfig(context_len=16, batch_size=2, prompt_len=4, decode_tokens=2, repeats=1, warmup=0)
    m = measure_hardware(_model(), 11, cfg)
    assert set(m) == {"prefill_tokens_per_s", "decode_tokens_per_s", "prefill_peak_memory_bytes", "prefill_latency_ms", "decode_latency_ms"}
    assert all(v > 0 and math.isfinite(v) for v in m.values())
    assert m["decode_latency_ms"] == pytest.approx(1000 * 2 / m["decode_tokens_per_s"])
    assert m["prefill_latency_ms"] == pytest.approx(1000 * 2 * 16 / m["prefill_tokens_per_s"])
    assert describe_device("cpu") == f"cpu ({torch.get_num_threads()} threads)"
    assert cpu_model().strip() and "\n" not in cpu_model()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_measure_hardware_on_cuda() -> None:
    model = _model().to("cuda")
    cfg = MeasureConfig(context_len=64, batch_size=2, prompt_len=4, decode_tokens=4, repeats=2)
    m = measure_hardware(model, 11, cfg)
    assert set(m) == {"prefill_tokens_per_s", "decode_tokens_per_s", "prefill_peak_memory_bytes", "prefill_latency_ms", "decode_latency_ms"}
    assert m["prefill_peak_memory_bytes"] >= model_bytes(model) + 2 * 64 * 11 * 4
    assert describe_device("cuda").startswith("cuda: ")


def test_measure_config() -> None:
    assert MeasureConfig.from_dict({}) == MeasureConfig()
    assert MeasureConfig.from_dict({"context_len": 64, "warmup": 0}).context_len == 64
    with pytest.raises(ValueError, match=r"^measure\.context_len: got 0, must be an integer >= 1"):
        MeasureConfig.from_dict({"context_len": 0})
    with pytest.raises(ValueError, match=r"^measure\.repeats: got True"):
        MeasureConfig.from_dict({"repeats": True})
    with pytest.raises(ValueError, match=r"^measure\.decode_steps: unknown option; allowed: context_len, "):
        MeasureConfig.from_dict({"decode_steps": 3})
    with pytest.raises(ValueError, match=r"^measure: expected a mapping"):
        MeasureConfig.from_dict([])  # type: ignore[arg-type]

"""Chunk and step backends against the float64 naive recurrence: outputs, final state, gradients."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Callable

import pytest
import torch

import hybridnas.kernels.chunk as chunk_module
from hybridnas.kernels.chunk import chunk_gated_delta_rule, chunk_gated_linear_attention
from hybridnas.kernels.naive import naive_gated_delta_rule, naive_gated_linear_attention

NAIVE = {"gla": naive_gated_linear_attention, "delta": naive_gated_delta_rule}
CHUNK = {"gla": chunk_gated_linear_attention, "delta": chunk_gated_delta_rule}
PRIMITIVES = ("gla", "delta")
MODES = ("none", "g", "gk")
# (T, K, V, chunk_size): one token, one short chunk, a chunk plus one token, several chunks plus a
# remainder; K != V and sizes that are not powers of two.
SIZES = [(1, 16, 16, 16), (63, 48, 64, 16), (65, 64, 48, 64), (200, 16, 20, 32)]


def call(fn: Callable, primitive: str, x: dict, **kw: object) -> tuple[torch.Tensor, torch.Tensor]:
    args = [x["q"], x["k"], x["v"]] + ([x["beta"]] if primitive == "delta" else [])
    return fn(*args, g=x["g"], gk=x["gk"], initial_state=x["initial_state"], output_final_state=True, **kw)


def grad_names(x: dict) -> list[str]:
    return [n for n, t in x.items() if t is not None]


def outputs_and_grads(run: Callable[[dict], tuple], x: dict, seed: int = 1) -> list[torch.Tensor]:
    """[o, final_state, d loss / d input for every input], loss a random projection of o and the state."""
    o, S = run(x)
    gen = torch.Generator().manual_seed(seed)
    do = torch.randn(o.shape, generator=gen, dtype=torch.float64).to(o.dtype)
    dS = torch.randn(S.shape, generator=gen, dtype=torch.float64).to(S.dtype)
    loss = (o * do).sum() + (S * dS).sum()
    names = grad_names(x)
    grads = torch.autograd.grad(loss, [x[n] for n in names])
    return [o.detach(), S.detach(), *grads]


def assert_all_close(actual: list, expected: list, names: list[str], rel: float) -> None:
    """Each tensor within rel * max|expected| of the reference (a scale-aware absolute bound)."""
    for a, e, n in zip(actual, expected, names):
        assert a.shape == e.shape, n
        assert torch.isfinite(a).all(), f"{n}: non-finite values"
        err = (a.double() - e.double()).abs().max().item()
        bound = rel * max(e.double().abs().max().item(), 1e-3)
        assert err <= bound, f"{n}: max error {err:.3e} > {bound:.3e}"


@pytest.mark.parametrize("T,K,V,chunk_size", SIZES)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("primitive", PRIMITIVES)
@pytest.mark.parametrize("backend", ["chunk", "step"])
def test_matches_float64_naive(
    backend: str, primitive: str, mode: str, T: int, K: int, V: int, chunk_size: int, make_inputs, step_loop
) -> None:
    x = make_inputs(primitive, mode, T=T, K=K, V=V, seed=T + K)
    expected = outputs_and_grads(lambda x: call(NAIVE[primitive], primitive, x), x)
    if backend == "chunk":
        actual = outputs_and_grads(lambda x: call(CHUNK[primitive], primitive, x, chunk_size=chunk_size), x)
    else:
        actual = outputs_and_grads(lambda x: step_loop(primitive, x), x)
    assert_all_close(actual, expected, ["o", "final_state", *grad_names(x)], rel=1e-10)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("primitive", PRIMITIVES)
def test_chunk_float32_close_to_float64_naive(primitive: str, mode: str, make_inputs) -> None:
    x64 = make_inputs(primitive, mode, T=130, K=32, V=24, seed=3)
    expected = outputs_and_grads(lambda x: call(NAIVE[primitive], primitive, x), x64)
    x32 = {n: (t.detach().float().requires_grad_() if t is not None else None) for n, t in x64.items()}
    actual = outputs_and_grads(lambda x: call(CHUNK[primitive], primitive, x), x32)
    assert actual[0].dtype == torch.float32 and actual[1].dtype == torch.float32
    assert_all_close(actual, expected, ["o", "final_state", *grad_names(x64)], rel=2e-5)


@pytest.mark.parametrize("T,K,V,chunk_size", SIZES)
@pytest.mark.parametrize("mode", ["g", "gk"])
@pytest.mark.parametrize("primitive", PRIMITIVES)
def test_exact_wide_chunk_path_matches_float64_naive(
    primitive: str, mode: str, T: int, K: int, V: int, chunk_size: int, make_inputs, monkeypatch
) -> None:
    """MAX_SPAN = 0 sends every decaying chunk down the exact (ratio / hierarchical) path."""
    monkeypatch.setattr(chunk_module, "MAX_SPAN", 0.0)
    x = make_inputs(primitive, mode, T=T, K=K, V=V, seed=T + K + 1)
    expected = outputs_and_grads(lambda x: call(NAIVE[primitive], primitive, x), x)
    actual = outputs_and_grads(lambda x: call(CHUNK[primitive], primitive, x, chunk_size=chunk_size), x)
    assert_all_close(actual, expected, ["o", "final_state", *grad_names(x)], rel=1e-10)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("primitive", PRIMITIVES)
def test_long_inputs_run_in_segments(primitive: str, mode: str, make_inputs, monkeypatch) -> None:
    """A tiny segment budget makes every 16-token chunk its own segment, the state carried across."""
    monkeypatch.setattr(chunk_module, "SEGMENT_ELEMENTS", 1)
    x = make_inputs(primitive, mode, T=75, K=16, V=20, seed=11)
    expected = outputs_and_grads(lambda x: call(NAIVE[primitive], primitive, x), x)
    actual = outputs_and_grads(lambda x: call(CHUNK[primitive], primitive, x, chunk_size=16), x)
    assert_all_close(actual, expected, ["o", "final_state", *grad_names(x)], rel=1e-10)


@pytest.mark.parametrize("mode", ["g", "gk"])
@pytest.mark.parametrize("primitive", PRIMITIVES)
def test_chunk_exact_under_huge_decays(primitive: str, mode: str, make_inputs) -> None:
    """Log decays of -20 per step (and -500 spikes) must not overflow the chunk form in float32."""
    x = make_inputs(primitive, mode, T=100, K=16, V=16, seed=5)
    with torch.no_grad():
        d = x[mode]
        d.fill_(-20.0)
        d[:, 16:48] = 0.0  # two whole chunks without decay (split path) right after huge decays
        d[:, 70] = -500.0
        if mode == "gk":
            d[:, 48:, :, ::3] = -0.01  # mixed per-channel scales inside one chunk
    expected = outputs_and_grads(lambda x: call(NAIVE[primitive], primitive, x), x)
    x32 = {n: (t.detach().float().requires_grad_() if t is not None else None) for n, t in x.items()}
    actual = outputs_and_grads(lambda x: call(CHUNK[primitive], primitive, x, chunk_size=16), x32)
    assert_all_close(actual, expected, ["o", "final_state", *grad_names(x)], rel=2e-5)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("primitive", PRIMITIVES)
@pytest.mark.parametrize("backend", ["chunk", "step"])
def test_bfloat16_inputs(backend: str, primitive: str, mode: str, make_inputs, step_loop) -> None:
    """bf16 in, bf16 out, float32 state; compared with float64 on the same (rounded) inputs."""
    xb = make_inputs(primitive, mode, T=40, K=16, V=16, dtype=torch.bfloat16, seed=7)
    if backend == "chunk":
        o, S = call(CHUNK[primitive], primitive, xb, chunk_size=16)
    else:
        o, S = step_loop(primitive, xb)
    assert o.dtype == torch.bfloat16 and S.dtype == torch.float32
    x64 = {n: (t.detach().double() if t is not None else None) for n, t in xb.items()}
    o_ref, S_ref = call(NAIVE[primitive], primitive, x64)
    assert_all_close([o, S], [o_ref, S_ref], ["o", "final_state"], rel=1e-2)
    o.float().sum().backward()  # gradients flow back to the bf16 leaves in their dtype
    assert xb["q"].grad is not None and xb["q"].grad.dtype == torch.bfloat16


@pytest.mark.parametrize("primitive", PRIMITIVES)
def test_chunk_size_does_not_change_the_result(primitive: str, make_inputs) -> None:
    x = make_inputs(primitive, "gk", T=77, K=20, V=12, seed=9)
    with torch.no_grad():
        ref, ref_S = call(CHUNK[primitive], primitive, x, chunk_size=1)
        for C in (2, 8, 32, 128):
            o, S = call(CHUNK[primitive], primitive, x, chunk_size=C)
            torch.testing.assert_close(o, ref, rtol=1e-10, atol=1e-10)
            torch.testing.assert_close(S, ref_S, rtol=1e-10, atol=1e-10)


def test_chunk_without_initial_or_final_state(make_inputs) -> None:
    x = make_inputs("delta", "g", T=20, initial_state=False)
    o, S = chunk_gated_delta_rule(x["q"], x["k"], x["v"], x["beta"], g=x["g"])
    o_ref, _ = naive_gated_delta_rule(x["q"], x["k"], x["v"], x["beta"], g=x["g"])
    assert S is None
    torch.testing.assert_close(o, o_ref)


@pytest.mark.parametrize("chunk_size", [0, 3, 48])
def test_chunk_size_must_be_a_power_of_two(chunk_size: int, make_inputs) -> None:
    x = make_inputs("gla", "none", T=8)
    with pytest.raises(ValueError, match="chunk_size"):
        chunk_gated_linear_attention(x["q"], x["k"], x["v"], chunk_size=chunk_size)


def test_chunk_source_is_self_contained(make_inputs) -> None:
    """Exported models embed chunk.py verbatim: it may import only torch, math and typing, and its
    source must run on its own, outside the package."""
    source = Path(chunk_module.__file__).read_text()
    imported = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            imported |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add((node.module or "").split(".")[0])
    assert imported <= {"torch", "math", "typing", "__future__"}, imported
    namespace: dict = {"__name__": "embedded_chunk"}
    exec(compile(source, "embedded_chunk.py", "exec"), namespace)
    x = make_inputs("delta", "gk", T=40, K=16, V=8)
    args = (x["q"], x["k"], x["v"], x["beta"])
    o, S = namespace["chunk_gated_delta_rule"](*args, gk=x["gk"], output_final_state=True)
    o_ref, S_ref = naive_gated_delta_rule(*args, gk=x["gk"], output_final_state=True)
    torch.testing.assert_close(o, o_ref)
    torch.testing.assert_close(S, S_ref)


def _outputs_and_grads_without_state(fn: Callable, primitive: str, x: dict, **kw: object) -> list[torch.Tensor]:
    """[o, d loss / d input...] of a call with no initial state and no final state asked (the training forward)."""
    args = [x["q"], x["k"], x["v"]] + ([x["beta"]] if primitive == "delta" else [])
    o, S = fn(*args, g=x["g"], gk=x["gk"], output_final_state=False, **kw)
    assert S is None
    do = torch.randn(o.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64).to(o.dtype)
    names = [n for n in grad_names(x) if n != "initial_state"]
    return [o.detach(), *torch.autograd.grad((o * do).sum(), [x[n] for n in names])]


@pytest.mark.parametrize("T,K,V", [(1, 16, 16), (17, 8, 24), (64, 32, 16)])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("primitive", PRIMITIVES)
def test_single_chunk_training_forward_matches_float64_naive(primitive: str, mode: str, T: int, K: int, V: int, make_inputs) -> None:
    """One chunk, no initial state, no final state: the path every proxy training step at T <= 64 takes."""
    x = make_inputs(primitive, mode, T=T, K=K, V=V, seed=T + 3, initial_state=False)
    expected = _outputs_and_grads_without_state(NAIVE[primitive], primitive, x)
    actual = _outputs_and_grads_without_state(CHUNK[primitive], primitive, x, chunk_size=64)
    assert_all_close(actual, expected, ["o", *[n for n in grad_names(x) if n != "initial_state"]], rel=1e-10)


@pytest.mark.parametrize("T", [1, 9, 70])
@pytest.mark.parametrize("with_state", [False, True])
@pytest.mark.parametrize("mode", ["none", "g", "gk"])
def test_value_width_one_scan_matches_float64_naive(mode: str, with_state: bool, T: int, make_inputs) -> None:
    """V = 1 with batch x heads >= SCAN_MIN_ROWS takes the stepwise scan (Mamba's one head per channel)."""
    H = chunk_module.SCAN_MIN_ROWS  # B = 1: exactly at the threshold
    x = make_inputs("gla", mode, B=1, H=H, T=T, K=16, V=1, seed=T + 5, initial_state=with_state)
    if with_state:
        expected = outputs_and_grads(lambda x: call(NAIVE["gla"], "gla", x), x)
        actual = outputs_and_grads(lambda x: call(CHUNK["gla"], "gla", x), x)
        names = ["o", "final_state", *grad_names(x)]
    else:
        expected = _outputs_and_grads_without_state(NAIVE["gla"], "gla", x)
        actual = _outputs_and_grads_without_state(CHUNK["gla"], "gla", x)
        names = ["o", *[n for n in grad_names(x) if n != "initial_state"]]
    assert_all_close(actual, expected, names, rel=1e-10)

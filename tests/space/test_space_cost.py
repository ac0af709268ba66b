"""The analytic cost model against the networks codegen actually builds."""

from __future__ import annotations

import itertools

import pytest
import torch

from hybridnas.codegen import build_model
from hybridnas.space.cost import CostEstimate, estimate_cost, layer_cost
from hybridnas.space.spec import GATES, MIXERS, MLPS, NORMS, RECURRENT_MIXERS, ArchSpec, LayerSpec


def _numel(spec: ArchSpec) -> int:
    return sum(p.numel() for p in build_model(spec).parameters())  # shared (tied) tensors once


@pytest.mark.parametrize(("gate", "short_conv"), list(itertools.product(GATES, (False, True))))
def test_params_exact_for_every_mixer_gate_conv_mlp_norm(gate: str, short_conv: bool) -> None:
    torch.set_num_threads(1)
    # One layer of every mixer per model, so each model checks all ten mixers at once.
    layers = tuple(
        LayerSpec(m, n_heads=2, gate=gate, short_conv=short_conv, conv_size=3, expand_k=0.5 if m == "gla" else 1.0)
        for m in MIXERS
    )
    for i, (mlp, norm) in enumerate(itertools.product(MLPS, NORMS)):
        spec = ArchSpec(d_model=16, layers=layers, vocab_size=7, mlp=mlp, norm=norm, mlp_ratio=1.5, tie_embeddings=i % 2 == 0)
        assert estimate_cost(spec).params == _numel(spec), (mlp, norm)


@pytest.mark.parametrize("mixer", MIXERS)
def test_params_exact_per_mixer_with_odd_shapes(mixer: str) -> None:
    # Uneven widths: 3 heads of 8, state expansion 2 or 0.25, a 5-wide conv, mlp ratio rounding.
    layer = LayerSpec(mixer, n_heads=3, short_conv=True, conv_size=5, gate="swish", expand_k=2.0 if mixer in RECURRENT_MIXERS else 1.0)
    spec = ArchSpec(d_model=24, layers=(layer,), vocab_size=10, mlp_ratio=1.3, tie_embeddings=False)
    assert estimate_cost(spec).params == _numel(spec)
    assert layer_cost(spec, 0).params == estimate_cost(spec).params - 2 * 10 * 24 - 24


def test_state_grows_with_context_for_attention_only() -> None:
    def state(mixer: str, ctx: int, **kw: object) -> int:
        spec = ArchSpec(d_model=32, layers=(LayerSpec(mixer, n_heads=4, **kw),), vocab_size=10)  # type: ignore[arg-type]
        return estimate_cost(spec, context_len=ctx).state_bytes

    assert state("attention", 2048) == 2 * state("attention", 1024)
    assert state("attention", 1024) == 1024 * 2 * 32 * 2  # K and V, H*dk = H*dv = 32, 2 bytes
    # A window keeps the last window - 1 tokens: all the next token attends to besides itself.
    assert state("swa", 1024, window=64) == state("swa", 4096, window=64) == 63 * 2 * 32 * 2
    assert state("swa", 32, window=64) < state("swa", 64, window=64)
    for mixer in ("linear_attn", "gla", "gated_deltanet", "short_conv"):
        assert state(mixer, 128) == state(mixer, 65536) > 0
    # Recurrent state H*dk*dv, plus (W-1) columns of conv state per q/k/v channel.
    assert state("gla", 100) == 4 * 8 * 8 * 2
    assert state("gla", 100, short_conv=True, conv_size=4) == (4 * 8 * 8 + 3 * 3 * 32) * 2
    assert state("gla", 100, expand_k=2.0) == 4 * 16 * 8 * 2


@pytest.mark.parametrize("mixer", MIXERS)
def test_state_is_what_the_decode_cache_holds(mixer: str) -> None:
    """The registered cost's state elements equal the tensors a real forward leaves in the cache."""
    torch.set_num_threads(1)
    for short_conv in (False, True):
        layer = LayerSpec(mixer, n_heads=2, short_conv=short_conv, conv_size=3, window=5, expand_k=0.5 if mixer in RECURRENT_MIXERS else 1.0)
        spec = ArchSpec(d_model=16, layers=(layer,), vocab_size=7)
        torch.manual_seed(0)
        _, cache = build_model(spec)(torch.randint(0, 7, (1, 11)), use_cache=True)
        held = sum(t.numel() for t in cache["layers"][0].values() if t is not None)
        assert layer_cost(spec, 0, context_len=11).state_elements == held, short_conv


def test_flops_per_token() -> None:
    d, V = 32, 10
    # Pure MLP-free attention model: 2 * matmul weights + attention averaged over the positions.
    att = ArchSpec(d_model=d, layers=(LayerSpec("attention", n_heads=4),), vocab_size=V, mlp="none")
    c = estimate_cost(att, context_len=100)
    assert isinstance(c, CostEstimate) and c.context_len == 100
    assert c.flops_per_token == pytest.approx(2 * (4 * d * d + V * d) + 2 * (2 * d) * (101 / 2))
    assert estimate_cost(att, context_len=1000).flops_per_token > c.flops_per_token
    swa = ArchSpec(d_model=d, layers=(LayerSpec("swa", n_heads=4, window=8),), vocab_size=V, mlp="none")
    assert estimate_cost(swa, context_len=10_000).flops_per_token < estimate_cost(att, context_len=10_000).flops_per_token
    assert estimate_cost(swa, context_len=4).flops_per_token == estimate_cost(att, context_len=4).flops_per_token
    # Linear mixers: independent of context; the delta rule reads the state once more than GLA-style ones.
    lin = ArchSpec(d_model=d, layers=(LayerSpec("linear_attn", n_heads=4),), vocab_size=V, mlp="none")
    assert estimate_cost(lin, 16).flops_per_token == estimate_cost(lin, 4096).flops_per_token
    assert estimate_cost(lin).flops_per_token == pytest.approx(2 * (4 * d * d + V * d) + 4 * 4 * 8 * 8)
    delta = ArchSpec(d_model=d, layers=(LayerSpec("deltanet", n_heads=4),), vocab_size=V, mlp="none")
    assert estimate_cost(delta).flops_per_token == pytest.approx(2 * (4 * d * d + d * 4 + V * d) + 6 * 4 * 8 * 8)


def test_bad_arguments() -> None:
    spec = ArchSpec(d_model=16, layers=(LayerSpec("gla"),), vocab_size=5)
    with pytest.raises(ValueError, match="context_len"):
        estimate_cost(spec, context_len=0)
    with pytest.raises(ValueError, match="bytes_per_element"):
        estimate_cost(spec, bytes_per_element=0)
    assert estimate_cost(spec, bytes_per_element=4).state_bytes == 2 * estimate_cost(spec).state_bytes

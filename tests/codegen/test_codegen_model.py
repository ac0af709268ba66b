"""The rendered networks: shapes, causality, incremental decoding, init and the torch fallbacks."""

from __future__ import annotations

import math
from typing import Callable

import pytest
import torch

from hybridnas.codegen import build_model, build_module
from hybridnas.space.spec import MIXERS, ArchSpec, LayerSpec

VOCAB = 13  # as in the mixer_spec fixture
T = 9  # longer than the swa windows (3 and 5) and the conv widths


def _float64_model(spec: ArchSpec, seed: int = 0) -> torch.nn.Module:
    """The model in float64 with weights large enough that every mixer visibly moves the logits."""
    torch.manual_seed(seed)
    model = build_model(spec).double()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("A_log", "dt_bias")):
                continue  # keep the decay parametrization in its working range
            p.normal_(0.0, 0.3)
    return model.eval()


def _decode(model: torch.nn.Module, ids: torch.Tensor, prefill: int) -> torch.Tensor:
    """Logits from a prefill of `prefill` tokens (none: start empty), then one token at a time."""
    outs, cache = [], None
    if prefill:
        logits, cache = model(ids[:, :prefill], use_cache=True)
        outs.append(logits)
    for t in range(prefill, ids.shape[1]):
        logits, cache = model(ids[:, t : t + 1], cache=cache, use_cache=True)
        outs.append(logits)
    assert cache["seen"] == ids.shape[1]
    return torch.cat(outs, dim=1)


@pytest.mark.parametrize("mixer", MIXERS)
def test_forward_shapes_and_backward(mixer: str, mixer_spec: Callable[..., ArchSpec]) -> None:
    torch.manual_seed(0)
    model = build_model(mixer_spec(mixer))
    ids = torch.randint(0, VOCAB, (2, 5))
    logits = model(ids)
    assert logits.shape == (2, 5, VOCAB) and logits.dtype == torch.float32
    assert torch.isfinite(logits).all()
    logits.square().mean().backward()
    # Every parameter is used: each one gets a gradient.
    no_grad = [n for n, p in model.named_parameters() if p.grad is None]
    assert not no_grad
    out, cache = model(ids[:, :1], use_cache=True)
    assert out.shape == (2, 1, VOCAB) and len(cache["layers"]) == 2


@pytest.mark.parametrize("mixer", MIXERS)
def test_causal_for_every_mixer(mixer: str, mixer_spec: Callable[..., ArchSpec]) -> None:
    model = _float64_model(mixer_spec(mixer))
    ids = torch.randint(0, VOCAB, (2, T), generator=torch.Generator().manual_seed(1))
    t = 4
    changed = ids.clone()
    changed[:, t + 1] = (changed[:, t + 1] + 1) % VOCAB
    with torch.no_grad():
        a, b = model(ids), model(changed)
    torch.testing.assert_close(a[:, : t + 1], b[:, : t + 1], rtol=0, atol=1e-12)
    # Not vacuous: the change reaches later positions through the mixer.
    assert (a[:, t + 2 :] - b[:, t + 2 :]).abs().max() > 1e-4


@pytest.mark.parametrize("mixer", MIXERS)
def test_decode_matches_full_forward(mixer: str, mixer_spec: Callable[..., ArchSpec]) -> None:
    model = _float64_model(mixer_spec(mixer))
    ids = torch.randint(0, VOCAB, (2, T), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        full = model(ids)
        one_by_one = _decode(model, ids, prefill=0)
        after_prefill = _decode(model, ids, prefill=4)
        # A multi-token chunk on top of a cache (chunked prefill) also continues exactly.
        _, cache = model(ids[:, :3], use_cache=True)
        rest = model(ids[:, 3:], cache=cache)
    torch.testing.assert_close(one_by_one, full, rtol=0, atol=1e-10)
    torch.testing.assert_close(after_prefill, full, rtol=0, atol=1e-10)
    torch.testing.assert_close(rest, full[:, 3:], rtol=0, atol=1e-10)


def test_decode_is_not_trivially_equal() -> None:
    # Dropping the cache between steps must break the equality the test above checks.
    spec = ArchSpec(d_model=16, layers=(LayerSpec("gated_deltanet", short_conv=True),), vocab_size=VOCAB)
    model = _float64_model(spec)
    ids = torch.randint(0, VOCAB, (1, 6), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        full = model(ids)
        _, cache = model(ids[:, :5], use_cache=True)
        forgetful = model(ids[:, 5:], cache={"seen": 5, "layers": [{}]})
        remembered = model(ids[:, 5:], cache=cache)
    torch.testing.assert_close(remembered, full[:, 5:], rtol=0, atol=1e-10)
    assert (forgetful - full[:, 5:]).abs().max() > 1e-3


def test_sliding_window_cache_is_truncated_and_attention_cache_grows() -> None:
    spec = ArchSpec(d_model=16, layers=(LayerSpec("swa", window=3), LayerSpec("attention")), vocab_size=VOCAB)
    model = build_model(spec)
    ids = torch.randint(0, VOCAB, (1, 8))
    _, cache = model(ids, use_cache=True)
    swa, full = cache["layers"]
    assert swa["k"].shape[1] == 2  # window - 1: all the next token needs
    assert full["k"].shape[1] == 8


@pytest.mark.parametrize("mixer", ["gla", "gated_deltanet", "short_conv", "swa"])
def test_torch_fallbacks_match_hybridnas_kernels(mixer: str, mixer_spec: Callable[..., ArchSpec]) -> None:
    spec = mixer_spec(mixer)
    module = build_module(spec)
    if module.KERNELS != "hybridnas":
        pytest.skip("hybridnas.kernels does not provide the kernel API yet; the model runs on its fallbacks")
    model = _float64_model(spec)
    ids = torch.randint(0, VOCAB, (2, T), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        fast_full, fast_dec = model(ids), _decode(model, ids, prefill=3)
    names = ("_conv_kernel", "_delta_kernel", "_delta_step", "_gla_kernel", "_gla_step", "_attention_kernel")
    saved = {k: getattr(module, k) for k in names}
    try:
        module._conv_kernel = module._torch_causal_conv1d
        module._delta_kernel = module.chunk_gated_delta_rule
        module._delta_step = module._torch_delta_step
        module._gla_kernel = module.chunk_gated_linear_attention
        module._gla_step = module._torch_gla_step
        module._attention_kernel = module._torch_attention
        with torch.no_grad():
            slow_full, slow_dec = model(ids), _decode(model, ids, prefill=3)
    finally:
        for k, v in saved.items():
            setattr(module, k, v)
    torch.testing.assert_close(slow_full, fast_full, rtol=0, atol=1e-10)
    torch.testing.assert_close(slow_dec, fast_dec, rtol=0, atol=1e-10)


def test_init_is_seeded_and_scaled() -> None:
    spec = ArchSpec(
        d_model=32, layers=tuple(LayerSpec(m, n_heads=2) for m in ("mamba2", "attention")) * 2, vocab_size=50, norm="layernorm"
    )
    torch.manual_seed(7)
    a = build_model(spec)
    torch.manual_seed(7)
    b = build_model(spec)
    for (na, pa), (nb, pb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert na == nb and torch.equal(pa, pb)
    assert a.lm_head.weight is a.embed.weight  # tied
    out_std = 0.02 / math.sqrt(2 * spec.n_layers)
    o_proj = torch.cat([blk.mixer.o_proj.weight.flatten() for blk in a.layers])
    q_proj = torch.cat([blk.mixer.q_proj.weight.flatten() for blk in a.layers])
    assert abs(o_proj.std().item() - out_std) < 0.25 * out_std
    assert abs(q_proj.std().item() - 0.02) < 0.25 * 0.02
    assert torch.equal(a.layers[0].norm1.weight, torch.ones(32)) and torch.equal(a.layers[0].norm1.bias, torch.zeros(32))
    A = a.layers[0].mixer.A_log.exp()
    assert ((A >= 1) & (A <= 16)).all()
    untied = build_model(ArchSpec(d_model=16, layers=(LayerSpec("gla"),), vocab_size=9, tie_embeddings=False))
    assert untied.lm_head.weight is not untied.embed.weight

"""The rendered networks: shapes, causality, incremental decoding, init and the torch fallbacks."""

from __future__ import annotations

import builtins
import math
from typing import Callable

import pytest
import torch

from hybridnas.codegen import build_model, build_module, render
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


def _module_without_hybridnas(spec: ArchSpec) -> dict:
    """The rendered module executed where `import hybridnas` fails, as on a machine without it."""

    def guarded_import(name: str, *args: object, **kwargs: object) -> object:
        if name.split(".")[0] == "hybridnas":
            raise ImportError(f"No module named {name!r}")
        return builtins.__import__(name, *args, **kwargs)

    namespace = {"__builtins__": {**vars(builtins), "__import__": guarded_import}, "__name__": "standalone_model"}
    exec(compile(render(spec), "<standalone>", "exec"), namespace)
    return namespace


def test_installed_package_models_use_hybridnas_kernels(mixer_spec: Callable[..., ArchSpec]) -> None:
    import hybridnas.kernels as kernels

    module = build_module(mixer_spec("gated_deltanet"))
    assert module.KERNELS == "hybridnas"
    for name in ("gated_delta_rule", "gated_linear_attention", "gated_delta_rule_step", "softmax_attention", "causal_conv1d"):
        assert getattr(module, name) is getattr(kernels, name), name
    assert _module_without_hybridnas(mixer_spec("gla"))["KERNELS"] == "torch"


@pytest.mark.parametrize("mixer", MIXERS)
def test_torch_fallbacks_match_hybridnas_kernels(mixer: str, mixer_spec: Callable[..., ArchSpec]) -> None:
    spec = mixer_spec(mixer)
    fast = _float64_model(spec)
    standalone = _module_without_hybridnas(spec)
    assert standalone["KERNELS"] == "torch"
    slow = standalone["Model"]().double().eval()
    slow.load_state_dict(fast.state_dict())
    ids = torch.randint(0, VOCAB, (2, T), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        fast_full, fast_dec = fast(ids), _decode(fast, ids, prefill=3)
        slow_full, slow_dec = slow(ids), _decode(slow, ids, prefill=3)
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
    o_proj = torch.cat([blk.mixer.out.o_proj.weight.flatten() for blk in a.layers])
    q_proj = torch.cat([blk.mixer.qkv.q.proj.weight.flatten() for blk in a.layers])
    w2 = torch.cat([blk.mlp.w2.weight.flatten() for blk in a.layers])
    assert abs(o_proj.std().item() - out_std) < 0.25 * out_std
    assert abs(w2.std().item() - out_std) < 0.25 * out_std
    assert abs(q_proj.std().item() - 0.02) < 0.25 * 0.02
    assert torch.equal(a.layers[0].norm1.weight, torch.ones(32)) and torch.equal(a.layers[0].norm1.bias, torch.zeros(32))
    # Mamba-2's decay: A = 1, step sizes at the quantiles of log-uniform(1e-3, 1e-1) (two heads: 10^-2.5, 10^-1.5).
    mixer = a.layers[0].mixer
    assert torch.equal(mixer.rate.A_log, torch.zeros(2))
    torch.testing.assert_close(torch.nn.functional.softplus(mixer.rate.dt_bias), torch.tensor([10**-2.5, 10**-1.5]))
    # The recurrent output norm starts at 1/sqrt(H*V), so its write is o_proj's std per channel.
    torch.testing.assert_close(mixer.out.norm.weight, torch.full((16,), 32**-0.5))
    untied = build_model(ArchSpec(d_model=16, layers=(LayerSpec("gla"),), vocab_size=9, tie_embeddings=False))
    assert untied.lm_head.weight is not untied.embed.weight

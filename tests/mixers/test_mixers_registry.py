"""One contract over every registered mixer: usable alone, decodes as it runs, starts on equal footing."""

from __future__ import annotations

import inspect
import itertools
import math

import pytest
import torch

from hybridnas.mixers import OPTIONS, REGISTRY, MixerDef
from hybridnas.space import ArchSpec, LayerSpec
from hybridnas.space.cost import build_lm
from hybridnas.workers.checks import MAX_INIT_WRITE, residual_writes

MIXERS = list(REGISTRY)


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def _layer(name: str, **options: object) -> LayerSpec:
    base = {"n_heads": 2, "short_conv": True, "conv_size": 3, "gate": "swish", "window": 4}
    if REGISTRY[name].recurrent:
        base["expand_k"] = 0.5
    return LayerSpec(name, **{**base, **options})  # type: ignore[arg-type]


@pytest.mark.parametrize("name", MIXERS)
def test_entry_describes_its_module(name: str) -> None:
    entry: MixerDef = REGISTRY[name]
    assert entry.name == name and entry.summary and entry.reference
    params = inspect.signature(entry.module).parameters
    assert list(params)[0] == "d_model"
    # Every option the entry names is a constructor argument, with the option's own default.
    for option in entry.options:
        assert option in params, option
        if option != "window":  # attention's window defaults to None: full attention
            assert params[option].default == OPTIONS[option].default, option


@pytest.mark.parametrize("name", MIXERS)
def test_module_alone_maps_and_decodes_like_its_forward(name: str) -> None:
    layer = _layer(name)
    torch.manual_seed(0)
    mixer = REGISTRY[name].build(16, layer).double()
    with torch.no_grad():
        for p in mixer.parameters():
            if p.ndim >= 2:
                p.normal_(0.0, 0.3)  # big enough that every path visibly moves the output
    x = torch.randn(2, 9, 16, dtype=torch.float64)
    y, none = mixer(x)
    assert y.shape == x.shape and none is None
    steps, cache = [], None
    for t in range(9):
        out, cache = mixer(x[:, t : t + 1], cache=cache, use_cache=True, offset=t)
        steps.append(out)
    torch.testing.assert_close(torch.cat(steps, 1), y, rtol=0, atol=1e-10)
    # Causal: the output at t does not see t + 1.
    x2 = x.clone()
    x2[:, 5] += 1.0
    torch.testing.assert_close(mixer(x2)[0][:, :5], y[:, :5], rtol=0, atol=1e-12)
    y.square().sum().backward()
    assert all(p.grad is not None for p in mixer.parameters())


@pytest.mark.parametrize("name", MIXERS)
def test_every_option_combination_starts_on_equal_footing(name: str) -> None:
    """At init no block writes more into the residual stream than the embedding carries."""
    entry = REGISTRY[name]
    gates = OPTIONS["gate"].choices
    convs = (False, True) if "short_conv" in entry.options else (False,)
    expands = (0.5, 1.0, 2.0) if entry.recurrent else (1.0,)
    maps = OPTIONS["feature_map"].choices if "feature_map" in entry.options else ("identity",)
    worst = 0.0
    for gate, conv, expand, fmap in itertools.product(gates, convs, expands, maps):
        for n_layers in (1, 8):
            layer = LayerSpec(name, n_heads=2, gate=gate, short_conv=conv, expand_k=expand, feature_map=fmap, window=8)
            spec = ArchSpec(d_model=64, layers=(layer,) * n_layers, vocab_size=64)
            torch.manual_seed(1)
            worst = max(worst, *residual_writes(build_lm(spec), 64, seq_len=32))
    assert 0.0 < worst <= MAX_INIT_WRITE, worst


def test_recurrent_output_norm_starts_small_and_decays_spread_over_heads() -> None:
    """The two init faults that made Gated DeltaNet look unable to recall, fixed and pinned."""
    torch.manual_seed(0)
    gdn = REGISTRY["gated_deltanet"].build(64, LayerSpec("gated_deltanet", n_heads=4))
    assert torch.allclose(gdn.out.norm.weight, torch.full((16,), 1 / 8))  # 1 / sqrt(H * V)
    dt = torch.nn.functional.softplus(gdn.rate.dt_bias)
    assert torch.equal(gdn.rate.A_log, torch.zeros(4))
    assert dt.min() > 1e-3 and dt.max() < 1e-1 and (dt[1:] > dt[:-1]).all()  # one time scale per head
    # The same for every seed: time scales are not drawn.
    torch.manual_seed(1)
    other = REGISTRY["gated_deltanet"].build(64, LayerSpec("gated_deltanet", n_heads=4))
    assert torch.equal(other.rate.dt_bias, gdn.rate.dt_bias)


def test_kda_is_the_gated_delta_rule_with_a_decay_per_key_channel() -> None:
    from hybridnas.kernels.naive import naive_gated_delta_rule

    torch.manual_seed(0)
    kda = REGISTRY["kda"].build(12, LayerSpec("kda", n_heads=3)).double()
    x = torch.randn(2, 7, 12, dtype=torch.float64)
    with torch.no_grad():
        cache, new = {}, {}
        q, k, v = kda.qkv(x, cache, new, False)
        q, k = torch.nn.functional.normalize(q, dim=-1), torch.nn.functional.normalize(k, dim=-1)
        beta = torch.sigmoid(kda.b_proj(x))
        rate = torch.nn.functional.softplus(kda.f_proj(x) + kda.rate.dt_bias).view(2, 7, 3, 4)
        gk = -kda.rate.A_log.exp()[:, None] * rate  # [B, T, H, K]
        assert (gk[..., 0] != gk[..., 1]).any()  # truly per channel
        o, _ = naive_gated_delta_rule(q, k, v, beta, gk=gk)
        expected = kda.out(o, x)
        got, _ = kda(x)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)


def test_mamba_is_the_selective_scan() -> None:
    """Against Mamba's recurrence written out per channel: h = exp(dt A) h + dt B u; y = C.h + D u."""
    torch.manual_seed(0)
    mamba = REGISTRY["mamba"].build(8, LayerSpec("mamba")).double()
    x = torch.randn(2, 6, 8, dtype=torch.float64)
    with torch.no_grad():
        u, z = mamba.in_proj(x).chunk(2, dim=-1)
        u, _ = mamba.conv(u)
        dt, b, c = mamba.x_proj(u).split([mamba.dt_rank, 16, 16], dim=-1)
        dt = torch.nn.functional.softplus(mamba.dt_proj(dt))  # [B, T, I]
        A = -mamba.A_log.exp().view(mamba.inner, 16)  # [I, N]
        h = torch.zeros(2, mamba.inner, 16, dtype=torch.float64)
        ys = []
        for t in range(6):
            h = torch.exp(dt[:, t, :, None] * A) * h + (dt[:, t] * u[:, t])[..., None] * b[:, t, None, :]
            ys.append((h * c[:, t, None, :]).sum(-1) + mamba.D * u[:, t])
        y = torch.stack(ys, 1) * torch.nn.functional.silu(z)
        expected = mamba.o_proj(y)
        got, _ = mamba(x)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)
    assert not math.isclose(float(got.abs().max()), 0.0)


def test_readme_lists_every_mixer_and_only_those() -> None:
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme.split("## Mixers", 1)[1].split("\n## ", 1)[0]
    listed = [line.split("`")[1] for line in section.splitlines() if line.startswith("| `")]
    assert listed == list(REGISTRY)
    for name, entry in REGISTRY.items():
        assert f"`mixers/{name}.py`" in section, name  # a reader finds a mixer by its file name
        assert entry.module.__module__ in (f"hybridnas.mixers.{name}", "hybridnas.mixers.attention")

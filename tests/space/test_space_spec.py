from __future__ import annotations

import json

import pytest

from hybridnas.space import ALL_LINEAR, MIXERS, ArchSpec, HybridGenes, LayerSpec, SpecError


def make(**kw) -> ArchSpec:
    genes = HybridGenes(**kw)
    return ArchSpec.from_hybrid(genes, d_model=64, n_layers=4, n_heads=2, vocab_size=32)


def test_every_registered_mixer_is_a_gene() -> None:
    assert set(MIXERS) == {
        "attention", "swa", "linear_attn", "retnet", "gla", "mamba2", "hgrn2", "deltanet", "gated_deltanet", "kda",
        "mamba", "short_conv",
    }
    assert MIXERS[:2] == ("attention", "swa")  # the full mixers first
    for m in MIXERS:
        ArchSpec(d_model=32, layers=(LayerSpec(mixer=m),), vocab_size=16)


@pytest.mark.parametrize(
    "ratio, placement, n_layers, pattern",
    [
        (0, "interleaved", 4, "AAAA"),
        (1, "interleaved", 4, "LALA"),
        (3, "interleaved", 4, "LLLA"),
        (3, "interleaved", 8, "LLLALLLA"),
        (3, "first", 8, "AALLLLLL"),
        (3, "last", 8, "LLLLLLAA"),
        (7, "interleaved", 8, "LLLLLLLA"),
        (6, "interleaved", 4, "LLLA"),  # any finite ratio keeps one full layer
        (ALL_LINEAR, "interleaved", 4, "LLLL"),
        (1, "LAAL", 4, "LAAL"),
    ],
)
def test_hybrid_pattern(ratio, placement, n_layers, pattern) -> None:
    assert HybridGenes(ratio=ratio, placement=placement).pattern(n_layers) == pattern


def test_expand_sets_mixers_gates_and_convs() -> None:
    spec = make(ratio=1, linear_mixer="gla", full_mixer="swa", gate="swish", short_conv=True)
    assert spec.mixers == ("gla", "swa", "gla", "swa")
    lin = [l for l in spec.layers if not l.is_full]
    full = [l for l in spec.layers if l.is_full]
    assert all(l.gate == "swish" and l.short_conv for l in lin)
    assert all(l.gate == "none" and not l.short_conv for l in full)
    assert spec.n_full == 2 and spec.pattern == "LALA"


def test_json_round_trip_and_hash_stability() -> None:
    spec = make(ratio=3, linear_mixer="deltanet", gate="sigmoid")
    back = ArchSpec.from_json(spec.to_json())
    assert back == spec and back.hybrid == spec.hybrid
    assert back.spec_hash == spec.spec_hash
    assert json.loads(spec.to_json())["layers"][0]["mixer"] == "deltanet"


def test_hash_ignores_unused_options_and_genes() -> None:
    # Same network from per-layer genes and from hybrid genes: one hash.
    hybrid = make(ratio=3, linear_mixer="gla")
    plain = ArchSpec(d_model=64, layers=hybrid.layers, vocab_size=32)
    assert plain.spec_hash == hybrid.spec_hash
    # window only matters for swa; feature_map only for linear_attn
    a = ArchSpec(d_model=32, layers=(LayerSpec(mixer="gla", window=8),), vocab_size=16)
    b = ArchSpec(d_model=32, layers=(LayerSpec(mixer="gla", window=128),), vocab_size=16)
    assert a.spec_hash == b.spec_hash
    c = ArchSpec(d_model=32, layers=(LayerSpec(mixer="swa", window=8),), vocab_size=16)
    d = ArchSpec(d_model=32, layers=(LayerSpec(mixer="swa", window=128),), vocab_size=16)
    assert c.spec_hash != d.spec_hash
    # ... and a real difference changes it
    assert make(ratio=3, linear_mixer="gla").spec_hash != make(ratio=1, linear_mixer="gla").spec_hash


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"mixer": "transformer"}, "mixer"),
        ({"mixer": "gla", "gate": "relu"}, "gate"),
        ({"mixer": "gla", "n_heads": 0}, "n_heads"),
        ({"mixer": "gla", "feature_map": "cos"}, "feature_map"),
        ({"mixer": "gla", "expand_k": 9}, "expand_k"),
    ],
)
def test_layer_errors_name_the_field(kwargs, field) -> None:
    with pytest.raises(SpecError) as info:
        LayerSpec(**kwargs)
    assert info.value.field == field and field in str(info.value)


def test_arch_errors_name_the_field() -> None:
    with pytest.raises(SpecError, match="n_heads"):
        ArchSpec(d_model=30, layers=(LayerSpec(mixer="gla", n_heads=4),), vocab_size=16)
    with pytest.raises(SpecError, match="allowed: swiglu, gelu, none"):
        ArchSpec(d_model=32, layers=(LayerSpec(mixer="gla"),), vocab_size=16, mlp="relu")
    with pytest.raises(SpecError, match="placement"):
        HybridGenes(placement="LLXA")
    with pytest.raises(SpecError, match="ratio"):
        HybridGenes(ratio=-1)
    with pytest.raises(SpecError, match="bogus"):
        ArchSpec.from_dict({**make().to_dict(), "bogus": 1})

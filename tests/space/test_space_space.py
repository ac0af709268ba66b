from __future__ import annotations

import random

import pytest
from pydantic import ValidationError

from hybridnas.space import FULL_MIXERS, HybridChoices, LayerChoices, SpaceFile, format_validation_error

HYBRID = SpaceFile(
    d_model=[32, 64],
    n_layers=[4],
    hybrid=HybridChoices(
        ratio=[0, 1, 3, "all_linear"],
        placement=["interleaved", "first", "last"],
        linear_mixer=["gla", "deltanet", "gated_deltanet"],
        gate=["none", "swish"],
        short_conv=[False, True],
    ),
)
LAYERS = SpaceFile(n_layers=[3, 4], layers=LayerChoices(mixer=["gla", "attention", "short_conv", "mamba2"], gate=["none", "sigmoid"]))


@pytest.mark.parametrize("file", [HYBRID, LAYERS], ids=["hybrid", "layers"])
def test_samples_mutations_and_crossovers_stay_in_the_space(file: SpaceFile) -> None:
    space = file.build(vocab_size=48)
    rng = random.Random(0)
    seen_ops = set()
    specs = [space.sample(rng) for _ in range(30)]
    assert len({s.spec_hash for s in specs}) > 5, "sampling should explore"
    for spec in specs:
        assert space.contains(spec) and spec.vocab_size == 48
        child, op = space.mutate(spec, rng)
        seen_ops.add(op)
        assert child.spec_hash != spec.spec_hash, f"{op} must change the network"
        assert space.contains(child)
        other = rng.choice(specs)
        cross, name = space.crossover(spec, other, rng)
        assert name == "crossover" and space.contains(cross)
    assert len(seen_ops) >= 3, seen_ops


def test_hybrid_mutation_operators_are_named_after_their_gene() -> None:
    space = HYBRID.build(vocab_size=48)
    rng = random.Random(1)
    ops = {space.mutate(space.sample(rng), rng)[1] for _ in range(200)}
    assert {"mutate_linear_mixer", "mutate_ratio", "mutate_placement", "mutate_gate", "mutate_short_conv", "mutate_d_model"} <= ops


def test_crossover_takes_genes_from_both_parents() -> None:
    space = HYBRID.build(vocab_size=48)
    a = space._build({**space._values(space.sample(random.Random(0)))[0], "d_model": 32, "hybrid.linear_mixer": "gla", "hybrid.ratio": 1}, None)
    b = space._build({**space._values(a)[0], "d_model": 64, "hybrid.linear_mixer": "deltanet", "hybrid.ratio": 3}, None)
    rng = random.Random(3)
    children = [space.crossover(a, b, rng)[0] for _ in range(40)]
    assert {c.d_model for c in children} == {32, 64}
    assert {c.hybrid.linear_mixer for c in children} == {"gla", "deltanet"}


def test_single_design_space_cannot_mutate() -> None:
    space = SpaceFile(hybrid=HybridChoices(ratio=[3])).build(vocab_size=16)
    with pytest.raises(ValueError, match="nothing to mutate"):
        space.mutate(space.sample(random.Random(0)), random.Random(0))


def test_full_mixer_choices_are_only_full() -> None:
    with pytest.raises(ValidationError) as info:
        SpaceFile.model_validate({"hybrid": {"full_mixer": ["gla"]}})
    (line,) = format_validation_error(info.value, "space")
    assert line.startswith("space.hybrid.full_mixer") and all(m in line for m in FULL_MIXERS)


@pytest.mark.parametrize(
    "data, where",
    [
        ({"hybrid": {"linear_mixer": ["gla", "lstm"]}}, "space.hybrid.linear_mixer"),
        ({"hybrid": {"ratio": [-1]}}, "space.hybrid.ratio"),
        ({"hybrid": {"placement": ["middle"]}}, "space.hybrid.placement"),
        ({"d_modle": [64]}, "space.d_modle"),
        ({"d_model": [30], "n_heads": [4]}, "n_heads"),
        ({"hybrid": {}, "layers": {}}, "either"),
        ({"hybrid": {"gate": []}}, "space.hybrid.gate"),
    ],
)
def test_invalid_spaces_name_the_field(data, where) -> None:
    with pytest.raises(ValidationError) as info:
        SpaceFile.model_validate(data)
    assert any(where in line for line in format_validation_error(info.value, "space")), format_validation_error(info.value, "space")

"""The gene API for define-by-run samplers: param_choices, suggest, params_of, from_params."""

from __future__ import annotations

import random

import pytest

from hybridnas.space import HybridChoices, LayerChoices, SpaceFile

HYBRID = SpaceFile(
    d_model=[32, 64],
    n_layers=[2, 4],
    mlp_ratio=[2.0, 3.0],
    hybrid=HybridChoices(
        ratio=[0, 1, 3, "all_linear"],
        placement=["interleaved", "last"],
        linear_mixer=["gla", "gated_deltanet"],
        gate=["none", "swish"],
        short_conv=[False, True],
    ),
).build(vocab_size=32)
LAYERS = SpaceFile(
    n_layers=[2, 3],
    layers=LayerChoices(mixer=["gla", "attention", "short_conv"], gate=["none", "sigmoid"], short_conv=[False, True]),
).build(vocab_size=32)


@pytest.mark.parametrize("space", [HYBRID, LAYERS], ids=["hybrid", "layers"])
def test_params_round_trip(space) -> None:
    rng = random.Random(0)
    for _ in range(40):
        spec = space.sample(rng)
        params = space.params_of(spec)
        back = space.from_params(params)
        assert back.spec_hash == spec.spec_hash and back == spec
        assert space.params_of(back) == params
        if space.mode == "hybrid":
            assert back.hybrid == spec.hybrid  # the genes themselves survive, not only the network


@pytest.mark.parametrize("space", [HYBRID, LAYERS], ids=["hybrid", "layers"])
def test_every_design_round_trips(space) -> None:
    designs = space.designs()
    assert {space.from_params(space.params_of(d)).spec_hash for d in designs} == {d.spec_hash for d in designs}


def test_choices_are_categorical_values() -> None:
    for space in (HYBRID, LAYERS):
        for name, choices in space.param_choices():
            assert choices and all(isinstance(c, (type(None), bool, int, float, str)) for c in choices), name
    assert dict(HYBRID.param_choices())["hybrid.ratio"] == (0, 1, 3, "all_linear")


def test_per_layer_params_depend_on_depth() -> None:
    deepest = [name for name, _ in LAYERS.param_choices()]
    assert deepest[: len(deepest) - 9][-1] == "expand_k"  # model genes first, then 3 layers x 3 genes
    assert deepest[-9:] == [f"layer{i}.{k}" for i in range(3) for k in ("mixer", "gate", "short_conv")]
    assert [n for n, _ in LAYERS.param_choices(2) if n.startswith("layer")] == deepest[-9:-3]
    assert not any(n.startswith("layer") for n, _ in HYBRID.param_choices())
    spec = LAYERS.from_params({**LAYERS.params_of(LAYERS.designs()[0]), "n_layers": 3, "layer2.mixer": "attention", "layer2.gate": "none", "layer2.short_conv": False})
    assert spec.n_layers == 3 and spec.layers[2].mixer == "attention"


def test_suggest_asks_define_by_run() -> None:
    """The per-layer questions follow the depth picked; the picks build the network."""
    asked: list[str] = []

    def pick(name, choices):
        asked.append(name)
        return {"n_layers": 2, "layer1.mixer": "attention"}.get(name, choices[0])

    spec = LAYERS.suggest(pick)
    assert asked == [n for n, _ in LAYERS.param_choices(2)]
    assert spec.mixers == ("gla", "attention") and LAYERS.contains(spec)


def test_from_params_names_the_bad_parameter() -> None:
    params = HYBRID.params_of(HYBRID.designs()[0])
    with pytest.raises(ValueError, match=r"d_model: 48 is not allowed; allowed: 32, 64"):
        HYBRID.from_params({**params, "d_model": 48})
    with pytest.raises(ValueError, match=r"hybrid.short_conv: 1 is not allowed"):
        HYBRID.from_params({**params, "hybrid.short_conv": 1})  # 1 is not True here
    with pytest.raises(ValueError, match=r"hybrid.gate: missing"):
        HYBRID.from_params({k: v for k, v in params.items() if k != "hybrid.gate"})
    with pytest.raises(ValueError, match=r"layer0.mixer: unknown parameter"):
        HYBRID.from_params({**params, "layer0.mixer": "gla"})
    lp = LAYERS.params_of(LAYERS.designs()[0])  # a 2-layer design
    with pytest.raises(ValueError, match=r"layer2.gate: unknown parameter"):
        LAYERS.from_params({**lp, "layer2.gate": "none"})


def test_params_of_refuses_designs_outside_the_space() -> None:
    other = SpaceFile(d_model=[128], hybrid=HybridChoices()).build(vocab_size=32)
    with pytest.raises(ValueError, match=r"d_model: 128 is not allowed"):
        HYBRID.params_of(other.designs()[0])
    with pytest.raises(ValueError, match=r"vocab_size"):
        HYBRID.params_of(SpaceFile(hybrid=HybridChoices()).build(vocab_size=16).designs()[0])

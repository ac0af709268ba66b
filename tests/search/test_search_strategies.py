"""Strategy-specific behaviour (the contract every strategy meets is in test_search_strategy_contract.py)."""

from __future__ import annotations

import pytest

from hybridnas.search.strategies import STRATEGIES, GridSearch, Observation, RegularizedEvolution, make_strategy
from hybridnas.space import HybridChoices, LayerChoices, SearchSpace, SpaceFile


def synthetic_score(spec) -> float:
    """A known landscape: gated delta rule, ratio 3 interleaved, swish gate, wide is best."""
    h = spec.hybrid
    return (h.linear_mixer == "gated_deltanet") + (spec.pattern == "LLLA") + (h.gate == "swish") + (spec.d_model == 64) * 0.5


def drive(strategy, n: int, fail_every: int = 0) -> list:
    history = []
    for i in range(n):
        (p,) = strategy.propose(1)
        cid = i + 1
        failed = fail_every and cid % fail_every == 0
        strategy.observe(Observation(cid, p.spec, None if failed else synthetic_score(p.spec)))
        history.append((cid, p))
    return history


def test_unknown_strategy_names_the_field(hybrid_space: SearchSpace) -> None:
    with pytest.raises(ValueError, match=r"search.strategy: 'annealing' is not allowed; allowed: random, evolution, grid, tpe, nsga2, gp"):
        make_strategy("annealing", hybrid_space, seed=0)
    assert list(STRATEGIES) == ["random", "evolution", "grid", "tpe", "nsga2", "gp"]


def test_make_strategy_takes_the_settings_it_knows(hybrid_space: SearchSpace) -> None:
    evo = make_strategy("evolution", hybrid_space, 0, population=5, tournament=2, crossover_prob=0.5, n_startup=3, unknown=1)
    assert (evo.population_size, evo.tournament, evo.crossover_prob) == (5, 2, 0.5)
    evo = make_strategy("evolution", hybrid_space, 0, population=None)  # None means the default
    assert evo.population_size == 8
    assert type(make_strategy("grid", hybrid_space, 0, population=3, storage="sqlite://", study_name="x")) is GridSearch


def test_grid_proposes_every_design_once_then_repeats_the_last() -> None:
    tiny = SpaceFile(d_model=[32, 64], hybrid=HybridChoices(ratio=[1, 3])).build(vocab_size=32)
    designs = tiny.designs()
    grid = make_strategy("grid", tiny, seed=0)
    proposed = [p.spec for p in grid.propose(len(designs))]
    assert proposed == designs
    assert [p.spec for p in grid.propose(3)] == [designs[-1]] * 3  # exhausted: the controller sees duplicates


def test_grid_skips_observed_designs(hybrid_space: SearchSpace) -> None:
    """A grid rebuilt on resume goes on after what was recorded; designs in flight come again."""
    designs = hybrid_space.designs()
    grid = GridSearch(hybrid_space, seed=0)
    for i in (0, 1, 3):
        grid.observe(Observation(i + 1, designs[i], 1.0))
    assert [p.spec for p in grid.propose(3)] == [designs[2], designs[4], designs[5]]


def test_grid_refuses_spaces_too_large_to_enumerate() -> None:
    huge = SpaceFile(n_layers=[12], layers=LayerChoices(mixer=["gla", "attention", "mamba2"])).build(vocab_size=32)
    with pytest.raises(ValueError, match=r"search.strategy: grid cannot enumerate this space"):
        make_strategy("grid", huge, seed=0)


def test_evolution_records_parents_and_operators_and_ages_out(hybrid_space: SearchSpace) -> None:
    evo = RegularizedEvolution(hybrid_space, seed=0, population=6, tournament=3, crossover_prob=0.3)
    history = drive(evo, 80)
    ops = {p.operator for _, p in history if p.parents}
    assert "crossover" in ops and any(op.startswith("mutate_") for op in ops)
    assert all(len(p.parents) == 2 for _, p in history if p.operator == "crossover")
    assert len(evo.population) == 6
    # aging: the population holds only recent members
    assert min(o.candidate_id for o in evo.population) > 80 - 20


def test_evolution_climbs_the_synthetic_landscape(hybrid_space: SearchSpace) -> None:
    """Averaged over seeds, evolution's late proposals score higher than random samples."""
    evo_late, rand_late = [], []
    for seed in range(6):
        evo = drive(make_strategy("evolution", hybrid_space, seed), 80)
        rnd = drive(make_strategy("random", hybrid_space, seed), 80)
        evo_late += [synthetic_score(p.spec) for _, p in evo[40:]]
        rand_late += [synthetic_score(p.spec) for _, p in rnd[40:]]
    assert sum(evo_late) / len(evo_late) > sum(rand_late) / len(rand_late) + 0.3


def test_evolution_samples_until_the_population_is_full(hybrid_space: SearchSpace) -> None:
    evo = RegularizedEvolution(hybrid_space, seed=1, population=8)
    history = drive(evo, 30, fail_every=3)  # failures do not fill the population
    first_child = next(i for i, (_, p) in enumerate(history) if p.parents)
    successes_before = sum(1 for cid, _ in history[:first_child] if cid % 3 != 0)
    assert successes_before == 8

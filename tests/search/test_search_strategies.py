"""One contract, run over every strategy."""

from __future__ import annotations

import pytest

from hybridnas.search.strategies import STRATEGIES, Observation, RegularizedEvolution, make_strategy
from hybridnas.space import HybridChoices, SpaceFile

SPACE = SpaceFile(
    d_model=[32, 64],
    hybrid=HybridChoices(
        ratio=[0, 1, 3, "all_linear"],
        placement=["interleaved", "first", "last"],
        linear_mixer=["gla", "deltanet", "gated_deltanet", "mamba2"],
        gate=["none", "swish"],
    ),
).build(vocab_size=32)


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


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_contract(name: str) -> None:
    strategy = make_strategy(name, SPACE, seed=7)
    batch = strategy.propose(5)
    assert len(batch) == 5
    assert all(SPACE.contains(p.spec) for p in batch)
    history = drive(strategy, 60, fail_every=5)  # failures are observed too and must not break it
    observed = {cid for cid, _ in history}
    for cid, p in history:
        assert SPACE.contains(p.spec)
        assert all(parent in observed and parent < cid for parent in p.parents), "parents must be observed candidates"
        assert isinstance(p.operator, str) and p.operator
        if p.parents:
            assert p.operator != "sample"


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_same_seed_same_proposals(name: str) -> None:
    a = [p.spec.spec_hash for _, p in drive(make_strategy(name, SPACE, seed=3), 30)]
    b = [p.spec.spec_hash for _, p in drive(make_strategy(name, SPACE, seed=3), 30)]
    c = [p.spec.spec_hash for _, p in drive(make_strategy(name, SPACE, seed=4), 30)]
    assert a == b and a != c


def test_unknown_strategy_names_the_field() -> None:
    with pytest.raises(ValueError, match=r"search.strategy.*allowed: random, evolution"):
        make_strategy("annealing", SPACE, seed=0)


def test_evolution_records_parents_and_operators_and_ages_out() -> None:
    evo = RegularizedEvolution(SPACE, seed=0, population=6, tournament=3, crossover_prob=0.3)
    history = drive(evo, 80)
    ops = {p.operator for _, p in history if p.parents}
    assert "crossover" in ops and any(op.startswith("mutate_") for op in ops)
    assert all(len(p.parents) == 2 for _, p in history if p.operator == "crossover")
    assert len(evo.population) == 6
    # aging: the population holds only recent members
    assert min(o.candidate_id for o in evo.population) > 80 - 20


def test_evolution_climbs_the_synthetic_landscape() -> None:
    """Averaged over seeds, evolution's late proposals score higher than random samples."""
    evo_late, rand_late = [], []
    for seed in range(6):
        evo = drive(make_strategy("evolution", SPACE, seed), 80)
        rnd = drive(make_strategy("random", SPACE, seed), 80)
        evo_late += [synthetic_score(p.spec) for _, p in evo[40:]]
        rand_late += [synthetic_score(p.spec) for _, p in rnd[40:]]
    assert sum(evo_late) / len(evo_late) > sum(rand_late) / len(rand_late) + 0.3


def test_evolution_samples_until_the_population_is_full() -> None:
    evo = RegularizedEvolution(SPACE, seed=1, population=8)
    history = drive(evo, 30, fail_every=3)  # failures do not fill the population
    first_child = next(i for i, (_, p) in enumerate(history) if p.parents)
    successes_before = sum(1 for cid, _ in history[:first_child] if cid % 3 != 0)
    assert successes_before == 8

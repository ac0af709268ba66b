"""One contract, run over every strategy.

Driven the way the controller drives it (reseed, propose, accepted or discard, observe), a strategy
proposes designs in the space, proposes the same ones again for the same seed and outcomes, proposes
after a resume what it would have without one, takes failures and discards in its stride, and finds
the best design of a tiny space within as many candidates as the space has designs."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from pathlib import Path

import pytest

from hybridnas.search.strategies import STRATEGIES, Observation, Strategy, make_strategy
from hybridnas.space import ArchSpec, HybridChoices, LayerChoices, SearchSpace, SpaceFile

pytestmark = pytest.mark.usefixtures("one_thread")  # the GP sampler fits with torch

LAYERS = SpaceFile(
    n_layers=[2, 3], layers=LayerChoices(mixer=["gla", "attention", "gated_deltanet"], gate=["none", "swish"])
).build(vocab_size=32)
TINY = SpaceFile(d_model=[32, 64], hybrid=HybridChoices(ratio=[1, 3], linear_mixer=["gla", "gated_deltanet"])).build(vocab_size=32)
# Small start-up phases so that the Optuna samplers model the results within a few proposals.
SETTINGS = {"n_startup": 4, "population": 4, "tournament": 2, "crossover_prob": 0.5}


def objective(spec: ArchSpec) -> float:
    """A known landscape: more gated delta rule and gla layers, swish gates and width score higher."""
    return (
        sum(l.mixer == "gated_deltanet" for l in spec.layers)
        + 0.5 * sum(l.mixer == "gla" for l in spec.layers)
        + 0.3 * sum(l.gate == "swish" for l in spec.layers)
        + 0.25 * (spec.d_model == 64)
    )


class Sim:
    """The controller in miniature: reseed before every proposal; a known design is discarded as a
    duplicate (with the known outcome when it has one), one that a constraint breaks is discarded with
    the reason, the rest are accepted; up to `parallel` candidates are in flight and their outcomes
    are observed oldest first. `fail(spec)` and `infeasible(spec)` make outcomes fail or break a bound.
    """

    def __init__(
        self,
        parallel: int = 1,
        fail: Callable[[ArchSpec], bool] = lambda s: False,
        infeasible: Callable[[ArchSpec], bool] = lambda s: False,
        refuse: Callable[[ArchSpec], bool] = lambda s: False,
    ) -> None:
        self.parallel = parallel
        self.fail, self.infeasible, self.refuse = fail, infeasible, refuse
        self.log: list[tuple[int, int, str]] = []  # (index, attempt, spec hash) of every proposal
        self.proposed: list[ArchSpec] = []  # every proposal's design
        self.accepted: list[str] = []  # spec hashes, in candidate order
        self.observations: list[Observation] = []  # in record order
        self.known: dict[str, Observation | None] = {}  # spec hash -> outcome (None while in flight)
        self.in_flight: deque[tuple[int, ArchSpec]] = deque()
        self.discards = {"duplicate": 0, "constraint": 0}

    def outcome(self, cid: int, spec: ArchSpec) -> Observation:
        y = objective(spec)
        if self.fail(spec):
            return Observation(cid, spec, None)
        if self.infeasible(spec):
            return Observation(cid, spec, None, values=(y,), feasible=False)
        return Observation(cid, spec, y, values=(y,))

    def _finish_one(self, strategy: Strategy) -> None:
        cid, spec = self.in_flight.popleft()
        o = self.outcome(cid, spec)
        self.known[spec.spec_hash] = o
        self.observations.append(o)
        strategy.observe(o)

    def run(self, strategy: Strategy, n: int, max_attempts: int = 40) -> bool:
        """Accept `n` more candidates; False when `max_attempts` proposals in a row were refused."""
        for _ in range(n):
            index = len(self.accepted)
            for attempt in range(max_attempts):
                strategy.reseed(index, attempt)
                (p,) = strategy.propose(1)
                h = p.spec.spec_hash
                self.log.append((index, attempt, h))
                self.proposed.append(p.spec)
                if h in self.known:
                    self.discards["duplicate"] += 1
                    strategy.discard(p, "duplicate", self.known[h])
                elif self.refuse(p.spec):
                    self.discards["constraint"] += 1
                    strategy.discard(p, "constraint: params over max_params")
                else:
                    break
            else:
                return False
            cid = len(self.accepted) + 1
            observed = {o.candidate_id for o in self.observations}
            assert all(parent in observed for parent in p.parents), "parents must be observed candidates"
            assert p.operator != "sample" or not p.parents, "a child names the operator that made it"
            strategy.accepted(p, cid)
            self.accepted.append(h)
            self.known[h] = None
            self.in_flight.append((cid, p.spec))
            if len(self.in_flight) >= self.parallel:
                self._finish_one(strategy)
        return True

    def drain(self, strategy: Strategy) -> None:
        while self.in_flight:
            self._finish_one(strategy)

    def copy(self) -> Sim:
        """The same controller state, as a resumed controller rebuilds it from the store."""
        other = Sim(self.parallel, self.fail, self.infeasible, self.refuse)
        other.log, other.proposed, other.accepted = list(self.log), list(self.proposed), list(self.accepted)
        other.observations = list(self.observations)
        other.known, other.in_flight = dict(self.known), deque(self.in_flight)
        return other


def build(name: str, space: SearchSpace, seed: int = 0, storage: Path | None = None, study: str = "s") -> Strategy:
    """Every strategy as a campaign builds it; with `storage`, Optuna ones keep their study in that SQLite file."""
    url = f"sqlite:///{storage}" if storage is not None else None
    return make_strategy(name, space, seed, storage=url, study_name=study, **SETTINGS)


@pytest.fixture(params=sorted(STRATEGIES))
def name(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.mark.parametrize("kind", ["hybrid", "layers"])
def test_proposals_stay_in_the_space_through_failures_and_discards(
    name: str, kind: str, hybrid_space: SearchSpace
) -> None:
    space = hybrid_space if kind == "hybrid" else LAYERS
    sim = Sim(
        parallel=2,
        fail=lambda s: s.d_model == 32 and s.layers[0].mixer == "gla",
        infeasible=lambda s: s.layers[-1].gate == "swish",
        refuse=lambda s: s.spec_hash[-1] in "01234567",  # a constraint that refuses about half the designs
    )
    strategy = build(name, space)
    assert sim.run(strategy, 8, max_attempts=60)
    sim.drain(strategy)
    assert all(space.contains(spec) and spec.vocab_size == 32 for spec in sim.proposed)
    assert any(o.score is None for o in sim.observations), "the run must exercise failed or infeasible outcomes"
    assert sim.discards["duplicate"] + sim.discards["constraint"] > 0, "the run must exercise discards"
    strategy.close()


def test_depth_is_searched_in_a_per_layer_space(name: str) -> None:
    strategy = build(name, LAYERS)
    specs = []
    for i in range(8):
        strategy.reseed(i, 0)
        (p,) = strategy.propose(1)
        specs.append(p.spec)
        strategy.accepted(p, i + 1)
        strategy.observe(Observation(i + 1, p.spec, objective(p.spec), values=(objective(p.spec),)))
    assert all(LAYERS.contains(s) and s.vocab_size == 32 for s in specs)
    assert len({s.n_layers for s in specs}) == 2 or name == "grid"  # depth is searched too


def test_same_seed_same_observations_same_proposals(name: str, hybrid_space: SearchSpace) -> None:
    runs = []
    for seed in (3, 3, 4):
        sim = Sim(parallel=2, fail=lambda s: s.hybrid.linear_mixer == "mamba2")
        sim.run(build(name, hybrid_space, seed=seed), 7)
        runs.append(sim.log)
    assert runs[0] == runs[1]
    if name != "grid":  # the grid's order does not depend on the seed
        assert runs[0] != runs[2]


@pytest.mark.parametrize("parallel", [1, 2])
def test_resumed_strategy_proposes_what_the_original_would(
    name: str, parallel: int, tmp_path: Path, hybrid_space: SearchSpace
) -> None:
    """Kill after 5 candidates, rebuild the strategy from scratch, replay every recorded outcome: the
    next proposals are those of the run that was never interrupted."""
    kw = dict(parallel=parallel, fail=lambda s: s.hybrid.gate == "swish" and s.d_model == 32, infeasible=lambda s: s.hybrid.ratio == 0)
    whole = Sim(**kw)
    original = build(name, hybrid_space, storage=tmp_path / "whole.db")
    assert whole.run(original, 5)
    before = whole.copy()
    assert whole.run(original, 3)

    first = Sim(**kw)
    assert first.run(build(name, hybrid_space, storage=tmp_path / "killed.db"), 5)  # then the process dies
    assert first.log == before.log
    resumed = build(name, hybrid_space, storage=tmp_path / "killed.db")
    for o in first.observations:
        resumed.observe(o)
    assert first.run(resumed, 3)
    if parallel == 1:
        assert first.log == whole.log  # every proposal, duplicates included
    else:
        # Designs in flight at the kill are unknown to a rebuilt grid; it proposes them again and the
        # controller skips them, so what must match is the candidates.
        assert first.accepted == whole.accepted
        if name != "grid":
            assert first.log == whole.log


def test_failures_and_discards_are_accepted(name: str) -> None:
    strategy = build(name, TINY)
    designs = TINY.designs()
    strategy.reseed(0, 0)
    (p,) = strategy.propose(1)
    strategy.discard(p, "constraint: params over max_params")
    strategy.reseed(0, 1)
    (p,) = strategy.propose(1)
    strategy.accepted(p, 1)
    strategy.observe(Observation(1, p.spec, None))  # failed
    strategy.reseed(1, 0)
    (q,) = strategy.propose(1)
    strategy.discard(q, "duplicate", Observation(1, p.spec, None))  # a duplicate of a failure
    strategy.reseed(1, 1)
    (q,) = strategy.propose(1)
    strategy.discard(q, "duplicate", None)  # a duplicate of a design still in flight
    strategy.observe(Observation(7, designs[3], None, values=(1.0,), feasible=False))  # never accepted here
    strategy.reseed(1, 2)
    (r,) = strategy.propose(1)
    assert TINY.contains(r.spec)
    strategy.close()


def test_finds_the_best_design_of_a_tiny_space(name: str) -> None:
    designs = TINY.designs()
    assert len(designs) == 8
    best = max(designs, key=objective)
    assert sum(objective(d) == objective(best) for d in designs) == 1
    worst = min(designs, key=objective)
    sim = Sim(fail=lambda s: s.spec_hash == worst.spec_hash, infeasible=lambda s: s.d_model == 32 and s.hybrid.ratio == 1)
    sim.run(build(name, TINY, seed=5), len(designs), max_attempts=50)
    assert best.spec_hash in sim.accepted

"""Search strategies: one small interface, several implementations.

A strategy proposes designs and observes their scores; it never touches the store or the executor.
The controller rebuilds a strategy on resume by replaying every recorded observation in order, so a
strategy's state must be a function of (seed, observations so far, proposals so far). The Optuna
strategies (search/optuna_strategy.py) also keep their study in the store's database, and a
resumed one picks it up instead of telling the replayed observations again.
"""

from __future__ import annotations

import random
from abc import ABC, abstractmethod
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from hybridnas.space import ArchSpec, SearchSpace

__all__ = [
    "STRATEGIES",
    "GridSearch",
    "Observation",
    "Proposal",
    "RandomSearch",
    "RegularizedEvolution",
    "Strategy",
    "make_strategy",
]


@dataclass(frozen=True)
class Proposal:
    """A design to evaluate, and where it came from."""

    spec: ArchSpec
    parents: tuple[int, ...] = ()  # candidate ids of the parents (empty for a fresh sample)
    operator: str = "sample"  # how the child differs from its parents
    token: Any = field(default=None, compare=False)  # strategy-private handle (e.g. an Optuna trial number)


@dataclass(frozen=True)
class Observation:
    """The outcome of one evaluation, as a strategy sees it."""

    candidate_id: int
    spec: ArchSpec
    score: float | None  # the primary objective, oriented so that larger is better; None when failed or infeasible
    metrics: dict[str, Any] = field(default_factory=dict)
    values: tuple[float, ...] = ()  # every objective's raw value, in campaign order; () when failed
    feasible: bool = True  # False when a measured metric breaks a constraint bound


class Strategy(ABC):
    """propose(n) -> designs to try; observe(o) -> learn from a finished evaluation.

    The controller's side of the contract, in order:
      reseed(index, attempt)  before every propose(1), so the randomness of the proposal for the
                              index-th candidate is a function of (seed, index, attempt) and a resumed
                              campaign proposes what an uninterrupted one would have;
      propose(1)              a design;
      accepted(p, cid)        the proposal became candidate `cid`, or
      discard(p, reason, known)  it was refused ("duplicate" or "constraint: ..."); `known` is the
                              observation of the existing candidate for a finished duplicate;
      observe(o)              each finished base-fidelity evaluation, in the order results were
                              recorded (on resume, every recorded one is replayed first).
    `directions` holds "maximize"/"minimize" per objective; `Observation.values` follows it.
    """

    name: str = "base"

    def __init__(self, space: SearchSpace, seed: int, directions: tuple[str, ...] = ("maximize",)) -> None:
        self.space = space
        self.seed = seed
        self.directions = tuple(directions)
        self.rng = random.Random(seed)

    def reseed(self, index: int, attempt: int = 0) -> None:
        """Make the next proposal's randomness a function of (seed, index, attempt) only."""
        self.rng.seed(f"{self.seed}:{index}:{attempt}")

    @abstractmethod
    def propose(self, n: int) -> list[Proposal]: ...

    @abstractmethod
    def observe(self, observation: Observation) -> None: ...

    def accepted(self, proposal: Proposal, candidate_id: int) -> None:
        """The proposal became a candidate (most strategies need not care)."""

    def discard(self, proposal: Proposal, reason: str, known: Observation | None = None) -> None:
        """The controller refused the proposal (most strategies need not care)."""

    def close(self) -> None:
        """Release what the strategy holds (a database connection); the campaign is done with it."""


class RandomSearch(Strategy):
    """Uniform samples from the space: the baseline every other strategy must beat."""

    name = "random"

    def propose(self, n: int) -> list[Proposal]:
        return [Proposal(self.space.sample(self.rng)) for _ in range(n)]

    def observe(self, observation: Observation) -> None:
        pass


class RegularizedEvolution(Strategy):
    """Aging evolution (Real et al., 2019): tournament selection, mutation, optional crossover.

    Until `population` candidates have been observed (failures do not count), proposals are random
    samples. Then each child
    comes from the best of a random tournament (mutated), or, with `crossover_prob`, from crossing the
    winners of two tournaments. The oldest member dies when the population is full, which keeps the
    search from settling on a lucky early design. Failed candidates never enter the population.
    """

    name = "evolution"

    def __init__(
        self,
        space: SearchSpace,
        seed: int,
        population: int = 8,
        tournament: int = 3,
        crossover_prob: float = 0.2,
        directions: tuple[str, ...] = ("maximize",),
    ) -> None:
        super().__init__(space, seed, directions)
        self.population_size = population
        self.tournament = tournament
        self.crossover_prob = crossover_prob
        self.population: deque[Observation] = deque()

    def _select(self) -> Observation:
        k = min(self.tournament, len(self.population))
        contenders = self.rng.sample(list(self.population), k)
        return max(contenders, key=lambda o: o.score if o.score is not None else float("-inf"))

    def propose(self, n: int) -> list[Proposal]:
        out = []
        for _ in range(n):
            if len(self.population) < self.population_size:
                out.append(Proposal(self.space.sample(self.rng)))
                continue
            a = self._select()
            if self.rng.random() < self.crossover_prob and len(self.population) > 1:
                b = self._select()
                if b.candidate_id != a.candidate_id:
                    child, _ = self.space.crossover(a.spec, b.spec, self.rng)
                    if child.spec_hash not in (a.spec.spec_hash, b.spec.spec_hash):
                        out.append(Proposal(child, (a.candidate_id, b.candidate_id), "crossover"))
                        continue
            try:
                child, op = self.space.mutate(a.spec, self.rng)
            except ValueError:
                out.append(Proposal(self.space.sample(self.rng)))
                continue
            out.append(Proposal(child, (a.candidate_id,), op))
        return out

    def observe(self, observation: Observation) -> None:
        if observation.score is None:
            return
        self.population.append(observation)
        while len(self.population) > self.population_size:
            self.population.popleft()


class GridSearch(Strategy):
    """Every design of the space once, in `SearchSpace.designs()` order.

    Designs already observed are skipped, so a grid rebuilt on resume (which replays the recorded
    observations) goes on where the original stopped; designs that were in flight come again and the
    controller skips them as known. Once every design has been proposed, `propose` keeps returning the
    last one: the controller already has it, counts the duplicates and reports the search exhausted.
    The seed plays no part. Spaces with more than 100,000 gene combinations are refused.
    """

    name = "grid"

    def __init__(self, space: SearchSpace, seed: int, directions: tuple[str, ...] = ("maximize",)) -> None:
        super().__init__(space, seed, directions)
        try:
            self.designs = space.designs()
        except ValueError as e:
            raise ValueError(f"search.strategy: grid cannot enumerate this space ({e}); use random, evolution, tpe, nsga2 or gp") from None
        self.position = 0  # index of the next design to consider
        self._seen: set[str] = set()  # hashes of observed designs

    def propose(self, n: int) -> list[Proposal]:
        out = []
        for _ in range(n):
            while self.position < len(self.designs) and self.designs[self.position].spec_hash in self._seen:
                self.position += 1
            if self.position < len(self.designs):
                out.append(Proposal(self.designs[self.position]))
                self.position += 1
            else:
                out.append(Proposal(self.designs[-1]))
        return out

    def observe(self, observation: Observation) -> None:
        self._seen.add(observation.spec.spec_hash)


#: Every name `make_strategy` accepts, and what it does.
STRATEGIES: dict[str, str] = {
    "random": "uniform samples from the space (the baseline)",
    "evolution": "regularized evolution: tournament selection, mutation, crossover, aging",
    "grid": "every design of the space once, in a fixed order",
    "tpe": "Optuna TPE sampler (Tree-structured Parzen Estimator)",
    "nsga2": "Optuna NSGA-II sampler (genetic, multi-objective)",
    "gp": "Optuna Gaussian-process sampler (Bayesian optimization)",
}


def _setting(settings: dict[str, Any], key: str, default: Any) -> Any:
    value = settings.get(key)
    return default if value is None else value


def make_strategy(
    name: str,
    space: SearchSpace,
    seed: int,
    directions: tuple[str, ...] = ("maximize",),
    storage: str | None = None,
    study_name: str | None = None,
    **settings: Any,
) -> Strategy:
    """Build a strategy by name.

    `settings` are the campaign's search section; each strategy takes the ones it knows and ignores
    the rest (a missing or None setting takes the default):
      population      evolution: population size; nsga2: generation size (the first one is random) [8]
      tournament      evolution: candidates per tournament [3]
      crossover_prob  evolution and nsga2: chance a child comes from two parents [0.2; nsga2 0.9]
      n_startup       tpe and gp: random trials before the model takes over [10]
      load_if_exists  tpe, nsga2, gp: continue the study `study_name` in `storage` if it exists [True]
    `storage` (an SQLAlchemy URL, normally the store's) and `study_name` are used by tpe, nsga2, gp.
    """
    if name not in STRATEGIES:
        raise ValueError(f"search.strategy: {name!r} is not allowed; allowed: {', '.join(STRATEGIES)}")
    directions = tuple(directions)
    if name == "random":
        return RandomSearch(space, seed, directions)
    if name == "grid":
        return GridSearch(space, seed, directions)
    if name == "evolution":
        return RegularizedEvolution(
            space,
            seed,
            population=_setting(settings, "population", 8),
            tournament=_setting(settings, "tournament", 3),
            crossover_prob=_setting(settings, "crossover_prob", 0.2),
            directions=directions,
        )
    from hybridnas.search.optuna_strategy import OptunaStrategy  # optuna is imported only when used

    return OptunaStrategy(
        space,
        seed,
        directions,
        sampler=name,
        storage=storage,
        study_name=study_name,
        load_if_exists=_setting(settings, "load_if_exists", True),
        n_startup=_setting(settings, "n_startup", 10),
        population=_setting(settings, "population", 8),
        crossover_prob=_setting(settings, "crossover_prob", 0.9),
    )

"""Search strategies: one small interface, several implementations.

A strategy proposes designs and observes their scores; it never touches the store or the executor.
The controller rebuilds a strategy on resume by replaying every recorded observation in order, so a
strategy's state must be a function of (seed, observations so far, proposals so far).
"""

from __future__ import annotations

import random
from abc import ABC, abstractmethod
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from hybridnas.space import ArchSpec, SearchSpace


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


STRATEGIES: dict[str, type[Strategy]] = {"random": RandomSearch, "evolution": RegularizedEvolution}


def make_strategy(
    name: str,
    space: SearchSpace,
    seed: int,
    directions: tuple[str, ...] = ("maximize",),
    **settings: Any,
) -> Strategy:
    """Build a strategy by name; `settings` are the campaign's search section minus strategy/budget
    (each strategy takes the ones it knows and ignores the rest)."""
    if name not in STRATEGIES:
        raise ValueError(f"search.strategy: {name!r} is not allowed; allowed: {', '.join(STRATEGIES)}")
    if name == "random":
        return RandomSearch(space, seed, directions)
    return RegularizedEvolution(
        space,
        seed,
        population=settings.get("population", 8),
        tournament=settings.get("tournament", 3),
        crossover_prob=settings.get("crossover_prob", 0.2),
        directions=directions,
    )

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


@dataclass(frozen=True)
class Observation:
    """The outcome of one evaluation, as a strategy sees it."""

    candidate_id: int
    spec: ArchSpec
    score: float | None  # the objective, oriented so that larger is better; None when the evaluation failed
    metrics: dict[str, Any] = field(default_factory=dict)


class Strategy(ABC):
    """propose(n) -> designs to try; observe(o) -> learn from a finished evaluation."""

    name: str = "base"

    def __init__(self, space: SearchSpace, seed: int) -> None:
        self.space = space
        self.seed = seed
        self.rng = random.Random(seed)

    @abstractmethod
    def propose(self, n: int) -> list[Proposal]: ...

    @abstractmethod
    def observe(self, observation: Observation) -> None: ...


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
    ) -> None:
        super().__init__(space, seed)
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


def make_strategy(name: str, space: SearchSpace, seed: int, **settings: Any) -> Strategy:
    """Build a strategy by name; `settings` are the campaign's search section minus strategy/budget."""
    if name not in STRATEGIES:
        raise ValueError(f"search.strategy: {name!r} is not allowed; allowed: {', '.join(STRATEGIES)}")
    if name == "random":
        return RandomSearch(space, seed)
    return RegularizedEvolution(
        space,
        seed,
        population=settings.get("population", 8),
        tournament=settings.get("tournament", 3),
        crossover_prob=settings.get("crossover_prob", 0.2),
    )

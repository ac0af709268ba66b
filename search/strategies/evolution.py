"""Regularized (aging) evolution with tournament selection, mutation and crossover (Real et al., 2019)."""

from __future__ import annotations

from collections import deque
from typing import Any, Mapping

from hybridnas.search.strategies.base import Observation, Proposal, Strategy, setting
from hybridnas.space import SearchSpace

__all__ = ["RegularizedEvolution"]


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

    @classmethod
    def from_settings(
        cls, space: SearchSpace, seed: int, directions: tuple[str, ...], settings: Mapping[str, Any]
    ) -> RegularizedEvolution:
        return cls(
            space,
            seed,
            population=setting(settings, "population", 8),
            tournament=setting(settings, "tournament", 3),
            crossover_prob=setting(settings, "crossover_prob", 0.2),
            directions=directions,
        )

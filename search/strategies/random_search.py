"""Uniform random search: the baseline every other strategy must beat."""

from __future__ import annotations

from typing import Any, Mapping

from hybridnas.search.strategies.base import Observation, Proposal, Strategy
from hybridnas.space import SearchSpace

__all__ = ["RandomSearch"]


class RandomSearch(Strategy):
    """Uniform samples from the space: the baseline every other strategy must beat."""

    name = "random"

    def propose(self, n: int) -> list[Proposal]:
        return [Proposal(self.space.sample(self.rng)) for _ in range(n)]

    def observe(self, observation: Observation) -> None:
        pass

    @classmethod
    def from_settings(cls, space: SearchSpace, seed: int, directions: tuple[str, ...], settings: Mapping[str, Any]) -> RandomSearch:
        return cls(space, seed, directions)

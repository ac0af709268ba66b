"""Grid search: every design of the space once, in a fixed order."""

from __future__ import annotations

from typing import Any, Mapping

from hybridnas.search.strategies.base import Observation, Proposal, Strategy
from hybridnas.space import SearchSpace

__all__ = ["GridSearch"]


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

    @classmethod
    def from_settings(cls, space: SearchSpace, seed: int, directions: tuple[str, ...], settings: Mapping[str, Any]) -> GridSearch:
        return cls(space, seed, directions)

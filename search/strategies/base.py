"""The interface every search strategy implements, and what passes through it.

A strategy proposes designs and observes their scores; it never touches the store or the executor.
The controller rebuilds a strategy on resume by replaying every recorded observation in order, so a
strategy's state must be a function of (seed, observations so far, proposals so far). A strategy
that keeps state of its own outside the process (the Optuna samplers keep their study in the store's
database) picks it up in `attach` instead of being told the replayed observations again.

To search with your own strategy, subclass `Strategy` and hand an instance (or the class) to
`hybridnas.run_campaign(..., strategy=...)`; it needs no registration.
"""

from __future__ import annotations

import random
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

from hybridnas.space import ArchSpec, SearchSpace

__all__ = ["Observation", "Proposal", "Strategy", "setting"]


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

    def attach(self, store_url: str | None, study_name: str) -> None:
        """Called once by the controller before anything else: the URL of the store the campaign writes
        to (None for an in-memory store) and a name unique to the campaign. A strategy that keeps
        state of its own may keep it there (the Optuna samplers do); most ignore it."""

    def close(self) -> None:
        """Release what the strategy holds (a database connection); the campaign is done with it."""


def setting(settings: Any, key: str, default: Any) -> Any:
    """`settings[key]` (a mapping or the campaign's search section), or `default` when missing or None."""
    value = settings.get(key) if isinstance(settings, dict) else getattr(settings, key, None)
    return default if value is None else value

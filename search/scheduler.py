"""What a free worker slot gets besides a new design: promotions (successive halving) and extra seeds.

The controller records every evaluation as a `Run`; a `Scheduler` looks at them and says which
candidate deserves more training steps, or another seed. It never touches the store, the strategy or
the executor, so a campaign can be given a scheduler of its own.

- Asynchronous successive halving (ASHA, Li et al. 2020) over rungs `steps / eta^k`: a candidate in
  the top 1/eta of the results finished at its rung is re-trained at the next rung, as a new
  evaluation of the same candidate (origin "promotion").
- Noise-aware ranking: once nothing else is left, the final top-k get extra seeds seed+1, seed+2,
  ... at their highest rung (origin "reseed"), so a lead can be told from noise.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["Run", "Scheduler", "rung_steps"]


@dataclass
class Run:
    """What the controller knows of one evaluation."""

    candidate_id: int
    fidelity: int  # training steps
    seed: int
    origin: str  # "search" (a new design), "promotion" or "reseed"
    status: str  # queued | running | done | failed | invalid
    score: float | None = None  # primary objective oriented larger-is-better; None unless done and feasible

    @property
    def finished(self) -> bool:
        return self.status not in ("queued", "running")


def rung_steps(steps: int, eta: int, rungs: int) -> tuple[int, ...]:
    """Training steps of each rung, lowest first: steps / eta^(rungs-1), ..., steps (at least 1 each)."""
    out = [max(1, steps // eta ** (rungs - 1 - i)) for i in range(rungs)]
    return tuple(sorted(set(out)))


class Scheduler:
    """Successive halving over `rungs` (one rung: off) and `reseeds` extra seeds for the `top_k` best."""

    def __init__(self, steps: int, seed: int, eta: int = 0, rungs: int = 1, top_k: int = 0, reseeds: int = 0) -> None:
        self.seed = seed  # the campaign's seed: promotions and rankings use its evaluations
        self.rungs = rung_steps(steps, eta, rungs) if rungs > 1 else (steps,)
        self.eta = eta
        self.top_k = top_k
        self.reseeds = reseeds

    @classmethod
    def from_campaign(cls, file: object) -> Scheduler:
        """The scheduler a campaign file asks for (its search.successive_halving and search.reevaluate)."""
        search, steps, seed = file.search, file.training.steps, file.seed  # type: ignore[attr-defined]
        sh, re = search.successive_halving, search.reevaluate
        return cls(
            steps,
            seed,
            eta=sh.eta if sh else 0,
            rungs=sh.rungs if sh else 1,
            top_k=re.top_k if re else 0,
            reseeds=re.seeds if re else 0,
        )

    @property
    def first_rung(self) -> int:
        """The fidelity a new design starts at."""
        return self.rungs[0]

    def promotion(self, runs: Iterable[Run]) -> tuple[int, int] | None:
        """(candidate id, next rung's steps) of the best promotable candidate, highest rung first."""
        if len(self.rungs) < 2:
            return None
        base = [r for r in runs if r.seed == self.seed and r.origin in ("search", "promotion")]
        for i in range(len(self.rungs) - 2, -1, -1):
            at = [r for r in base if r.fidelity == self.rungs[i] and r.finished]
            k = len(at) // self.eta
            if k == 0:
                continue
            promoted = {r.candidate_id for r in base if r.fidelity == self.rungs[i + 1]}
            ranked = sorted(at, key=lambda r: (r.score is None, -(r.score or 0.0), r.candidate_id))
            for r in ranked[:k]:
                if r.score is not None and r.candidate_id not in promoted:
                    return r.candidate_id, self.rungs[i + 1]
        return None

    def top_candidates(self, runs: Iterable[Run]) -> list[tuple[int, int]]:
        """(candidate id, fidelity) of the best candidates at their highest rung, best first."""
        best: dict[int, Run] = {}
        for r in runs:
            if r.seed == self.seed and r.origin != "reseed" and r.status == "done":
                if r.candidate_id not in best or r.fidelity > best[r.candidate_id].fidelity:
                    best[r.candidate_id] = r
        ranked = sorted(best.values(), key=lambda r: (-r.fidelity, r.score is None, -(r.score or 0.0), r.candidate_id))
        return [(r.candidate_id, r.fidelity) for r in ranked if r.score is not None]

    def reseed(self, runs: Iterable[Run]) -> tuple[int, int, int] | None:
        """(candidate id, fidelity, seed) of the next extra-seed evaluation still to queue."""
        if not self.top_k or not self.reseeds:
            return None
        runs = list(runs)
        have = {(r.candidate_id, r.fidelity, r.seed) for r in runs}
        for cid, fidelity in self.top_candidates(runs)[: self.top_k]:
            for j in range(1, self.reseeds + 1):
                if (cid, fidelity, self.seed + j) not in have:
                    return cid, fidelity, self.seed + j
        return None

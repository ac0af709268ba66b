"""The winner statement: is #1 really better than #2, or within the noise between seeds?

A candidate wins only when its lead over the runner-up exceeds the sum of the two seed standard
deviations; otherwise the report calls a tie. With one seed the spread is unknown and the report
says so rather than guess. `campaign_winner` defers to `Store.winner` where the store offers it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from hybridnas.store.queries import is_number, normalize_direction

WINNER_KEYS: tuple[str, ...] = ("candidate_id", "tie", "lead", "spread", "text")


@dataclass(frozen=True)
class Score:
    """One candidate's objective value, as the leaderboard ranks it."""

    candidate_id: int  # store id
    label: str  # ArchSpec.describe()
    mean: float  # mean of the metric over seeds at the candidate's highest fidelity
    std: float | None  # sample standard deviation over those seeds; None with one seed
    n_seeds: int  # distinct seeds at that fidelity


def _fmt(v: float) -> str:
    return f"{v:.4g}"


def winner_statement(scores: Sequence[Score], metric: str, direction: str) -> dict[str, Any]:
    """{candidate_id, tie, lead, spread, text} from scores ranked best first.

    lead: how much #1 beats #2 (in the metric's units, positive when better); spread: the sum of
    their seed standard deviations, None when either has a single seed (then #1 is named, tie False).
    """
    direction = normalize_direction(direction)
    ranked = [s for s in scores if is_number(s.mean)]
    if not ranked:
        return {"candidate_id": None, "tie": False, "lead": None, "spread": None,
                "text": f"No candidate has a finished evaluation with {metric} yet: no winner."}
    first = ranked[0]
    name1 = f"#{first.candidate_id} {first.label}"
    if len(ranked) == 1:
        return {"candidate_id": first.candidate_id, "tie": False, "lead": None, "spread": None,
                "text": f"{name1} is the only candidate with {metric} ({_fmt(first.mean)}): nothing to compare it with."}
    second = ranked[1]
    name2 = f"#{second.candidate_id} {second.label}"
    lead = first.mean - second.mean if direction == "maximize" else second.mean - first.mean
    if min(first.n_seeds, second.n_seeds) < 2 or first.std is None or second.std is None:
        return {"candidate_id": first.candidate_id, "tie": False, "lead": lead, "spread": None,
                "text": f"{name1} leads on {metric} with {_fmt(first.mean)}, {_fmt(lead)} ahead of {name2} "
                        f"({_fmt(second.mean)}); single seed: spread unknown."}
    spread = first.std + second.std
    if lead > spread:
        return {"candidate_id": first.candidate_id, "tie": False, "lead": lead, "spread": spread,
                "text": f"{name1} wins on {metric} with {_fmt(first.mean)} ± {_fmt(first.std)} over {first.n_seeds} seeds: "
                        f"{_fmt(lead)} ahead of {name2} ({_fmt(second.mean)} ± {_fmt(second.std)}), "
                        f"more than their combined seed spread {_fmt(spread)}."}
    return {"candidate_id": None, "tie": True, "lead": lead, "spread": spread,
            "text": f"Tie on {metric}: {name1} ({_fmt(first.mean)} ± {_fmt(first.std)}) is ahead of {name2} "
                    f"({_fmt(second.mean)} ± {_fmt(second.std)}) by {_fmt(lead)}, within their combined seed spread "
                    f"{_fmt(spread)}; more seeds are needed to separate them."}


def campaign_winner(store: Any, campaign_id: int, metric: str, direction: str, scores: Sequence[Score],
                    task: str | None = None) -> dict[str, Any]:
    """`Store.winner` when the store has it (and no task filter is asked for), else `winner_statement`."""
    if task is None and hasattr(store, "winner"):
        result = dict(store.winner(campaign_id, metric, direction))
        missing = [k for k in WINNER_KEYS if k not in result]
        if not missing:
            return result
    return winner_statement(scores, metric, direction)


__all__ = ["Score", "winner_statement", "campaign_winner", "WINNER_KEYS"]

"""Read-only queries over a campaign: leaderboard, Pareto front, lineage.

Each function takes an open SQLAlchemy `Session`; `Store` wraps them in a read transaction.

The fidelity rule: a candidate is scored at the highest fidelity (training steps) it has a done
evaluation for, and its metrics there are the mean over seeds. Lower-fidelity results of a promoted
candidate do not count, so a candidate is never ranked by a mixture of short and long runs.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from hybridnas.store.models import Campaign, Candidate, CandidateNotFound, CampaignNotFound, Evaluation, Lineage, LineageEdge

#: Keys every leaderboard / Pareto row has, in this order; metrics follow.
ROW_KEYS: tuple[str, ...] = ("rank", "candidate_id", "spec_hash", "label", "generation", "fidelity", "n_seeds")
DIRECTIONS: dict[str, str] = {"maximize": "maximize", "max": "maximize", "minimize": "minimize", "min": "minimize"}


def normalize_direction(direction: str, argument: str = "direction") -> str:
    """'max'/'maximize' -> 'maximize', 'min'/'minimize' -> 'minimize'."""
    d = DIRECTIONS.get(str(direction).lower()) if isinstance(direction, str) else None
    if d is None:
        raise ValueError(f"{argument}: got {direction!r}, allowed: maximize, minimize (or max, min)")
    return d


def flatten_metrics(metrics: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'hw': {'tok_s': 1}} -> {'hw.tok_s': 1}; a metric named like a row key gets a 'metrics.' prefix."""
    out: dict[str, Any] = {}
    for k, v in metrics.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten_metrics(v, key + "."))
        else:
            out[f"metrics.{key}" if key in ROW_KEYS else key] = v
    return out


def is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _mean_metrics(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Mean over seeds of each numeric metric; other values (strings, flags) from the first run that has them."""
    keys: dict[str, None] = {}
    for r in runs:
        keys.update(dict.fromkeys(r))
    out: dict[str, Any] = {}
    for k in keys:
        values = [r[k] for r in runs if k in r]
        numbers = [v for v in values if is_number(v)]
        if numbers:
            out[k] = statistics.fmean(numbers)
            if all(isinstance(v, int) for v in numbers) and out[k] == int(out[k]):
                out[k] = int(out[k])  # counts such as params stay integers
        else:
            out[k] = next((v for v in values if v is not None), None)
    return out


def _std_metrics(runs: Sequence[dict[str, Any]]) -> dict[str, float]:
    """Sample standard deviation over seeds of each numeric metric with two or more values."""
    out: dict[str, float] = {}
    keys = {k for r in runs for k in r}
    for k in keys:
        numbers = [r[k] for r in runs if is_number(r.get(k))]
        if len(numbers) >= 2:
            out[k] = statistics.stdev(numbers)
    return out


def campaign_objectives(config: Any) -> list[tuple[str, str]]:
    """Every (metric, direction) of a campaign's stored config, the primary first: the one reader of it.

    `objectives: [{metric, direction}, ...]` (what a validated campaign file stores), else the
    one-item `objective: {metric, direction}` shorthand, else accuracy / maximize. A malformed entry
    is a ValueError naming it (a stored config is validated when the campaign is created).
    """
    config = config if isinstance(config, Mapping) else {}
    raw, where = config.get("objectives"), "objectives"
    if not raw:
        single = config.get("objective")
        raw, where = ([single] if isinstance(single, Mapping) else []), "objective"
    if not isinstance(raw, Sequence) or isinstance(raw, str):
        raise ValueError(f"config.{where}: got {raw!r}, must be a list of {{metric, direction}}")
    out = []
    for i, item in enumerate(raw):
        at = f"config.{where}" if where == "objective" else f"config.{where}[{i}]"
        if not isinstance(item, Mapping):
            raise ValueError(f"{at}: got {item!r}, must be a mapping with metric and direction")
        metric = item.get("metric", "accuracy")
        if not isinstance(metric, str) or not metric:
            raise ValueError(f"{at}.metric: got {metric!r}, must be a metric name")
        out.append((metric, normalize_direction(item.get("direction", "maximize"), f"{at}.direction")))
    return out or [("accuracy", "maximize")]


def primary_objective(config: Any) -> tuple[str, str]:
    """(metric, direction) of a campaign's first objective."""
    return campaign_objectives(config)[0]


def _require_campaign(session: Session, campaign_id: int) -> None:
    if session.get(Campaign, campaign_id) is None:
        raise CampaignNotFound(f"campaign id {campaign_id} not found")


def scored_candidates(session: Session, campaign_id: int, task: str | None = None) -> list[dict[str, Any]]:
    """One row per candidate with a done evaluation: its highest fidelity and the seed-mean metrics there."""
    _require_campaign(session, campaign_id)
    q = (
        select(
            Candidate.id,
            Candidate.spec_hash,
            Candidate.label,
            Candidate.generation,
            Evaluation.fidelity,
            Evaluation.seed,
            Evaluation.metrics,
        )
        .join(Evaluation, Evaluation.candidate_id == Candidate.id)
        .where(Candidate.campaign_id == campaign_id, Evaluation.status == "done")
        .order_by(Candidate.id, Evaluation.id)
    )
    if task is not None:
        q = q.where(Evaluation.task == task)
    by_candidate: dict[int, list[Any]] = defaultdict(list)
    for row in session.execute(q):
        by_candidate[row.id].append(row)
    rows = []
    for cid, evals in by_candidate.items():
        top = max(e.fidelity for e in evals)
        at_top = [e for e in evals if e.fidelity == top]
        first = evals[0]
        row: dict[str, Any] = {
            "rank": 0,
            "candidate_id": cid,
            "spec_hash": first.spec_hash,
            "label": first.label,
            "generation": first.generation,
            "fidelity": top,
            "n_seeds": len({e.seed for e in at_top}),
        }
        runs = [flatten_metrics(e.metrics or {}) for e in at_top]
        row.update(_mean_metrics(runs))
        row["_std"] = _std_metrics(runs)  # popped by the public queries
        rows.append(row)
    return rows


def _check_metric(rows: Iterable[dict[str, Any]], metric: str, campaign_id: int, argument: str) -> None:
    rows = list(rows)
    if not rows or any(is_number(r.get(metric)) for r in rows):
        return
    known = sorted({k for r in rows for k, v in r.items() if k not in ROW_KEYS and is_number(v)})
    raise ValueError(
        f"{argument}: {metric!r} is not a numeric metric of any candidate in campaign {campaign_id}; "
        f"recorded: {', '.join(known) or '(none)'}"
    )


def _sort_key(value: Any, direction: str) -> tuple[bool, float]:
    # Candidates without the metric go last; maximize sorts descending.
    if not is_number(value):
        return (True, 0.0)
    return (False, -value if direction == "maximize" else value)


def leaderboard(
    session: Session,
    campaign_id: int,
    metric: str = "accuracy",
    direction: str = "maximize",
    limit: int | None = None,
    task: str | None = None,
) -> list[dict[str, Any]]:
    """Candidates ranked by `metric` at their highest done fidelity (mean over seeds); ties by id.

    Rows: rank, candidate_id, spec_hash, label, generation, fidelity, n_seeds, then the metrics
    (nested ones flattened as 'a.b'). Candidates lacking the metric come last.
    """
    direction = normalize_direction(direction)
    if limit is not None and (not isinstance(limit, int) or limit < 0):
        raise ValueError(f"limit: got {limit!r}, must be a non-negative integer or None")
    rows = scored_candidates(session, campaign_id, task)
    _check_metric(rows, metric, campaign_id, "metric")
    rows.sort(key=lambda r: (_sort_key(r.get(metric), direction), r["candidate_id"]))
    for i, r in enumerate(rows, 1):
        r["rank"] = i
        r[f"{metric}_std"] = r.pop("_std").get(metric)  # spread over seeds; None with one seed
    return rows if limit is None else rows[:limit]


def _fmt(v: float) -> str:
    return f"{v:.4g}"


def winner(rows: Sequence[dict[str, Any]], metric: str, direction: str) -> dict[str, Any]:
    """Is the leaderboard's #1 a winner, or tied with #2 within the seed spread? The one verdict.

    `rows` are leaderboard rows, best first (label, the metric's seed mean, `<metric>_std`,
    n_seeds). #1 wins only when its lead over #2 exceeds the spread, the sum of their seed standard
    deviations; with a single seed on either the spread is unknown and #1 is named without a claim.
    Returns {candidate_id, tie, lead, spread, text}; candidate_id is None on a tie or with no candidate.
    """
    direction = normalize_direction(direction)
    scored = [r for r in rows if is_number(r.get(metric))]
    if not scored:
        return {"candidate_id": None, "tie": False, "lead": None, "spread": None,
                "text": f"No candidate has a finished evaluation with {metric} yet: no winner."}
    first = scored[0]
    name1 = f"#{first['candidate_id']} {first.get('label', '')}".rstrip()
    if len(scored) == 1:
        return {"candidate_id": first["candidate_id"], "tie": False, "lead": None, "spread": None,
                "text": f"{name1} is the only candidate with {metric} ({_fmt(first[metric])}): nothing to compare it with."}
    second = scored[1]
    name2 = f"#{second['candidate_id']} {second.get('label', '')}".rstrip()
    m1, m2 = float(first[metric]), float(second[metric])
    lead = m1 - m2 if direction == "maximize" else m2 - m1
    s1, s2 = first.get(f"{metric}_std"), second.get(f"{metric}_std")
    if s1 is None or s2 is None:
        return {"candidate_id": first["candidate_id"], "tie": False, "lead": lead, "spread": None,
                "text": f"{name1} leads on {metric} with {_fmt(m1)}, {_fmt(lead)} ahead of {name2} ({_fmt(m2)}); "
                        f"single seed: spread unknown, re-evaluate the top candidates with more seeds to tell."}
    spread = float(s1) + float(s2)
    n1, n2 = first.get("n_seeds", "?"), second.get("n_seeds", "?")
    if lead > spread:
        return {"candidate_id": first["candidate_id"], "tie": False, "lead": lead, "spread": spread,
                "text": f"{name1} wins on {metric} with {_fmt(m1)} ± {_fmt(float(s1))} over {n1} seeds: "
                        f"{_fmt(lead)} ahead of {name2} ({_fmt(m2)} ± {_fmt(float(s2))}, {n2} seeds), "
                        f"more than their combined seed spread {_fmt(spread)}."}
    return {"candidate_id": None, "tie": True, "lead": lead, "spread": spread,
            "text": f"Tie on {metric}: {name1} ({_fmt(m1)} ± {_fmt(float(s1))}) is ahead of {name2} "
                    f"({_fmt(m2)} ± {_fmt(float(s2))}) by {_fmt(lead)}, within their combined seed spread "
                    f"{_fmt(spread)}; more seeds are needed to separate them."}


def _dominates(a: Sequence[float], b: Sequence[float]) -> bool:
    """a dominates b: no worse in every objective, better in one (values already oriented to minimize)."""
    return all(x <= y for x, y in zip(a, b)) and any(x < y for x, y in zip(a, b))


def pareto(
    session: Session,
    campaign_id: int,
    objectives: Sequence[tuple[str, str]],
    task: str | None = None,
) -> list[dict[str, Any]]:
    """The non-dominated candidates under `objectives` [(metric, 'maximize'|'minimize'), ...].

    Same rows as `leaderboard`, ordered by the first objective (then the next ones, then id).
    Candidates missing any objective metric are left out.
    """
    if not objectives:
        raise ValueError("objectives: need at least one (metric, direction) pair")
    objs = []
    for i, obj in enumerate(objectives):
        if not (isinstance(obj, (tuple, list)) and len(obj) == 2 and isinstance(obj[0], str)):
            raise ValueError(f"objectives[{i}]: got {obj!r}, expected (metric, 'maximize' | 'minimize')")
        objs.append((obj[0], normalize_direction(obj[1], f"objectives[{i}]")))
    rows = scored_candidates(session, campaign_id, task)
    for r in rows:
        r.pop("_std")
    for i, (metric, _) in enumerate(objs):
        _check_metric(rows, metric, campaign_id, f"objectives[{i}]")
    rows = [r for r in rows if all(is_number(r.get(m)) for m, _ in objs)]
    # Orient every objective to "smaller is better".
    points = [tuple(-r[m] if d == "maximize" else r[m] for m, d in objs) for r in rows]
    front = [r for i, r in enumerate(rows) if not any(_dominates(points[j], points[i]) for j in range(len(rows)) if j != i)]
    front.sort(key=lambda r: (*(_sort_key(r[m], d) for m, d in objs), r["candidate_id"]))
    for i, r in enumerate(front, 1):
        r["rank"] = i
    return front


def lineage(session: Session, candidate_id: int) -> list[LineageEdge]:
    """Every ancestry edge of a candidate, nearest first (recursive CTE; UNION stops on any cycle)."""
    if session.get(Candidate, candidate_id) is None:
        raise CandidateNotFound(f"candidate id {candidate_id} not found")
    anc = (
        select(Lineage.child_id, Lineage.parent_id, Lineage.operator)
        .where(Lineage.child_id == candidate_id)
        .cte("ancestry", recursive=True)
    )
    anc = anc.union(
        select(Lineage.child_id, Lineage.parent_id, Lineage.operator).join(anc, Lineage.child_id == anc.c.parent_id)
    )
    edges = session.execute(select(anc.c.child_id, anc.c.parent_id, anc.c.operator)).all()
    by_child: dict[int, list[tuple[int, str]]] = defaultdict(list)
    for child, parent, op in edges:
        by_child[child].append((parent, op))
    # Breadth-first from the candidate gives each edge its depth (a shared ancestor counts once, nearest).
    out: list[LineageEdge] = []
    seen = {candidate_id}
    frontier = [candidate_id]
    depth = 0
    while frontier:
        depth += 1
        nxt: list[int] = []
        for child in sorted(frontier):
            for parent, op in sorted(by_child.get(child, [])):
                out.append(LineageEdge(child_id=child, parent_id=parent, operator=op, depth=depth))
                if parent not in seen:
                    seen.add(parent)
                    nxt.append(parent)
        frontier = nxt
    return out

"""Everything a campaign report shows, read from the store once and shaped for the page.

Kept apart from the HTML so the numbers can be checked without a browser: `collect` reads the
store (leaderboard, Pareto fronts, evaluations, lineage) and derives the rest (seed spread, the
best-so-far curve, hybrid ratio and mixer of each design, why evaluations failed or are invalid).
"""

from __future__ import annotations

import statistics
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from hybridnas.space.spec import ALL_LINEAR, FULL_MIXERS, PLACEMENTS, ArchSpec
from hybridnas.store.models import CampaignInfo, CandidateNotFound, EvaluationInfo
from hybridnas.store.queries import ROW_KEYS, campaign_objectives, flatten_metrics, is_number, normalize_direction

ACCURACY = "accuracy"
STATE_BYTES = "cost_state_bytes"
PREFILL = "prefill_tokens_per_s"
DECODE = "decode_tokens_per_s"


@dataclass(frozen=True)
class Objective:
    """One metric the campaign optimizes."""

    metric: str  # a recorded metric name, e.g. "accuracy"
    direction: str  # "maximize" | "minimize"


def objectives_from_config(config: Mapping[str, Any] | None) -> tuple[Objective, ...]:
    """The campaign's objectives, primary first (read by `hybridnas.store.queries.campaign_objectives`)."""
    return tuple(Objective(m, d) for m, d in campaign_objectives(config))


def hybrid_shape(spec: ArchSpec) -> tuple[str, str]:
    """(linear-to-full ratio, mixer) of a design, for grouping.

    Hybrid genes give them directly (unless an explicit L/A pattern overrides the ratio); otherwise
    the layers are counted. The mixer is the linear mixer (several joined by '+'), or the full
    mixer when the model has no linear layer.
    """
    pattern = spec.pattern
    n_full, n_lin = pattern.count("A"), pattern.count("L")
    genes = spec.hybrid
    if genes is not None and genes.placement in PLACEMENTS:
        ratio = ALL_LINEAR if genes.ratio == ALL_LINEAR else str(genes.ratio)
    elif n_full == 0:
        ratio = ALL_LINEAR
    else:
        r = n_lin / n_full
        ratio = str(int(r)) if r == int(r) else f"{r:.2g}"
    if genes is not None:
        mixer = genes.linear_mixer if n_lin else genes.full_mixer
    else:
        linear = [m for m in spec.mixers if m not in FULL_MIXERS]
        mixer = "+".join(dict.fromkeys(linear)) if linear else "+".join(dict.fromkeys(spec.mixers))
    return ratio, mixer


def ratio_order(ratio: str) -> tuple[int, float, str]:
    """Sort ratios numerically, all_linear last."""
    if ratio == ALL_LINEAR:
        return (1, 0.0, ratio)
    try:
        return (0, float(ratio), ratio)
    except ValueError:
        return (0, float("inf"), ratio)


@dataclass(frozen=True)
class Entry:
    """One leaderboard row, with the seed spread of each metric and the design's hybrid shape."""

    rank: int  # 1 = best by the primary objective
    candidate_id: int  # store id
    label: str  # ArchSpec.describe()
    generation: int  # 0 for sampled designs
    fidelity: int  # training steps the row is scored at (the highest done)
    n_seeds: int  # distinct seeds at that fidelity
    metrics: dict[str, Any]  # seed-mean metrics (flattened names)
    std: dict[str, float]  # sample std over seeds, per numeric metric; absent with one seed
    spec: ArchSpec  # the design
    ratio: str  # linear-to-full ratio ("3", "all_linear", ...)
    mixer: str  # linear mixer (or full mixer for an all-full model)

    def get(self, metric: str) -> float | None:
        v = self.metrics.get(metric)
        return v if is_number(v) else None


@dataclass(frozen=True)
class Problem:
    """A failed evaluation, or a done one whose objective metrics are unusable."""

    evaluation_id: int  # store id
    candidate_id: int  # store id
    label: str  # ArchSpec.describe()
    task: str  # proxy task
    fidelity: int  # training steps
    seed: int  # evaluation seed
    kind: str  # "failed" | "invalid" (failed the causality/equivalence checks) | "unscored" (done, objective missing)
    reason: str  # the worker's error text, or what is wrong with the metrics


@dataclass(frozen=True)
class Front:
    """A two-objective Pareto plot: every candidate with both values, and which ones are on the front."""

    x_metric: str  # what x shows (after `x_transform`)
    points: tuple[tuple[Entry, float, float], ...]  # (candidate, x value, y value)
    front_ids: frozenset[int]  # candidate ids on the front
    note: str = ""  # why there is nothing to plot, when there is not


@dataclass(frozen=True)
class Progress:
    """The objective of each done evaluation in finishing order, and the best value so far."""

    metric: str  # objective metric
    direction: str  # maximize | minimize
    values: tuple[tuple[float, str], ...]  # (value, tooltip) per evaluation, by finished_at
    best: tuple[float, ...]  # running best after each evaluation


@dataclass(frozen=True)
class Lineage:
    """The ancestors of one candidate: node ids with their depth and the parent edges with operators."""

    candidate_id: int  # the winner (or leader)
    depth: dict[int, int]  # candidate id -> generations back (0 = the candidate)
    edges: tuple[tuple[int, int, str], ...]  # (child, parent, operator), nearest first
    labels: dict[int, str]  # candidate id -> label
    generation: dict[int, int]  # candidate id -> generation


@dataclass(frozen=True)
class ReportData:
    """What the page shows; built by `collect`."""

    campaign: CampaignInfo  # name, status, config, counts
    objectives: tuple[Objective, ...]  # primary first
    task: str | None  # task filter, if any
    entries: tuple[Entry, ...]  # the leaderboard, ranked by the primary objective
    winner: dict[str, Any]  # candidate_id, tie, lead, spread, text
    counts: dict[str, int]  # done (scored), failed, invalid, unscored, queued, running, total
    devices: tuple[str, ...]  # devices the measured hardware figures came from
    fronts: tuple[Front, ...]  # accuracy vs state bytes, accuracy vs latency
    progress: tuple[Progress, ...]  # one per objective
    lineage: Lineage | None  # of the winner, or of the leader in a tie
    problems: tuple[Problem, ...]  # failed and invalid evaluations
    extra_columns: tuple[str, ...] = field(default=())  # objective metrics the fixed columns do not show

    @property
    def primary(self) -> Objective:
        return self.objectives[0]

    def by_group(self, attr: str, metric: str = ACCURACY) -> list[tuple[str, list[Entry]]]:
        """Entries with `metric` grouped by `ratio` or `mixer`, groups in a stable readable order."""
        groups: dict[str, list[Entry]] = defaultdict(list)
        for e in self.entries:
            if e.get(metric) is not None:
                groups[getattr(e, attr)].append(e)
        keys = sorted(groups, key=ratio_order) if attr == "ratio" else sorted(groups)
        return [(k, groups[k]) for k in keys]


# --- building --------------------------------------------------------------------------------------


def _seed_spread(evals: Sequence[EvaluationInfo], task: str | None) -> dict[int, dict[str, float]]:
    """Per candidate, the sample std over its done evaluations at its highest fidelity (the leaderboard's rule)."""
    by_cand: dict[int, list[EvaluationInfo]] = defaultdict(list)
    for ev in evals:
        if ev.status == "done" and (task is None or ev.task == task):
            by_cand[ev.candidate_id].append(ev)
    out: dict[int, dict[str, float]] = {}
    for cid, runs in by_cand.items():
        top = max(ev.fidelity for ev in runs)
        flat = [flatten_metrics(ev.metrics) for ev in runs if ev.fidelity == top]
        std: dict[str, float] = {}
        for key in {k for m in flat for k in m}:
            values = [m[key] for m in flat if is_number(m.get(key))]
            if len(values) >= 2:
                std[key] = statistics.stdev(values)
        out[cid] = std
    return out


def _problems(evals: Sequence[EvaluationInfo], objectives: Sequence[Objective], task: str | None) -> list[Problem]:
    """Failed evaluations with the worker's reason; done ones missing a finite objective value, with what is missing."""
    out = []
    for ev in evals:
        if task is not None and ev.task != task:
            continue
        label = ev.spec.describe()
        common = dict(evaluation_id=ev.id, candidate_id=ev.candidate_id, label=label, task=ev.task, fidelity=ev.fidelity, seed=ev.seed)
        if ev.status in ("failed", "invalid"):
            out.append(Problem(**common, kind=ev.status, reason=(ev.error or "no reason recorded").strip()))
        elif ev.status == "done":
            flat = flatten_metrics(ev.metrics)
            bad = []
            for o in objectives:
                if o.metric not in flat:
                    bad.append(f"{o.metric} was not recorded")
                elif not is_number(flat[o.metric]):
                    bad.append(f"{o.metric} is null (it was NaN or infinite when recorded)" if flat[o.metric] is None
                               else f"{o.metric} is {flat[o.metric]!r}, not a number")
            if bad:
                out.append(Problem(**common, kind="unscored", reason="; ".join(bad)))
    return out


def _front(store: Any, campaign_id: int, entries: Sequence[Entry], x_metric: str, x_dir: str, task: str | None,
           transform: Any = None, missing: str = "") -> Front:
    """Accuracy vs `x_metric`; the front comes from Store.pareto on the stored metrics (a monotone transform keeps it)."""
    have = [e for e in entries if e.get(ACCURACY) is not None and e.get(x_metric) is not None]
    if transform is not None:
        have = [e for e in have if e.get(x_metric) > 0]
    if not have:
        why = missing or f"no candidate has both {ACCURACY} and {x_metric} recorded"
        return Front(x_metric, (), frozenset(), note=why)
    rows = store.pareto(campaign_id, [(ACCURACY, "maximize"), (x_metric, x_dir)], task=task)
    ids = frozenset(r["candidate_id"] for r in rows)
    pts = tuple((e, transform(e.get(x_metric)) if transform else e.get(x_metric), e.get(ACCURACY)) for e in have)
    return Front(x_metric, pts, ids)


def _progress(evals: Sequence[EvaluationInfo], objective: Objective, task: str | None, invalid: set[int]) -> Progress:
    """Invalid evaluations are left out: a design without its primary score is no progress on another objective."""
    done = [ev for ev in evals if ev.status == "done" and ev.finished_at is not None and ev.id not in invalid
            and (task is None or ev.task == task)]
    done.sort(key=lambda ev: (ev.finished_at, ev.id))
    values: list[tuple[float, str]] = []
    best: list[float] = []
    better = max if objective.direction == "maximize" else min
    for ev in done:
        v = flatten_metrics(ev.metrics).get(objective.metric)
        if not is_number(v):
            continue
        n = len(values) + 1
        tip = (f"evaluation {n} (id {ev.id}), finished {ev.finished_at:%Y-%m-%d %H:%M:%S}: #{ev.candidate_id} "
               f"{ev.spec.describe()}, seed {ev.seed}, {ev.fidelity} steps: {objective.metric} = {v:.4g}")
        values.append((float(v), tip))
        best.append(float(v) if not best else better(best[-1], float(v)))
    return Progress(objective.metric, objective.direction, tuple(values), tuple(best))


def _lineage(store: Any, candidate_id: int, labels: dict[int, str], generations: dict[int, int]) -> Lineage:
    edges = store.lineage(candidate_id)
    depth = {candidate_id: 0}
    for e in edges:  # nearest first: the first depth seen is the shortest path
        depth.setdefault(e.parent_id, e.depth)
    for cid in depth:
        if cid not in labels:
            try:
                info = store.candidate(cid)
            except CandidateNotFound:
                continue
            labels[cid], generations[cid] = info.label, info.generation
    return Lineage(candidate_id, depth, tuple((e.child_id, e.parent_id, e.operator) for e in edges),
                   {k: labels.get(k, "?") for k in depth}, {k: generations.get(k, 0) for k in depth})


def _leaderboard(store: Any, campaign_id: int, objective: Objective, task: str | None, evals: Sequence[EvaluationInfo],
                 explicit: bool) -> list[dict[str, Any]]:
    """Store.leaderboard by the objective; when the campaign's own objective was never recorded (every
    evaluation invalid), the scored candidates in id order, so the report still shows them."""
    try:
        return store.leaderboard(campaign_id, metric=objective.metric, direction=objective.direction, task=task)
    except ValueError:
        if explicit:
            raise
    recorded = sorted({k for ev in evals if ev.status == "done" and (task is None or ev.task == task)
                       for k, v in flatten_metrics(ev.metrics).items() if is_number(v)})
    if not recorded:
        return []
    rows = sorted(store.leaderboard(campaign_id, metric=recorded[0], task=task), key=lambda r: r["candidate_id"])
    for i, r in enumerate(rows, 1):
        r["rank"] = i
    return rows


def collect(store: Any, campaign: CampaignInfo, *, metric: str | None = None, direction: str | None = None,
            task: str | None = None) -> ReportData:
    """Read everything the report shows for `campaign`.

    metric/direction, when given, replace the primary objective of the campaign config. ValueError
    (naming the option) when the metric was never recorded or the config's objectives are malformed.
    """
    objectives = list(objectives_from_config(campaign.config))
    if metric is not None or direction is not None:
        base = objectives[0]
        name = metric or base.metric
        if direction is not None:
            way = normalize_direction(direction, "direction")
        else:  # a new metric defaults to maximize; the configured one keeps its direction
            way = base.direction if name == base.metric else "maximize"
        primary = Objective(name, way)
        objectives = [primary] + [o for o in objectives if o.metric != primary.metric]
    first = objectives[0]
    evals = store.evaluations(campaign.id)
    rows = _leaderboard(store, campaign.id, first, task, evals, explicit=metric is not None)
    spread = _seed_spread(evals, task)
    specs = {ev.candidate_id: ev.spec for ev in evals}
    # Row keys that are not metrics: the fixed ones, and the seed spread newer stores add beside the ranked metric.
    not_metrics = {*ROW_KEYS, f"{first.metric}_std"}
    entries = []
    for r in rows:
        spec = specs[r["candidate_id"]]
        ratio, mixer = hybrid_shape(spec)
        entries.append(Entry(
            rank=r["rank"], candidate_id=r["candidate_id"], label=r["label"], generation=r["generation"],
            fidelity=r["fidelity"], n_seeds=r["n_seeds"], metrics={k: v for k, v in r.items() if k not in not_metrics},
            std=spread.get(r["candidate_id"], {}), spec=spec, ratio=ratio, mixer=mixer,
        ))
    winner = store.winner(campaign.id, first.metric, first.direction, task=task)

    status = Counter(ev.status for ev in evals if task is None or ev.task == task)
    problems = _problems(evals, objectives, task)
    n_unscored = sum(p.kind == "unscored" for p in problems)
    counts = {  # no overlap: unscored ones finished "done" but without a usable objective value
        "total": sum(status.values()),
        "done": status["done"] - n_unscored,
        "failed": status["failed"],
        "invalid": status["invalid"],
        "unscored": n_unscored,
        "queued": status["queued"],
        "running": status["running"],
    }
    devices = sorted({ev.device for ev in evals if ev.status == "done" and ev.device
                      and any(k in flatten_metrics(ev.metrics) for k in (PREFILL, DECODE, "peak_memory_bytes"))})

    fronts = (
        _front(store, campaign.id, entries, STATE_BYTES, "minimize", task),
        _front(store, campaign.id, entries, PREFILL, "maximize", task, transform=lambda tps: 1e6 / tps,
               missing=f"latency not measured: no candidate has both {ACCURACY} and {PREFILL} recorded"),
    )
    unscored = {p.evaluation_id for p in problems if p.kind == "unscored"}
    progress = tuple(_progress(evals, o, task, unscored) for o in objectives)

    leader = winner.get("candidate_id")
    if leader is None and winner.get("tie") and entries:
        leader = entries[0].candidate_id  # a tie: show the ancestry of the current #1
    labels = {e.candidate_id: e.label for e in entries}
    generations = {e.candidate_id: e.generation for e in entries}
    lineage = _lineage(store, leader, labels, generations) if leader is not None else None

    shown = {ACCURACY, "loss", "params", STATE_BYTES, PREFILL, DECODE}
    extra = tuple(o.metric for o in objectives if o.metric not in shown)
    return ReportData(campaign, tuple(objectives), task, tuple(entries), winner, counts, tuple(devices), fronts, progress,
                      lineage, tuple(problems), extra)


__all__ = ["Objective", "Entry", "Problem", "Front", "Progress", "Lineage", "ReportData", "collect",
           "objectives_from_config", "hybrid_shape"]

"""The controller: the loop that keeps the workers busy and records every result.

It is the only process that writes to the store during a campaign. It keeps up to
`executor.capacity` evaluations in flight and records each result the moment it arrives (one
transaction per result, so a kill loses nothing that was recorded). Each free slot goes, in order,
to a promotion from the scheduler, a new design from the strategy (until `search.budget` designs
exist; known designs and those an analytic constraint refuses are skipped), or an extra seed from
the scheduler once nothing else is left. Its parts:

- the strategy (`hybridnas.search.strategies`): proposes designs, observes their scores;
- the scheduler (`scheduler.py`): successive halving and extra seeds;
- the lease (`lease.py`): one controller per campaign.

Everything it needs to resume lives in the store. On start it replays every recorded base-rung
result into the strategy (in the order they were recorded), re-submits queued and running
evaluations, and goes on. Every proposal's randomness is a function of (seed, candidate index,
attempt), so a campaign killed at any moment and resumed proposes what an uninterrupted run with the
same seed would have, given the same order of results. `campaign stop` sets a flag the loop polls:
in-flight work is cancelled and handed back as queued, and the campaign is left "stopped".
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

from hybridnas.search.campaign import ANALYTIC_METRICS, Campaign
from hybridnas.search.lease import LEASE_TTL_S, Lease
from hybridnas.search.scheduler import Run, Scheduler
from hybridnas.search.strategies import Observation, Proposal, Strategy, make_strategy
from hybridnas.space import ArchSpec
from hybridnas.space.cost import estimate_cost
from hybridnas.store import Store
from hybridnas.workers import EvalRequest, EvalResult, Executor

#: How many designs in a row a constraint may reject before the campaign stops proposing.
MAX_REJECTIONS = 200
#: Cap on known designs proposed in a row; a replaying strategy (after resume) proposes many of them.
MAX_DUPLICATES = 100_000
#: How often the loop looks for a stop request while evaluations run.
POLL_S = 1.0


class LeaseLost(RuntimeError):
    """Another controller took the campaign over (`resume --force`); this one stopped and wrote nothing more."""


@dataclass(frozen=True)
class Event:
    """Progress notice for a UI: kind is submitted | done | failed | invalid | rejected | promoted |
    reseeded | resumed | exhausted | stopping."""

    kind: str
    candidate_id: int | None = None
    label: str = ""
    detail: str = ""


@dataclass(frozen=True)
class RunSummary:
    evaluated: int  # evaluations finished in this campaign (all runs), done, failed or invalid
    failed: int  # failed or invalid
    rejected: int  # proposals refused by a constraint in this run
    exhausted: bool  # the strategy ran out of new designs before the budget
    wall_time_s: float
    promotions: int = 0  # evaluations at a higher rung (all runs)
    reseeds: int = 0  # extra-seed evaluations (all runs)
    stopped: bool = False  # ended by `campaign stop` (or a signal) before finishing


def score_of(metrics: dict[str, Any] | None, metric: str, direction: str) -> float | None:
    """The objective oriented so that larger is better, or None when it is missing or not finite."""
    value = _number(metrics, metric)
    if value is None:
        return None
    return value if direction == "maximize" else -value


def _number(metrics: dict[str, Any] | None, metric: str) -> float | None:
    if not metrics or metric not in metrics:
        return None
    try:
        value = float(metrics[metric])
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


class Controller:
    """Runs one campaign to its budget (or until stopped); see the module docstring.

    `strategy` and `scheduler` default to what the campaign file names; pass your own (a `Strategy`
    subclass needs no registration). `force` takes the campaign even if another controller's lease
    looks live.
    """

    def __init__(
        self,
        store: Store,
        campaign: Campaign,
        campaign_id: int,
        executor: Executor,
        on_event: Callable[[Event], None] | None = None,
        *,
        strategy: Strategy | None = None,
        scheduler: Scheduler | None = None,
        force: bool = False,
        lease_ttl_s: float = LEASE_TTL_S,
    ) -> None:
        self.store = store
        self.campaign = campaign
        self.campaign_id = campaign_id
        self.executor = executor
        self.on_event = on_event or (lambda e: None)
        f = campaign.file
        self.objectives = tuple((o.metric, o.direction) for o in f.objectives)
        self.strategy: Strategy = strategy or make_strategy(
            f.search.strategy, campaign.space, f.seed, tuple(d for _, d in self.objectives), f.search
        )
        self.scheduler = scheduler or Scheduler.from_campaign(f)
        self.lease = Lease(store, campaign_id, lease_ttl_s, force)
        self.task_name = campaign.task.name
        self.pre_bounds = [b for b in f.constraints if b.metric in ANALYTIC_METRICS]
        self.post_bounds = [b for b in f.constraints if b.metric not in ANALYTIC_METRICS]
        self._specs: dict[int, ArchSpec] = {}
        self._labels: dict[int, str] = {}
        self._runs: dict[int, Run] = {}  # evaluation id -> what we know of it
        self._in_flight: dict[int, int] = {}  # evaluation id -> candidate id
        self._generations: dict[int, int] = {}  # candidate id -> generation (lineage depth)
        self._hashes: set[str] = set()  # designs already in the campaign
        self._rejected: set[str] = set()  # designs a constraint refused
        self._known: dict[str, Observation] = {}  # spec hash -> what the strategy observed of that design
        self._stop = threading.Event()  # set by request_stop(), a stop flag in the store, or a lost lease
        self._exhausted = False
        self.n_candidates = 0
        self.n_finished = 0
        self.n_failed = 0
        self.n_rejected = 0

    # -- state from the store ------------------------------------------------------------------
    def _spec(self, candidate_id: int) -> ArchSpec:
        if candidate_id not in self._specs:
            info = self.store.candidate(candidate_id)
            spec = info.spec if isinstance(info.spec, ArchSpec) else ArchSpec.from_dict(info.spec)
            self._specs[candidate_id] = spec
            self._labels[candidate_id] = spec.describe()
        return self._specs[candidate_id]

    def _restore(self) -> list[Any]:
        """Replay recorded results into the strategy; return the evaluations to run again."""
        evaluations = self.store.evaluations(self.campaign_id)
        for e in evaluations:
            self._specs.setdefault(e.candidate_id, e.spec)
            self._labels.setdefault(e.candidate_id, e.spec.describe())
            self._generations.setdefault(e.candidate_id, e.generation)
            self._hashes.add(e.spec.spec_hash)
            self._runs[e.id] = Run(e.candidate_id, e.fidelity, e.seed, e.origin, e.status)
        self.n_candidates = len({e.candidate_id for e in evaluations})
        finished = [e for e in evaluations if e.status not in ("queued", "running")]
        finished.sort(key=lambda e: (e.finished_at is None, e.finished_at or 0, e.id))
        for e in finished:
            self._observe(e.id, e.status, e.metrics)
        unfinished = [e for e in evaluations if e.status in ("queued", "running")]
        if evaluations:
            self.on_event(Event("resumed", detail=f"{len(finished)} recorded, {len(unfinished)} to re-run"))
        return unfinished

    def _infeasible(self, metrics: dict[str, Any] | None) -> str | None:
        for b in self.post_bounds:
            reason = b.violation(_number(metrics, b.metric))
            if reason is not None:
                return reason
        return None

    def _observe(self, evaluation_id: int, status: str, metrics: dict[str, Any] | None) -> None:
        run = self._runs[evaluation_id]
        run.status = status
        metric, direction = self.objectives[0]
        feasible = status == "done" and self._infeasible(metrics) is None
        run.score = score_of(metrics, metric, direction) if feasible else None
        self.n_finished += 1
        self.n_failed += status != "done"
        if run.origin != "search":
            return  # strategies learn from first evaluations only; promotions and reseeds are ours
        values: tuple[float, ...] = ()
        if status == "done":
            got = tuple(_number(metrics, m) for m, _ in self.objectives)
            values = tuple(v for v in got if v is not None) if all(v is not None for v in got) else ()
        cid = run.candidate_id
        spec = self._spec(cid)
        observation = Observation(cid, spec, run.score, dict(metrics or {}), values, feasible)
        self._known.setdefault(spec.spec_hash, observation)  # told again when the design is re-proposed
        self.strategy.observe(observation)

    # -- proposing -----------------------------------------------------------------------------
    def _violation(self, spec: ArchSpec) -> str | None:
        if not self.pre_bounds:
            return None
        cost = estimate_cost(spec, context_len=self.campaign.file.hardware.context_len)
        values = {
            "cost_params": float(cost.params),
            "cost_flops_per_token": float(cost.flops_per_token),
            "cost_state_bytes": float(cost.state_bytes),
        }
        for b in self.pre_bounds:
            reason = b.violation(values[b.metric])
            if reason is not None:
                return reason
        return None

    def _next_proposal(self) -> Proposal | None:
        """The next design that is new and within the constraints, or None when none seems left.

        Known designs are skipped cheaply and counted apart from constraint rejections: after a
        resume the strategy re-proposes many recorded designs, which says nothing about exhaustion.
        """
        rejections = duplicates = attempt = 0
        limit = min(MAX_DUPLICATES, max(MAX_REJECTIONS, 4 * self.campaign.space.size()))
        while rejections < MAX_REJECTIONS and duplicates < limit:
            self.strategy.reseed(self.n_candidates, attempt)
            attempt += 1
            (proposal,) = self.strategy.propose(1)
            h = proposal.spec.spec_hash
            if h in self._hashes or h in self._rejected:
                duplicates += 1
                self.strategy.discard(proposal, "duplicate", self._known.get(h))  # None while it still runs
                continue
            reason = self._violation(proposal.spec)
            if reason is not None:
                rejections += 1
                self._rejected.add(h)
                self.n_rejected += 1
                self.strategy.discard(proposal, f"constraint: {reason}")
                self.on_event(Event("rejected", label=proposal.spec.describe(), detail=reason))
                continue
            return proposal
        return None

    # -- submitting and recording ---------------------------------------------------------------
    def _request(self, evaluation_id: int) -> EvalRequest:
        f = self.campaign.file
        run = self._runs[evaluation_id]
        return EvalRequest(
            evaluation_id=evaluation_id,
            spec_json=self._spec(run.candidate_id).to_json(),
            task=dict(f.task),
            train=f.training.to_dict(),
            steps=run.fidelity,
            seed=run.seed,
            timeout_s=f.execution.timeout_s,
            measure=f.hardware.model_dump(),
        )

    def _submit(self, evaluation_id: int) -> None:
        candidate_id = self._runs[evaluation_id].candidate_id
        self.store.mark_running(evaluation_id)
        self._runs[evaluation_id].status = "running"
        self.executor.submit(self._request(evaluation_id))
        self._in_flight[evaluation_id] = candidate_id
        self.on_event(Event("submitted", candidate_id, self._labels[candidate_id]))

    def _record(self, result: EvalResult) -> None:
        candidate_id = self._in_flight.pop(result.evaluation_id)
        self.store.finish_evaluation(
            result.evaluation_id,
            status=result.status,
            metrics=result.metrics,
            error=result.error,
            host=result.host,
            device=result.device,
            wall_time_s=result.wall_time_s,
            weights=result.weights,
            worker=result.worker,
        )
        self._observe(result.evaluation_id, result.status, result.metrics)
        run = self._runs[result.evaluation_id]
        detail = result.error or ", ".join(
            f"{k}={result.metrics[k]:.4g}" for k in ("accuracy", "loss") if k in result.metrics
        )
        if run.origin != "search":
            detail = f"[{run.origin} steps={run.fidelity} seed={run.seed}] {detail}"
        self.on_event(Event(result.status, candidate_id, self._labels[candidate_id], detail))

    def _fill(self) -> bool:
        """Submit work into one free slot; False when there is nothing to submit right now."""
        f = self.campaign.file
        promo = self.scheduler.promotion(self._runs.values())
        if promo is not None:
            cid, steps = promo
            ev = self.store.add_evaluation(cid, task=self.task_name, fidelity=steps, seed=f.seed, origin="promotion")
            self._runs[ev] = Run(cid, steps, f.seed, "promotion", "queued")
            self.on_event(Event("promoted", cid, self._labels[cid], f"to {steps} steps"))
            self._submit(ev)
            return True
        if self.n_candidates < f.search.budget and not self._exhausted:
            proposal = self._next_proposal()
            if proposal is None:
                self._exhausted = True
                self.on_event(Event("exhausted", detail="no new design satisfies the space and constraints"))
            else:
                spec = proposal.spec
                generation = self._generation(proposal)
                candidate_id, ev = self.store.add_candidate(
                    self.campaign_id,
                    spec,
                    generation=generation,
                    parents=[(p, proposal.operator) for p in proposal.parents],
                    task=self.task_name,
                    fidelity=self.scheduler.first_rung,
                    seed=f.seed,
                )
                self.strategy.accepted(proposal, candidate_id)
                self._generations[candidate_id] = generation
                self._specs[candidate_id] = spec
                self._labels[candidate_id] = spec.describe()
                self._hashes.add(spec.spec_hash)
                self._runs[ev] = Run(candidate_id, self.scheduler.first_rung, f.seed, "search", "queued")
                self.n_candidates += 1
                self._submit(ev)
                return True
        # Extra seeds wait until the search and its promotions are over, so the top-k they go to is
        # final; they do not change it, so they run side by side.
        if any(self._runs[ev].origin != "reseed" for ev in self._in_flight):
            return False
        nxt = self.scheduler.reseed(self._runs.values())
        if nxt is None:
            return False
        cid, fidelity, seed = nxt
        ev = self.store.add_evaluation(cid, task=self.task_name, fidelity=fidelity, seed=seed, origin="reseed")
        self._runs[ev] = Run(cid, fidelity, seed, "reseed", "queued")
        self.on_event(Event("reseeded", cid, self._labels[cid], f"seed {seed} at {fidelity} steps"))
        self._submit(ev)
        return True

    # -- liveness ------------------------------------------------------------------------------
    def request_stop(self) -> None:
        """End the run cleanly at the next chance (what a signal handler calls)."""
        self._stop.set()

    @property
    def stopping(self) -> bool:
        """A stop was requested (here or through the store) and the run is winding down."""
        return self._stop.is_set()

    def _should_stop(self) -> bool:
        if not self._stop.is_set() and self.store.stop_requested(self.campaign_id):
            self._stop.set()
        return self._stop.is_set()

    def _hand_back(self) -> None:
        """Cancel in-flight work and queue it again, so `resume` re-runs it.

        Running evaluations that a stop kept from being re-submitted after a resume go back too. With
        the lease lost nothing is written: the store belongs to the controller that took it over.
        """
        self.on_event(Event("stopping", detail=f"{len(self._in_flight)} in flight handed back"))
        self.executor.close()
        self._in_flight.clear()
        if self.lease.lost.is_set():
            return
        for ev, run in self._runs.items():
            if run.status == "running":
                self.store.requeue(ev)
                run.status = "queued"

    # -- the loop ------------------------------------------------------------------------------
    def run(self) -> RunSummary:
        start = time.perf_counter()
        self.lease.acquire(on_lost=self._stop)
        self._exhausted = False
        stopped = False
        try:
            self.strategy.attach(self.store.url, f"hybridnas.{self.campaign.name}")
            self.store.clear_stop(self.campaign_id)
            self.store.set_campaign_status(self.campaign_id, "running")
            for e in self._restore():
                if self._stop.is_set():
                    break
                self._submit(e.id)
            while True:
                if self._should_stop():
                    stopped = True
                    break
                while self.executor.in_flight < self.executor.capacity and self._fill():
                    pass
                if self.executor.in_flight == 0:
                    break
                for result in self.executor.wait(timeout=POLL_S):
                    self._record(result)
            if stopped:
                self._hand_back()
                if self.lease.lost.is_set():
                    raise LeaseLost(f"campaign {self.campaign.name!r}: another controller took the lease; this one stopped")
                self.store.set_campaign_status(self.campaign_id, "stopped")
            else:
                self.store.set_campaign_status(self.campaign_id, "finished")
        finally:
            self.strategy.close()
            self.lease.release()
        runs = self._runs.values()
        return RunSummary(
            self.n_finished,
            self.n_failed,
            self.n_rejected,
            self._exhausted,
            time.perf_counter() - start,
            promotions=sum(r.origin == "promotion" for r in runs),
            reseeds=sum(r.origin == "reseed" for r in runs),
            stopped=stopped,
        )

    def _generation(self, proposal: Proposal) -> int:
        if not proposal.parents:
            return 0
        for p in proposal.parents:
            if p not in self._generations:  # a parent recorded before this run: ask the store once
                self._generations[p] = self.store.candidate(p).generation
        return 1 + max(self._generations[p] for p in proposal.parents)

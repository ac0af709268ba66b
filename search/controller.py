"""The controller: the only process that writes to the store during a campaign.

It keeps up to `executor.capacity` evaluations in flight, records each result the moment it arrives
(one transaction per result, so a kill loses nothing that was recorded), and asks its strategy for
more until the budget is spent. Everything it needs to resume lives in the store: on start it replays
every finished evaluation into a fresh strategy and re-submits those that were queued or running.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Callable

from hybridnas.search.campaign import Campaign
from hybridnas.search.strategies import Observation, Proposal, Strategy, make_strategy
from hybridnas.space import ArchSpec
from hybridnas.space.cost import estimate_cost
from hybridnas.store import Store
from hybridnas.workers import EvalRequest, EvalResult, Executor

#: How many designs in a row a constraint may reject before the campaign stops proposing.
MAX_REJECTIONS = 200
#: Cap on known designs proposed in a row; a replaying strategy (after resume) proposes many of them.
MAX_DUPLICATES = 100_000


@dataclass(frozen=True)
class Event:
    """Progress notice for a UI: kind is submitted | done | failed | rejected | resumed | exhausted."""

    kind: str
    candidate_id: int | None = None
    label: str = ""
    detail: str = ""


@dataclass(frozen=True)
class RunSummary:
    evaluated: int  # evaluations finished in this campaign (all runs), done or failed
    failed: int
    rejected: int  # proposals refused by a constraint in this run
    exhausted: bool  # the strategy ran out of new designs before the budget
    wall_time_s: float


def score_of(metrics: dict[str, Any] | None, metric: str, direction: str) -> float | None:
    """The objective oriented so that larger is better, or None when it is missing or not finite."""
    if not metrics or metric not in metrics:
        return None
    try:
        value = float(metrics[metric])
    except (TypeError, ValueError):
        return None
    if not math.isfinite(value):
        return None
    return value if direction == "maximize" else -value


class Controller:
    def __init__(
        self,
        store: Store,
        campaign: Campaign,
        campaign_id: int,
        executor: Executor,
        on_event: Callable[[Event], None] | None = None,
    ) -> None:
        self.store = store
        self.campaign = campaign
        self.campaign_id = campaign_id
        self.executor = executor
        self.on_event = on_event or (lambda e: None)
        f = campaign.file
        self.strategy: Strategy = make_strategy(
            f.search.strategy,
            campaign.space,
            f.seed,
            population=f.search.population,
            tournament=f.search.tournament,
            crossover_prob=f.search.crossover_prob,
        )
        self.task_name = campaign.task.name
        self.fidelity = f.training.steps
        self._specs: dict[int, ArchSpec] = {}
        self._labels: dict[int, str] = {}
        self._in_flight: dict[int, int] = {}  # evaluation id -> candidate id
        self._hashes: set[str] = set()  # designs already in the campaign
        self._rejected: set[str] = set()  # designs a constraint refused
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
        finished = [e for e in evaluations if e.status in ("done", "failed")]
        finished.sort(key=lambda e: (e.finished_at is None, e.finished_at or 0, e.id))
        candidates = {e.candidate_id for e in evaluations}
        for cid in candidates:
            self._hashes.add(self._spec(cid).spec_hash)
        self.n_candidates = len(candidates)
        for e in finished:
            self._observe(e.candidate_id, e.status, e.metrics)
        unfinished = [e for e in evaluations if e.status in ("queued", "running")]
        if evaluations:
            self.on_event(Event("resumed", detail=f"{len(finished)} recorded, {len(unfinished)} to re-run"))
        return unfinished

    def _observe(self, candidate_id: int, status: str, metrics: dict[str, Any] | None) -> None:
        obj = self.campaign.file.objective
        score = score_of(metrics, obj.metric, obj.direction) if status == "done" else None
        self.strategy.observe(Observation(candidate_id, self._spec(candidate_id), score, dict(metrics or {})))
        self.n_finished += 1
        self.n_failed += status == "failed"

    # -- proposing -----------------------------------------------------------------------------
    def _violation(self, spec: ArchSpec) -> str | None:
        c = self.campaign.file.constraints
        if c.max_params is None and c.max_state_bytes is None:
            return None
        cost = estimate_cost(spec, context_len=c.context_len)
        if c.max_params is not None and cost.params > c.max_params:
            return f"params {cost.params} > max_params {c.max_params}"
        if c.max_state_bytes is not None and cost.state_bytes > c.max_state_bytes:
            return f"state bytes {cost.state_bytes} > max_state_bytes {c.max_state_bytes}"
        return None

    def _next_proposal(self) -> Proposal | None:
        """The next design that is new and within the constraints, or None when none seems left.

        Known designs are skipped cheaply and counted apart from constraint rejections: after a
        resume the strategy re-proposes many recorded designs, which says nothing about exhaustion.
        """
        rejections = duplicates = 0
        limit = min(MAX_DUPLICATES, max(MAX_REJECTIONS, 4 * self.campaign.space.size()))
        while rejections < MAX_REJECTIONS and duplicates < limit:
            (proposal,) = self.strategy.propose(1)
            h = proposal.spec.spec_hash
            if h in self._hashes or h in self._rejected:
                duplicates += 1
                continue
            reason = self._violation(proposal.spec)
            if reason is not None:
                rejections += 1
                self._rejected.add(h)
                self.n_rejected += 1
                self.on_event(Event("rejected", label=proposal.spec.describe(), detail=reason))
                continue
            return proposal
        return None

    def _request(self, evaluation_id: int, candidate_id: int) -> EvalRequest:
        f = self.campaign.file
        return EvalRequest(
            evaluation_id=evaluation_id,
            spec_json=self._spec(candidate_id).to_json(),
            task=dict(f.task),
            train=f.training.model_dump(),
            steps=self.fidelity,
            seed=f.seed,
            timeout_s=f.execution.timeout_s,
        )

    def _submit(self, evaluation_id: int, candidate_id: int) -> None:
        self.store.mark_running(evaluation_id)
        self.executor.submit(self._request(evaluation_id, candidate_id))
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
        )
        self._observe(candidate_id, result.status, result.metrics)
        detail = result.error or ", ".join(
            f"{k}={result.metrics[k]:.4g}" for k in ("accuracy", "loss") if k in result.metrics
        )
        self.on_event(Event(result.status, candidate_id, self._labels[candidate_id], detail))

    # -- the loop ------------------------------------------------------------------------------
    def run(self) -> RunSummary:
        start = time.perf_counter()
        f = self.campaign.file
        self.store.set_campaign_status(self.campaign_id, "running")
        for e in self._restore():
            self._submit(e.id, e.candidate_id)
        exhausted = False
        while True:
            while not exhausted and self.executor.in_flight < self.executor.capacity and self.n_candidates < f.search.budget:
                proposal = self._next_proposal()
                if proposal is None:
                    exhausted = True
                    self.on_event(Event("exhausted", detail="no new design satisfies the space and constraints"))
                    break
                spec = proposal.spec
                candidate_id, evaluation_id = self.store.add_candidate(
                    self.campaign_id,
                    spec,
                    generation=self._generation(proposal),
                    parents=[(p, proposal.operator) for p in proposal.parents],
                    task=self.task_name,
                    fidelity=self.fidelity,
                    seed=f.seed,
                )
                self._specs[candidate_id] = spec
                self._labels[candidate_id] = spec.describe()
                self._hashes.add(spec.spec_hash)
                self.n_candidates += 1
                self._submit(evaluation_id, candidate_id)
            if self.executor.in_flight == 0:
                break
            for result in self.executor.wait():
                self._record(result)
        self.store.set_campaign_status(self.campaign_id, "finished")
        return RunSummary(self.n_finished, self.n_failed, self.n_rejected, exhausted, time.perf_counter() - start)

    def _generation(self, proposal: Proposal) -> int:
        if not proposal.parents:
            return 0
        return 1 + max(self.store.candidate(p).generation for p in proposal.parents)

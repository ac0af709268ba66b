"""The controller against a real store, with an executor that scores designs by a known formula.

The formula stands in for training so that hundreds of evaluations run in seconds; everything the
controller does (proposing, dedup, constraints, promotions, extra seeds, recording, resume, stop,
the lease) is the real thing.
"""

from __future__ import annotations

import random
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from hybridnas.search.campaign import parse_campaign
from hybridnas.search.controller import Controller, Event, LeaseLost
from hybridnas.search.scheduler import rung_steps
from hybridnas.space import ArchSpec, estimate_cost
from hybridnas.store import CampaignBusy, Store
from hybridnas.workers import EvalRequest, EvalResult, Executor


def formula(spec: ArchSpec, steps: int, seed: int) -> float:
    """A known score: better mixers, the LLLA pattern and the swish gate help; more steps help; seeds add noise."""
    h = spec.hybrid
    base = 0.2 * (h.linear_mixer == "gated_deltanet") + 0.2 * (spec.pattern == "LLLA") + 0.1 * (h.gate == "swish")
    base += spec.d_model / 1000
    return base * steps / (steps + 20) + 0.002 * ((seed * 7919 + len(spec.spec_hash) + sum(map(ord, spec.spec_hash))) % 5)


class FormulaExecutor(Executor):
    """Answers each queued request, in submission order, one per `wait` call."""

    def __init__(self, capacity: int = 2, fail_mixer: str | None = None) -> None:
        self.capacity = capacity
        self.fail_mixer = fail_mixer  # designs with this linear mixer fail, as a NaN would
        self._queue: list[EvalRequest] = []
        self.seen: list[tuple[int, int, int]] = []  # (evaluation id, steps, seed)
        self.peak_extra_seeds = 0  # most requests with a seed other than 0 in flight at once
        self.closed = False

    def submit(self, request: EvalRequest) -> None:
        self._queue.append(request)
        self.peak_extra_seeds = max(self.peak_extra_seeds, sum(r.seed != 0 for r in self._queue))

    def wait(self, timeout: float | None = None) -> list[EvalResult]:
        if not self._queue:
            return []
        r = self._queue.pop(0)
        spec = ArchSpec.from_json(r.spec_json)
        self.seen.append((r.evaluation_id, r.steps, r.seed))
        if spec.hybrid.linear_mixer == self.fail_mixer:
            return [EvalResult(r.evaluation_id, "failed", {}, "loss is NaN at step 3", socket.gethostname(), "cpu", 0.0)]
        acc = formula(spec, r.steps, r.seed)
        state = float(estimate_cost(spec, context_len=2048).state_bytes)
        metrics = {"accuracy": acc, "loss": 1 - acc, "cost_state_bytes": state, "steps": float(r.steps)}
        return [EvalResult(r.evaluation_id, "done", metrics, None, socket.gethostname(), "cpu", 0.0)]

    @property
    def in_flight(self) -> int:
        return len(self._queue)

    def close(self) -> None:
        self.closed = True
        self._queue.clear()


def campaign(budget: int, strategy: str = "random", **sections: Any):
    return parse_campaign({
        "name": "formula",
        "task": {"name": "mqar", "vocab_size": 32, "seq_len": 16, "num_kv_pairs": 2},
        "space": {
            "d_model": [16, 32, 48, 64],
            "n_heads": [1, 2, 4],
            "hybrid": {
                "ratio": [0, 1, 3, "all_linear"],
                "placement": ["interleaved", "first", "last"],
                "linear_mixer": ["gla", "deltanet", "gated_deltanet", "mamba2", "retnet"],
                "gate": ["none", "swish"],
            },
        },
        "training": {"steps": 90},
        "search": {"strategy": strategy, "budget": budget, "population": 8, **sections.pop("search", {})},
        **sections,
    })


@pytest.fixture
def store(tmp_path: Path):
    s = Store.open(f"sqlite:///{tmp_path / 'c.db'}")
    yield s
    s.close()


def history(store: Store, cid: int) -> list[tuple]:
    """Everything a campaign recorded that must not depend on interruptions, in id order."""
    out = []
    for e in store.evaluations(cid):
        cand = store.candidate(e.candidate_id)
        out.append((e.spec_hash, cand.parents, e.fidelity, e.seed, e.origin, e.status, e.metrics.get("accuracy")))
    return out


@pytest.mark.parametrize("strategy", ["random", "evolution"])
def test_resume_after_hundreds_of_candidates_reaches_the_budget(store: Store, strategy: str) -> None:
    first = campaign(220, strategy)
    cid = store.create_campaign("formula", first.config(), 0)
    s1 = Controller(store, first, cid, FormulaExecutor()).run()
    assert s1.evaluated == 220 and not s1.exhausted
    # Resume the same campaign with a larger budget: the strategy replays into known designs first.
    ex = FormulaExecutor()
    s2 = Controller(store, campaign(260, strategy), cid, ex).run()
    assert not s2.exhausted and s2.evaluated == 260
    evals = store.evaluations(cid)
    assert len(evals) == 260 and len({e.candidate_id for e in evals}) == 260
    assert len(ex.seen) == 40  # only the new ones ran
    assert len({e.spec_hash for e in evals}) == 260


def left_running(store: Store, budget: int) -> tuple[Any, int, int]:
    """A campaign of `budget` candidates whose first evaluation a dead controller left running:
    (campaign, its id, the evaluation's id)."""
    c = campaign(budget)
    cid = store.create_campaign("formula", c.config(), 0)
    spec = c.space.sample(random.Random(5))
    _, eid = store.add_candidate(cid, spec, generation=0, parents=[], task="mqar", fidelity=c.file.training.steps, seed=0)
    store.mark_running(eid)
    return c, cid, eid


def test_unfinished_evaluations_are_rerun_once(store: Store) -> None:
    c, cid, eid = left_running(store, 6)
    ex = FormulaExecutor()
    Controller(store, c, cid, ex).run()
    assert [s[0] for s in ex.seen].count(eid) == 1
    evals = store.evaluations(cid)
    assert len(evals) == 6 and all(e.status == "done" for e in evals)


def test_analytic_constraints_reject_before_training(store: Store) -> None:
    c = campaign(10, constraints=[{"metric": "cost_params", "max": 40_000}])
    cid = store.create_campaign("formula", c.config(), 0)
    summary = Controller(store, c, cid, FormulaExecutor()).run()
    assert summary.rejected > 0
    for e in store.evaluations(cid):
        assert estimate_cost(e.spec, context_len=2048).params <= 40_000


def test_measured_constraints_make_a_candidate_infeasible(store: Store) -> None:
    """A bound on a measured metric cannot reject before training; the design is kept out of promotions instead."""
    c = campaign(
        18, constraints=[{"metric": "accuracy", "max": 0.3}],
        search={"successive_halving": {"eta": 3, "rungs": 2}},
    )
    cid = store.create_campaign("formula", c.config(), 0)
    Controller(store, c, cid, FormulaExecutor()).run()
    promoted = [e for e in store.evaluations(cid) if e.origin == "promotion"]
    base = {e.candidate_id: e.metrics["accuracy"] for e in store.evaluations(cid) if e.origin == "search"}
    assert promoted, "some feasible candidate should be promoted"
    assert all(base[e.candidate_id] <= 0.3 for e in promoted)


def test_successive_halving_promotes_the_best_third(store: Store) -> None:
    c = campaign(27, search={"successive_halving": {"eta": 3, "rungs": 3}})
    assert rung_steps(90, 3, 3) == (10, 30, 90)
    cid = store.create_campaign("formula", c.config(), 0)
    summary = Controller(store, c, cid, FormulaExecutor(capacity=3)).run()
    evals = store.evaluations(cid)
    by_rung = {f: [e for e in evals if e.fidelity == f] for f in (10, 30, 90)}
    assert len(by_rung[10]) == 27 and all(e.origin == "search" for e in by_rung[10])
    assert all(e.origin == "promotion" for e in by_rung[30] + by_rung[90])
    # ASHA promotes as results arrive, so an early leader may be promoted and later fall out of the top
    # third; what must hold at the end is that every rung's final top third went up, and far from all did.
    for low, high in ((10, 30), (30, 90)):
        ranked = sorted(by_rung[low], key=lambda e: -e.metrics["accuracy"])
        top = {e.candidate_id for e in ranked[: len(ranked) // 3]}
        assert top <= {e.candidate_id for e in by_rung[high]}
        assert len(ranked) // 3 <= len(by_rung[high]) < len(ranked)
    assert summary.promotions == len(by_rung[30]) + len(by_rung[90])
    # Promotions are evaluations of the same candidate: each promoted one has its lower rungs too.
    ids = {f: {e.candidate_id for e in es} for f, es in by_rung.items()}
    assert ids[90] <= ids[30] <= ids[10]
    # The best design at rung 0 reached the top rung, and the leaderboard ranks by the highest fidelity.
    best0 = max(by_rung[10], key=lambda e: e.metrics["accuracy"]).candidate_id
    assert best0 in ids[90]
    board = store.leaderboard(cid)
    assert board[0]["fidelity"] == 90 and board[0]["candidate_id"] in ids[90]


def test_reevaluate_gives_the_top_k_extra_seeds_and_a_verdict(store: Store) -> None:
    c = campaign(12, search={"reevaluate": {"top_k": 3, "seeds": 2}})
    cid = store.create_campaign("formula", c.config(), 0)
    ex = FormulaExecutor(capacity=3)
    summary = Controller(store, c, cid, ex).run()
    assert summary.reseeds == 6
    assert ex.peak_extra_seeds == 3  # extra seeds do not change the top-k, so they fill every slot
    evals = store.evaluations(cid)
    reseeds = [e for e in evals if e.origin == "reseed"]
    assert {e.seed for e in reseeds} == {1, 2}
    # The reseeds came after every search result, and went to the three best of the search.
    assert min(e.id for e in reseeds) > max(e.id for e in evals if e.origin == "search")
    top3 = sorted((e for e in evals if e.origin == "search"), key=lambda e: -e.metrics["accuracy"])[:3]
    assert {e.candidate_id for e in reseeds} == {e.candidate_id for e in top3}
    board = store.leaderboard(cid)
    assert [r["n_seeds"] for r in board[:3]] == [3, 3, 3]
    assert all(r["accuracy_std"] is not None for r in board[:3])
    verdict = store.winner(cid, "accuracy", "maximize")
    assert verdict["spread"] is not None and verdict["tie"] == (verdict["lead"] <= verdict["spread"])


def test_failed_candidates_are_recorded_and_the_campaign_goes_on(store: Store) -> None:
    c = campaign(20)
    cid = store.create_campaign("formula", c.config(), 0)
    summary = Controller(store, c, cid, FormulaExecutor(fail_mixer="gla")).run()
    evals = store.evaluations(cid)
    failed = [e for e in evals if e.status == "failed"]
    assert failed and all(e.error == "loss is NaN at step 3" for e in failed)
    assert len(evals) == 20 and summary.failed == len(failed)
    assert store.get_campaign("formula").status == "finished"


class Crash(Exception):
    pass


def crash() -> None:
    raise Crash


def on_nth(kind: str, n: int, action: Callable[[], None]) -> Callable[[Event], None]:
    """An event hook that calls `action` at the n-th event of `kind`."""
    seen = 0

    def hook(e: Event) -> None:
        nonlocal seen
        if e.kind == kind:
            seen += 1
            if seen == n:
                action()

    return hook


@pytest.mark.parametrize("strategy", ["random", "evolution"])
@pytest.mark.parametrize("point", ["submitted", "done", "promoted"])
def test_interrupted_and_resumed_equals_uninterrupted(tmp_path: Path, strategy: str, point: str) -> None:
    """Kill the controller (an exception out of the loop leaves the store as a kill would) at several
    points; after resume the campaign holds exactly what an uninterrupted run records."""
    c = campaign(14, strategy, search={"successive_halving": {"eta": 3, "rungs": 2}})
    ref = Store.open(f"sqlite:///{tmp_path / 'ref.db'}")
    rid = ref.create_campaign("formula", c.config(), 0)
    Controller(ref, c, rid, FormulaExecutor(capacity=1)).run()
    expected = history(ref, rid)
    ref.close()

    for crash_at in (1, 4, 7):
        st = Store.open(f"sqlite:///{tmp_path / f'{point}{crash_at}.db'}")
        cid = st.create_campaign("formula", c.config(), 0)
        crashed = False
        try:
            Controller(st, c, cid, FormulaExecutor(capacity=1), on_nth(point, crash_at, crash)).run()
        except Crash:
            crashed = True
        ex = FormulaExecutor(capacity=1)
        Controller(st, c, cid, ex).run()
        got = history(st, cid)
        assert got == expected, f"crash at {point} #{crash_at} (crashed={crashed})"
        assert len({(h[0], h[2], h[3]) for h in got}) == len(got)  # nothing evaluated twice
        st.close()


def test_stop_hands_work_back_and_resume_finishes(store: Store) -> None:
    c = campaign(10)
    cid = store.create_campaign("formula", c.config(), 0)
    # What `hybridnas campaign stop` does from another process, after the third result.
    on_event = on_nth("done", 3, lambda: store.request_stop(cid))
    ex = FormulaExecutor(capacity=2)
    summary = Controller(store, c, cid, ex, on_event).run()
    assert summary.stopped and ex.closed
    info = store.get_campaign("formula")
    assert info.status == "stopped" and info.lease_owner is None
    evals = store.evaluations(cid)
    assert {e.status for e in evals} <= {"done", "queued"} and any(e.status == "queued" for e in evals)
    assert not any(e.status == "running" for e in evals)
    summary2 = Controller(store, c, cid, FormulaExecutor()).run()
    assert not summary2.stopped and store.get_campaign("formula").status == "finished"
    evals = store.evaluations(cid)
    assert len(evals) == 10 and all(e.status == "done" for e in evals)


def test_a_stop_during_resume_hands_back_what_was_not_resubmitted(store: Store) -> None:
    c, cid, eid = left_running(store, 4)
    ctrl = Controller(store, c, cid, FormulaExecutor())
    ctrl.request_stop()  # a signal before the first re-submission
    assert ctrl.run().stopped
    assert store.evaluation(eid).status == "queued"
    assert store.get_campaign("formula").status == "stopped"


def _take_over_on_first_result(store: Store, cid: int, get_controller: Any) -> Any:
    """An on_event that makes another controller take the campaign (`resume --force`) once a result
    is recorded, then waits for this one's heartbeat to notice."""

    def on_event(e: Event) -> None:
        if e.kind == "done" and store.get_campaign_by_id(cid).lease_owner != "otherhost:1:new":
            store.acquire_lease(cid, "otherhost:1:new", ttl_s=600, force=True)
            deadline = time.monotonic() + 10
            while not get_controller().stopping and time.monotonic() < deadline:
                time.sleep(0.02)

    return on_event


def test_a_controller_that_loses_its_lease_stops_and_writes_nothing_more(store: Store) -> None:
    c = campaign(6)
    cid = store.create_campaign("formula", c.config(), 0)
    ctrl: list[Controller] = []
    ctrl.append(Controller(store, c, cid, FormulaExecutor(capacity=2), _take_over_on_first_result(store, cid, lambda: ctrl[0]), lease_ttl_s=0.3))
    with pytest.raises(LeaseLost, match="another controller took the lease"):
        ctrl[0].run()
    info = store.get_campaign("formula")
    assert info.lease_owner == "otherhost:1:new" and info.status == "running"
    # The evaluation still in flight is the new owner's to run: not handed back as queued.
    assert [e.status for e in store.evaluations(cid)] == ["done", "running"]


def test_the_cli_leaves_a_taken_over_campaign_alone(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    import typer

    from hybridnas.search import cli

    c = campaign(6)
    cid = store.create_campaign("formula", c.config(), 0)
    made: list[Controller] = []

    def short_lease(*args: Any, **kw: Any) -> Controller:
        ctrl = Controller(*args, **kw, lease_ttl_s=0.3)
        inner = ctrl.on_event
        outer = _take_over_on_first_result(store, cid, lambda: ctrl)
        ctrl.on_event = lambda e: (inner(e), outer(e))
        made.append(ctrl)
        return ctrl

    monkeypatch.setattr(cli, "Controller", short_lease)
    with pytest.raises(typer.Exit) as exit_info:
        cli._run(store, c, cid, FormulaExecutor(capacity=2), None)
    assert exit_info.value.exit_code == 1 and made
    assert store.get_campaign("formula").status == "running"  # not "failed": another controller runs it


def test_a_live_lease_refuses_a_second_controller(store: Store) -> None:
    c = campaign(3)
    cid = store.create_campaign("formula", c.config(), 0)
    store.acquire_lease(cid, "otherhost:1234:abcd", ttl_s=60)
    with pytest.raises(CampaignBusy, match="otherhost:1234:abcd"):
        Controller(store, c, cid, FormulaExecutor()).run()
    assert store.evaluations(cid) == []
    # --force takes it over; an expired lease needs no force.
    assert Controller(store, c, cid, FormulaExecutor(), force=True).run().evaluated == 3
    store.acquire_lease(cid, "otherhost:1234:abcd", ttl_s=-1)
    Controller(store, campaign(4), cid, FormulaExecutor()).run()
    assert store.get_campaign("formula").lease_owner is None


def test_a_dead_local_controller_lease_is_taken_over(store: Store) -> None:
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()  # a pid of this host that no longer runs
    c = campaign(2)
    cid = store.create_campaign("formula", c.config(), 0)
    store.acquire_lease(cid, f"{socket.gethostname()}:{proc.pid}:dead", ttl_s=600)
    assert Controller(store, c, cid, FormulaExecutor()).run().evaluated == 2


def test_evolution_beats_random_on_the_formula(tmp_path: Path) -> None:
    """With the same budget, evolution's best scores are at least random's, and its children have parents."""
    results = {}
    for strategy in ("random", "evolution"):
        s = Store.open(f"sqlite:///{tmp_path / (strategy + '.db')}")
        c = campaign(60, strategy)
        cid = s.create_campaign("formula", c.config(), 0)
        Controller(s, c, cid, FormulaExecutor()).run()
        board = s.leaderboard(cid, metric="accuracy", direction="maximize")
        results[strategy] = [r["accuracy"] for r in board]
        if strategy == "evolution":
            assert any(s.candidate(r["candidate_id"]).parents for r in board)
        s.close()
    top = lambda xs: sorted(xs, reverse=True)[:10]  # noqa: E731
    assert sum(top(results["evolution"])) >= sum(top(results["random"]))


def test_optuna_study_lives_in_the_store_and_resumes(tmp_path: Path) -> None:
    """NSGA-II on two objectives: its study sits in the campaign's SQLite file next to our tables, one
    COMPLETE trial per candidate, and a crash + resume records what an uninterrupted run does."""
    import optuna

    c = campaign(10, "nsga2", search={"population": 4},
                 objectives=[{"metric": "accuracy"}, {"metric": "cost_state_bytes", "direction": "minimize"}])
    ref = Store.open(f"sqlite:///{tmp_path / 'ref.db'}")
    rid = ref.create_campaign("formula", c.config(), 0)
    Controller(ref, c, rid, FormulaExecutor(capacity=1)).run()
    expected = history(ref, rid)
    study = optuna.load_study(study_name="hybridnas.formula", storage=ref.url)
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert {t.user_attrs.get("hnas_candidate") for t in complete} >= {e.candidate_id for e in ref.evaluations(rid)}
    assert all(len(t.values) == 2 for t in complete)
    assert not [t for t in study.trials if t.state == optuna.trial.TrialState.RUNNING]
    ref.close()

    st = Store.open(f"sqlite:///{tmp_path / 'crash.db'}")
    cid = st.create_campaign("formula", c.config(), 0)
    with pytest.raises(Crash):
        Controller(st, c, cid, FormulaExecutor(capacity=1), on_nth("done", 5, crash)).run()
    Controller(st, c, cid, FormulaExecutor(capacity=1)).run()
    assert history(st, cid) == expected
    st.close()


def test_a_re_proposed_design_is_told_with_its_recorded_objectives(tmp_path: Path) -> None:
    """NSGA-II on a four-design space re-proposes known designs; each such trial is told the recorded
    values of both objectives (a FAIL would drop the design from the sampler's view)."""
    import optuna

    from hybridnas.search.strategies.optuna_samplers import DISCARD_ATTR

    c = parse_campaign({
        "name": "tiny",
        "task": {"name": "mqar", "vocab_size": 32, "seq_len": 16, "num_kv_pairs": 2},
        "space": {"d_model": [16, 32], "n_heads": [1],
                  "hybrid": {"ratio": [1], "placement": ["interleaved"], "linear_mixer": ["gla", "deltanet"], "gate": ["none"]}},
        "training": {"steps": 10},
        "search": {"strategy": "nsga2", "budget": 4, "population": 2},
        "objectives": [{"metric": "accuracy"}, {"metric": "cost_state_bytes", "direction": "minimize"}],
    })
    st = Store.open(f"sqlite:///{tmp_path / 'tiny.db'}")
    cid = st.create_campaign("tiny", c.config(), 0)
    Controller(st, c, cid, FormulaExecutor(capacity=1)).run()
    assert len(st.evaluations(cid)) == 4
    study = optuna.load_study(study_name="hybridnas.tiny", storage=st.url)
    duplicates = [t for t in study.trials if t.user_attrs.get(DISCARD_ATTR) == "duplicate"]
    assert duplicates
    assert all(t.state == optuna.trial.TrialState.COMPLETE and len(t.values) == 2 for t in duplicates)
    st.close()

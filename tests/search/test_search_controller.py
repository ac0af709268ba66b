"""The controller against a real store, with an executor that scores designs by a known formula.

The formula stands in for training so that hundreds of evaluations run in seconds; everything the
controller does (proposing, dedup, constraints, recording, resume) is the real thing.
"""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from hybridnas.search.campaign import parse_campaign
from hybridnas.search.controller import Controller
from hybridnas.space import ArchSpec
from hybridnas.store import Store
from hybridnas.workers import EvalRequest, EvalResult, Executor


class FormulaExecutor(Executor):
    """Answers each request at once with accuracy = a fixed function of the design."""

    def __init__(self, capacity: int = 2) -> None:
        self.capacity = capacity
        self._queue: list[EvalRequest] = []
        self.seen: list[int] = []

    def submit(self, request: EvalRequest) -> None:
        self._queue.append(request)

    def wait(self, timeout: float | None = None) -> list[EvalResult]:
        out = []
        for r in self._queue:
            spec = ArchSpec.from_json(r.spec_json)
            h = spec.hybrid
            acc = 0.2 * (h.linear_mixer == "gated_deltanet") + 0.2 * (spec.pattern == "LLLA") + 0.1 * (h.gate == "swish")
            self.seen.append(r.evaluation_id)
            out.append(EvalResult(r.evaluation_id, "done", {"accuracy": acc + spec.d_model / 1000}, None,
                                  socket.gethostname(), "cpu", 0.0, None))
        self._queue = []
        return out

    @property
    def in_flight(self) -> int:
        return len(self._queue)

    def close(self) -> None:
        pass


def campaign(budget: int, strategy: str = "random", **constraints):
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
        "search": {"strategy": strategy, "budget": budget, "population": 8},
        "constraints": constraints,
    })


@pytest.fixture
def store(tmp_path: Path):
    s = Store.open(f"sqlite:///{tmp_path / 'c.db'}")
    yield s
    s.close()


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
    hashes = {store.candidate(e.candidate_id).spec_hash for e in evals}
    assert len(hashes) == 260


def test_unfinished_evaluations_are_rerun_once(store: Store) -> None:
    c = campaign(6)
    cid = store.create_campaign("formula", c.config(), 0)
    spec = c.space.sample(__import__("random").Random(5))
    _, eid = store.add_candidate(cid, spec, generation=0, parents=[], task="mqar", fidelity=c.file.training.steps, seed=0)
    store.mark_running(eid)  # a controller died while this ran
    ex = FormulaExecutor()
    Controller(store, c, cid, ex).run()
    assert ex.seen.count(eid) == 1
    evals = store.evaluations(cid)
    assert len(evals) == 6 and all(e.status == "done" for e in evals)


def test_constraints_reject_before_training(store: Store) -> None:
    c = campaign(10, max_params=40_000)
    cid = store.create_campaign("formula", c.config(), 0)
    summary = Controller(store, c, cid, FormulaExecutor()).run()
    assert summary.rejected > 0
    for e in store.evaluations(cid):
        assert store.candidate(e.candidate_id).spec is not None
        assert e.metrics["accuracy"] >= 0
    from hybridnas.space import estimate_cost

    for e in store.evaluations(cid):
        spec = store.candidate(e.candidate_id).spec
        spec = spec if isinstance(spec, ArchSpec) else ArchSpec.from_dict(spec)
        assert estimate_cost(spec, context_len=2048).params <= 40_000


def test_evolution_beats_random_on_the_formula(store: Store, tmp_path: Path) -> None:
    """With the same budget, evolution's best score is at least random's, and its children have parents."""
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

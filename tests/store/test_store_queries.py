"""Leaderboard (ranking and the fidelity rule), Pareto front and recursive lineage, on both backends."""

from __future__ import annotations

from typing import Any

import pytest

from hybridnas.store import CampaignNotFound, CandidateNotFound, Store
from hybridnas.store.queries import ROW_KEYS


def _run(store: Store, cid: int, spec: Any, fidelity: int, seed: int, metrics: dict[str, Any] | None, status: str = "done") -> int:
    """Queue and finish one evaluation; metrics None leaves it queued. Returns the candidate id."""
    cand, ev = store.add_candidate(cid, spec, generation=0, parents=[], task="mqar", fidelity=fidelity, seed=seed)
    if metrics is not None:
        store.finish_evaluation(ev, status=status, metrics=metrics, error=None if status == "done" else "boom",
                                host=None, device=None, wall_time_s=1.0, weights=None)
    return cand


@pytest.fixture
def board(store: Store, make_spec) -> tuple[Store, int, dict[str, int]]:
    cid = store.create_campaign("board", {}, seed=0)
    ids = {}
    # A: only a short run, but a high score.
    ids["A"] = _run(store, cid, make_spec(0), 10, 0, {"accuracy": 0.9, "loss": 0.3, "params": 1000})
    # B: promoted; its short run (0.5) must not count. Two seeds at fidelity 100 -> mean 0.7.
    ids["B"] = _run(store, cid, make_spec(1), 10, 0, {"accuracy": 0.5, "loss": 0.9, "params": 2000})
    _run(store, cid, make_spec(1), 100, 0, {"accuracy": 0.6, "loss": 0.5, "params": 2000})
    _run(store, cid, make_spec(1), 100, 1, {"accuracy": 0.8, "loss": 0.3, "params": 2000})
    _run(store, cid, make_spec(1), 1000, 0, {"accuracy": 0.99}, status="failed")  # failed: not its fidelity
    _run(store, cid, make_spec(1), 1000, 1, None)  # queued: not its fidelity either
    # C: fidelity 100, one seed.
    ids["C"] = _run(store, cid, make_spec(2), 100, 0, {"accuracy": 0.65, "loss": 0.2, "params": 1500, "hw": {"tok_s": 10.0}})
    # D: done, but without the accuracy metric; E: failed only; F: queued only.
    ids["D"] = _run(store, cid, make_spec(3), 10, 0, {"loss": 0.05})
    ids["E"] = _run(store, cid, make_spec(4), 10, 0, {"accuracy": 1.0}, status="failed")
    ids["F"] = _run(store, cid, make_spec(5), 10, 0, None)
    return store, cid, ids


def test_leaderboard_ranks_by_highest_fidelity_mean(board) -> None:
    store, cid, ids = board
    rows = store.leaderboard(cid)
    assert [r["candidate_id"] for r in rows] == [ids["A"], ids["B"], ids["C"], ids["D"]]
    assert [r["rank"] for r in rows] == [1, 2, 3, 4]
    b = rows[1]
    assert (b["fidelity"], b["n_seeds"], b["params"]) == (100, 2, 2000)
    assert b["accuracy"] == pytest.approx(0.7) and b["loss"] == pytest.approx(0.4)
    assert list(b)[: len(ROW_KEYS)] == list(ROW_KEYS)
    assert rows[2]["hw.tok_s"] == 10.0  # nested metrics are flattened
    assert rows[3].get("accuracy") is None  # lacking the metric: ranked last
    assert rows[0]["spec_hash"] and rows[0]["label"].endswith("d32 LA")


def test_leaderboard_minimize_limit_and_errors(board) -> None:
    store, cid, ids = board
    rows = store.leaderboard(cid, metric="loss", direction="min")
    assert [r["candidate_id"] for r in rows] == [ids["D"], ids["C"], ids["A"], ids["B"]]
    assert [r["candidate_id"] for r in store.leaderboard(cid, metric="loss", direction="minimize", limit=2)] == [ids["D"], ids["C"]]
    assert store.leaderboard(cid, limit=0) == []
    with pytest.raises(ValueError, match="direction: got 'up', allowed: maximize, minimize"):
        store.leaderboard(cid, direction="up")
    with pytest.raises(ValueError, match="metric: 'acc' is not a numeric metric.*recorded: accuracy, hw.tok_s, loss, params"):
        store.leaderboard(cid, metric="acc")
    with pytest.raises(CampaignNotFound):
        store.leaderboard(cid + 1)
    assert store.leaderboard(cid, task="other") == []


def test_leaderboard_ties_and_empty(store: Store, make_spec) -> None:
    cid = store.create_campaign("ties", {}, seed=0)
    assert store.leaderboard(cid) == []
    first = _run(store, cid, make_spec(0), 10, 0, {"accuracy": 0.5})
    second = _run(store, cid, make_spec(1), 10, 0, {"accuracy": 0.5})
    assert [r["candidate_id"] for r in store.leaderboard(cid)] == [first, second]


def test_pareto_front_on_a_hand_built_set(store: Store, make_spec) -> None:
    cid = store.create_campaign("pareto", {}, seed=0)
    points = {  # name: (accuracy to maximize, state bytes to minimize)
        "P1": (0.90, 100),
        "P2": (0.80, 50),
        "P3": (0.70, 60),  # dominated by P2
        "P4": (0.90, 120),  # dominated by P1 (equal accuracy, more bytes)
        "P5": (0.95, 500),
        "P6": (0.80, 50),  # equal to P2: neither dominates the other
        "P7": (0.50, 40),
        "P8": (0.40, 40),  # dominated by P7
    }
    ids = {}
    for i, (name, (acc, cost)) in enumerate(points.items()):
        ids[name] = _run(store, cid, make_spec(i), 10, 0, {"accuracy": acc, "cost_state_bytes": cost})
    _run(store, cid, make_spec(20), 10, 0, {"accuracy": 0.99})  # lacks an objective: left out
    front = store.pareto(cid, [("accuracy", "max"), ("cost_state_bytes", "min")])
    assert [r["candidate_id"] for r in front] == [ids[n] for n in ("P5", "P1", "P2", "P6", "P7")]
    assert [r["rank"] for r in front] == [1, 2, 3, 4, 5]
    # One objective: the front is the best candidate(s).
    assert [r["candidate_id"] for r in store.pareto(cid, [("cost_state_bytes", "minimize")])] == [ids["P7"], ids["P8"]]
    # Flipping a direction changes the front.
    flipped = store.pareto(cid, [("accuracy", "min"), ("cost_state_bytes", "min")])
    assert {r["candidate_id"] for r in flipped} == {ids["P8"]}
    with pytest.raises(ValueError, match="objectives: need at least one"):
        store.pareto(cid, [])
    with pytest.raises(ValueError, match=r"objectives\[1\]: got 'best'"):
        store.pareto(cid, [("accuracy", "max"), ("cost_state_bytes", "best")])
    with pytest.raises(ValueError, match=r"objectives\[0\]: 'latency' is not a numeric metric"):
        store.pareto(cid, [("latency", "min")])


def test_pareto_uses_the_fidelity_rule(store: Store, make_spec) -> None:
    cid = store.create_campaign("pf", {}, seed=0)
    a = _run(store, cid, make_spec(0), 10, 0, {"accuracy": 0.99, "cost": 1})  # would dominate at fidelity 10...
    _run(store, cid, make_spec(0), 100, 0, {"accuracy": 0.10, "cost": 1})  # ...but its top fidelity says 0.10
    b = _run(store, cid, make_spec(1), 10, 0, {"accuracy": 0.50, "cost": 2})
    front = store.pareto(cid, [("accuracy", "max"), ("cost", "min")])
    assert [(r["candidate_id"], r["fidelity"]) for r in front] == [(b, 10), (a, 100)]


def test_lineage_is_recursive_with_crossover(store: Store, make_spec) -> None:
    cid = store.create_campaign("lin", {}, seed=0)

    def add(i: int, parents: list[tuple[int, str]], gen: int) -> int:
        return store.add_candidate(cid, make_spec(i), generation=gen, parents=parents, task="t", fidelity=10, seed=0)[0]

    a = add(0, [], 0)
    b = add(1, [], 0)
    c = add(2, [(a, "mutate_mixer")], 1)
    d = add(3, [(c, "crossover"), (b, "crossover")], 2)
    e = add(4, [(d, "mutate_ratio")], 3)
    f = add(5, [(e, "crossover"), (c, "crossover")], 4)  # c is reached twice: its edge appears once
    unrelated = add(6, [(b, "mutate_gate")], 1)

    edges = [(x.child_id, x.parent_id, x.operator, x.depth) for x in store.lineage(e)]
    assert edges == [
        (e, d, "mutate_ratio", 1),
        (d, b, "crossover", 2),
        (d, c, "crossover", 2),
        (c, a, "mutate_mixer", 3),
    ]
    edges_f = [(x.child_id, x.parent_id, x.depth) for x in store.lineage(f)]
    assert edges_f == [(f, c, 1), (f, e, 1), (c, a, 2), (e, d, 2), (d, b, 3), (d, c, 3)]
    assert unrelated not in {x.parent_id for x in store.lineage(f)}
    assert store.lineage(a) == []
    assert store.lineage(e)[0].to_dict() == {"child_id": e, "parent_id": d, "operator": "mutate_ratio", "depth": 1}
    with pytest.raises(CandidateNotFound):
        store.lineage(9999)


def test_lineage_terminates_on_a_cycle(store: Store, make_spec) -> None:
    cid = store.create_campaign("cyc", {}, seed=0)
    a = store.add_candidate(cid, make_spec(0), generation=0, parents=[], task="t", fidelity=10, seed=0)[0]
    b = store.add_candidate(cid, make_spec(1), generation=1, parents=[(a, "mutate")], task="t", fidelity=10, seed=0)[0]
    # A later mutation of b that rebuilds a's network: the edge a <- b closes a cycle.
    store.add_candidate(cid, make_spec(0), generation=2, parents=[(b, "mutate")], task="t", fidelity=20, seed=0)
    assert sorted((x.child_id, x.parent_id) for x in store.lineage(b)) == [(a, b), (b, a)]

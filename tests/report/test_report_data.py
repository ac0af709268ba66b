"""What the report computes, checked without a browser: objectives, hybrid shape, winner, collected data, plots."""

from __future__ import annotations

import re
import statistics
from pathlib import Path
from typing import Any

import pytest

from hybridnas.report import collect, hybrid_shape, objectives_from_config, render_html
from hybridnas.store.queries import winner
from hybridnas.report.data import Objective
from hybridnas.report.svg import Axis, Point, nice_ticks, scatter
from hybridnas.space.cost import estimate_cost
from hybridnas.space.spec import ArchSpec, HybridGenes, LayerSpec
from hybridnas.store import Store


def test_objectives_from_config() -> None:
    both = {"objectives": [{"metric": "accuracy", "direction": "max"}, {"metric": "cost_state_bytes", "direction": "minimize"}]}
    assert objectives_from_config(both) == (Objective("accuracy", "maximize"), Objective("cost_state_bytes", "minimize"))
    assert objectives_from_config({"objective": {"metric": "loss", "direction": "minimize"}}) == (Objective("loss", "minimize"),)
    assert objectives_from_config({}) == objectives_from_config(None) == (Objective("accuracy", "maximize"),)
    with pytest.raises(ValueError, match=r"config\.objectives\[1\]\.direction: got 'up', allowed: maximize, minimize"):
        objectives_from_config({"objectives": [{"metric": "accuracy"}, {"metric": "loss", "direction": "up"}]})
    with pytest.raises(ValueError, match=r"config\.objectives: got 'accuracy'"):
        objectives_from_config({"objectives": "accuracy"})


def _layers(*mixers: str) -> ArchSpec:
    return ArchSpec(d_model=32, layers=tuple(LayerSpec(mixer=m) for m in mixers), vocab_size=64)


def _hybrid(**genes: Any) -> ArchSpec:
    return ArchSpec.from_hybrid(HybridGenes(**genes), d_model=32, n_layers=4, n_heads=2, vocab_size=64)


def test_hybrid_shape() -> None:
    assert hybrid_shape(_hybrid(ratio=3, linear_mixer="gla")) == ("3", "gla")
    assert hybrid_shape(_hybrid(ratio="all_linear", linear_mixer="retnet")) == ("all_linear", "retnet")
    assert hybrid_shape(_hybrid(ratio=0, linear_mixer="gla", full_mixer="swa")) == ("0", "swa")  # no linear layer left
    assert hybrid_shape(_hybrid(ratio=6, placement="LALL", linear_mixer="mamba2")) == ("3", "mamba2")  # pattern wins
    # Without hybrid genes the layers are counted.
    assert hybrid_shape(_layers("attention", "attention")) == ("0", "attention")
    assert hybrid_shape(_layers("short_conv", "short_conv")) == ("all_linear", "short_conv")
    assert hybrid_shape(_layers("gla", "deltanet", "gla", "attention")) == ("3", "gla+deltanet")
    assert hybrid_shape(_layers("gla", "swa", "gla", "attention")) == ("1", "gla")
    assert hybrid_shape(_layers("gla", "gla", "swa", "attention", "attention")) == ("0.67", "gla")


def _row(cid: int, label: str, mean: float, std: float | None, n: int) -> dict[str, Any]:
    return {"candidate_id": cid, "label": label, "accuracy": mean, "loss": mean, "accuracy_std": std, "loss_std": std, "n_seeds": n}


def test_winner_statement() -> None:
    """The one verdict (hybridnas.store.queries.winner), as the report and the CLI print it."""
    win = winner([_row(6, "a", 0.93, 0.005, 3), _row(3, "b", 0.90, 0.01, 3)], "accuracy", "maximize")
    assert win["candidate_id"] == 6 and not win["tie"]
    assert win["lead"] == pytest.approx(0.03) and win["spread"] == pytest.approx(0.015) and "#6 a wins" in win["text"]
    tie = winner([_row(6, "a", 0.93, 0.02, 3), _row(3, "b", 0.92, 0.01, 2)], "accuracy", "max")
    assert tie["candidate_id"] is None and tie["tie"] and tie["spread"] == pytest.approx(0.03) and "Tie on accuracy" in tie["text"]
    single = winner([_row(2, "a", 0.5, None, 1), _row(9, "b", 0.7, 0.1, 3)], "loss", "minimize")
    assert single["candidate_id"] == 2 and not single["tie"] and single["spread"] is None
    assert single["lead"] == pytest.approx(0.2) and "single seed: spread unknown" in single["text"]
    alone = winner([_row(4, "a", 0.5, None, 1)], "accuracy", "maximize")
    assert alone["candidate_id"] == 4 and alone["lead"] is None and "only candidate" in alone["text"]
    none = winner([], "accuracy", "maximize")
    assert none["candidate_id"] is None and not none["tie"] and "no winner" in none["text"]


def test_collect(recorded: Any) -> None:
    ids = recorded.ids
    with Store.open(recorded.path, create=False) as store:
        data = collect(store, store.get_campaign(recorded.name))
        if hasattr(store, "winner"):
            assert data.winner == store.winner(data.campaign.id, "accuracy", "maximize")
    assert data.objectives == (Objective("accuracy", "maximize"), Objective("cost_state_bytes", "minimize"))
    assert data.counts == {"total": 12, "done": 10, "failed": 1, "invalid": 1, "unscored": 0, "queued": 0, "running": 0}
    assert data.devices == (recorded.device,)
    assert data.winner["candidate_id"] == ids["dn1"] and not data.winner["tie"]
    by_id = {e.candidate_id: e for e in data.entries}
    dn1 = by_id[ids["dn1"]]
    assert dn1.rank == 1 and dn1.n_seeds == 3
    assert dn1.get("accuracy") == pytest.approx(statistics.fmean(recorded.accuracy["dn1"]))
    assert dn1.std["accuracy"] == pytest.approx(statistics.stdev(recorded.accuracy["dn1"]))
    assert (dn1.ratio, dn1.mixer) == ("1", "deltanet")
    assert "accuracy" not in by_id[ids["gdn3"]].std  # one seed: no spread
    mamba = by_id[ids["mamba1"]]
    assert mamba.fidelity == 600 and mamba.get("accuracy") == pytest.approx(0.84)
    assert (by_id[ids["attn"]].ratio, by_id[ids["attn"]].mixer) == ("0", "attention")
    # The Pareto front of accuracy vs state bytes, by brute force over the recorded values.
    state, latency = data.fronts
    cost = {k: estimate_cost(recorded.specs[k]).state_bytes for k in recorded.accuracy}
    acc = {k: statistics.fmean(v) for k, v in recorded.accuracy.items()}
    dominated = {k for k in acc if any(acc[j] >= acc[k] and cost[j] <= cost[k] and (acc[j], cost[j]) != (acc[k], cost[k]) for j in acc)}
    assert state.front_ids == {ids[k] for k in acc if k not in dominated}
    assert {round(x, 6) for _, x, _ in latency.points} == {round(1e6 / v, 6) for v in recorded.prefill.values()}
    # Best so far: running max of accuracy over done evaluations in finishing order (the NaN one left out).
    accuracy = data.progress[0]
    values = [v for v, _ in accuracy.values]
    assert len(values) == 10 and list(accuracy.best) == [max(values[: i + 1]) for i in range(10)]
    assert data.progress[1].metric == "cost_state_bytes" and list(data.progress[1].best) == sorted(data.progress[1].best, reverse=True)
    lin = data.lineage
    assert lin.depth == {ids["dn1"]: 0, ids["gla3"]: 1, ids["mamba1"]: 1, ids["gdn3"]: 2}
    assert set(lin.edges) == {(ids["dn1"], ids["gla3"], "crossover"), (ids["dn1"], ids["mamba1"], "crossover"),
                              (ids["gla3"], ids["gdn3"], "mutate_mixer")}
    problems = {p.kind: p for p in data.problems}
    assert problems["failed"].candidate_id == ids["conv"] and problems["failed"].reason.startswith("training diverged")
    assert problems["invalid"].candidate_id == ids["ret"] and problems["invalid"].reason.startswith("causality:")
    groups = dict((name, [e.candidate_id for e in es]) for name, es in data.by_group("ratio"))
    assert groups == {"0": [ids["attn"]], "1": [ids["dn1"], ids["mamba1"]], "3": [ids["gla3"], ids["gdn3"]]}


def test_collect_metric_override_and_task(recorded: Any) -> None:
    with Store.open(recorded.path, create=False) as store:
        info = store.get_campaign(recorded.name)
        by_loss = collect(store, info, metric="loss", direction="min")
        assert by_loss.primary == Objective("loss", "minimize") and by_loss.objectives[1:] == (
            Objective("accuracy", "maximize"), Objective("cost_state_bytes", "minimize"))
        assert [e.get("loss") for e in by_loss.entries] == sorted(e.get("loss") for e in by_loss.entries)
        other_task = collect(store, info, task="selective_copy")
        assert other_task.entries == () and other_task.counts["total"] == 0 and other_task.lineage is None
        assert "No candidate has a finished evaluation" in render_html(other_task)
        with pytest.raises(ValueError, match="'bleu' is not a numeric metric"):
            collect(store, info, metric="bleu")


def test_objective_never_recorded_still_reports(record_campaign: Any, tmp_path: Path) -> None:
    """Every evaluation lacks the campaign's objective: candidates are listed in id order, all marked unscored."""
    rec = record_campaign(tmp_path / "s.db", name="odd", config={"objective": {"metric": "peak_memory_bytes", "direction": "minimize"}})
    with Store.open(rec.path, create=False) as store:
        data = collect(store, store.get_campaign("odd"))
    assert [e.candidate_id for e in data.entries] == sorted(e.candidate_id for e in data.entries)
    assert data.counts["unscored"] == 10 and data.counts["done"] == 0 and data.winner["candidate_id"] is None
    assert all("peak_memory_bytes was not recorded" in p.reason for p in data.problems if p.kind == "unscored")
    html = render_html(data)
    assert "No done evaluation recorded peak_memory_bytes" in html


def test_svg_helpers() -> None:
    assert nice_ticks(0.0, 1.0) == [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]
    assert nice_ticks(0.71, 0.94) == [0.75, 0.8, 0.85, 0.9]
    assert Axis.fit([1e3, 1e6], 0, 100, log=True).ticks() == [1e3, 1e4, 1e5, 1e6]
    a = Axis.fit([2.0, 4.0], 10, 110)
    assert a(2.0) < a(3.0) < a(4.0) and a(3.0) == pytest.approx(60)
    pts = [Point(10, 0.5, "a <b> & c", 1), Point(1e4, 0.9, "d", 2, highlight=True), Point(50, 0.6, "e", 3, highlight=True)]
    out = str(scatter(pts, title="t & u", x_label="x", y_label="y"))
    assert "<title>a &lt;b&gt; &amp; c</title>" in out and "<title>t &amp; u</title>" in out
    assert out.count('class="point front"') == 2 and out.count('class="point"') == 1
    assert "(log scale)" in out  # x spans three decades
    assert not re.search(r"https?://", out)

"""ReplayExecutor: lookups by (design, steps, seed), refusals as failed results, the executor contract.

Most tests use a small table written here (a 4-design space with made-up metrics); one reads the
committed hybridbench table.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import pytest

from hybridnas.search.campaign import parse_campaign
from hybridnas.search.controller import Controller
from hybridnas.space import ArchSpec, SpaceFile
from hybridnas.store import Store
from hybridnas.workers.evaluate import EvalRequest
from hybridnas.workers.replay import TABLE_FORMAT, TABLE_VERSION, ReplayExecutor, Table, TableError

TASK = {"name": "mqar", "vocab_size": 16, "seq_len": 16, "num_kv_pairs": 2}
TRAIN = {"batch_size": 8, "lr": 0.002}
SPACE = {
    "d_model": [16],
    "n_layers": [2],
    "n_heads": [2],
    "hybrid": {"ratio": [1, "all_linear"], "linear_mixer": ["gla", "mamba2"]},
}
FIDELITIES = (3, 9)
SEEDS = (10, 20)
COMMITTED = Path(__file__).resolve().parents[2] / "benchmarks" / "hybridbench" / "hybridbench.json"


def designs() -> list[ArchSpec]:
    return SpaceFile.model_validate(SPACE).build(vocab_size=TASK["vocab_size"]).designs()


def accuracy(i: int, fidelity: int, seed: int) -> float:
    """A made-up metric that tells every (design, fidelity, seed) apart."""
    return round(0.1 * i + fidelity / 1000 + seed / 10_000, 6)


def table_dict(**changes: Any) -> dict[str, Any]:
    ds = designs()
    records = [
        {"spec_hash": d.spec_hash, "fidelity": f, "seed": s, "status": "done",
         "metrics": {"accuracy": accuracy(i, f, s), "cost_state_bytes": 100.0 * i},
         "error": None, "wall_time_s": 1.5, "device": "cpu (1 threads)"}
        for i, d in enumerate(ds) for f in FIDELITIES for s in SEEDS
    ]
    records[-1] = {**records[-1], "status": "failed", "metrics": {}, "error": "loss became nan at step 4"}
    data = {
        "format": TABLE_FORMAT, "version": TABLE_VERSION, "space": SPACE, "task": TASK, "train": TRAIN,
        "fidelities": list(FIDELITIES), "seeds": list(SEEDS),
        "designs": {d.spec_hash: {"label": d.describe(), "spec_json": d.to_json()} for d in ds},
        "records": records,
    }
    return {**data, **changes}


@pytest.fixture
def table_path(tmp_path: Path) -> Path:
    p = tmp_path / "table.json"
    p.write_text(json.dumps(table_dict()))
    return p


def request(spec: ArchSpec, steps: int = 9, seed: int = 0, eid: int = 1, **changes: Any) -> EvalRequest:
    fields: dict[str, Any] = dict(evaluation_id=eid, spec_json=spec.to_json(), task=dict(TASK), train=dict(TRAIN),
                                  steps=steps, seed=seed)
    return EvalRequest(**{**fields, **changes})


def test_answers_each_design_fidelity_and_seed_from_the_table(table_path: Path) -> None:
    ex = ReplayExecutor(table_path, capacity=4)
    ds = designs()
    for i, d in enumerate(ds[:3]):
        for f in FIDELITIES:
            for seed, recorded in ((0, 10), (1, 20), (2, 10), (7, 20)):  # seeds[seed % 2]
                (r,) = [ex.answer(request(d, f, seed, eid=5))]
                assert r.status == "done" and r.error is None
                assert r.evaluation_id == 5
                assert r.metrics["accuracy"] == accuracy(i, f, recorded)
                assert r.wall_time_s == 1.5 and r.weights is None
                assert "replay" in r.device


def test_a_recorded_failure_replays_as_failed(table_path: Path) -> None:
    r = ReplayExecutor(table_path).answer(request(designs()[-1], steps=9, seed=1))
    assert r.status == "failed" and r.metrics == {}
    assert r.error == "loss became nan at step 4"


def test_settings_that_do_not_change_a_result_are_ignored(table_path: Path) -> None:
    ex = ReplayExecutor(table_path)
    # Defaults spelled out, the time limit and the scoring batch do not matter; steps is the fidelity.
    train = {**TRAIN, "weight_decay": 0.1, "eval_batch_size": 7, "steps": 1000}
    task = {**TASK, "power_a": 0.01}
    measure = {"decode_tokens": 3, "repeats": 1, "context_len": 512}  # timings only; the context is the table's
    r = ex.answer(request(designs()[0], train=train, task=task, measure=measure, timeout_s=0.001))
    assert r.status == "done", r.error


@pytest.mark.parametrize(
    "changes, needle",
    [
        ({"task": {**TASK, "num_kv_pairs": 3}}, "task differs from the table's: num_kv_pairs=3 (table: 2)"),
        ({"task": {"name": "nope"}}, "task: not a valid config"),
        ({"train": {**TRAIN, "lr": 0.1}}, "train differs from the table's: lr=0.1 (table: 0.002)"),
        ({"train": {**TRAIN, "bogus": 1}}, "train: not a valid config"),
        ({"measure": {"context_len": 64}}, "measure differs from the table's: context_len=64"),
        ({"steps": 5}, "steps: 5 is not a recorded fidelity; allowed: 3, 9"),
        ({"spec_json": "{not json"}, "invalid spec_json"),
    ],
)
def test_requests_the_table_cannot_answer_fail_with_the_reason(table_path: Path, changes: dict, needle: str) -> None:
    ex = ReplayExecutor(table_path)
    ex.submit(request(designs()[0], **changes))
    (r,) = ex.wait()
    assert r.status == "failed" and r.metrics == {}
    assert r.error is not None and needle in r.error, r.error
    assert ex.refused == 1 and ex.answered == 0


def test_a_design_missing_from_the_table_fails(table_path: Path) -> None:
    other = ArchSpec.from_json(designs()[0].to_json().replace('"d_model":16', '"d_model":32'))
    r = ReplayExecutor(table_path).answer(request(other))
    assert r.status == "failed"
    assert f"design {other.spec_hash} (steps 9, seed 10) is not in the table" in r.error


def test_a_missing_evaluation_of_a_known_design_fails(tmp_path: Path) -> None:
    data = table_dict()
    d = designs()[0]
    data["records"] = [r for r in data["records"] if not (r["spec_hash"] == d.spec_hash and r["seed"] == 20)]
    p = tmp_path / "t.json.gz"
    with gzip.open(p, "wt") as fh:  # a gzipped table reads the same
        json.dump(data, fh)
    ex = ReplayExecutor(p)
    assert ex.answer(request(d, seed=0)).status == "done"
    r = ex.answer(request(d, seed=1))
    assert r.status == "failed" and f"evaluation {d.spec_hash} (steps 9, seed 20) is not in the table" in r.error


def test_executor_contract(table_path: Path) -> None:
    ex = ReplayExecutor(table_path, capacity=3)
    assert ex.capacity == 3 and ex.in_flight == 0 and ex.wait() == []
    ds = designs()
    for i, d in enumerate(ds[:3]):
        ex.submit(request(d, eid=100 + i))
    assert ex.in_flight == 3
    results = ex.wait(timeout=0)
    assert [r.evaluation_id for r in results] == [100, 101, 102]
    assert ex.in_flight == 0 and ex.wait() == []
    ex.close()
    ex.close()
    with pytest.raises(RuntimeError, match="closed"):
        ex.submit(request(ds[0]))
    with pytest.raises(ValueError, match="capacity"):
        ReplayExecutor(table_path, capacity=0)


def test_bad_tables_raise_table_error(tmp_path: Path) -> None:
    with pytest.raises(TableError, match="does not exist"):
        Table.load(tmp_path / "none.json")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(table_dict(format="other")))
    with pytest.raises(TableError, match="format"):
        Table.load(bad)
    bad.write_text(json.dumps(table_dict(version=99)))
    with pytest.raises(TableError, match="version"):
        Table.load(bad)
    bad.write_text(json.dumps(table_dict(seeds=[])))
    with pytest.raises(TableError, match="seeds"):
        Table.load(bad)
    bad.write_text("{")
    with pytest.raises(TableError, match="not readable JSON"):
        Table.load(bad)


def test_seed_mean_per_design(table_path: Path) -> None:
    means = Table.load(table_path).mean("accuracy", 9)
    ds = designs()
    assert means[ds[0].spec_hash] == pytest.approx((accuracy(0, 9, 10) + accuracy(0, 9, 20)) / 2)
    assert means[ds[-1].spec_hash] == accuracy(len(ds) - 1, 9, 10)  # its seed-20 run failed


def test_a_campaign_runs_on_the_replay_executor(table_path: Path, tmp_path: Path) -> None:
    ds = designs()
    campaign = parse_campaign({
        "name": "replayed", "seed": 1, "task": TASK, "space": SPACE,
        "training": {"steps": 9, **TRAIN},
        "search": {"strategy": "random", "budget": len(ds)},
        "execution": {"executor": "inprocess", "workers": 2},
    })
    store = Store.open(f"sqlite:///{tmp_path / 'c.db'}")
    try:
        cid = store.create_campaign(campaign.name, campaign.config(), campaign.file.seed)
        Controller(store, campaign, cid, ReplayExecutor(table_path, capacity=2)).run()
        evals = store.evaluations(cid)
        index = {d.spec_hash: i for i, d in enumerate(ds)}
        got = {}
        for e in evals:
            spec = store.candidate(e.candidate_id).spec
            h = (spec if isinstance(spec, ArchSpec) else ArchSpec.from_dict(spec)).spec_hash
            got[h] = (e.status, (e.metrics or {}).get("accuracy"))
    finally:
        store.close()
    assert set(got) == set(index)  # every design once
    for h, i in index.items():
        if i == len(ds) - 1:
            assert got[h][0] == "failed"  # its seed-20 (campaign seed 1) run is a recorded failure
        else:
            assert got[h] == ("done", accuracy(i, 9, 20))


def test_the_committed_table_answers_its_designs() -> None:
    table = Table.load(COMMITTED)
    assert len(table.designs) == 49 and len(table.seeds) >= 2 and len(table.fidelities) == 2
    top = max(table.fidelities)
    assert table.fidelities == (top // 3, top)
    ex = ReplayExecutor(COMMITTED)
    h, spec_json = next(iter(table.designs.items()))
    for seed in range(len(table.seeds)):
        r = ex.answer(EvalRequest(7, spec_json, table.data["task"], table.data["train"], top, seed))
        assert r.status == "done", r.error
        assert r.metrics == table.records[(h, top, table.seeds[seed])].metrics
        assert 0.0 <= r.metrics["accuracy"] <= 1.0 and r.metrics["cost_state_bytes"] > 0
    assert all(any(k[0] == h for k in table.records) for h in table.designs)

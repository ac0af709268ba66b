"""Every Store API call, on SQLite and on PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save as save_safetensors
from sqlalchemy import func, inspect, select, update

from hybridnas.store import (
    SCHEMA_VERSION,
    ArtifactError,
    CampaignExists,
    CampaignNotFound,
    CandidateNotFound,
    DuplicateEvaluation,
    EvaluationAlreadyFinished,
    EvaluationNotFound,
    SchemaVersionError,
    Store,
)
from hybridnas.store.models import Artifact, Candidate, Evaluation, Lineage, Meta


def _count(store: Store, model: type) -> int:
    with store.engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(model)).scalar_one()


def _weights(value: float) -> bytes:
    return save_safetensors({"w": np.full((2, 3), value, dtype=np.float32)})


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


# --- schema --------------------------------------------------------------------------------------


def test_open_creates_prefixed_tables_and_schema_version(store: Store) -> None:
    tables = set(inspect(store.engine).get_table_names())
    assert {"hnas_meta", "hnas_campaigns", "hnas_candidates", "hnas_lineage", "hnas_evaluations", "hnas_artifacts"} <= tables
    assert all(t.startswith("hnas_") for t in tables)
    with store.engine.connect() as conn:
        assert conn.execute(select(Meta.value).where(Meta.key == "schema_version")).scalar_one() == str(SCHEMA_VERSION)


def test_newer_schema_version_is_refused(store: Store, tmp_path: Path) -> None:
    with store.engine.begin() as conn:
        conn.execute(update(Meta).where(Meta.key == "schema_version").values(value=str(SCHEMA_VERSION + 1)))
    with pytest.raises(SchemaVersionError, match=f"schema version {SCHEMA_VERSION + 1}.*upgrade hybridnas"):
        Store.open(store.url, artifacts_dir=tmp_path)
    with pytest.raises(SchemaVersionError):
        Store.open(store.url, artifacts_dir=tmp_path, create=False)


def test_reopen_keeps_data_and_open_twice_is_harmless(store: Store, tmp_path: Path, make_spec) -> None:
    cid = store.create_campaign("keep", {"a": 1}, seed=3)
    store.add_candidate(cid, make_spec(0), generation=0, parents=[], task="mqar", fidelity=10, seed=0)
    with Store.open(store.url, artifacts_dir=tmp_path) as again:
        info = again.get_campaign("keep")
        assert (info.id, info.seed, info.config, info.n_candidates, info.n_queued) == (cid, 3, {"a": 1}, 1, 1)
    with store.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(Meta)).scalar_one() == 1


def test_optuna_tables_live_beside_ours(store: Store) -> None:
    import optuna  # a dependency of hybridnas: a broken install fails here, never skips
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = optuna.storages.RDBStorage(store.url)
    study = optuna.create_study(storage=storage, study_name="s")
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
    storage.engine.dispose()
    tables = set(inspect(store.engine).get_table_names())
    assert {"studies", "trials", "hnas_campaigns"} <= tables
    store.create_campaign("with-optuna", {}, seed=0)
    with Store.open(store.url, artifacts_dir=store.artifacts_dir, create=False) as again:
        assert again.get_campaign().name == "with-optuna"


# --- campaigns -----------------------------------------------------------------------------------


def test_campaign_create_get_list(store: Store) -> None:
    a = store.create_campaign("alpha", {"objective": {"metric": "loss", "direction": "minimize"}, "x": [1, 2.5]}, seed=7)
    b = store.create_campaign("beta", {}, seed=2**40)  # seeds beyond 32 bits survive
    assert a != b
    info = store.get_campaign("alpha")
    assert (info.id, info.name, info.status, info.seed) == (a, "alpha", "running", 7)
    assert info.config == {"objective": {"metric": "loss", "direction": "minimize"}, "x": [1, 2.5]}
    assert (info.metric, info.direction, info.best) == ("loss", "minimize", None)
    assert info.created_at.tzinfo is not None and info.finished_at is None
    assert store.get_campaign(None).name == "beta"  # the most recent
    assert store.get_campaign(None).seed == 2**40
    assert [c.name for c in store.list_campaigns()] == ["alpha", "beta"]
    assert store.get_campaign_by_id(b).name == "beta"


def test_campaign_name_taken(store: Store) -> None:
    assert not store.campaign_exists("same")
    store.create_campaign("same", {}, seed=0)
    assert store.campaign_exists("same") and not store.campaign_exists("Same")
    with pytest.raises(CampaignExists, match="'same' already exists"):
        store.create_campaign("same", {"other": 1}, seed=1)
    assert len(store.list_campaigns()) == 1


def test_campaign_not_found_names_known_campaigns(store: Store) -> None:
    with pytest.raises(CampaignNotFound, match="no campaigns"):
        store.get_campaign(None)
    store.create_campaign("one", {}, seed=0)
    store.create_campaign("two", {}, seed=0)
    with pytest.raises(CampaignNotFound, match="'three' not found; known campaigns: one, two"):
        store.get_campaign("three")


def test_campaign_bad_input(store: Store) -> None:
    with pytest.raises(ValueError, match="name"):
        store.create_campaign("", {}, seed=0)
    with pytest.raises(TypeError, match="name"):
        store.create_campaign(None, {}, seed=0)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="config"):
        store.create_campaign("c", [1, 2], seed=0)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="config.bad"):
        store.create_campaign("c", {"bad": object()}, seed=0)
    with pytest.raises(TypeError, match="seed"):
        store.create_campaign("c", {}, seed=1.5)  # type: ignore[arg-type]
    assert store.list_campaigns() == []


def test_campaign_status(store: Store) -> None:
    cid = store.create_campaign("s", {}, seed=0)
    store.set_campaign_status(cid, "stopped")
    assert store.get_campaign("s").status == "stopped"
    assert store.get_campaign("s").finished_at is None
    store.set_campaign_status(cid, "finished")
    done = store.get_campaign("s")
    assert done.status == "finished" and done.finished_at is not None
    store.set_campaign_status(cid, "running")
    assert store.get_campaign("s").finished_at is None
    with pytest.raises(ValueError, match="status: got 'paused', allowed: running, stopped, finished, failed"):
        store.set_campaign_status(cid, "paused")
    with pytest.raises(CampaignNotFound):
        store.set_campaign_status(cid + 100, "stopped")


def test_campaign_counts_and_best(store: Store, make_spec) -> None:
    cid = store.create_campaign("c", {"objective": {"metric": "accuracy", "direction": "maximize"}}, seed=0)
    evs = [store.add_candidate(cid, make_spec(i), generation=0, parents=[], task="t", fidelity=10, seed=0)[1] for i in range(4)]
    store.mark_running(evs[0])
    store.finish_evaluation(evs[1], status="done", metrics={"accuracy": 0.4}, error=None, host=None, device=None, wall_time_s=1, weights=None)
    store.finish_evaluation(evs[2], status="done", metrics={"accuracy": 0.8}, error=None, host=None, device=None, wall_time_s=1, weights=None)
    store.finish_evaluation(evs[3], status="failed", metrics={}, error="diverged", host=None, device=None, wall_time_s=1, weights=None)
    (info,) = store.list_campaigns()
    assert (info.n_candidates, info.n_evaluations, info.n_queued, info.n_running, info.n_done, info.n_failed) == (4, 4, 0, 1, 2, 1)
    assert info.best is not None and info.best["candidate_id"] == store.find_candidate(cid, make_spec(2).spec_hash)
    assert info.best["accuracy"] == 0.8
    assert info.to_dict()["name"] == "c" and "config" not in info.to_dict(with_config=False)


# --- candidates and evaluations -----------------------------------------------------------------


def test_add_candidate_and_find(store: Store, make_spec) -> None:
    cid = store.create_campaign("c", {}, seed=0)
    spec = make_spec(0)
    cand, ev = store.add_candidate(cid, spec, generation=0, parents=[], task="mqar", fidelity=100, seed=0)
    assert store.find_candidate(cid, spec.spec_hash) == cand
    assert store.find_candidate(cid, make_spec(1).spec_hash) is None
    # Same design, higher fidelity: the candidate row is reused, a new evaluation is queued.
    cand2, ev2 = store.add_candidate(cid, spec, generation=5, parents=[], task="mqar", fidelity=1000, seed=0)
    assert cand2 == cand and ev2 != ev
    # A second seed at the same fidelity is a new evaluation too.
    _, ev3 = store.add_candidate(cid, spec, generation=0, parents=[], task="mqar", fidelity=1000, seed=1)
    info = store.candidate(cand)
    assert info.spec == spec and info.spec.hybrid == spec.hybrid  # hybrid genes survive the round trip
    assert (info.spec_hash, info.label, info.generation) == (spec.spec_hash, spec.describe(), 0)
    assert [(e.id, e.fidelity, e.seed, e.status) for e in info.evaluations] == [
        (ev, 100, 0, "queued"),
        (ev2, 1000, 0, "queued"),
        (ev3, 1000, 1, "queued"),
    ]
    # The same design in another campaign is another candidate.
    other = store.create_campaign("other", {}, seed=0)
    assert store.add_candidate(other, spec, generation=0, parents=[], task="mqar", fidelity=100, seed=0)[0] != cand


def test_duplicate_evaluation_writes_nothing(store: Store, make_spec) -> None:
    cid = store.create_campaign("c", {}, seed=0)
    root, _ = store.add_candidate(cid, make_spec(0), generation=0, parents=[], task="mqar", fidelity=10, seed=0)
    cand, ev = store.add_candidate(cid, make_spec(1), generation=1, parents=[(root, "mutate")], task="mqar", fidelity=10, seed=0)
    other, _ = store.add_candidate(cid, make_spec(2), generation=0, parents=[], task="mqar", fidelity=10, seed=0)
    before = (_count(store, Candidate), _count(store, Evaluation), _count(store, Lineage))
    with pytest.raises(DuplicateEvaluation) as err:
        store.add_candidate(cid, make_spec(1), generation=1, parents=[(other, "crossover")], task="mqar", fidelity=10, seed=0)
    assert (err.value.candidate_id, err.value.evaluation_id) == (cand, ev)
    assert (_count(store, Candidate), _count(store, Evaluation), _count(store, Lineage)) == before


def test_failing_add_leaves_nothing(store: Store, make_spec) -> None:
    cid = store.create_campaign("c", {}, seed=0)
    # The candidate row is inserted before the parents are checked: the whole transaction must roll back.
    with pytest.raises(ValueError, match="parents: no candidate with id 999"):
        store.add_candidate(cid, make_spec(0), generation=1, parents=[(999, "mutate")], task="mqar", fidelity=10, seed=0)
    assert (_count(store, Candidate), _count(store, Evaluation), _count(store, Lineage)) == (0, 0, 0)
    assert store.find_candidate(cid, make_spec(0).spec_hash) is None
    with pytest.raises(CampaignNotFound):
        store.add_candidate(cid + 1, make_spec(0), generation=0, parents=[], task="mqar", fidelity=10, seed=0)
    for kwargs, exc, field in [
        ({"generation": -1}, ValueError, "generation"),
        ({"fidelity": "10"}, TypeError, "fidelity"),
        ({"task": ""}, ValueError, "task"),
        ({"task": "x" * 129}, ValueError, "task"),
        ({"seed": None}, TypeError, "seed"),
        ({"parents": [(1,)]}, TypeError, r"parents\[0\]"),
        ({"parents": [(1, "")]}, ValueError, r"parents\[0\]\[1\]"),
    ]:
        args = {"generation": 0, "parents": [], "task": "mqar", "fidelity": 10, "seed": 0, **kwargs}
        with pytest.raises(exc, match=field):
            store.add_candidate(cid, make_spec(0), **args)
    with pytest.raises(TypeError, match="spec"):
        store.add_candidate(cid, make_spec(0).to_dict(), generation=0, parents=[], task="mqar", fidelity=10, seed=0)  # type: ignore[arg-type]
    assert (_count(store, Candidate), _count(store, Evaluation)) == (0, 0)


def test_parent_edges_merge_and_skip_self(store: Store, make_spec) -> None:
    cid = store.create_campaign("c", {}, seed=0)
    a, _ = store.add_candidate(cid, make_spec(0), generation=0, parents=[], task="t", fidelity=10, seed=0)
    b, _ = store.add_candidate(cid, make_spec(1), generation=0, parents=[], task="t", fidelity=10, seed=0)
    c, _ = store.add_candidate(cid, make_spec(2), generation=1, parents=[(a, "mutate_mixer")], task="t", fidelity=10, seed=0)
    # Rediscovered from another parent (and "from itself"): the new edge is added, the self edge is not.
    c2, _ = store.add_candidate(cid, make_spec(2), generation=3, parents=[(b, "crossover"), (c, "mutate_gate")], task="t", fidelity=20, seed=0)
    assert c2 == c
    info = store.candidate(c)
    assert info.parents == ((a, "mutate_mixer"), (b, "crossover"))
    assert info.generation == 1  # as first recorded


def test_mark_running_finish_and_resume_lists(store: Store, make_spec) -> None:
    cid = store.create_campaign("c", {}, seed=0)
    ids = [store.add_candidate(cid, make_spec(i), generation=0, parents=[], task="mqar", fidelity=10, seed=0) for i in range(3)]
    evs = [ev for _, ev in ids]
    store.mark_running(evs[0], host="node1", device="cpu")
    store.mark_running(evs[1])
    store.mark_running(evs[1], host="node2", device="cuda:0")  # re-submitted after a resume
    store.finish_evaluation(evs[1], status="done", metrics={"accuracy": 0.5}, error=None, host="node2", device="cuda:0", wall_time_s=2.5, weights=None)
    unfinished = store.unfinished_evaluations(cid)
    assert [(e.id, e.status) for e in unfinished] == [(evs[0], "running"), (evs[2], "queued")]
    assert unfinished[0].host == "node1" and unfinished[0].started_at is not None
    assert unfinished[1].spec == make_spec(2) and (unfinished[1].task, unfinished[1].fidelity, unfinished[1].seed) == ("mqar", 10, 0)
    every = store.evaluations(cid)
    assert [e.id for e in every] == sorted(evs)
    done = every[1]
    assert (done.status, done.metrics, done.host, done.device, done.wall_time_s) == ("done", {"accuracy": 0.5}, "node2", "cuda:0", 2.5)
    assert done.finished_at is not None and done.finished_at >= done.started_at
    assert done.to_dict()["spec"]["d_model"] == 32
    with pytest.raises(EvaluationAlreadyFinished):
        store.mark_running(evs[1])
    with pytest.raises(EvaluationNotFound):
        store.mark_running(12345)
    with pytest.raises(CampaignNotFound):
        store.evaluations(cid + 1)


def test_failed_evaluation_and_nonfinite_metrics(store: Store, make_spec) -> None:
    cid = store.create_campaign("c", {}, seed=0)
    _, ev = store.add_candidate(cid, make_spec(0), generation=0, parents=[], task="mqar", fidelity=10, seed=0)
    store.finish_evaluation(
        ev,
        status="failed",
        metrics={"loss": float("nan"), "grad": float("inf"), "n": np.int64(3), "acc": np.float32(0.5), "hist": (1, 2),
                 "ok": np.bool_(False), "mean": np.array(1.5)},
        error="diverged at step 7",
        host="h",
        device="cpu",
        wall_time_s=0.1,
        weights=None,
    )
    (e,) = store.evaluations(cid)
    assert e.status == "failed" and e.error == "diverged at step 7"
    assert e.metrics == {"loss": None, "grad": None, "n": 3, "acc": 0.5, "hist": [1, 2], "ok": False, "mean": 1.5}
    # The same result again (NaN and all) is a no-op, not a conflict.
    store.finish_evaluation(ev, status="failed", metrics={"loss": float("nan"), "grad": float("inf"), "n": 3, "acc": 0.5, "hist": [1, 2], "ok": False, "mean": 1.5},
                            error="diverged at step 7", host="other", device="cpu", wall_time_s=9.0, weights=None)
    assert store.evaluations(cid)[0].host == "h"


def test_finish_is_idempotent_and_refuses_a_different_result(store: Store, make_spec) -> None:
    cid = store.create_campaign("c", {}, seed=0)
    cand, ev = store.add_candidate(cid, make_spec(0), generation=0, parents=[], task="mqar", fidelity=10, seed=0)
    w = _weights(1.0)
    for _ in range(2):
        store.finish_evaluation(ev, status="done", metrics={"accuracy": 0.9, "loss": 0.1}, error=None, host="h", device="cpu", wall_time_s=1.0, weights=w)
    assert _count(store, Artifact) == 1
    assert len(_files(store.artifacts_dir)) == 1
    for change in [{"metrics": {"accuracy": 0.8, "loss": 0.1}}, {"status": "failed"}, {"weights": _weights(2.0)}, {"weights": None}, {"error": "x"}]:
        args = {"status": "done", "metrics": {"accuracy": 0.9, "loss": 0.1}, "error": None, "weights": w, **change}
        with pytest.raises(EvaluationAlreadyFinished, match=f"evaluation {ev} is done already"):
            store.finish_evaluation(ev, host="h", device="cpu", wall_time_s=1.0, **args)
    (e,) = store.evaluations(cid)
    assert (e.status, e.metrics) == ("done", {"accuracy": 0.9, "loss": 0.1})
    assert _count(store, Artifact) == 1


def test_finish_bad_input_writes_nothing(store: Store, make_spec) -> None:
    cid = store.create_campaign("c", {}, seed=0)
    _, ev = store.add_candidate(cid, make_spec(0), generation=0, parents=[], task="mqar", fidelity=10, seed=0)
    good = {"status": "done", "metrics": {"accuracy": 1.0}, "error": None, "host": "h", "device": "cpu", "wall_time_s": 1.0, "weights": _weights(3.0)}
    for change, exc, field in [
        ({"status": "ok"}, ValueError, "status: got 'ok', allowed: done, failed"),
        ({"metrics": {"accuracy": object()}}, TypeError, "metrics.accuracy"),
        ({"metrics": {1: 0.5}}, TypeError, "metrics: key 1"),
        ({"metrics": {"curve": np.zeros(3)}}, TypeError, "metrics.curve: ndarray is not JSON"),
        ({"metrics": [0.5]}, TypeError, "metrics"),
        ({"weights": b"\x80\x04pickle"}, ValueError, "weights"),
        ({"weights": (100).to_bytes(8, "little") + b"{}"}, ValueError, "weights: header size 100"),
        ({"weights": "abc"}, TypeError, "weights"),
        ({"wall_time_s": -1.0}, ValueError, "wall_time_s"),
        ({"wall_time_s": "1"}, TypeError, "wall_time_s"),
        ({"host": ""}, ValueError, "host"),
        ({"error": 3}, TypeError, "error"),
    ]:
        with pytest.raises(exc, match=field):
            store.finish_evaluation(ev, **{**good, **change})
    with pytest.raises(EvaluationNotFound):
        store.finish_evaluation(ev + 99, **good)
    (e,) = store.evaluations(cid)
    assert e.status == "queued" and e.metrics == {} and e.finished_at is None
    assert _count(store, Artifact) == 0
    assert _files(store.artifacts_dir) == []


# --- artifacts -------------------------------------------------------------------------------------


def test_weights_are_content_addressed_and_verified(store: Store, make_spec) -> None:
    import hashlib

    cid = store.create_campaign("c", {}, seed=0)
    a, ev_a = store.add_candidate(cid, make_spec(0), generation=0, parents=[], task="mqar", fidelity=10, seed=0)
    b, ev_b = store.add_candidate(cid, make_spec(1), generation=0, parents=[], task="mqar", fidelity=10, seed=0)
    w = _weights(0.25)
    sha = hashlib.sha256(w).hexdigest()
    done = {"status": "done", "metrics": {"accuracy": 0.5}, "error": None, "host": None, "device": None, "wall_time_s": 1.0}
    store.finish_evaluation(ev_a, weights=w, **done)
    store.finish_evaluation(ev_b, weights=bytearray(w), **done)  # same bytes: the same file
    path = store.weights_path(a)
    assert path == store.artifacts_dir / sha[:2] / f"{sha}.safetensors"
    assert path.read_bytes() == w
    assert store.weights_path(b) == path
    assert _files(store.artifacts_dir) == [path]  # no temporary files left behind
    (art,) = store.candidate(a).artifacts
    assert (art.kind, art.sha256, art.bytes, art.path, art.evaluation_id) == ("weights", sha, len(w), path, ev_a)
    # Corrupt or missing files are reported, never returned.
    path.write_bytes(w[:-1] + b"\x00")
    with pytest.raises(ArtifactError, match="corrupt"):
        store.weights_path(a)
    path.unlink()
    with pytest.raises(ArtifactError, match="missing"):
        store.weights_path(a)
    # Writing the same bytes again repairs the file.
    _, ev_a2 = store.add_candidate(cid, make_spec(0), generation=0, parents=[], task="mqar", fidelity=10, seed=1)
    store.finish_evaluation(ev_a2, weights=w, **done)
    assert store.weights_path(a) == path


def test_weights_path_uses_highest_done_fidelity(store: Store, make_spec) -> None:
    cid = store.create_campaign("c", {}, seed=0)
    cand, low = store.add_candidate(cid, make_spec(0), generation=0, parents=[], task="mqar", fidelity=10, seed=0)
    assert store.weights_path(cand) is None  # nothing done yet
    done = {"status": "done", "metrics": {"accuracy": 0.5}, "error": None, "host": None, "device": None, "wall_time_s": 1.0}
    store.finish_evaluation(low, weights=_weights(1.0), **done)
    low_path = store.weights_path(cand)
    assert low_path is not None and low_path.read_bytes() == _weights(1.0)
    _, high_s1 = store.add_candidate(cid, make_spec(0), generation=0, parents=[], task="mqar", fidelity=100, seed=1)
    _, high_s0 = store.add_candidate(cid, make_spec(0), generation=0, parents=[], task="mqar", fidelity=100, seed=0)
    _, failed = store.add_candidate(cid, make_spec(0), generation=0, parents=[], task="mqar", fidelity=1000, seed=0)
    store.finish_evaluation(failed, status="failed", metrics={}, error="oom", host=None, device=None, wall_time_s=1.0, weights=_weights(9.0))
    store.finish_evaluation(high_s1, weights=_weights(2.0), **done)
    assert store.weights_path(cand).read_bytes() == _weights(2.0)  # failed fidelity 1000 does not count
    store.finish_evaluation(high_s0, weights=_weights(3.0), **done)
    assert store.weights_path(cand).read_bytes() == _weights(3.0)  # lowest seed at the top fidelity
    # A done top-fidelity evaluation without weights does not fall back to lower-fidelity weights.
    _, top = store.add_candidate(cid, make_spec(0), generation=0, parents=[], task="mqar", fidelity=5000, seed=0)
    store.finish_evaluation(top, weights=None, **done)
    assert store.weights_path(cand) is None
    with pytest.raises(CandidateNotFound):
        store.weights_path(cand + 100)


def test_default_artifacts_dir(store_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("HYBRIDNAS_ARTIFACTS", raising=False)
    with Store.open(store_url) as s:
        expected = tmp_path / ("store_artifacts" if store_url.startswith("sqlite") else "hybridnas_artifacts")
        assert s.artifacts_dir == expected
        assert not expected.exists()  # created on the first write only
    monkeypatch.setenv("HYBRIDNAS_ARTIFACTS", str(tmp_path / "elsewhere"))
    with Store.open(store_url) as s:
        assert s.artifacts_dir == tmp_path / "elsewhere"


def test_info_records_serialize(store: Store, make_spec) -> None:
    import json

    cid = store.create_campaign("c", {}, seed=0)
    a, ev = store.add_candidate(cid, make_spec(0), generation=0, parents=[], task="mqar", fidelity=10, seed=0)
    store.finish_evaluation(ev, status="done", metrics={"accuracy": 0.5}, error=None, host=None, device=None, wall_time_s=1, weights=_weights(0.0))
    b, _ = store.add_candidate(cid, make_spec(1), generation=1, parents=[(a, "mutate")], task="mqar", fidelity=10, seed=0)
    d = json.loads(json.dumps(store.candidate(b).to_dict()))
    assert d["parents"] == [{"parent_id": a, "operator": "mutate"}]
    d = json.loads(json.dumps(store.candidate(a).to_dict()))
    assert d["artifacts"][0]["kind"] == "weights" and d["evaluations"][0]["metrics"] == {"accuracy": 0.5}
    assert store.campaign_of(b) == "c"
    with pytest.raises(CandidateNotFound):
        store.candidate(999)
    with pytest.raises(CandidateNotFound):
        store.campaign_of(999)

"""A store written with an older schema version (1 or 2) opens, migrated in place, with every row kept."""

from __future__ import annotations

import hashlib
from pathlib import Path

from sqlalchemy import create_engine, inspect, text

from hybridnas.space.spec import ArchSpec, LayerSpec
from hybridnas.store import SCHEMA_VERSION, Store
from hybridnas.store.migrations import MIGRATIONS

DATA = Path(__file__).parent / "data"


def _spec() -> ArchSpec:
    return ArchSpec(d_model=32, layers=(LayerSpec(mixer="gla", n_heads=2),), vocab_size=16)


def _write_old(url: str, dialect: str, version: int = 1) -> None:
    """The tables of schema `version` and one campaign with a done evaluation, a failed one and a
    weights artifact (only columns every old version has)."""
    engine = create_engine(url)
    ddl = (DATA / f"schema_v{version}_{dialect}.sql").read_text()
    spec = _spec()
    ts = "'2026-01-01 00:00:00'" if dialect == "sqlite" else "'2026-01-01 00:00:00+00'"
    with engine.begin() as conn:
        for stmt in ddl.split(";"):
            body = "\n".join(line for line in stmt.splitlines() if not line.startswith("--")).strip()
            if body:
                conn.execute(text(body))
        conn.execute(
            text(f"INSERT INTO hnas_campaigns (name, config, seed, status, created_at, updated_at) "
                 f"VALUES ('old', '{{}}', 0, 'finished', {ts}, {ts})")
        )
        conn.execute(
            text(f"INSERT INTO hnas_candidates (campaign_id, spec, spec_hash, generation, label, created_at) "
                 f"VALUES (1, :spec, :h, 0, 'gla', {ts})"),
            {"spec": spec.to_json(), "h": spec.spec_hash},
        )
        for seed, status, metrics in ((0, "done", '{"accuracy": 0.5}'), (1, "failed", None)):
            conn.execute(
                text(f"INSERT INTO hnas_evaluations (candidate_id, task, fidelity, seed, status, metrics, created_at) "
                     f"VALUES (1, 'mqar', 10, :seed, :status, :m, {ts})"),
                {"seed": seed, "status": status, "m": metrics},
            )
        conn.execute(
            text(f"INSERT INTO hnas_artifacts (candidate_id, evaluation_id, kind, path, sha256, bytes, created_at) "
                 f"VALUES (1, 1, 'weights', 'ab/cd', :sha, 3, {ts})"),
            {"sha": hashlib.sha256(b"abc").hexdigest()},
        )
    engine.dispose()


def _check_migrated(url: str, tmp_path: Path) -> None:
    with Store.open(url, artifacts_dir=tmp_path / "art", create=False) as store:
        with store.engine.connect() as conn:
            assert conn.execute(text("SELECT value FROM hnas_meta WHERE key = 'schema_version'")).scalar() == str(SCHEMA_VERSION)
        info = store.get_campaign("old")
        assert (info.n_done, info.n_failed, info.stop_requested, info.lease_owner) == (1, 1, False, None)
        evs = store.evaluations(info.id)
        assert [(e.status, e.origin, e.metrics) for e in evs] == [("done", "search", {"accuracy": 0.5}), ("failed", "search", {})]
        cand = store.candidate(1)
        assert cand.spec == _spec() and [a.sha256 for a in cand.artifacts] == [hashlib.sha256(b"abc").hexdigest()]
        # The new layout works: an extra seed queued as a reseed, finished as invalid.
        ev = store.add_evaluation(1, task="mqar", fidelity=10, seed=2, origin="reseed")
        store.finish_evaluation(ev, status="invalid", metrics={}, error="output at t depends on t+1")
        assert store.evaluation(ev).status == "invalid" and store.evaluation(ev).origin == "reseed"
        store.request_stop(info.id)
        assert store.stop_requested(info.id)
        # Rows from before version 3 ran on no known worker; new results name theirs.
        assert [e.worker for e in evs] == [None, None]
        ev = store.add_evaluation(1, task="mqar", fidelity=10, seed=3, origin="reseed")
        store.mark_running(ev)
        store.finish_evaluation(ev, status="done", metrics={"accuracy": 0.75}, host="h", worker="0123abcd/4242")
        assert store.evaluation(ev).worker == "0123abcd/4242"
        assert store.evaluation(ev).to_dict()["worker"] == "0123abcd/4242"
    # Opening again finds the current version and changes nothing.
    with Store.open(url, artifacts_dir=tmp_path / "art", create=False) as store:
        assert len(store.evaluations(1)) == 4


def test_sqlite_v1_store_is_migrated(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'v1.db'}"
    _write_old(url, "sqlite")
    _check_migrated(url, tmp_path)
    engine = create_engine(url)
    with engine.connect() as conn:
        assert conn.execute(text("PRAGMA foreign_key_check")).fetchall() == []
        # The artifact still points at its evaluation through the rebuilt table.
        assert conn.execute(text("SELECT e.status FROM hnas_artifacts a JOIN hnas_evaluations e ON a.evaluation_id = e.id")).scalar() == "done"
        tables = {r[0] for r in conn.execute(text("SELECT name FROM sqlite_master WHERE type = 'table'"))}
    engine.dispose()
    assert "hnas_evaluations_v2" not in tables


def test_postgres_v1_store_is_migrated(pg_url: str, tmp_path: Path) -> None:
    _write_old(pg_url, "postgresql")
    _check_migrated(pg_url, tmp_path)


def _evaluation_columns(url: str) -> list[str]:
    engine = create_engine(url)
    try:
        return [c["name"] for c in inspect(engine).get_columns("hnas_evaluations")]
    finally:
        engine.dispose()


def test_sqlite_v2_store_gains_the_worker_column(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'v2.db'}"
    _write_old(url, "sqlite", version=2)
    assert "worker" not in _evaluation_columns(url)
    _check_migrated(url, tmp_path)
    assert _evaluation_columns(url)[-1] == "worker"  # where a fresh store has it too


def test_postgres_v2_store_gains_the_worker_column(pg_url: str, tmp_path: Path) -> None:
    _write_old(pg_url, "postgresql", version=2)
    _check_migrated(pg_url, tmp_path)
    assert _evaluation_columns(pg_url)[-1] == "worker"


def test_v1_to_v2_step_builds_the_version_2_table(tmp_path: Path) -> None:
    """The 1 -> 2 step rebuilds evaluations as version 2 had them; the worker column is the next step's."""
    v1, v2 = f"sqlite:///{tmp_path / 'v1.db'}", f"sqlite:///{tmp_path / 'v2.db'}"
    _write_old(v1, "sqlite")
    _write_old(v2, "sqlite", version=2)
    engine = create_engine(v1)
    try:
        MIGRATIONS[1]["sqlite"](engine)
    finally:
        engine.dispose()
    assert _evaluation_columns(v1) == _evaluation_columns(v2)

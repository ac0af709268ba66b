"""A store written with schema version 1 opens, migrated in place, with every row kept."""

from __future__ import annotations

import hashlib
from pathlib import Path

from sqlalchemy import create_engine, text

from hybridnas.space.spec import ArchSpec, LayerSpec
from hybridnas.store import SCHEMA_VERSION, Store

DATA = Path(__file__).parent / "data"


def _spec() -> ArchSpec:
    return ArchSpec(d_model=32, layers=(LayerSpec(mixer="gla", n_heads=2),), vocab_size=16)


def _write_v1(url: str, dialect: str) -> None:
    """The v1 tables and one campaign with a done evaluation, a failed one and a weights artifact."""
    engine = create_engine(url)
    ddl = (DATA / f"schema_v1_{dialect}.sql").read_text()
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
    # Opening again finds version 2 and changes nothing.
    with Store.open(url, artifacts_dir=tmp_path / "art", create=False) as store:
        assert len(store.evaluations(1)) == 3


def test_sqlite_v1_store_is_migrated(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'v1.db'}"
    _write_v1(url, "sqlite")
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
    _write_v1(pg_url, "postgresql")
    _check_migrated(pg_url, tmp_path)

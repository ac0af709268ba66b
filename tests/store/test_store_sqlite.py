"""SQLite specifics: WAL readers that never see "database is locked", a writer killed mid-campaign, URLs."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest
from sqlalchemy import text

from hybridnas.store import Store, StoreNotFound, resolve_url

WRITER = textwrap.dedent(
    """
    import sys
    import numpy as np
    from safetensors.numpy import save
    from hybridnas.space.spec import ArchSpec, HybridGenes
    from hybridnas.store import Store

    store = Store.open(sys.argv[1])
    cid = store.create_campaign("killed", {}, seed=0)
    spec = ArchSpec.from_hybrid(HybridGenes(), d_model=32, n_layers=2, n_heads=2, vocab_size=32)
    i = 0
    while True:
        _, ev = store.add_candidate(cid, spec, generation=0, parents=[], task="t", fidelity=10, seed=i)
        store.mark_running(ev, host="h", device="cpu")
        w = save({"w": np.full(64, i, dtype=np.float32)})
        store.finish_evaluation(ev, status="done", metrics={"i": i}, error=None, host="h", device="cpu", wall_time_s=0.0, weights=w)
        print(ev, i, flush=True)  # only after the commit returned
        i += 1
    """
)


def _seed(store: Store, make_spec) -> int:
    cid = store.create_campaign("seeded", {}, seed=0)
    for i in range(3):
        _, ev = store.add_candidate(cid, make_spec(i), generation=0, parents=[], task="t", fidelity=10, seed=0)
        store.finish_evaluation(ev, status="done", metrics={"accuracy": i / 10}, error=None, host=None, device=None, wall_time_s=1, weights=None)
    return cid


def _hold_write_lock(db: Path) -> sqlite3.Connection:
    """Another writer inside an open write transaction, with an uncommitted campaign.

    EXCLUSIVE: without WAL this would shut every reader out (as a committing writer does); in WAL
    mode it is the same as IMMEDIATE and readers go on.
    """
    con = sqlite3.connect(db, isolation_level=None, check_same_thread=False)
    con.execute("BEGIN EXCLUSIVE")
    con.execute(
        "INSERT INTO hnas_campaigns (name, config, seed, status, created_at, updated_at) "
        "VALUES ('uncommitted', '{}', 0, 'running', '2000-01-01 00:00:00', '2000-01-01 00:00:00')"
    )
    return con


def test_sqlite_pragmas(sqlite_store: Store) -> None:
    with sqlite_store.engine.connect() as conn:
        assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert conn.execute(text("PRAGMA foreign_keys")).scalar() == 1
        assert conn.execute(text("PRAGMA synchronous")).scalar() == 2  # FULL
        assert conn.execute(text("PRAGMA busy_timeout")).scalar() >= 10_000


def test_reader_thread_reads_while_a_writer_holds_the_lock(sqlite_store: Store, tmp_path: Path, make_spec) -> None:
    cid = _seed(sqlite_store, make_spec)
    db = tmp_path / "store.db"
    writer = _hold_write_lock(db)
    results: dict[str, object] = {}

    def read() -> None:
        try:
            # A 0.25 s busy timeout: a reader that needed the lock would fail fast with "database is locked".
            with Store.open(f"sqlite:///{db}?timeout=0.25", create=False) as reader:
                results["names"] = [c.name for c in reader.list_campaigns()]
                results["board"] = [r["accuracy"] for r in reader.leaderboard(cid)]
                results["evals"] = len(reader.evaluations(cid))
            results["again"] = [c.name for c in sqlite_store.list_campaigns()]  # the writer's own store reads too
        except Exception as e:  # reported to the main thread
            results["error"] = e

    try:
        t = threading.Thread(target=read)
        t.start()
        t.join(60)
    finally:
        writer.execute("COMMIT")
        writer.close()
    assert "error" not in results, results.get("error")
    assert results["names"] == ["seeded"] == results["again"]  # the uncommitted row is invisible
    assert results["board"] == [0.2, 0.1, 0.0] and results["evals"] == 3
    assert [c.name for c in sqlite_store.list_campaigns()] == ["uncommitted", "seeded"]  # committed now (dated 2000)


def test_reader_process_reads_while_a_writer_holds_the_lock(sqlite_store: Store, tmp_path: Path, make_spec) -> None:
    cid = _seed(sqlite_store, make_spec)
    db = tmp_path / "store.db"
    code = textwrap.dedent(
        f"""
        from hybridnas.store import Store
        with Store.open({f"sqlite:///{db}?timeout=0.25"!r}, create=False) as s:
            print([c.name for c in s.list_campaigns()], [r["candidate_id"] for r in s.leaderboard({cid})])
        """
    )
    writer = _hold_write_lock(db)
    try:
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    finally:
        writer.execute("ROLLBACK")
        writer.close()
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "['seeded'] [3, 2, 1]"


def test_second_writer_waits_for_the_lock_instead_of_failing(sqlite_store: Store, tmp_path: Path) -> None:
    # With a deferred BEGIN, create_campaign would read first and then fail at once when upgrading to a
    # write after the other writer committed; BEGIN IMMEDIATE waits for the lock under the busy timeout.
    writer = _hold_write_lock(tmp_path / "store.db")
    release = threading.Timer(0.3, lambda: (writer.execute("COMMIT"), writer.close()))
    release.start()
    try:
        sqlite_store.create_campaign("second", {}, seed=0)
    finally:
        release.join()
    assert [c.name for c in sqlite_store.list_campaigns()] == ["uncommitted", "second"]


def test_readers_during_a_stream_of_writes(sqlite_store: Store, tmp_path: Path, make_spec) -> None:
    cid = sqlite_store.create_campaign("stream", {}, seed=0)
    errors: list[BaseException] = []
    stop = threading.Event()

    def write() -> None:
        try:
            for i in range(20):
                _, ev = sqlite_store.add_candidate(cid, make_spec(i), generation=0, parents=[], task="t", fidelity=10, seed=0)
                sqlite_store.finish_evaluation(ev, status="done", metrics={"accuracy": i}, error=None, host=None, device=None, wall_time_s=0, weights=None)
        except BaseException as e:
            errors.append(e)
        finally:
            stop.set()

    seen = []
    with Store.open(f"sqlite:///{tmp_path / 'store.db'}?timeout=0.25", create=False) as reader:
        t = threading.Thread(target=write)
        t.start()
        while not stop.is_set():
            rows = reader.leaderboard(cid)
            seen.append(len(rows))
            assert all(r["n_seeds"] == 1 for r in rows)
        t.join()
        assert len(reader.leaderboard(cid)) == 20
    assert not errors, errors
    assert seen == sorted(seen)  # a reader only ever sees whole, committed results, in order


def test_killed_writer_loses_nothing_committed(tmp_path: Path) -> None:
    db = tmp_path / "killed.db"
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(db)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    committed: list[tuple[int, int]] = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            ev, i = map(int, line.split())
            committed.append((ev, i))
            if len(committed) == 6:
                os.kill(proc.pid, signal.SIGKILL)  # mid-loop, at whatever point the writer is
                break
    finally:
        proc.kill()
        _, err = proc.communicate(timeout=60)
    assert len(committed) == 6, err
    with Store.open(db) as store:
        with store.engine.connect() as conn:
            assert conn.execute(text("PRAGMA integrity_check")).scalar() == "ok"
        cid = store.get_campaign("killed").id
        by_id = {e.id: e for e in store.evaluations(cid)}
        for ev, i in committed:
            assert by_id[ev].status == "done" and by_id[ev].metrics == {"i": i}
        # Whatever was in flight is either absent or a consistent queued/running/done row; resume can go on.
        assert all(e.status in ("queued", "running", "done") for e in by_id.values())
        cand = next(iter(by_id.values())).candidate_id
        assert store.weights_path(cand) is not None  # sha256 verified
        store.add_candidate(cid, by_id[committed[0][0]].spec, generation=0, parents=[], task="t", fidelity=10, seed=10_000)


def test_url_resolution(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("HYBRIDNAS_STORE", raising=False)
    assert resolve_url(None) == "sqlite:///hybridnas.db"
    monkeypatch.setenv("HYBRIDNAS_STORE", "sqlite:///from_env.db")
    assert resolve_url(None) == "sqlite:///from_env.db"
    assert resolve_url("runs/x.db") == f"sqlite:///{tmp_path / 'runs' / 'x.db'}"
    assert resolve_url("postgresql+psycopg://u@h/db") == "postgresql+psycopg://u@h/db"
    with pytest.raises(ValueError, match="url"):
        resolve_url("")
    with Store.open("runs/x.db") as s:  # a bare path; parent folders are created
        s.create_campaign("bare", {}, seed=0)
        assert s.artifacts_dir == tmp_path / "runs" / "x_artifacts"
    with Store.open() as s:  # from the environment
        assert s.list_campaigns() == []
    assert (tmp_path / "from_env.db").is_file()
    with Store.open(":memory:") as s:
        s.create_campaign("mem", {}, seed=0)
        assert s.get_campaign().name == "mem"


def test_readers_never_create_a_store(tmp_path: Path) -> None:
    missing = tmp_path / "nope.db"
    with pytest.raises(StoreNotFound, match="nope.db"):
        Store.open(missing, create=False)
    assert not missing.exists()
    # An existing SQLite file that is not a hybridnas store is refused too, and left untouched.
    other = tmp_path / "other.db"
    sqlite3.connect(other).close()
    with pytest.raises(StoreNotFound):
        Store.open(other, create=False)
    assert other.stat().st_size == 0

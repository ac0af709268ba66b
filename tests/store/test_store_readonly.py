"""A store this user may only read: every reading verb works, every writing verb says why it cannot.

Tests run as root here, and root ignores file modes, so a plain chmod proves nothing. Two things do
work on this machine (ext4, util-linux), and each test says which it uses, skipping where it cannot:

- `chattr +i` on the folder (and the file): immutable even for root, so SQLite cannot create the
  -wal/-shm files beside the store nor write the file, exactly as in a colleague's read-only folder;
- running the CLI as `nobody` with `setpriv --reuid 65534` against a folder and file chmod'ed a-w:
  the real case, a user without write permission.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml
from sqlalchemy import create_engine, text
from typer.testing import CliRunner

from hybridnas.cli import app
from hybridnas.store import SCHEMA_VERSION, Store, StoreReadOnly

from .test_store_bad_urls import TINY

NOBODY = 65534
READERS: dict[str, list[str]] = {
    "query leaderboard": ["query", "leaderboard", "--format", "json"],
    "query pareto": ["query", "pareto", "--format", "json"],
    "query lineage": ["query", "lineage", "2", "--format", "json"],
    "campaign list": ["campaign", "list", "--format", "json"],
    "campaign show": ["campaign", "show", "--format", "json"],
    "campaign show (table)": ["campaign", "show"],
    "query leaderboard (table)": ["query", "leaderboard"],
}


def _populate(path: Path, make_spec: Callable[[int], object]) -> None:
    with Store.open(path) as s:
        cid = s.create_campaign("shared", {"objective": {"metric": "accuracy", "direction": "maximize"}}, seed=0)
        parent = None
        for i, acc in enumerate((0.5, 0.9, 0.7)):
            parents = [(parent, "mutate_mixer")] if parent is not None else []
            cand, ev = s.add_candidate(cid, make_spec(i), generation=i, parents=parents, task="t", fidelity=10, seed=0)
            s.finish_evaluation(ev, status="done", metrics={"accuracy": acc, "cost_state_bytes": 4096 * (i + 1)}, error=None)
            parent = cand


@pytest.fixture
def opened(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """What SQLite was asked to open, in order (to tell mode=ro from immutable=1 from a plain path)."""
    seen: list[str] = []
    connect = sqlite3.connect

    def recording(database: object, *args: object, **kwargs: object) -> sqlite3.Connection:
        seen.append(str(database))
        return connect(database, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(sqlite3, "connect", recording)
    return seen


def _files(folder: Path) -> dict[str, tuple[int, int]]:
    return {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.iterdir()}


@contextmanager
def _immutable(*paths: Path) -> Iterator[None]:
    done: list[Path] = []
    try:
        for p in paths:
            r = subprocess.run(["chattr", "+i", str(p)], capture_output=True, text=True)
            if r.returncode != 0:
                pytest.skip(f"chattr +i does not work here: {r.stderr.strip()}")
            done.append(p)
        yield
    finally:
        for p in reversed(done):
            subprocess.run(["chattr", "-i", str(p)], check=True)


def _check_readers(runner: CliRunner, url: str, out: Path) -> None:
    for verb, args in READERS.items():
        res = runner.invoke(app, [*args, "--store", url])
        assert res.exit_code == 0, f"{verb}: {res.output}"
        if "--format" in args:
            json.loads(res.stdout)
    board = json.loads(runner.invoke(app, ["query", "leaderboard", "--store", url, "-f", "json"]).stdout)
    assert [r["accuracy"] for r in board] == [0.9, 0.7, 0.5]
    res = runner.invoke(app, ["report", "--store", url, "--out", str(out / "report.html")])
    assert res.exit_code == 0, res.output
    assert "<html" in (out / "report.html").read_text()
    res = runner.invoke(app, ["export", "2", "--store", url, "--out", str(out / "export")])
    assert res.exit_code == 0, res.output
    assert (out / "export" / "config.json").is_file()


def _check_writers(runner: CliRunner, url: str, campaign_file: Path) -> None:
    for args in (
        ["campaign", "launch", str(campaign_file), "--no-export"],
        ["campaign", "resume", "shared", "--executor", "inprocess", "--no-export"],
        ["campaign", "stop", "shared"],
    ):
        res = runner.invoke(app, [*args, "--store", url])
        assert res.exit_code == 2, res.output
        lines = res.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: --store: ") and "read-only" in lines[0], res.stderr


def test_immutable_folder_as_root(tmp_path: Path, make_spec, opened: list[str]) -> None:
    """chattr +i on the folder and the file: SQLite can neither write the file nor create its -shm,
    so readers fall back to immutable=1; writers are refused before opening anything."""
    folder = tmp_path / "colleague"
    folder.mkdir()
    db = folder / "results.db"
    _populate(db, make_spec)
    assert sorted(os.listdir(folder)) == ["results.db"]  # the writer closed it: no -wal, no -shm
    out = tmp_path / "mine"
    out.mkdir()
    campaign_file = out / "tiny.yaml"
    campaign_file.write_text(yaml.safe_dump(TINY))
    before = _files(folder)
    runner = CliRunner()
    with _immutable(folder, db):
        _check_readers(runner, f"sqlite:///{db}", out)
        assert any(o.endswith("?immutable=1") for o in opened) and not any(o == str(db) for o in opened), opened
        _check_writers(runner, f"sqlite:///{db}", campaign_file)
    assert _files(folder) == before


def test_immutable_folder_while_its_campaign_runs(tmp_path: Path, make_spec, opened: list[str]) -> None:
    """The folder is read-only but its writer is still at work (-wal and -shm exist and hold results
    not yet in the file): readers use mode=ro and see every committed result, never a stale file."""
    folder = tmp_path / "colleague"
    folder.mkdir()
    db = folder / "results.db"
    _populate(db, make_spec)
    writer = sqlite3.connect(db, isolation_level=None)
    try:
        writer.execute("PRAGMA wal_autocheckpoint=0")  # keep what follows in the -wal only
        writer.execute("UPDATE hnas_evaluations SET metrics = json_set(metrics, '$.accuracy', 0.95) WHERE id = 1")
        assert (folder / "results.db-wal").stat().st_size > 0
        with _immutable(folder):
            with Store.open(db, readonly=True) as reader:
                board = reader.leaderboard(reader.get_campaign("shared").id)
                assert [r["accuracy"] for r in board] == [0.95, 0.9, 0.7]
            # the writer goes on; a new reader sees that too
            writer.execute("UPDATE hnas_evaluations SET metrics = json_set(metrics, '$.accuracy', 0.1) WHERE id = 1")
            res = CliRunner().invoke(app, ["query", "leaderboard", "--store", str(db), "-f", "json"])
            assert res.exit_code == 0, res.output
            assert [r["accuracy"] for r in json.loads(res.stdout)] == [0.9, 0.7, 0.1]
            assert any(o.endswith("?mode=ro") for o in opened) and not any("?immutable=1" in o for o in opened), opened
    finally:
        writer.close()


def test_older_schema_in_a_read_only_folder(tmp_path: Path, make_spec) -> None:
    """A reader upgrades an older schema in place only where it may write; here it says so instead."""
    folder = tmp_path / "colleague"
    folder.mkdir()
    db = folder / "results.db"
    _populate(db, make_spec)
    engine = create_engine(f"sqlite:///{db}")
    with engine.begin() as conn:  # what a version 2 store looks like: no `worker` column
        conn.execute(text("ALTER TABLE hnas_evaluations DROP COLUMN worker"))
        conn.execute(text("UPDATE hnas_meta SET value = '2' WHERE key = 'schema_version'"))
    engine.dispose()
    assert SCHEMA_VERSION == 3
    with _immutable(folder, db):
        with pytest.raises(StoreReadOnly, match="cannot be upgraded in place"):
            Store.open(db, readonly=True)
        res = CliRunner().invoke(app, ["query", "leaderboard", "--store", str(db)])
        assert res.exit_code == 2 and res.stderr.startswith("error: --store: ") and "older" in res.stderr, res.output
    with Store.open(db, readonly=True) as reader:  # writable again: the reader upgrades it once
        assert [r["accuracy"] for r in reader.leaderboard(reader.get_campaign("shared").id)] == [0.9, 0.7, 0.5]


def test_readers_never_write_a_writable_store(tmp_path: Path, make_spec, opened: list[str]) -> None:
    """Where the user could write, a reader still cannot (query_only), and leaves no -wal/-shm behind."""
    db = tmp_path / "results.db"
    _populate(db, make_spec)
    data = db.read_bytes()
    runner = CliRunner()
    _check_readers(runner, str(db), tmp_path)
    with Store.open(db, readonly=True) as reader:
        with pytest.raises(StoreReadOnly):
            reader.create_campaign("sneaky", {}, seed=0)
        with pytest.raises(Exception, match="readonly"), reader.engine.begin() as conn:
            conn.execute(text("DELETE FROM hnas_meta"))
    assert db.read_bytes() == data
    assert not any("?mode=ro" in o or "?immutable=1" in o for o in opened[1:]), opened  # the writable path: query_only
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("results.db")) == ["results.db"]


_AS_NOBODY = textwrap.dedent(
    """
    import json, sys
    from typer.testing import CliRunner
    from hybridnas.cli import app

    url, out, campaign_file, readers = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
    runner = CliRunner()
    results = {}
    for verb, args in readers.items():
        r = runner.invoke(app, [*args, "--store", url])
        results[verb] = [r.exit_code, r.stdout, r.stderr]
    for verb, args in {
        "report": ["report", "--out", out + "/report.html"],
        "export": ["export", "2", "--out", out + "/export"],
        "campaign launch": ["campaign", "launch", campaign_file, "--no-export"],
        "campaign resume": ["campaign", "resume", "shared", "--executor", "inprocess", "--no-export"],
        "campaign stop": ["campaign", "stop", "shared"],
    }.items():
        r = runner.invoke(app, [*args, "--store", url])
        results[verb] = [r.exit_code, r.stdout, r.stderr]
    print(json.dumps(results))
    """
)


def test_read_only_folder_as_another_user(make_spec) -> None:
    """The real thing: the CLI as `nobody` (setpriv) on a folder and file chmod'ed a-w, owned by root."""
    setpriv = shutil.which("setpriv")
    if os.geteuid() != 0 or setpriv is None:
        pytest.skip("needs root and setpriv to run the CLI as another user")
    # pytest's tmp_path sits in a root-only folder: `nobody` needs a path it can walk.
    base = Path(tempfile.mkdtemp(prefix="hnas-readonly-"))
    try:
        base.chmod(0o755)
        folder = base / "colleague"
        folder.mkdir()
        db = folder / "results.db"
        _populate(db, make_spec)
        out = base / "mine"
        out.mkdir()
        campaign_file = out / "tiny.yaml"
        campaign_file.write_text(yaml.safe_dump(TINY))
        os.chown(out, NOBODY, NOBODY)
        db.chmod(0o444)
        folder.chmod(0o555)
        before = _files(folder)
        cmd = [setpriv, f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", sys.executable, "-c", _AS_NOBODY,
               f"sqlite:///{db}", str(out), str(campaign_file), json.dumps(READERS)]
        env = {**os.environ, "HOME": str(out), "PYTHONDONTWRITEBYTECODE": "1"}
        env.pop("HYBRIDNAS_STORE", None)
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=out, env=env, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        if "Permission denied" in proc.stderr and "import" in proc.stderr:
            pytest.skip(f"nobody cannot import this environment: {proc.stderr[-500:]}")
        results = json.loads(proc.stdout.strip().splitlines()[-1])
        for verb in (*READERS, "report", "export"):
            code, stdout, stderr = results[verb]
            assert code == 0, f"{verb}: {stdout} {stderr}"
        assert [r["accuracy"] for r in json.loads(results["query leaderboard"][1])] == [0.9, 0.7, 0.5]
        assert (out / "report.html").is_file() and (out / "export" / "config.json").is_file()
        for verb in ("campaign launch", "campaign resume", "campaign stop"):
            code, stdout, stderr = results[verb]
            assert code == 2, f"{verb}: {stdout} {stderr}"
            assert stderr.startswith("error: --store: ") and "read-only" in stderr and stderr.count("\n") == 1, stderr
        assert _files(folder) == before
    finally:
        for p in base.rglob("*"):
            if p.is_dir():
                p.chmod(0o755)
        shutil.rmtree(base, ignore_errors=True)

"""Every CLI verb answers a store it cannot use with one line, `error: --store: ...`, and exit 2.

The table is every verb that takes --store against every kind of bad store: a bogus URL, a
PostgreSQL port nobody listens on, a corrupt and a truncated SQLite file, MySQL without its
driver, a SQLite path under a regular file, a newer schema, and a missing store (for the verbs that
need one). No traceback, nothing on stdout, and nothing created on disk.
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from sqlalchemy import create_engine, text
from typer.testing import CliRunner, Result

from hybridnas.cli import app
from hybridnas.store import SCHEMA_VERSION, Store, StoreNotFound, StoreOpenError, StoreReadOnly

TINY = {
    "name": "tiny",
    "seed": 0,
    "task": {"name": "mqar", "vocab_size": 32, "seq_len": 24, "num_kv_pairs": 3, "num_train": 64, "num_test": 32},
    "space": {"d_model": [16], "n_layers": [2], "n_heads": [2], "hybrid": {"ratio": [1], "linear_mixer": ["gla"]}},
    "training": {"steps": 2, "batch_size": 8, "eval_batch_size": 32},
    "search": {"strategy": "random", "budget": 1},
    "execution": {"executor": "inprocess", "workers": 1, "timeout_s": 60},
}


def _store_with_a_campaign(path: Path, make_spec: Callable[[int], object]) -> None:
    with Store.open(path) as s:
        cid = s.create_campaign("c", {}, seed=0)
        for i in range(40):  # enough rows that the file spans many pages
            _, ev = s.add_candidate(cid, make_spec(i), generation=0, parents=[], task="t", fidelity=10, seed=0)
            s.finish_evaluation(ev, status="done", metrics={"accuracy": i / 40, "notes": "x" * 500}, error=None)


def _bogus(tmp: Path, make_spec) -> str:
    return "bogus://x"


def _unreachable(tmp: Path, make_spec) -> str:
    return "postgresql+psycopg://postgres@127.0.0.1:1/test"  # port 1: refused at once


def _corrupt(tmp: Path, make_spec) -> str:
    path = tmp / "corrupt.db"
    path.write_bytes(b"these are not the results you are looking for\n" * 100)
    return f"sqlite:///{path}"


def _truncated(tmp: Path, make_spec) -> str:
    path = tmp / "truncated.db"
    _store_with_a_campaign(path, make_spec)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return f"sqlite:///{path}"


def _mysql(tmp: Path, make_spec) -> str:
    if importlib.util.find_spec("MySQLdb") is not None:
        pytest.skip("mysqlclient is installed here")
    return "mysql://root@127.0.0.1/test"


def _pymysql(tmp: Path, make_spec) -> str:
    if importlib.util.find_spec("pymysql") is not None:
        pytest.skip("pymysql is installed here")
    return "mysql+pymysql://root@127.0.0.1/test"


def _under_a_file(tmp: Path, make_spec) -> str:
    (tmp / "results.txt").write_text("a regular file\n")
    return f"sqlite:///{tmp / 'results.txt' / 'store.db'}"


def _newer_schema(tmp: Path, make_spec) -> str:
    path = tmp / "newer.db"
    _store_with_a_campaign(path, make_spec)
    engine = create_engine(f"sqlite:///{path}")
    with engine.begin() as conn:
        conn.execute(text("UPDATE hnas_meta SET value = :v WHERE key = 'schema_version'"), {"v": str(SCHEMA_VERSION + 1)})
    engine.dispose()
    return f"sqlite:///{path}"


def _missing(tmp: Path, make_spec) -> str:
    return f"sqlite:///{tmp / 'missing.db'}"


#: kind -> (make the URL in a folder, words the error line must hold)
KINDS: dict[str, tuple[Callable[[Path, Callable[[int], object]], str], tuple[str, ...]]] = {
    "bogus": (_bogus, ("unknown database", "bogus")),
    "unreachable": (_unreachable, ("127.0.0.1", "refused")),
    "corrupt": (_corrupt, ("corrupt.db", "not a SQLite database")),
    "truncated": (_truncated, ("truncated.db", "truncated")),
    "mysql_no_driver": (_mysql, ("pip install mysqlclient", "pymysql")),
    "pymysql_no_driver": (_pymysql, ("pip install pymysql",)),
    "under_a_file": (_under_a_file, ("results.txt is a file, not a folder",)),
    "newer_schema": (_newer_schema, (f"schema version {SCHEMA_VERSION + 1}", "upgrade hybridnas")),
    "missing": (_missing, ("no hybridnas store", "missing.db")),
}


def _verbs(tmp: Path, campaign_file: Path) -> dict[str, list[str]]:
    return {
        "campaign launch": ["campaign", "launch", str(campaign_file), "--no-export"],
        "campaign resume": ["campaign", "resume", "--executor", "inprocess", "--no-export"],
        "campaign stop": ["campaign", "stop"],
        "campaign list": ["campaign", "list"],
        "campaign show": ["campaign", "show"],
        "query leaderboard": ["query", "leaderboard"],
        "query pareto": ["query", "pareto"],
        "query lineage": ["query", "lineage", "1"],
        "query evaluations": ["query", "evaluations"],
        "report": ["report", "--out", str(tmp / "report.html")],
        "export": ["export", "1", "--out", str(tmp / "export")],
    }


VERBS = list(_verbs(Path("."), Path("f.yaml")))


def _tree(root: Path) -> dict[str, bytes | None]:
    """Every path under root, with file contents (None for folders)."""
    out: dict[str, bytes | None] = {}
    for p in sorted(root.rglob("*")):
        out[str(p.relative_to(root))] = None if p.is_dir() else p.read_bytes()
    return out


# launch creates a missing store: that is its job, so that one pair is not a bad store.
CASES = [(verb, kind) for verb in VERBS for kind in KINDS if (verb, kind) != ("campaign launch", "missing")]


@pytest.mark.parametrize("verb, kind", CASES)
def test_bad_store_is_one_line_and_exit_2(verb: str, kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, make_spec) -> None:
    make, words = KINDS[kind]
    spec_dir = tmp_path / "campaign"
    spec_dir.mkdir()
    campaign_file = spec_dir / "tiny.yaml"
    campaign_file.write_text(yaml.safe_dump(TINY))
    work = tmp_path / "work"
    work.mkdir()
    url = make(work, make_spec)
    monkeypatch.chdir(work)  # the default export folder and artifacts would land here
    monkeypatch.delenv("HYBRIDNAS_STORE", raising=False)
    monkeypatch.delenv("HYBRIDNAS_ARTIFACTS", raising=False)
    before = _tree(work)

    res: Result = CliRunner().invoke(app, [*_verbs(work, campaign_file)[verb], "--store", url])

    assert res.exit_code == 2, res.output
    assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
    assert "Traceback" not in res.output
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("error: --store: "), lines[0]
    for w in words:
        assert w in lines[0], lines[0]
    assert res.stdout == ""
    assert _tree(work) == before  # no store, -wal/-shm, artifacts or export folder made, nothing changed


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("mode", ["reader", "writer", "creator"])
def test_store_open_raises_store_open_error(kind: str, mode: str, tmp_path: Path, make_spec) -> None:
    """The library says the same through one exception type, whatever the caller opens it for."""
    make, words = KINDS[kind]
    url = make(tmp_path, make_spec)
    kw = {"reader": {"readonly": True}, "writer": {"create": False, "readonly": False}, "creator": {}}[mode]
    if kind == "missing" and mode == "creator":
        Store.open(url, **kw).close()
        return
    with pytest.raises(StoreOpenError) as info:
        Store.open(url, **kw)
    message = str(info.value)
    assert "\n" not in message
    for w in words:
        assert w in message
    if kind == "missing":
        assert isinstance(info.value, StoreNotFound)


def test_a_password_never_reaches_the_message(tmp_path: Path) -> None:
    with pytest.raises(StoreOpenError) as info:
        Store.open("postgresql+psycopg://user:s3cret@127.0.0.1:1/test", readonly=True)
    assert "s3cret" not in str(info.value) and "***" in str(info.value)
    with pytest.raises(StoreOpenError) as info:
        Store.open("bogus://user:s3cret@host/db", readonly=True)
    assert "s3cret" not in str(info.value)


@pytest.mark.postgres
def test_postgres_role_that_may_only_read(pg_url: str, tmp_path: Path, make_spec) -> None:
    """A read-only PostgreSQL session (a standby, or default_transaction_read_only) serves readers;
    writers are refused at open with exit 2, before any campaign is touched."""
    with Store.open(pg_url) as s:
        cid = s.create_campaign("c", {}, seed=0)
        _, ev = s.add_candidate(cid, make_spec(0), generation=0, parents=[], task="t", fidelity=10, seed=0)
        s.finish_evaluation(ev, status="done", metrics={"accuracy": 0.5}, error=None)
    from sqlalchemy.engine import make_url

    u = make_url(pg_url)
    ro = u.update_query_dict({"options": u.query["options"] + " -cdefault_transaction_read_only=on"}).render_as_string(hide_password=False)
    with pytest.raises(StoreReadOnly, match="read-only"):
        Store.open(ro)
    runner = CliRunner()
    res = runner.invoke(app, ["query", "leaderboard", "--store", ro, "--format", "json"])
    assert res.exit_code == 0, res.output
    assert [r["accuracy"] for r in json.loads(res.stdout)] == [0.5]
    for args in (["campaign", "stop", "c"], ["campaign", "resume", "c", "--no-export"]):
        res = runner.invoke(app, [*args, "--store", ro])
        assert res.exit_code == 2, res.output
        assert res.stderr.startswith("error: --store: ") and "read-only" in res.stderr and res.stderr.count("\n") == 1


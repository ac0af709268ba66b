"""Fixtures for the store tests: a `store` on SQLite (tmp_path) and on PostgreSQL (a throwaway schema)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from hybridnas.space.spec import RECURRENT_MIXERS, ArchSpec, HybridGenes
from hybridnas.store import Store

PG_URL = os.environ.get("HYBRIDNAS_TEST_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/test")

_pg_error: list[str | None] = []


def _pg_unreachable() -> str | None:
    """None when the server answers, else why not (checked once per test session)."""
    if not _pg_error:
        try:
            engine = create_engine(PG_URL, connect_args={"connect_timeout": 3})
            with engine.connect() as conn:
                conn.execute(text("SELECT 1"))
            engine.dispose()
            _pg_error.append(None)
        except Exception as e:  # any failure to connect means: skip, and say why
            _pg_error.append(f"PostgreSQL at {PG_URL} unreachable ({type(e).__name__}: {str(e).splitlines()[0]}); set HYBRIDNAS_TEST_POSTGRES")
    return _pg_error[0]


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A URL whose search_path is a fresh schema, dropped (with every table in it) afterwards."""
    reason = _pg_unreachable()
    if reason:
        pytest.skip(reason)
    schema = f"hnas_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(PG_URL)
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    url = make_url(PG_URL).update_query_dict({"options": f"-csearch_path={schema}"})
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'store.db'}"
    return request.getfixturevalue("pg_url")


@pytest.fixture
def store(store_url: str, tmp_path: Path) -> Iterator[Store]:
    s = Store.open(store_url, artifacts_dir=tmp_path / "artifacts")
    try:
        yield s
    finally:
        s.close()


@pytest.fixture
def sqlite_store(tmp_path: Path) -> Iterator[Store]:
    s = Store.open(tmp_path / "store.db")
    try:
        yield s
    finally:
        s.close()


def _specs() -> list[ArchSpec]:
    out = []
    for short_conv in (False, True):
        for gate in ("none", "sigmoid", "swish"):
            for mixer in RECURRENT_MIXERS:
                genes = HybridGenes(linear_mixer=mixer, gate=gate, short_conv=short_conv)
                out.append(ArchSpec.from_hybrid(genes, d_model=32, n_layers=2, n_heads=2, vocab_size=32))
    assert len({s.spec_hash for s in out}) == len(out)  # the fixture relies on every spec being distinct
    return out


_SPECS = _specs()


@pytest.fixture
def make_spec() -> Callable[[int], ArchSpec]:
    """make_spec(i): the i-th of 42 distinct small specs."""
    return lambda i: _SPECS[i]

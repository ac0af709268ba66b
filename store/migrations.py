"""Schema migrations: each step takes a store from version N to N + 1 in one transaction.

Only our `hnas_*` tables are touched; Optuna's tables (and its `alembic_version`) in the same database
are left alone. A step is plain SQL per dialect, written for SQLite (the default store) and PostgreSQL;
other databases get a clear error rather than a guess.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import Engine, text
from sqlalchemy.schema import CreateIndex, CreateTable

from hybridnas.store.models import EVALUATION_ORIGINS, EVALUATION_STATUSES, Evaluation, SchemaVersionError


def _in(values: tuple[str, ...]) -> str:
    return ", ".join(f"'{v}'" for v in values)


#: Evaluation columns added after version 2: the 1 -> 2 step leaves them to the later steps.
_EVALUATION_COLUMNS_AFTER_V2 = ("worker",)


def _v2_evaluations_ddl(engine: Engine) -> str:
    """CREATE TABLE of the version 2 evaluations table: today's, less the columns added since."""
    create = str(CreateTable(Evaluation.__table__).compile(dialect=engine.dialect)).strip()
    lines = [ln for ln in create.splitlines() if ln.strip().split(" ", 1)[0] not in _EVALUATION_COLUMNS_AFTER_V2]
    return "\n".join(lines)


def _v1_to_v2_sqlite(engine: Engine) -> None:
    """Campaigns gain stop/lease columns; evaluations gain `origin` and the `invalid` status.

    SQLite cannot change a CHECK constraint in place, so the evaluations table is rebuilt as its docs
    describe: foreign keys off, copy into the new layout, drop, rename, check the keys, commit.
    """
    table = Evaluation.__table__
    create = _v2_evaluations_ddl(engine)
    create = create.replace("CREATE TABLE hnas_evaluations (", "CREATE TABLE hnas_evaluations_v2 (", 1)
    indexes = [str(CreateIndex(ix).compile(dialect=engine.dialect)) for ix in table.indexes]
    old_cols = [c.name for c in table.columns if c.name != "origin" and c.name not in _EVALUATION_COLUMNS_AFTER_V2]
    cols = ", ".join(old_cols)
    raw = engine.raw_connection()
    try:
        dbapi: Any = raw.driver_connection
        dbapi.isolation_level = None
        cur = dbapi.cursor()
        cur.execute("PRAGMA foreign_keys=OFF")
        cur.execute("BEGIN IMMEDIATE")
        try:
            version = cur.execute("SELECT value FROM hnas_meta WHERE key = 'schema_version'").fetchone()
            if version is None or version[0] != "1":  # another process migrated it while we waited
                cur.execute("ROLLBACK")
                return
            cur.execute("ALTER TABLE hnas_campaigns ADD COLUMN stop_requested BOOLEAN NOT NULL DEFAULT 0")
            cur.execute("ALTER TABLE hnas_campaigns ADD COLUMN lease_owner VARCHAR(255)")
            cur.execute("ALTER TABLE hnas_campaigns ADD COLUMN lease_expires_at DATETIME")
            cur.execute(create)
            cur.execute(f"INSERT INTO hnas_evaluations_v2 ({cols}, origin) SELECT {cols}, 'search' FROM hnas_evaluations")
            cur.execute("DROP TABLE hnas_evaluations")
            cur.execute("ALTER TABLE hnas_evaluations_v2 RENAME TO hnas_evaluations")
            for ix in indexes:
                cur.execute(ix)
            bad = cur.execute("PRAGMA foreign_key_check").fetchall()
            if bad:
                raise SchemaVersionError(f"migration 1 -> 2 found broken foreign keys: {bad[:3]}")
            cur.execute("UPDATE hnas_meta SET value = '2' WHERE key = 'schema_version'")
            cur.execute("COMMIT")
        except BaseException:
            cur.execute("ROLLBACK")
            raise
        finally:
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()
    finally:
        raw.close()


def _v1_to_v2_postgresql(engine: Engine) -> None:
    with engine.begin() as conn:
        conn.execute(text("LOCK TABLE hnas_meta IN EXCLUSIVE MODE"))
        if conn.execute(text("SELECT value FROM hnas_meta WHERE key = 'schema_version'")).scalar() != "1":
            return
        conn.execute(
            text(
                "ALTER TABLE hnas_campaigns ADD COLUMN stop_requested BOOLEAN NOT NULL DEFAULT false, "
                "ADD COLUMN lease_owner VARCHAR(255), ADD COLUMN lease_expires_at TIMESTAMP WITH TIME ZONE"
            )
        )
        conn.execute(
            text(
                "ALTER TABLE hnas_evaluations ADD COLUMN origin VARCHAR(16) NOT NULL DEFAULT 'search', "
                "DROP CONSTRAINT ck_hnas_evaluations_status, "
                f"ADD CONSTRAINT ck_hnas_evaluations_status CHECK (status IN ({_in(EVALUATION_STATUSES)})), "
                f"ADD CONSTRAINT ck_hnas_evaluations_origin CHECK (origin IN ({_in(EVALUATION_ORIGINS)}))"
            )
        )
        conn.execute(text("UPDATE hnas_meta SET value = '2' WHERE key = 'schema_version'"))


def _v2_to_v3(engine: Engine) -> None:
    """Evaluations gain `worker` (which Ray node and process ran each one): a nullable column, added
    in place on SQLite and PostgreSQL alike; rows from before it keep null."""
    with engine.execution_options(hnas_write=True).begin() as conn:  # SQLite: BEGIN IMMEDIATE
        if conn.dialect.name == "postgresql":
            conn.execute(text("LOCK TABLE hnas_meta IN EXCLUSIVE MODE"))
        if conn.execute(text("SELECT value FROM hnas_meta WHERE key = 'schema_version'")).scalar() != "2":
            return  # another process migrated it while we waited
        conn.execute(text("ALTER TABLE hnas_evaluations ADD COLUMN worker VARCHAR(255)"))
        conn.execute(text("UPDATE hnas_meta SET value = '3' WHERE key = 'schema_version'"))


#: from-version -> {dialect name -> step}
MIGRATIONS: dict[int, dict[str, Callable[[Engine], None]]] = {
    1: {"sqlite": _v1_to_v2_sqlite, "postgresql": _v1_to_v2_postgresql},
    2: {"sqlite": _v2_to_v3, "postgresql": _v2_to_v3},
}


def migrate(engine: Engine, version: int, target: int, url_text: str) -> None:
    """Apply every step from `version` up to `target`, each in its own transaction."""
    while version < target:
        steps = MIGRATIONS.get(version)
        if steps is None:
            raise SchemaVersionError(f"store {url_text} has schema version {version}; no migration to {version + 1} is known")
        step = steps.get(engine.dialect.name)
        if step is None:
            raise SchemaVersionError(
                f"store {url_text}: no migration {version} -> {version + 1} for {engine.dialect.name}; "
                f"supported: {', '.join(sorted(steps))}"
            )
        step(engine)
        version += 1


__all__ = ["MIGRATIONS", "migrate"]

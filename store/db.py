"""Engine setup and the `Store` API: the one way the controller writes and the CLI reads.

SQLite (the default) runs in WAL mode, so readers never wait for the writer and never see
"database is locked"; write transactions start with BEGIN IMMEDIATE (take the write lock up front and
wait up to the busy timeout for it, instead of failing half-way), and synchronous=FULL makes every
commit durable before it returns. Read-only opens (`readonly=True`) cannot write at all, so a store in
a folder the user may only read can still be queried (store/access.py). Any other SQLAlchemy URL
works (PostgreSQL for clusters).

Every write method is one transaction: it either commits whole or leaves the database as it was, and
inputs are validated before anything is written.
"""

from __future__ import annotations

import json
import math
import numbers
import os
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, func, inspect, select, text, update
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from sqlalchemy.pool import StaticPool

from hybridnas.space.spec import ArchSpec
from hybridnas.store import access
from hybridnas.store import artifacts as blobs
from hybridnas.store import queries
from hybridnas.store.migrations import migrate
from hybridnas.store.models import (
    CAMPAIGN_STATUSES,
    EVALUATION_ORIGINS,
    EVALUATION_STATUSES,
    FINISHED_STATUSES,
    SCHEMA_VERSION,
    Artifact,
    ArtifactInfo,
    Base,
    Campaign,
    CampaignBusy,
    CampaignExists,
    CampaignInfo,
    CampaignNotFound,
    Candidate,
    CandidateInfo,
    CandidateNotFound,
    DuplicateEvaluation,
    Evaluation,
    EvaluationAlreadyFinished,
    EvaluationInfo,
    EvaluationNotFound,
    LineageEdge,
    Lineage,
    Meta,
    SchemaVersionError,
    StoreNotFound,
    StoreOpenError,
    StoreReadOnly,
    utcnow,
)

DEFAULT_URL = "sqlite:///hybridnas.db"
DEFAULT_ARTIFACTS = "hybridnas_artifacts"
URL_ENV = "HYBRIDNAS_STORE"
ARTIFACTS_ENV = "HYBRIDNAS_ARTIFACTS"
SQLITE_BUSY_TIMEOUT_S = 30.0  # how long a second writer waits for the write lock
PG_CONNECT_TIMEOUT_S = 15  # an unreachable PostgreSQL host fails after this, instead of hanging
_PG_SCHEMA_LOCK = 0x686E6173  # pg_advisory_xact_lock key ("hnas") serializing schema creation


# --- engine ----------------------------------------------------------------------------------------


def resolve_url(url: str | os.PathLike[str] | None = None) -> str:
    """None -> $HYBRIDNAS_STORE -> sqlite:///hybridnas.db; a bare file path means a SQLite file."""
    if url is None:
        url = os.environ.get(URL_ENV) or DEFAULT_URL
    url = os.fspath(url)
    if not url:
        raise ValueError(f"url: empty; give a SQLAlchemy URL or a SQLite file path (default {DEFAULT_URL})")
    if url == ":memory:":
        return "sqlite://"
    if "://" not in url:
        return f"sqlite:///{Path(url).expanduser().resolve()}"
    return url


def sqlite_file(url: URL) -> Path | None:
    """The database file of a SQLite URL, or None for other backends and in-memory databases."""
    if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:"):
        return None
    return Path(url.database).expanduser().resolve()


def _dumps(obj: Any) -> str:
    # allow_nan=False: NaN is not JSON (PostgreSQL rejects it); clean_json has mapped it to null already.
    return json.dumps(obj, allow_nan=False, separators=(",", ":"))


def make_engine(url: str, *, create: bool = True, readonly: bool = False) -> Engine:
    """An engine for `url`; SQLite gets WAL, a busy timeout, foreign keys and explicit BEGINs.

    With create=False (readers) the journal mode of the file is never changed; with readonly a SQLite
    file is opened so that it cannot be written (query_only, mode=ro or immutable=1: store/access.py).
    """
    u = make_url(url)
    if u.get_backend_name() != "sqlite":
        kw = {}
        if u.get_backend_name() == "postgresql" and u.get_driver_name() in ("psycopg", "psycopg2") and "connect_timeout" not in u.query:
            kw["connect_args"] = {"connect_timeout": PG_CONNECT_TIMEOUT_S}
        return create_engine(u, pool_pre_ping=True, json_serializer=_dumps, **kw)
    connect_args: dict[str, Any] = {"check_same_thread": False}
    if "timeout" not in u.query:  # a URL may set its own, e.g. ?timeout=1
        connect_args["timeout"] = SQLITE_BUSY_TIMEOUT_S
    kw: dict[str, Any] = {}
    db_file = sqlite_file(u)
    if db_file is None:  # in-memory: one connection, or every connection sees its own empty db
        kw["poolclass"] = StaticPool
    elif readonly:
        timeout = float(u.query.get("timeout", SQLITE_BUSY_TIMEOUT_S))  # type: ignore[arg-type]
        kw["creator"] = access.read_only_connector(db_file, u.render_as_string(hide_password=True), timeout)
    engine = create_engine(u, connect_args=connect_args, json_serializer=_dumps, **kw)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # the driver must not BEGIN on its own; `_on_begin` does
        cur = dbapi_conn.cursor()
        try:
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA synchronous=FULL")
            # Switching to WAL takes a write lock, so only the creator does it, once; WAL is a property
            # of the file, so every later connection, readers included, finds it in WAL already.
            if create and sqlite_file(u) is not None and cur.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                cur.execute("PRAGMA journal_mode=WAL")
        finally:
            cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        # Writers take the lock at BEGIN, where the busy timeout applies; a deferred transaction that
        # upgrades to a write later can fail at once with SQLITE_BUSY instead of waiting.
        write = conn.get_execution_options().get("hnas_write", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

    return engine


def _schema_version(conn: Any) -> int | None:
    if not inspect(conn).has_table(Meta.__tablename__):
        return None
    value = conn.execute(select(Meta.value).where(Meta.key == "schema_version")).scalar_one_or_none()
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        raise SchemaVersionError(f"hnas_meta.schema_version is {value!r}, not an integer; this is not a hybridnas store") from None


def check_schema(
    engine: Engine, write_engine: Engine, url_text: str, create: bool, *, upgrader: Callable[[int], Engine] | None = None
) -> None:
    """Refuse newer schemas, migrate older ones (store/migrations.py), create the tables if absent.

    `upgrader(version)`, when given, returns the engine that migrates (read-only stores have none).
    """

    def check(version: int | None) -> bool:
        if version is None:
            return False
        if version > SCHEMA_VERSION:
            raise SchemaVersionError(
                f"store {url_text} has schema version {version}, newer than this hybridnas supports "
                f"({SCHEMA_VERSION}); upgrade hybridnas to open it"
            )
        return True

    with engine.connect() as conn:
        version = _schema_version(conn)
    if check(version):
        if version is not None and version < SCHEMA_VERSION:  # an older layout: upgrade it in place, once
            if upgrader is None:
                migrate(write_engine, version, SCHEMA_VERSION, url_text)
                return
            upgrade_engine = upgrader(version)
            try:
                migrate(upgrade_engine.execution_options(hnas_write=True), version, SCHEMA_VERSION, url_text)
            finally:
                upgrade_engine.dispose()
        return
    if not create:
        raise StoreNotFound(f"no hybridnas store at {url_text}")
    with write_engine.begin() as conn:
        if conn.dialect.name == "postgresql":  # two processes creating the schema at once: one waits
            conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_SCHEMA_LOCK})
        if check(_schema_version(conn)):
            return
        Base.metadata.create_all(conn)
        conn.execute(Meta.__table__.insert(), [{"key": "schema_version", "value": str(SCHEMA_VERSION)}])


def _mask_password(url: str) -> str:
    """A URL as typed, its password hidden (for messages about URLs that did not parse)."""
    return re.sub(r"(://[^:/@]*:)[^@/]*@", r"\1***@", url)


def _upgrade_engine(url_text: str, display: str, version: int) -> Engine:
    """A writing engine that migrates an older schema for a read-only open, where the store may be written."""
    u = make_url(url_text)
    db_file = sqlite_file(u)
    if db_file is not None and not access.sqlite_writable(db_file):
        raise StoreReadOnly(
            f"{display}: schema version {version} is older than this hybridnas's ({SCHEMA_VERSION}) and the store is "
            f"read-only ({access.read_only_reason(db_file)}), so it cannot be upgraded in place; ask its owner to open it "
            f"once with this hybridnas, or query a copy"
        )
    return make_engine(url_text, create=False)


def _lease_live(row: Campaign, now: Any) -> bool:
    return row.lease_owner is not None and row.lease_expires_at is not None and row.lease_expires_at > now


# --- input checks ----------------------------------------------------------------------------------


def clean_json(value: Any, argument: str) -> Any:
    """A JSON-safe copy: numpy/torch scalars become Python values, NaN/inf become null (JSON has neither).

    Anything else that is not JSON raises TypeError naming the offending key path.
    """
    if value is None or isinstance(value, (str, bool)):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        f = float(value)
        return f if math.isfinite(f) else None
    if isinstance(value, Mapping):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise TypeError(f"{argument}: key {k!r} is a {type(k).__name__}; keys must be strings")
            out[k] = clean_json(v, f"{argument}.{k}")
        return out
    if isinstance(value, (list, tuple)):
        return [clean_json(v, f"{argument}[{i}]") for i, v in enumerate(value)]
    item = getattr(value, "item", None)
    if callable(item) and getattr(value, "ndim", None) == 0:  # numpy bools, 0-d arrays, scalar tensors
        return clean_json(item(), argument)
    raise TypeError(f"{argument}: {type(value).__name__} is not JSON; allowed: numbers, strings, booleans, None, lists, dicts")


def _check_int(value: Any, argument: str, lo: int | None = None) -> int:
    bound = "" if lo is None else f" >= {lo}"
    if not isinstance(value, numbers.Integral) or isinstance(value, bool):
        raise TypeError(f"{argument}: got {value!r}, must be an integer{bound}")
    if lo is not None and value < lo:
        raise ValueError(f"{argument}: got {value!r}, must be an integer{bound}")
    return int(value)


def _check_text(value: Any, argument: str, max_len: int | None = None, optional: bool = False) -> str | None:
    if value is None and optional:
        return None
    limit = f" of at most {max_len} characters" if max_len else ""
    if not isinstance(value, str):
        raise TypeError(f"{argument}: got {type(value).__name__}, must be a non-empty string{limit}")
    if not value or (max_len is not None and len(value) > max_len):
        raise ValueError(f"{argument}: got {value[:40]!r}{'...' if len(value) > 40 else ''}, must be a non-empty string{limit}")
    return value


def _check_choice(value: Any, argument: str, allowed: Sequence[str]) -> str:
    if value not in allowed:
        raise ValueError(f"{argument}: got {value!r}, allowed: {', '.join(allowed)}")
    return value


# --- the store -------------------------------------------------------------------------------------


class Store:
    """Campaigns, candidates, lineage, evaluations and artifacts in one SQL database.

    Thread-safe: every method runs in its own session. Use `Store.open`, not the constructor.
    """

    def __init__(self, engine: Engine, artifacts_dir: Path, *, readonly: bool = False) -> None:
        self.engine = engine
        self._write_engine = engine.execution_options(hnas_write=True)
        self.artifacts_dir = artifacts_dir  # absolute; created on the first artifact write
        self.readonly = readonly

    @classmethod
    def open(
        cls,
        url: str | os.PathLike[str] | None = None,
        artifacts_dir: str | Path | None = None,
        *,
        create: bool = True,
        readonly: bool | None = None,
    ) -> Store:
        """Open (and with `create`, initialize) the store at `url`.

        url None -> $HYBRIDNAS_STORE -> sqlite:///hybridnas.db; a bare path is a SQLite file.
        artifacts_dir None -> $HYBRIDNAS_ARTIFACTS -> '<db stem>_artifacts/' beside a SQLite file,
        else ./hybridnas_artifacts. With create=False nothing is written except the in-place upgrade
        of an older schema (store/migrations.py), and a missing store raises StoreNotFound.
        readonly=True (queries, reports, exports) implies create=False and never writes: a SQLite file
        opens read-only, so a store in a folder this user may only read can be queried, and an older
        schema is upgraded only where the store is writable. readonly=False (and None with create,
        the default) declares a writer: a store this user may only read raises StoreReadOnly now
        rather than at its first write. readonly=None with create=False checks neither way.

        Every failure to open raises a StoreOpenError (StoreNotFound, SchemaVersionError and
        StoreReadOnly are kinds of it) whose message is one line naming the URL; the store is checked
        readable here, so a corrupt file fails now and not at its first query.
        """
        writer = bool(create) if readonly is None else not readonly
        readonly = bool(readonly)
        create = create and not readonly
        display = _mask_password(os.fspath(url)) if url is not None else (os.environ.get(URL_ENV) or DEFAULT_URL)
        u: URL | None = None
        engine: Engine | None = None
        try:
            url_text = resolve_url(url)
            u = make_url(url_text)
            display = u.render_as_string(hide_password=True)
            if u.get_dialect().is_async:
                raise StoreOpenError(
                    f"{display}: {u.drivername} is an asyncio driver; hybridnas needs a plain one, e.g. sqlite:/// or postgresql+psycopg://"
                )
            db_file = sqlite_file(u)
            if db_file is not None:
                exists = access.check_sqlite_path(db_file, display, must_exist=not create)
                if exists and writer and not access.sqlite_writable(db_file):
                    raise StoreReadOnly(
                        f"{display}: the store is read-only ({access.read_only_reason(db_file)}); campaigns need a store they can "
                        f"write (queries, reports and exports can read it)"
                    )
                if create and not exists:
                    db_file.parent.mkdir(parents=True, exist_ok=True)
                    if not os.access(db_file.parent, os.W_OK | os.X_OK):
                        raise StoreOpenError(f"{display}: cannot create {db_file}: its folder {db_file.parent} is not writable")
            if artifacts_dir is None:
                artifacts_dir = os.environ.get(ARTIFACTS_ENV) or (
                    db_file.parent / f"{db_file.stem}_artifacts" if db_file is not None else DEFAULT_ARTIFACTS
                )
            engine = make_engine(url_text, create=create, readonly=readonly)
            store = cls(engine, Path(artifacts_dir).expanduser().resolve(), readonly=readonly)
            upgrader = (lambda version: _upgrade_engine(url_text, display, version)) if readonly else None
            check_schema(engine, store._write_engine, display, create, upgrader=upgrader)
            if writer and db_file is None:  # SQLite was checked above, without taking its write lock
                store._check_writable()
            return store
        except BaseException as e:
            if engine is not None:
                engine.dispose()
            error = access.explain(e, u, display, writing=writer)
            if error is None or error is e:
                raise
            raise error from e

    def _check_writable(self) -> None:
        """A write that is rolled back: a role that may only read (or a standby) fails here, not mid-campaign."""
        with self._write_engine.connect() as conn:
            tx = conn.begin()
            try:
                conn.execute(update(Meta).where(Meta.key == "schema_version").values(value=Meta.value))
            finally:
                tx.rollback()

    @property
    def url(self) -> str:
        """The full URL (password included: it is what reopens this store)."""
        return self.engine.url.render_as_string(hide_password=False)

    @property
    def display_url(self) -> str:
        return self.engine.url.render_as_string(hide_password=True)

    def __repr__(self) -> str:
        return f"Store({self.display_url!r}, artifacts_dir={str(self.artifacts_dir)!r})"

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- sessions --------------------------------------------------------------------------------
    @contextmanager
    def _read(self) -> Iterator[Session]:
        with Session(self.engine, expire_on_commit=False) as s:
            yield s
            s.rollback()  # nothing to keep; ends the read snapshot at once

    @contextmanager
    def _write(self) -> Iterator[Session]:
        if self.readonly:
            raise StoreReadOnly(f"{self.display_url} was opened read-only; open it with readonly=False to write")
        with Session(self._write_engine, expire_on_commit=False) as s, s.begin():
            yield s

    # -- campaigns -------------------------------------------------------------------------------
    def create_campaign(self, name: str, config: dict[str, Any], seed: int) -> int:
        """A new campaign in status 'running'; CampaignExists if the name is taken."""
        _check_text(name, "name", 200)
        if not isinstance(config, Mapping):
            raise TypeError(f"config: got {type(config).__name__}, must be a dict")
        config = clean_json(config, "config")
        seed = _check_int(seed, "seed")
        now = utcnow()
        try:
            with self._write() as s:
                if s.scalar(select(Campaign.id).where(Campaign.name == name)) is not None:
                    raise CampaignExists(f"campaign {name!r} already exists in {self.display_url}")
                row = Campaign(name=name, config=config, seed=seed, status="running", created_at=now, updated_at=now)
                s.add(row)
                s.flush()
                return row.id
        except IntegrityError:  # lost a race for the name
            raise CampaignExists(f"campaign {name!r} already exists in {self.display_url}") from None

    def _campaign_not_found(self, s: Session, what: str) -> CampaignNotFound:
        names = s.scalars(select(Campaign.name).order_by(Campaign.created_at, Campaign.id)).all()
        known = f"known campaigns: {', '.join(names)}" if names else f"no campaigns in {self.display_url}"
        return CampaignNotFound(f"campaign {what} not found; {known}")

    def get_campaign(self, name: str | None = None) -> CampaignInfo:
        """The campaign called `name`, or the most recently created one when `name` is None."""
        with self._read() as s:
            q = select(Campaign)
            q = q.where(Campaign.name == name) if name is not None else q.order_by(Campaign.created_at.desc(), Campaign.id.desc())
            row = s.scalars(q.limit(1)).first()
            if row is None:
                raise self._campaign_not_found(s, repr(name) if name is not None else "(most recent)")
            return self._campaign_infos(s, [row])[0]

    def campaign_exists(self, name: str) -> bool:
        with self._read() as s:
            return s.scalar(select(Campaign.id).where(Campaign.name == name)) is not None

    def get_campaign_by_id(self, campaign_id: int) -> CampaignInfo:
        with self._read() as s:
            row = s.get(Campaign, campaign_id)
            if row is None:
                raise self._campaign_not_found(s, f"id {campaign_id}")
            return self._campaign_infos(s, [row])[0]

    def list_campaigns(self) -> list[CampaignInfo]:
        """All campaigns, oldest first."""
        with self._read() as s:
            rows = s.scalars(select(Campaign).order_by(Campaign.created_at, Campaign.id)).all()
            return self._campaign_infos(s, list(rows))

    def _campaign_infos(self, s: Session, rows: list[Campaign]) -> list[CampaignInfo]:
        ids = [r.id for r in rows]
        if not ids:
            return []
        n_cand = dict(
            s.execute(select(Candidate.campaign_id, func.count()).where(Candidate.campaign_id.in_(ids)).group_by(Candidate.campaign_id)).all()
        )
        counts: dict[tuple[int, str], int] = {}
        q = (
            select(Candidate.campaign_id, Evaluation.status, func.count())
            .join(Evaluation, Evaluation.candidate_id == Candidate.id)
            .where(Candidate.campaign_id.in_(ids))
            .group_by(Candidate.campaign_id, Evaluation.status)
        )
        for cid, status, n in s.execute(q):
            counts[(cid, status)] = n
        infos = []
        now = utcnow()
        for r in rows:
            metric, direction = queries.primary_objective(r.config)
            best = None
            if counts.get((r.id, "done")):
                try:
                    top = queries.leaderboard(s, r.id, metric=metric, direction=direction, limit=1)
                except ValueError:  # the objective metric was never recorded: no best yet
                    top = []
                best = top[0] if top and queries.is_number(top[0].get(metric)) else None
            n = {st: counts.get((r.id, st), 0) for st in EVALUATION_STATUSES}
            infos.append(
                CampaignInfo(
                    id=r.id,
                    name=r.name,
                    status=r.status,
                    seed=r.seed,
                    config=r.config,
                    created_at=r.created_at,
                    updated_at=r.updated_at,
                    finished_at=r.finished_at,
                    n_candidates=n_cand.get(r.id, 0),
                    n_evaluations=sum(n.values()),
                    n_queued=n["queued"],
                    n_running=n["running"],
                    n_done=n["done"],
                    n_failed=n["failed"],
                    n_invalid=n["invalid"],
                    stop_requested=bool(r.stop_requested),
                    lease_owner=r.lease_owner if _lease_live(r, now) else None,
                    metric=metric,
                    direction=direction,
                    best=best,
                )
            )
        return infos

    def set_campaign_status(self, campaign_id: int, status: str) -> None:
        """running | stopped | finished | failed; finished/failed stamp finished_at, running clears it."""
        _check_choice(status, "status", CAMPAIGN_STATUSES)
        now = utcnow()
        with self._write() as s:
            row = s.get(Campaign, campaign_id, with_for_update=True)
            if row is None:
                raise self._campaign_not_found(s, f"id {campaign_id}")
            row.status = status
            row.updated_at = now
            if status in ("finished", "failed"):
                row.finished_at = now
            elif status == "running":
                row.finished_at = None

    # -- liveness: one controller per campaign, and a way to ask it to stop --------------------------
    def acquire_lease(self, campaign_id: int, owner: str, ttl_s: float, *, force: bool = False) -> None:
        """Take the campaign for controller `owner` until now + ttl_s; CampaignBusy if another owner's
        lease is still live (unless `force`). A dead controller's lease simply expires."""
        _check_text(owner, "owner", 255)
        now = utcnow()
        with self._write() as s:
            row = s.get(Campaign, campaign_id, with_for_update=True)
            if row is None:
                raise self._campaign_not_found(s, f"id {campaign_id}")
            if not force and row.lease_owner not in (None, owner) and _lease_live(row, now):
                raise CampaignBusy(
                    f"campaign {row.name!r} is being run by controller {row.lease_owner} (lease until "
                    f"{row.lease_expires_at.isoformat(timespec='seconds')}); stop it first, or wait for the lease to expire",
                    owner=row.lease_owner or "",
                )
            row.lease_owner = owner
            row.lease_expires_at = now + timedelta(seconds=ttl_s)

    def renew_lease(self, campaign_id: int, owner: str, ttl_s: float) -> bool:
        """The heartbeat: extend `owner`'s lease. False (and nothing written) if the lease was taken over."""
        now = utcnow()
        with self._write() as s:
            row = s.get(Campaign, campaign_id, with_for_update=True)
            if row is None or row.lease_owner != owner:
                return False
            row.lease_expires_at = now + timedelta(seconds=ttl_s)
            return True

    def release_lease(self, campaign_id: int, owner: str) -> None:
        with self._write() as s:
            row = s.get(Campaign, campaign_id, with_for_update=True)
            if row is not None and row.lease_owner == owner:
                row.lease_owner = None
                row.lease_expires_at = None

    def request_stop(self, campaign_id: int) -> None:
        """Ask the campaign's controller to end cleanly (it polls the flag); resume clears it."""
        with self._write() as s:
            row = s.get(Campaign, campaign_id, with_for_update=True)
            if row is None:
                raise self._campaign_not_found(s, f"id {campaign_id}")
            row.stop_requested = True
            row.updated_at = utcnow()

    def clear_stop(self, campaign_id: int) -> None:
        with self._write() as s:
            row = s.get(Campaign, campaign_id, with_for_update=True)
            if row is not None:
                row.stop_requested = False

    def stop_requested(self, campaign_id: int) -> bool:
        with self._read() as s:
            return bool(s.scalar(select(Campaign.stop_requested).where(Campaign.id == campaign_id)))

    # -- candidates and evaluations --------------------------------------------------------------
    def add_evaluation(self, candidate_id: int, *, task: str, fidelity: int, seed: int, origin: str) -> int:
        """Queue another evaluation of an existing candidate (a promotion or an extra seed).

        DuplicateEvaluation, with nothing written, if that (task, fidelity, seed) exists already.
        """
        _check_text(task, "task", 128)
        fidelity = _check_int(fidelity, "fidelity", 0)
        seed = _check_int(seed, "seed")
        _check_choice(origin, "origin", EVALUATION_ORIGINS)
        now = utcnow()
        with self._write() as s:
            cand = s.get(Candidate, candidate_id)
            if cand is None:
                raise CandidateNotFound(f"candidate id {candidate_id} not found")
            dup = s.scalar(
                select(Evaluation.id).where(
                    Evaluation.candidate_id == candidate_id, Evaluation.task == task, Evaluation.fidelity == fidelity, Evaluation.seed == seed
                )
            )
            if dup is not None:
                raise DuplicateEvaluation(
                    f"candidate {candidate_id} already has evaluation {dup} for task={task!r} fidelity={fidelity} seed={seed}",
                    candidate_id=candidate_id,
                    evaluation_id=dup,
                )
            ev = Evaluation(candidate_id=candidate_id, task=task, fidelity=fidelity, seed=seed, status="queued", created_at=now, origin=origin)
            s.add(ev)
            s.execute(update(Campaign).where(Campaign.id == cand.campaign_id).values(updated_at=now))
            s.flush()
            return ev.id

    def requeue(self, evaluation_id: int) -> None:
        """running -> queued: a stopped controller hands an unfinished evaluation back for `resume`."""
        with self._write() as s:
            ev = self._evaluation_for_update(s, evaluation_id)
            if ev.status == "running":
                ev.status = "queued"
                ev.started_at = None

    def add_candidate(
        self,
        campaign_id: int,
        spec: ArchSpec,
        *,
        generation: int,
        parents: Sequence[tuple[int, str]] = (),
        task: str,
        fidelity: int,
        seed: int,
    ) -> tuple[int, int]:
        """Record a design and queue one evaluation of it, in one transaction.

        The candidate row is reused when the campaign already has that spec hash (its generation and
        label stay as first recorded; new parent edges are added). An edge from a candidate to itself
        (a mutation that rebuilt the same network) is not recorded. Returns (candidate_id,
        evaluation_id); DuplicateEvaluation, with nothing written, if that (task, fidelity, seed)
        evaluation exists already.
        """
        if not isinstance(spec, ArchSpec):
            raise TypeError(f"spec: got {type(spec).__name__}, must be an ArchSpec")
        generation = _check_int(generation, "generation", 0)
        edges: list[tuple[int, str]] = []
        for i, p in enumerate(parents):
            if not (isinstance(p, (tuple, list)) and len(p) == 2):
                raise TypeError(f"parents[{i}]: got {p!r}, must be (parent_candidate_id, operator)")
            edges.append((_check_int(p[0], f"parents[{i}][0]", 1), str(_check_text(p[1], f"parents[{i}][1]", 64))))
        _check_text(task, "task", 128)
        fidelity = _check_int(fidelity, "fidelity", 0)
        seed = _check_int(seed, "seed")
        spec_hash = spec.spec_hash
        spec_dict = spec.to_dict()
        now = utcnow()
        with self._write() as s:
            campaign = s.get(Campaign, campaign_id, with_for_update=True)
            if campaign is None:
                raise self._campaign_not_found(s, f"id {campaign_id}")
            cand = s.scalars(select(Candidate).where(Candidate.campaign_id == campaign_id, Candidate.spec_hash == spec_hash)).first()
            if cand is not None:
                dup = s.scalar(
                    select(Evaluation.id).where(
                        Evaluation.candidate_id == cand.id, Evaluation.task == task, Evaluation.fidelity == fidelity, Evaluation.seed == seed
                    )
                )
                if dup is not None:
                    raise DuplicateEvaluation(
                        f"candidate {cand.id} ({spec_hash}) already has evaluation {dup} for task={task!r} fidelity={fidelity} seed={seed}",
                        candidate_id=cand.id,
                        evaluation_id=dup,
                    )
            else:
                cand = Candidate(
                    campaign_id=campaign_id, spec=spec_dict, spec_hash=spec_hash, generation=generation, label=spec.describe(), created_at=now
                )
                s.add(cand)
                s.flush()
            if edges:
                known = set(s.scalars(select(Candidate.id).where(Candidate.id.in_([p for p, _ in edges]))))
                missing = sorted({p for p, _ in edges} - known)
                if missing:  # raising here rolls back the candidate inserted above
                    raise ValueError(f"parents: no candidate with id {', '.join(map(str, missing))}")
                have = set(s.scalars(select(Lineage.parent_id).where(Lineage.child_id == cand.id)))
                for parent_id, operator in edges:
                    if parent_id != cand.id and parent_id not in have:
                        s.add(Lineage(child_id=cand.id, parent_id=parent_id, operator=operator))
                        have.add(parent_id)
            ev = Evaluation(candidate_id=cand.id, task=task, fidelity=fidelity, seed=seed, status="queued", created_at=now)
            s.add(ev)
            campaign.updated_at = now
            s.flush()
            return cand.id, ev.id

    def find_candidate(self, campaign_id: int, spec_hash: str) -> int | None:
        with self._read() as s:
            return s.scalar(select(Candidate.id).where(Candidate.campaign_id == campaign_id, Candidate.spec_hash == spec_hash))

    def _evaluation_for_update(self, s: Session, evaluation_id: int) -> Evaluation:
        ev = s.get(Evaluation, evaluation_id, with_for_update=True)
        if ev is None:
            raise EvaluationNotFound(f"evaluation id {evaluation_id} not found")
        return ev

    def mark_running(
        self, evaluation_id: int, host: str | None = None, device: str | None = None, worker: str | None = None
    ) -> None:
        """queued (or running, when resumed) -> running; stamps started_at, host, device and worker."""
        _check_text(host, "host", 255, optional=True)
        _check_text(device, "device", 255, optional=True)
        _check_text(worker, "worker", 255, optional=True)
        with self._write() as s:
            ev = self._evaluation_for_update(s, evaluation_id)
            if ev.status in FINISHED_STATUSES:
                raise EvaluationAlreadyFinished(f"evaluation {evaluation_id} is {ev.status} already")
            ev.status = "running"
            ev.started_at = utcnow()
            ev.host = host
            ev.device = device
            ev.worker = worker

    def finish_evaluation(
        self,
        evaluation_id: int,
        *,
        status: str,
        metrics: Mapping[str, Any],
        error: str | None = None,
        host: str | None = None,
        device: str | None = None,
        wall_time_s: float | None = None,
        weights: bytes | bytearray | memoryview | None = None,
        worker: str | None = None,
    ) -> None:
        """Record a result: weights file first (content-addressed), then the row update and artifact in one commit.

        `worker` names the process that ran it ("<ray node id[:8]>/<pid>", "inprocess/<pid>").
        Calling it again with the same status, metrics, error and weights is a no-op (the first call's
        host, worker, device and wall time are kept); a different result for a finished evaluation raises
        EvaluationAlreadyFinished. NaN and inf metrics are stored as null.
        """
        _check_choice(status, "status", FINISHED_STATUSES)
        if not isinstance(metrics, Mapping):
            raise TypeError(f"metrics: got {type(metrics).__name__}, must be a dict")
        metrics = clean_json(metrics, "metrics")
        if error is not None and not isinstance(error, str):
            raise TypeError(f"error: got {type(error).__name__}, must be a string or None")
        _check_text(host, "host", 255, optional=True)
        _check_text(device, "device", 255, optional=True)
        _check_text(worker, "worker", 255, optional=True)
        if wall_time_s is not None:
            if not isinstance(wall_time_s, numbers.Real) or isinstance(wall_time_s, bool):
                raise TypeError(f"wall_time_s: got {wall_time_s!r}, must be a finite number >= 0 or None")
            if not math.isfinite(wall_time_s) or wall_time_s < 0:
                raise ValueError(f"wall_time_s: got {wall_time_s!r}, must be a finite number >= 0 or None")
            wall_time_s = float(wall_time_s)
        blob = None
        if weights is not None:
            if not isinstance(weights, (bytes, bytearray, memoryview)):
                raise TypeError(f"weights: got {type(weights).__name__}, must be bytes of a safetensors file or None")
            blobs.check_safetensors(weights)
            with self._read() as s:  # fail before writing a file for an evaluation that does not exist
                if s.get(Evaluation, evaluation_id) is None:
                    raise EvaluationNotFound(f"evaluation id {evaluation_id} not found")
            blob = blobs.write_blob(self.artifacts_dir, weights)
        now = utcnow()
        with self._write() as s:
            ev = self._evaluation_for_update(s, evaluation_id)
            if ev.status in FINISHED_STATUSES:
                old = s.scalar(select(Artifact.sha256).where(Artifact.evaluation_id == ev.id, Artifact.kind == "weights"))
                same = (ev.status, ev.metrics or {}, ev.error) == (status, metrics, error) and old == (blob.sha256 if blob else None)
                if same:
                    return
                raise EvaluationAlreadyFinished(
                    f"evaluation {evaluation_id} is {ev.status} already with a different result; "
                    f"recorded metrics {ev.metrics}, error {ev.error!r}, weights {old}"
                )
            ev.status = status
            ev.metrics = metrics
            ev.error = error
            ev.host = host if host is not None else ev.host
            ev.worker = worker if worker is not None else ev.worker
            ev.device = device if device is not None else ev.device
            ev.wall_time_s = wall_time_s
            ev.finished_at = now
            if blob is not None:
                s.add(
                    Artifact(
                        candidate_id=ev.candidate_id,
                        evaluation_id=ev.id,
                        kind="weights",
                        path=blob.relpath,
                        sha256=blob.sha256,
                        bytes=blob.bytes,
                        created_at=now,
                    )
                )
            s.execute(
                update(Campaign)
                .where(Campaign.id == select(Candidate.campaign_id).where(Candidate.id == ev.candidate_id).scalar_subquery())
                .values(updated_at=now)
            )

    # -- reading ---------------------------------------------------------------------------------
    def _evaluation_infos(self, s: Session, where: Any) -> list[EvaluationInfo]:
        q = select(Evaluation, Candidate).join(Candidate, Evaluation.candidate_id == Candidate.id).where(where).order_by(Evaluation.id)
        specs: dict[int, ArchSpec] = {}
        out = []
        for ev, cand in s.execute(q):
            if cand.id not in specs:
                specs[cand.id] = ArchSpec.from_dict(cand.spec)
            out.append(
                EvaluationInfo(
                    id=ev.id,
                    candidate_id=cand.id,
                    campaign_id=cand.campaign_id,
                    spec_hash=cand.spec_hash,
                    spec=specs[cand.id],
                    generation=cand.generation,
                    task=ev.task,
                    fidelity=ev.fidelity,
                    seed=ev.seed,
                    status=ev.status,
                    metrics=ev.metrics or {},
                    error=ev.error,
                    host=ev.host,
                    device=ev.device,
                    wall_time_s=ev.wall_time_s,
                    created_at=ev.created_at,
                    started_at=ev.started_at,
                    finished_at=ev.finished_at,
                    origin=ev.origin or "search",
                    worker=ev.worker,
                )
            )
        return out

    def _require_campaign(self, s: Session, campaign_id: int) -> None:
        if s.get(Campaign, campaign_id) is None:
            raise self._campaign_not_found(s, f"id {campaign_id}")

    def unfinished_evaluations(self, campaign_id: int) -> list[EvaluationInfo]:
        """Queued or running evaluations, in id order: what a resumed controller re-submits."""
        with self._read() as s:
            self._require_campaign(s, campaign_id)
            return self._evaluation_infos(s, (Candidate.campaign_id == campaign_id) & Evaluation.status.in_(("queued", "running")))

    def evaluations(self, campaign_id: int) -> list[EvaluationInfo]:
        """Every evaluation of the campaign in id order (the order results were queued)."""
        with self._read() as s:
            self._require_campaign(s, campaign_id)
            return self._evaluation_infos(s, Candidate.campaign_id == campaign_id)

    def evaluation(self, evaluation_id: int) -> EvaluationInfo:
        with self._read() as s:
            found = self._evaluation_infos(s, Evaluation.id == evaluation_id)
            if not found:
                raise EvaluationNotFound(f"evaluation id {evaluation_id} not found")
            return found[0]

    def _artifact_info(self, a: Artifact) -> ArtifactInfo:
        return ArtifactInfo(
            id=a.id,
            candidate_id=a.candidate_id,
            evaluation_id=a.evaluation_id,
            kind=a.kind,
            path=blobs.resolve(self.artifacts_dir, a.path),
            sha256=a.sha256,
            bytes=a.bytes,
            created_at=a.created_at,
        )

    def candidate(self, candidate_id: int) -> CandidateInfo:
        """A candidate with its spec, parents, evaluations and artifacts."""
        with self._read() as s:
            c = s.get(Candidate, candidate_id)
            if c is None:
                raise CandidateNotFound(f"candidate id {candidate_id} not found")
            parents = s.execute(
                select(Lineage.parent_id, Lineage.operator).where(Lineage.child_id == candidate_id).order_by(Lineage.parent_id)
            ).all()
            arts = s.scalars(select(Artifact).where(Artifact.candidate_id == candidate_id).order_by(Artifact.id)).all()
            return CandidateInfo(
                id=c.id,
                campaign_id=c.campaign_id,
                spec=ArchSpec.from_dict(c.spec),
                spec_hash=c.spec_hash,
                label=c.label,
                generation=c.generation,
                created_at=c.created_at,
                parents=tuple((p, op) for p, op in parents),
                evaluations=tuple(self._evaluation_infos(s, Evaluation.candidate_id == candidate_id)),
                artifacts=tuple(self._artifact_info(a) for a in arts),
            )

    def campaign_of(self, candidate_id: int) -> str:
        """The name of the campaign a candidate belongs to."""
        with self._read() as s:
            name = s.scalar(select(Campaign.name).join(Candidate, Candidate.campaign_id == Campaign.id).where(Candidate.id == candidate_id))
            if name is None:
                raise CandidateNotFound(f"candidate id {candidate_id} not found")
            return name

    def weights_path(self, candidate_id: int) -> Path | None:
        """Weights of the candidate's highest-fidelity done evaluation, sha256-verified.

        Among done evaluations at that fidelity, the lowest seed (then earliest) with weights is used;
        None when none of them stored weights. ArtifactError if the file is missing or corrupt.
        """
        with self._read() as s:
            if s.get(Candidate, candidate_id) is None:
                raise CandidateNotFound(f"candidate id {candidate_id} not found")
            top = s.scalar(select(func.max(Evaluation.fidelity)).where(Evaluation.candidate_id == candidate_id, Evaluation.status == "done"))
            if top is None:
                return None
            art = s.scalars(
                select(Artifact)
                .join(Evaluation, Artifact.evaluation_id == Evaluation.id)
                .where(
                    Evaluation.candidate_id == candidate_id,
                    Evaluation.status == "done",
                    Evaluation.fidelity == top,
                    Artifact.kind == "weights",
                )
                .order_by(Evaluation.seed, Evaluation.id)
                .limit(1)
            ).first()
            if art is None:
                return None
            path, sha = blobs.resolve(self.artifacts_dir, art.path), art.sha256
        return blobs.verify(path, sha)

    # -- queries ---------------------------------------------------------------------------------
    def leaderboard(
        self,
        campaign_id: int,
        metric: str = "accuracy",
        direction: str = "maximize",
        limit: int | None = None,
        task: str | None = None,
    ) -> list[dict[str, Any]]:
        with self._read() as s:
            self._require_campaign(s, campaign_id)
            return queries.leaderboard(s, campaign_id, metric=metric, direction=direction, limit=limit, task=task)

    def pareto(self, campaign_id: int, objectives: Sequence[tuple[str, str]], task: str | None = None) -> list[dict[str, Any]]:
        with self._read() as s:
            self._require_campaign(s, campaign_id)
            return queries.pareto(s, campaign_id, objectives, task=task)

    def winner(
        self, campaign_id: int, metric: str = "accuracy", direction: str = "maximize", task: str | None = None
    ) -> dict[str, Any]:
        """The noise-aware verdict on the leaderboard's top two (see `queries.winner`), on one task's
        evaluations when `task` is given."""
        with self._read() as s:
            self._require_campaign(s, campaign_id)
            try:
                rows = queries.leaderboard(s, campaign_id, metric=metric, direction=direction, limit=2, task=task)
            except ValueError:  # metric never recorded
                rows = []
            return queries.winner(rows, metric, direction)

    def lineage(self, candidate_id: int) -> list[LineageEdge]:
        with self._read() as s:
            return queries.lineage(s, candidate_id)


__all__ = ["Store", "resolve_url", "make_engine", "clean_json", "DEFAULT_URL", "URL_ENV", "ARTIFACTS_ENV"]

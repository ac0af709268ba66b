"""Tables of the store (SQLAlchemy 2.0 typed ORM) and the frozen records the `Store` API returns.

Every table name starts with `hnas_` so Optuna (`studies`, `trials`, `alembic_version`, ...) can keep
its own tables in the same database. `SCHEMA_VERSION` is written to `hnas_meta`; bump it (and add a
migration in `migrations.py`) whenever a table changes.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    false,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

from hybridnas.space.spec import ArchSpec

#: Version of the table layout; a database with a newer one is refused (see `db.check_schema`).
SCHEMA_VERSION = 3

CAMPAIGN_STATUSES: tuple[str, ...] = ("running", "stopped", "finished", "failed")
#: invalid: the candidate failed the causality/equivalence checks and was never trained.
EVALUATION_STATUSES: tuple[str, ...] = ("queued", "running", "done", "failed", "invalid")
#: Statuses an evaluation can finish with.
FINISHED_STATUSES: tuple[str, ...] = ("done", "failed", "invalid")
#: Why an evaluation exists: a new design, a promotion to a higher fidelity, or an extra seed.
EVALUATION_ORIGINS: tuple[str, ...] = ("search", "promotion", "reseed")


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite keeps no offset, so we store naive UTC there)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: the store only takes timezone-aware UTC times")
        value = value.astimezone(timezone.utc)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


# Plain JSON (text) rather than PostgreSQL JSONB: JSONB rewrites numbers (1e20 comes back as an int),
# and results must read back exactly as written for `finish_evaluation` to be idempotent.
JSONType = JSON(none_as_null=True)


class Base(DeclarativeBase):
    # Named constraints, so a later migration can address them on every backend.
    metadata = MetaData(
        naming_convention={
            "ix": "ix_%(table_name)s_%(column_0_N_name)s",
            "uq": "uq_%(table_name)s_%(column_0_N_name)s",
            "ck": "ck_%(table_name)s_%(constraint_name)s",
            "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
            "pk": "pk_%(table_name)s",
        }
    )
    type_annotation_map = {datetime: UTCDateTime(), dict[str, Any]: JSONType}


def _in(column: str, allowed: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(s) for s in allowed)})"


class Meta(Base):
    """Key/value facts about the database itself; `schema_version` is the one that matters."""

    __tablename__ = "hnas_meta"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


class Campaign(Base):
    __tablename__ = "hnas_campaigns"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)  # what users type on the command line
    config: Mapped[dict[str, Any]] = mapped_column(JSONType)  # the validated campaign file, enough to resume
    seed: Mapped[int] = mapped_column(BigInteger)  # seeds the strategy, the data and every init
    status: Mapped[str] = mapped_column(String(16))  # one of CAMPAIGN_STATUSES
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]  # last write that touched this campaign
    finished_at: Mapped[datetime | None]  # set when status becomes finished or failed
    stop_requested: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())  # `campaign stop` asks the controller to end
    lease_owner: Mapped[str | None] = mapped_column(String(255))  # the live controller (host:pid:token), if any
    lease_expires_at: Mapped[datetime | None]  # the owner's lease ends here unless its heartbeat renews it

    __table_args__ = (
        CheckConstraint(_in("status", CAMPAIGN_STATUSES), name="status"),
        Index(None, "created_at"),
    )


class Candidate(Base):
    __tablename__ = "hnas_candidates"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    campaign_id: Mapped[int] = mapped_column(ForeignKey("hnas_campaigns.id", ondelete="CASCADE"))
    spec: Mapped[dict[str, Any]] = mapped_column(JSONType)  # ArchSpec.to_dict(), hybrid genes included
    spec_hash: Mapped[str] = mapped_column(String(64))  # ArchSpec.spec_hash: one row per design per campaign
    generation: Mapped[int] = mapped_column(Integer)  # 0 for sampled designs, parent's + 1 for children
    label: Mapped[str] = mapped_column(Text)  # ArchSpec.describe(), for humans
    created_at: Mapped[datetime]

    # The unique constraint's index also serves "candidates of a campaign".
    __table_args__ = (UniqueConstraint("campaign_id", "spec_hash"),)


class Lineage(Base):
    """One edge child <- parent; a crossover child has several."""

    __tablename__ = "hnas_lineage"

    child_id: Mapped[int] = mapped_column(ForeignKey("hnas_candidates.id", ondelete="CASCADE"), primary_key=True)
    parent_id: Mapped[int] = mapped_column(ForeignKey("hnas_candidates.id", ondelete="CASCADE"), primary_key=True)
    operator: Mapped[str] = mapped_column(String(64))  # the mutation or crossover that made the child

    # The primary key serves child -> parents; this one serves parent -> children.
    __table_args__ = (Index(None, "parent_id"),)


class Evaluation(Base):
    """One training run of a candidate: (task, fidelity, seed) is unique per candidate."""

    __tablename__ = "hnas_evaluations"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    candidate_id: Mapped[int] = mapped_column(ForeignKey("hnas_candidates.id", ondelete="CASCADE"))
    task: Mapped[str] = mapped_column(String(128))  # proxy task name, e.g. "mqar"
    fidelity: Mapped[int] = mapped_column(BigInteger)  # training steps
    seed: Mapped[int] = mapped_column(BigInteger)
    status: Mapped[str] = mapped_column(String(16))  # one of EVALUATION_STATUSES
    metrics: Mapped[dict[str, Any] | None] = mapped_column(JSONType)  # set when finished
    error: Mapped[str | None] = mapped_column(Text)  # why a failed evaluation failed
    host: Mapped[str | None] = mapped_column(String(255))  # worker host name
    device: Mapped[str | None] = mapped_column(String(255))  # e.g. "cpu", "cuda:0 (NVIDIA H100)"
    wall_time_s: Mapped[float | None] = mapped_column(Float)  # worker-side duration
    created_at: Mapped[datetime]
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    origin: Mapped[str] = mapped_column(String(16), default="search", server_default="search")  # one of EVALUATION_ORIGINS
    # The process that ran it, "<ray node id[:8]>/<pid>" or "inprocess/<pid>"; last, where ADD COLUMN
    # puts it in a migrated table.
    worker: Mapped[str | None] = mapped_column(String(255))

    __table_args__ = (
        UniqueConstraint("candidate_id", "task", "fidelity", "seed"),
        CheckConstraint(_in("status", EVALUATION_STATUSES), name="status"),
        CheckConstraint(_in("origin", EVALUATION_ORIGINS), name="origin"),
        Index(None, "status"),
    )


class Artifact(Base):
    """A file written for a candidate; `path` is relative to the store's artifacts directory."""

    __tablename__ = "hnas_artifacts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    candidate_id: Mapped[int] = mapped_column(ForeignKey("hnas_candidates.id", ondelete="CASCADE"))
    evaluation_id: Mapped[int | None] = mapped_column(ForeignKey("hnas_evaluations.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(64))  # e.g. "weights"
    path: Mapped[str] = mapped_column(Text)  # content-addressed: <sha[:2]>/<sha>.<ext>
    sha256: Mapped[str] = mapped_column(String(64))
    bytes: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime]

    __table_args__ = (UniqueConstraint("evaluation_id", "kind"), Index(None, "candidate_id"))


# --- what the API returns ------------------------------------------------------------------------


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, ArchSpec):
        return value.to_dict()
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


@dataclass(frozen=True)
class EvaluationInfo:
    id: int
    candidate_id: int
    campaign_id: int
    spec_hash: str
    spec: ArchSpec  # the candidate's design, ready to re-submit on resume
    generation: int
    task: str
    fidelity: int  # training steps
    seed: int
    status: str  # queued | running | done | failed | invalid
    metrics: dict[str, Any]  # {} until finished
    error: str | None
    host: str | None
    device: str | None
    wall_time_s: float | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    origin: str = "search"  # search | promotion | reseed
    worker: str | None = None  # which process ran it (host names alone repeat across nodes of one machine)

    def to_dict(self) -> dict[str, Any]:
        return _jsonable({f: getattr(self, f) for f in self.__dataclass_fields__})


@dataclass(frozen=True)
class ArtifactInfo:
    id: int
    candidate_id: int
    evaluation_id: int | None
    kind: str
    path: Path  # absolute, resolved against the store's artifacts directory
    sha256: str
    bytes: int
    created_at: datetime

    def to_dict(self) -> dict[str, Any]:
        return _jsonable(asdict(self))


@dataclass(frozen=True)
class CandidateInfo:
    id: int
    campaign_id: int
    spec: ArchSpec
    spec_hash: str
    label: str
    generation: int
    created_at: datetime
    parents: tuple[tuple[int, str], ...]  # (parent_id, operator), by parent id
    evaluations: tuple[EvaluationInfo, ...]  # by id
    artifacts: tuple[ArtifactInfo, ...]  # by id

    def to_dict(self) -> dict[str, Any]:
        d = {f: getattr(self, f) for f in self.__dataclass_fields__}
        d["parents"] = [{"parent_id": p, "operator": op} for p, op in self.parents]
        d["evaluations"] = [e.to_dict() for e in self.evaluations]
        d["artifacts"] = [a.to_dict() for a in self.artifacts]
        return _jsonable(d)


@dataclass(frozen=True)
class CampaignInfo:
    id: int
    name: str
    status: str  # running | stopped | finished | failed
    seed: int
    config: dict[str, Any]
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None
    n_candidates: int = 0
    n_evaluations: int = 0
    n_queued: int = 0
    n_running: int = 0
    n_done: int = 0
    n_failed: int = 0
    n_invalid: int = 0
    stop_requested: bool = False
    lease_owner: str | None = None  # the controller holding the campaign, while its lease is live
    metric: str = "accuracy"  # the campaign's objective (config["objective"]), used for `best`
    direction: str = "maximize"
    best: dict[str, Any] | None = field(default=None)  # top leaderboard row by that objective, if any

    def to_dict(self, *, with_config: bool = True) -> dict[str, Any]:
        d = {"name": self.name, **{f: getattr(self, f) for f in self.__dataclass_fields__}}  # name leads
        if not with_config:
            del d["config"]
        return _jsonable(d)


@dataclass(frozen=True)
class LineageEdge:
    child_id: int
    parent_id: int
    operator: str
    depth: int  # 1 for the queried candidate's own parents, 2 for grandparents, ...

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --- errors ----------------------------------------------------------------------------------------


class StoreError(Exception):
    """Base of every error the store raises on purpose."""


class StoreOpenError(StoreError):
    """The store at a URL cannot be opened; the message says why in one line, naming the URL."""


class StoreNotFound(StoreOpenError):
    """No hybridnas store at that URL (and the caller asked not to create one)."""


class SchemaVersionError(StoreOpenError):
    """The database was written by a newer (or unknown) hybridnas schema."""


class StoreReadOnly(StoreOpenError):
    """A writer asked for a store it may only read (read-only file, folder or database role)."""


class CampaignExists(StoreError):
    """`create_campaign` with a name that is already taken."""


class CampaignNotFound(StoreError, LookupError):
    """No campaign by that name or id; the message lists the known names."""


class CandidateNotFound(StoreError, LookupError):
    pass


class EvaluationNotFound(StoreError, LookupError):
    pass


class DuplicateEvaluation(StoreError):
    """That (candidate, task, fidelity, seed) evaluation already exists; nothing was written."""

    def __init__(self, message: str, candidate_id: int, evaluation_id: int) -> None:
        super().__init__(message)
        self.candidate_id = candidate_id  # the existing candidate
        self.evaluation_id = evaluation_id  # the existing evaluation


class EvaluationAlreadyFinished(StoreError):
    """The evaluation is done or failed already, with a different result than the one given."""


class CampaignBusy(StoreError):
    """Another controller holds the campaign's lease (it is running somewhere)."""

    def __init__(self, message: str, owner: str) -> None:
        super().__init__(message)
        self.owner = owner  # host:pid:token of the live controller

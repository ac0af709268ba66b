"""How a store is reached, and why it could not be: the checks `Store.open` makes before and while it
connects, read-only SQLite connections, and `explain`, which turns any failure to open into one
`StoreOpenError` line that names the URL and what to do.

Read-only SQLite: a reader never writes the database. Where the user may write the file and its folder,
it opens it as usual with `PRAGMA query_only`, so SQLite still removes the -wal/-shm files when the last
connection closes (a `mode=ro` connection cannot, and would leave them behind after every query).
Elsewhere (a colleague's results, a read-only mount) it opens the URI `mode=ro`, which reads a live
store through its existing -wal/-shm; where the WAL index cannot be opened (no -shm, and a folder it
may not write) it falls back to `immutable=1`, which reads the file as it is. That is exact when no
-wal file holds unsaved pages, the case for a store whose writer closed it; otherwise the reader is
refused rather than shown stale results.
"""

from __future__ import annotations

import os
import sqlite3
import struct
from collections.abc import Callable
from pathlib import Path
from urllib.parse import quote

from sqlalchemy.engine import URL
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError

from hybridnas.store.models import StoreNotFound, StoreOpenError, StoreReadOnly

SQLITE_MAGIC = b"SQLite format 3\x00"
SQLITE_HEADER = 100

#: DB-API module -> what to install for it.
DRIVER_PACKAGES: dict[str, str] = {
    "MySQLdb": "mysqlclient",
    "pymysql": "pymysql",
    "mysql": "mysql-connector-python",
    "mariadb": "mariadb",
    "asyncmy": "asyncmy",
    "aiomysql": "aiomysql",
    "psycopg": '"psycopg[binary]"',
    "psycopg2": "psycopg2-binary",
    "pg8000": "pg8000",
    "asyncpg": "asyncpg",
    "aiosqlite": "aiosqlite",
    "oracledb": "oracledb",
    "cx_Oracle": "cx_Oracle",
    "pyodbc": "pyodbc",
    "pymssql": "pymssql",
}
#: Other drivers worth naming when a backend's default one is missing.
DRIVER_ALTERNATIVES: dict[str, str] = {
    "mysql": "or use mysql+pymysql://... with pip install pymysql",
    "mariadb": "or use mariadb+pymysql://... with pip install pymysql",
    "postgresql": "or pip install -e \".[postgres]\" in a hybridnas checkout",
}
KNOWN_BACKENDS = ("sqlite", "postgresql", "mysql", "mariadb", "oracle", "mssql")
#: SQLSTATEs of a PostgreSQL role or server that may not write.
PG_READ_ONLY_STATES = ("25006", "42501")  # read_only_sql_transaction, insufficient_privilege


def one_line(text: str) -> str:
    """Driver messages span lines (psycopg adds hints); the CLI prints one."""
    return " ".join(part.strip() for part in str(text).splitlines() if part.strip())


def side_files(path: Path) -> dict[str, Path]:
    """The files SQLite keeps beside a database: its write-ahead log, WAL index and rollback journal."""
    return {suffix: path.with_name(path.name + f"-{suffix}") for suffix in ("wal", "shm", "journal")}


def _exists(p: Path) -> bool:
    try:
        return p.exists()
    except OSError:  # e.g. a folder on the way may not be searched: treat as absent, SQLite will say more
        return False


def check_sqlite_path(path: Path, display: str, *, must_exist: bool) -> bool:
    """Refuse what cannot be a store before SQLite sees it (so nothing is created beside it).

    Returns whether the file exists. Raises StoreOpenError for a path under a regular file, a
    folder, an unreadable file, a file that is not SQLite or is truncated; StoreNotFound for a
    missing or empty file when `must_exist`.
    """
    for parent in path.parents:
        if _exists(parent):
            if not parent.is_dir():
                raise StoreOpenError(f"{display}: {parent} is a file, not a folder, so {path.name} cannot be in it")
            break
    try:
        path.stat()
    except FileNotFoundError:
        if must_exist:
            raise StoreNotFound(f"no hybridnas store at {display} (file {path} does not exist)") from None
        return False
    except PermissionError:
        raise StoreOpenError(f"{display}: cannot reach {path}: permission denied on a folder on the way") from None
    if path.is_dir():
        raise StoreOpenError(f"{display}: {path} is a folder, not a SQLite file")
    try:
        with open(path, "rb") as f:
            head = f.read(SQLITE_HEADER)
        size = path.stat().st_size
    except OSError as e:
        raise StoreOpenError(f"{display}: cannot read {path}: {e.strerror or e}") from None
    if not head:
        if must_exist:
            raise StoreNotFound(f"no hybridnas store at {display} (file {path} is empty)")
        return True  # SQLite makes an empty file a database
    if not head.startswith(SQLITE_MAGIC[: len(head)]) or len(head) < len(SQLITE_MAGIC):
        if head.startswith(SQLITE_MAGIC[: len(head)]):
            raise StoreOpenError(f"{display}: {path} is truncated ({size} bytes, shorter than a SQLite header)")
        raise StoreOpenError(f"{display}: {path} is not a SQLite database (file is not a database)")
    if len(head) < SQLITE_HEADER:
        raise StoreOpenError(f"{display}: {path} is truncated ({size} bytes, shorter than a SQLite header)")
    page_size = struct.unpack(">H", head[16:18])[0]
    page_size = 65536 if page_size == 1 else page_size
    change_counter, n_pages = struct.unpack(">II", head[24:32])
    valid_for = struct.unpack(">I", head[92:96])[0]
    # The header's page count is exact only when valid-for matches the change counter, and only at rest:
    # while a -wal or -journal exists a checkpoint or commit may be half-way through growing the file.
    at_rest = not any(_exists(p) for k, p in side_files(path).items() if k != "shm")
    if n_pages and change_counter == valid_for and at_rest and size < n_pages * page_size:
        raise StoreOpenError(
            f"{display}: {path} is truncated ({size} bytes; its header says {n_pages} pages of {page_size} bytes, "
            f"{n_pages * page_size} bytes); restore it from a copy"
        )
    return True


def sqlite_writable(path: Path) -> bool:
    """Whether this process may write the file and create its -wal/-shm/-journal beside it."""
    folder = path.parent
    if not os.access(folder, os.W_OK | os.X_OK):
        return False
    files = [path, *(p for p in side_files(path).values() if _exists(p))]
    return all(os.access(p, os.W_OK) for p in files if _exists(p))


def read_only_reason(path: Path) -> str:
    folder = path.parent
    if not os.access(folder, os.W_OK | os.X_OK):
        return f"its folder {folder} is not writable"
    return f"{path} is not writable"


def _sqlite_error_code(e: BaseException) -> int | None:
    return getattr(e, "sqlite_errorcode", None)


def _is_cantopen_or_readonly(e: sqlite3.Error) -> bool:
    code = _sqlite_error_code(e)
    if code is not None:
        return code & 0xFF in (sqlite3.SQLITE_CANTOPEN, sqlite3.SQLITE_READONLY)
    msg = str(e).lower()
    return "unable to open database file" in msg or "readonly database" in msg


def read_only_connector(path: Path, display: str, timeout: float) -> Callable[[], sqlite3.Connection]:
    """A `creator` for SQLAlchemy: query_only where writable, else `mode=ro`, else `immutable=1`."""
    uri = "file:" + quote(str(path))

    def connect() -> sqlite3.Connection:
        if sqlite_writable(path):
            conn = sqlite3.connect(str(path), timeout=timeout, check_same_thread=False)
            conn.execute("PRAGMA query_only=ON")
            return conn
        conn = sqlite3.connect(f"{uri}?mode=ro", uri=True, timeout=timeout, check_same_thread=False)
        try:
            # A WAL database opens its -shm index at the first read: a folder that refuses it fails here.
            conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
            return conn
        except sqlite3.Error as e:
            conn.close()
            if not _is_cantopen_or_readonly(e):
                raise
            wal = side_files(path)["wal"]
            if _exists(wal) and wal.stat().st_size > 0:
                raise StoreOpenError(
                    f"{display}: cannot read it: {wal.name} holds results not yet saved into the database, and "
                    f"this process cannot open them ({read_only_reason(path)}); ask its owner to open the store once, "
                    f"or copy the .db and -wal files to a folder you can write"
                ) from None
        return sqlite3.connect(f"{uri}?immutable=1", uri=True, timeout=timeout, check_same_thread=False)

    return connect


def explain(e: BaseException, url: URL | None, display: str, *, writing: bool = False) -> StoreOpenError | None:
    """The StoreOpenError for a failure to open `display`, or None when `e` is not about the store."""
    if isinstance(e, StoreOpenError):
        return e
    if isinstance(e, NoSuchModuleError):  # before ArgumentError, its base
        name = url.drivername if url is not None else display.split(":", 1)[0]
        return StoreOpenError(f"{display}: unknown database or driver {name!r}; known databases: {', '.join(KNOWN_BACKENDS)} (e.g. sqlite:///hybridnas.db)")
    if isinstance(e, ArgumentError):
        return StoreOpenError(f"{display!r} is neither a SQLAlchemy URL (dialect+driver://user@host/db) nor a SQLite file path")
    if isinstance(e, ImportError):
        module = (e.name or "").split(".")[0] or "?"
        backend = url.get_backend_name() if url is not None else "?"
        package = DRIVER_PACKAGES.get(module, module)
        alt = DRIVER_ALTERNATIVES.get(backend, "") if url is not None and "+" not in url.drivername else ""
        return StoreOpenError(
            f"{display}: the {backend} driver {module!r} is not installed; pip install {package}" + (f" ({alt})" if alt else "")
        )
    if isinstance(e, DBAPIError):
        orig = e.orig if e.orig is not None else e
        text = one_line(str(orig)) or type(orig).__name__
        if url is not None and url.get_backend_name() == "sqlite":
            return _explain_sqlite(orig, text, url, display, writing)
        state = getattr(getattr(orig, "diag", None), "sqlstate", None) or getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
        if state in PG_READ_ONLY_STATES:
            return StoreReadOnly(f"{display}: the store is read-only for this user ({text}); campaigns need a role that may write")
        return StoreOpenError(f"{display}: {text}")
    if isinstance(e, ValueError):  # resolve_url's empty URL, a bad ?timeout=
        return StoreOpenError(f"{display}: {one_line(str(e))}" if display else one_line(str(e)))
    if isinstance(e, OSError):
        where = f" {e.filename}" if e.filename else ""
        return StoreOpenError(f"{display}: cannot create{where}: {e.strerror or e}")
    return None


def _explain_sqlite(orig: BaseException, text: str, url: URL, display: str, writing: bool) -> StoreOpenError:
    path = Path(url.database).expanduser() if url.database else None
    code = (_sqlite_error_code(orig) or 0) & 0xFF
    low = text.lower()
    if code == sqlite3.SQLITE_NOTADB or "file is not a database" in low:
        return StoreOpenError(f"{display}: {path} is not a SQLite database ({text})")
    if code == sqlite3.SQLITE_CORRUPT or "malformed" in low:
        return StoreOpenError(f"{display}: {path} is corrupt ({text}); restore it from a copy")
    if code == sqlite3.SQLITE_READONLY or "readonly database" in low or (
        writing and path is not None and _exists(path) and not sqlite_writable(path)
    ):
        reason = read_only_reason(path) if path is not None else text
        return StoreReadOnly(f"{display}: the store is read-only ({reason}); campaigns need a store they can write")
    if code == sqlite3.SQLITE_CANTOPEN or "unable to open" in low:
        return StoreOpenError(f"{display}: cannot open {path} ({text})")
    return StoreOpenError(f"{display}: {text}")


__all__ = [
    "check_sqlite_path",
    "explain",
    "one_line",
    "read_only_connector",
    "read_only_reason",
    "side_files",
    "sqlite_writable",
]

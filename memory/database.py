"""Opening a store database: URL, engine, SQLite pragmas, migrations, retry on a busy database.

SQLite set-up, and why:
- WAL: readers never block the writer and a killed process never leaves a half-written snapshot.
  It is switched on by `migrate`, once the file is known to be ours (it writes to the file).
  Checkpoints run on a background thread (memory/wal.py), not inside a snapshot's COMMIT.
- 64 KiB pages (set before the file exists): blobs are MiB chunks, far past SQLite's 4 KiB default.
- synchronous=FULL: a commit is on disk when `save_turn` returns (a snapshot is the user's work).
- foreign_keys=ON: SQLite ignores foreign keys unless asked, on every connection.
- busy timeout + `BEGIN IMMEDIATE` for writes: a writer takes the lock when its transaction starts, so
  two writers queue instead of failing with SQLITE_BUSY on a lock upgrade; what is left of contention
  is retried with backoff (`retry_busy`) and never reaches the user as "database is locked".
pysqlite's own transaction handling is switched off (isolation_level=None) and replaced by explicit
BEGINs, the SQLAlchemy-documented way to get real transactions (and transactional DDL) from it.

Opening a database already at the newest schema (every open but the first) reads its revision with
one query and compares it with the newest one of memory/migrations/versions (`_quick_head`, read from
the files' `revision`/`down_revision` lines); alembic, a large import (docs/results.md, cold start),
is loaded only to create, upgrade or refuse a schema.
"""

from __future__ import annotations

import contextlib
import logging
import random
import re
import sqlite3
import time
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import platformdirs
from hybrid_agent.memory.errors import (
    CorruptDataError,
    DatabaseUnavailableError,
    NotADatabaseError,
    SchemaTooNewError,
    StoreBusyError,
    StoreError,
)
from sqlalchemy import Connection, Engine, create_engine, event, inspect
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, IntegrityError, NoSuchModuleError, OperationalError

if TYPE_CHECKING:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

T = TypeVar("T")
S = TypeVar("S")

BUSY_TIMEOUT_S = 10.0  # SQLite's own wait for the lock, per statement
RETRY_BUDGET_S = 120.0  # our retries on top, per operation, before StoreBusyError
SQLITE_PAGE_SIZE = 65536
WAL_SIZE_LIMIT = 64 << 20  # after a checkpoint the log file is cut back to this
WRITE_OPTION = "hybrid_agent_write"  # execution option: this transaction will write
_SQLITE_MAGIC = b"SQLite format 3\x00"
_MIGRATIONS = Path(__file__).with_name("migrations")
_PG_MIGRATION_LOCK = 0x6879_6272  # pg_advisory_xact_lock key: "hybr"

log = logging.getLogger(__name__)


def default_url() -> str:
    """`sqlite:///$XDG_DATA_HOME/hybrid-agent/sessions.db` (platformdirs honours XDG_DATA_HOME)."""
    base = Path(platformdirs.user_data_dir("hybrid-agent", appauthor=False))
    base.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{base / 'sessions.db'}"


def normalize_url(url: str | Path | None) -> URL:
    """None -> the default database; a plain path -> an SQLite file; anything else -> an SQLAlchemy URL
    of a backend the store supports (SQLite or PostgreSQL; `postgres://`, as many hosts write it, is
    PostgreSQL)."""
    if url is None:
        return make_url(default_url())
    if isinstance(url, Path) or "://" not in url:
        return make_url(f"sqlite:///{Path(url).expanduser().resolve()}")
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):  # ValueError: a port that is not a number
        raise DatabaseUnavailableError(
            f"{url!r} is not a database URL; give a file path, or e.g. postgresql://USER@HOST/DB"
        ) from None
    backend, _, driver = parsed.drivername.partition("+")
    if backend == "postgres":
        parsed = parsed.set(drivername="postgresql" + (f"+{driver}" if driver else ""))
    elif backend not in ("sqlite", "postgresql"):
        # The schema, its migrations and the write locking are made and tested for these two only.
        raise DatabaseUnavailableError(
            f"hybrid-agent keeps sessions in SQLite (a file path) or PostgreSQL (postgresql://USER@HOST/DB), "
            f"not {backend}"
        )
    return parsed


def sqlite_file(url: URL) -> Path | None:
    """The SQLite file behind `url`; None for an in-memory database or another backend (where
    `url.database` is a server-side name, not a path: opening it as a file would litter the cwd)."""
    if url.get_backend_name() != "sqlite":
        return None
    db = url.database
    if not db or db == ":memory:" or db.startswith("file:"):
        return None
    return Path(db)


def readable_sqlite_file(url: URL) -> Path | None:
    """The SQLite file behind `url`, also when `url` is `read_only_url`'s form of it."""
    db = url.database or ""
    if url.get_backend_name() == "sqlite" and db.startswith("file:") and url.query.get("mode") == "ro":
        return Path(urllib.parse.unquote(db.removeprefix("file:")))
    return sqlite_file(url)


def check_sqlite_file(path: Path) -> None:
    """Refuse, before SQLite touches it, a file that is not an SQLite database."""
    if not path.exists() or path.stat().st_size == 0:
        return
    if path.is_dir():
        raise NotADatabaseError(f"{path} is a directory; give the path of a database file (--db)")
    with path.open("rb") as f:
        header = f.read(len(_SQLITE_MAGIC))
    if header != _SQLITE_MAGIC:
        raise NotADatabaseError(
            f"{path} is not an SQLite database (it was left untouched); point --db at a sessions "
            "database, or at a new file name to create one"
        )


def read_only_url(url: URL, path: Path) -> URL:
    """`url` opening SQLite file `path` read-only (SQLITE_OPEN_READONLY): nothing can write to it."""
    return url.set(database=f"file:{urllib.parse.quote(str(path))}", query={"mode": "ro", "uri": "true"})


def create_store_engine(url: URL, *, read_only: bool = False) -> Engine:
    if url.get_backend_name() != "sqlite":
        try:
            return create_engine(url, pool_pre_ping=True)
        except (ImportError, NoSuchModuleError) as exc:  # the URL's driver is not installed
            raise DatabaseUnavailableError(
                f"cannot open {url.render_as_string(hide_password=True)}: its driver is missing ({exc}); "
                "for PostgreSQL install psycopg: pip install 'hybrid-agent[postgres]'"
            ) from None
    path = sqlite_file(url)
    if path is not None:
        check_sqlite_file(path)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise DatabaseUnavailableError(
                f"cannot create the directory of {path}: {exc.strerror}; choose a writable place (--db)"
            ) from exc
    if read_only and path is not None:
        url = read_only_url(url, path)
    engine = create_engine(url, connect_args={"timeout": BUSY_TIMEOUT_S})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # we emit BEGIN ourselves (see module doc)
        cursor = dbapi_connection.cursor()
        try:
            # Per-connection settings only: none of them writes to the file. WAL (which does) is
            # switched on by `migrate`, after the file has been found to be ours.
            cursor.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
            # Only for a file not written yet: on an existing one, setting auto_vacuum (even to the
            # value it has) rewrites the header, and read-only connections refuse it.
            if not read_only and cursor.execute("PRAGMA page_count").fetchone()[0] == 0:
                # Only takes effect when the file is created: 64 KiB pages halve the cost of writing
                # multi-MiB chunks (16x fewer overflow pages and WAL frames than the 4 KiB default).
                cursor.execute(f"PRAGMA page_size = {SQLITE_PAGE_SIZE}")
                # Also only at creation: freed pages can be given back to the file system without
                # rewriting the whole file (`Store.compact`, `hybrid-agent sessions gc`).
                cursor.execute("PRAGMA auto_vacuum = INCREMENTAL")
            cursor.execute("PRAGMA wal_autocheckpoint = 0")  # memory/wal.py checkpoints off the commit path
            cursor.execute(f"PRAGMA journal_size_limit = {WAL_SIZE_LIMIT}")
            cursor.execute("PRAGMA synchronous = FULL")
            cursor.execute("PRAGMA foreign_keys = ON")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        write = conn.get_execution_options().get(WRITE_OPTION, False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

    return engine


_REVISION = re.compile(r"""^revision(?:\s*:[^=]*)?\s*=\s*["']([^"']+)["']\s*$""", re.M)
_DOWN_REVISION = re.compile(r"""^down_revision(?:\s*:[^=]*)?\s*=\s*(?:["']([^"']+)["']|None)\s*$""", re.M)


def _quick_head() -> str | None:
    """The newest revision of memory/migrations/versions, from the files' text without alembic; None
    when the files are not the plain single chain this reads (alembic decides then)."""
    revisions, parents = set(), set()
    for path in (_MIGRATIONS / "versions").glob("*.py"):
        text = path.read_text(encoding="utf-8")
        rev, down = _REVISION.search(text), _DOWN_REVISION.search(text)
        if rev is None and down is None:
            continue  # not a revision (__init__.py)
        if rev is None or down is None:
            return None
        revisions.add(rev[1])
        if down[1]:
            parents.add(down[1])
    heads = revisions - parents
    return heads.pop() if len(heads) == 1 else None


def at_head(engine: Engine) -> bool:
    """Whether the database's schema is already the newest one, read with one query; False when it
    cannot tell (no such table, not a database, busy): the full check then decides and reports."""
    head = _quick_head()
    if head is None:
        return False
    try:
        with engine.connect() as conn:
            rows = conn.exec_driver_sql("SELECT version_num FROM alembic_version").fetchall()
    except DBAPIError:
        return False
    return [tuple(r) for r in rows] == [(head,)]


def _alembic_config() -> Config:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(_MIGRATIONS))
    return cfg


def head_revision() -> str:
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(_alembic_config()).get_current_head()
    assert head is not None, "memory/migrations/versions is empty"
    return head


def _check_revision(conn: Any, script: ScriptDirectory, where: str) -> str | None:
    """The database's revision, after refusing a newer or foreign database. Touches nothing."""
    from alembic.runtime.migration import MigrationContext
    from alembic.util.exc import CommandError

    current = MigrationContext.configure(conn).get_current_revision()
    if current is None:
        tables = [t for t in inspect(conn).get_table_names() if t != "alembic_version"]
        if tables:
            raise NotADatabaseError(
                f"{where} already holds tables ({', '.join(sorted(tables)[:5])}) but no hybrid-agent "
                "schema; it was left untouched — use a separate database for hybrid-agent sessions"
            )
        return None
    try:
        script.get_revision(current)
    except CommandError:
        raise SchemaTooNewError(
            f"{where} has schema revision {current!r}, newer than this hybrid-agent knows (head "
            f"{script.get_current_head()!r}); it was left untouched — upgrade hybrid-agent to open it"
        ) from None
    return current


def sqlite_damage(engine: Engine, started: Callable[[Any], None] | None = None) -> str | None:
    """What `PRAGMA quick_check` finds wrong with the file (its first lines), None when it is intact.
    quick_check reads every page but skips the index-content cross-check of integrity_check: the
    part of a full check that is cheap enough for every open (memory/open_check.py runs it beside
    the open). `started` gets the driver connection before the check runs (to interrupt it)."""
    with engine.connect() as conn:
        if started is not None:
            started(conn.connection.driver_connection)
        try:
            found = [str(r[0]) for r in conn.exec_driver_sql("PRAGMA quick_check(5)")]
        except DBAPIError as exc:
            if "malformed" not in str(exc.orig).lower():
                raise
            return str(exc.orig)
    return None if found == ["ok"] else "; ".join(found)


def require_head(engine: Engine, where: str, why: StoreError) -> None:
    """For a database this process will not write to (`why` says why): refuse it unless its schema is
    already this version's, since it cannot be upgraded."""
    if at_head(engine):
        return
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(_alembic_config())
    with engine.connect() as conn:
        current = _check_revision(conn, script, where)
    if current is None:
        raise type(why)(f"{why} (and it holds no hybrid-agent sessions yet)")
    if current != script.get_current_head():
        raise type(why)(
            f"{why} (and it was written by an older hybrid-agent: schema {current!r}, which must be "
            "upgraded in place before this version can read it)"
        )


def migrate(engine: Engine, where: str) -> None:
    """Bring the schema to head: create it in an empty database, upgrade an older one, never recreate."""
    if at_head(engine):  # the usual case, without alembic
        if engine.dialect.name == "sqlite":
            _enable_wal(engine)
        return
    from alembic import command
    from alembic.script import ScriptDirectory

    cfg = _alembic_config()
    script = ScriptDirectory.from_config(cfg)
    head = script.get_current_head()
    with engine.connect() as conn:  # a read transaction first: the usual case is "already at head"
        try:
            current = _check_revision(conn, script, where)
        except NotADatabaseError:
            # Final on SQLite (both reads in one BEGIN: one snapshot), not yet on PostgreSQL: it reads
            # in READ COMMITTED, the revision and the table list are two statements with two
            # snapshots, so another process's first open that commits the new schema between them
            # reads as "tables but no revision". Ask again behind the migration lock, where no schema
            # is half-visible: foreign there is foreign (and raises).
            if engine.dialect.name != "postgresql":
                raise
            with _migration_transaction(engine) as locked:
                current = _check_revision(locked, script, where)
    if engine.dialect.name == "sqlite":
        _enable_wal(engine)
    if current == head:
        return
    with _migration_transaction(engine) as conn:
        if _check_revision(conn, script, where) == head:  # someone else migrated meanwhile
            return
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")


@contextlib.contextmanager
def _migration_transaction(engine: Engine) -> Iterator[Connection]:
    """A write transaction that concurrent first opens of the same database take one at a time:
    SQLite's BEGIN IMMEDIATE is the database's write lock; PostgreSQL gets an advisory lock, held
    until this transaction ends."""
    with engine.execution_options(**{WRITE_OPTION: True}).begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_PG_MIGRATION_LOCK})")
        yield conn


def _enable_wal(engine: Engine) -> None:
    """Persistent in the file, so once is enough; must run outside a transaction (hence the raw
    DBAPI connection, which is in autocommit mode)."""
    raw = engine.raw_connection()
    try:
        cursor = raw.cursor()
        if cursor.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
            # Needs an exclusive lock: another process opening the same new file may hold one.
            # Raised as SQLAlchemy's error so that `retry_busy` retries the whole open.
            try:
                cursor.execute("PRAGMA journal_mode = WAL")
            except sqlite3.OperationalError as exc:
                raise OperationalError("PRAGMA journal_mode = WAL", None, exc) from exc
        cursor.close()
    finally:
        raw.close()


# PostgreSQL SQLSTATEs worth retrying the whole transaction for, with what the log says of each:
# serialization failure, deadlock, lock not available, and a foreign-key violation: a row the
# transaction refers to was deleted by another one meanwhile (a session deleted while a turn of it
# was being saved; the retry then says it is gone). Blobs are not among them: a write that reuses one
# locks it first (memory/blobs.py `write_blobs`), so an eviction on another server waits instead.
_RETRY_SQLSTATES = {
    "40001": "it conflicted with a concurrent transaction",
    "40P01": "it deadlocked with a concurrent transaction",
    "55P03": "a row it needs was locked",
    "23503": "a row it refers to was deleted by a concurrent transaction",
}


def _busy_reason(exc: DBAPIError) -> str | None:
    """Why `exc` is worth retrying the transaction for (None: it is not)."""
    # psycopg names the SQLSTATE `sqlstate`, psycopg2 (SQLAlchemy's default for postgresql://) `pgcode`.
    code = getattr(exc.orig, "sqlstate", None) or getattr(exc.orig, "pgcode", None)
    reason = _RETRY_SQLSTATES.get(str(code))
    if reason is not None:
        return reason
    msg = str(exc.orig).lower()
    if "database is locked" in msg or "database is busy" in msg or "database table is locked" in msg:
        return "the database was locked"
    return None


def unreadable_as_damage(fn: Callable[[S], T], session: S, what: str, where: str) -> T:
    """`fn(session)`, with a stored value that cannot be decoded (a JSON column that is not JSON, a
    date or a number that is not one: SQLAlchemy's result processors raise these unwrapped) reported
    as the damage it is instead of an internal error. Arguments are validated before a transaction
    opens, so inside one these come only from what was read."""
    try:
        return fn(session)
    except (ValueError, TypeError) as exc:
        if isinstance(exc, StoreError):
            raise
        raise CorruptDataError(
            f"{what}: a value stored in {where} cannot be read ({type(exc).__name__}: "
            f"{' '.join(str(exc).split())[:200]}); the database is damaged: "
            "`hybrid-agent sessions check` lists what is affected"
        ) from exc


def translate(exc: DBAPIError, where: str) -> Exception:
    """Our exception for a driver error a user can hit, or the original one."""
    msg = str(exc.orig).lower()
    if isinstance(exc, IntegrityError):
        # The store checks what it writes (turn order, page ranges, blobs before rows that point at
        # them), so a violated constraint means rows that the database lost or that were changed.
        return CorruptDataError(
            f"{where}: the stored rows contradict each other ({' '.join(str(exc.orig).split())}); "
            "the database is damaged: `hybrid-agent sessions check` lists what is affected"
        )
    if "file is not a database" in msg:
        return NotADatabaseError(f"{where} is not an SQLite database (it was left untouched)")
    if "malformed" in msg:
        return CorruptDataError(
            f"{where}: the database file is damaged ({exc.orig}); restore it from a backup, or run "
            "`sqlite3 FILE .recover` to salvage what is intact"
        )
    missing_db = "database" in msg and "does not exist" in msg
    if "unable to open database" in msg or "connect" in msg or missing_db:
        reason = " ".join(str(exc.orig).split())
        return DatabaseUnavailableError(
            f"cannot open {where}: {reason}; check the --db URL, that the directory is writable, "
            "and that the database server is running"
        )
    return exc


def retry_busy(fn: Callable[[], T], what: str) -> T:
    """Run `fn` (one whole transaction), retrying with jittered backoff while the database is busy."""
    deadline = time.monotonic() + RETRY_BUDGET_S
    delay = 0.02
    while True:
        try:
            return fn()
        except DBAPIError as exc:
            reason = _busy_reason(exc)
            if reason is None:
                raise
            if time.monotonic() + delay > deadline:
                raise StoreBusyError(
                    f"{what}: the database stayed locked by other writers for {RETRY_BUDGET_S:.0f} s; "
                    "close other hybrid-agent processes using it and try again"
                ) from exc
            # A lock is routine (SQLite's single writer); anything else is worth a line in the log.
            level = logging.DEBUG if reason == "the database was locked" else logging.INFO
            log.log(level, "%s: rolled back and retried: %s", what, reason)
            time.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, 1.0)

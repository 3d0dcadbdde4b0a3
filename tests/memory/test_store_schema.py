"""Opening databases: migrations match the ORM, older schemas are upgraded, foreign or newer files are
refused untouched, the default location and the SQLite settings are what the design says."""

from __future__ import annotations

import hashlib
import sqlite3
import tomllib
from pathlib import Path

import pytest
import sqlalchemy as sa
import torch
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from hybrid_agent.memory import DatabaseUnavailableError, Event, NotADatabaseError, SchemaTooNewError, Store
from hybrid_agent.memory.database import (
    WRITE_OPTION,
    _alembic_config,
    create_store_engine,
    head_revision,
    normalize_url,
    sqlite_file,
)
from hybrid_agent.memory.schema import Base

from hybrid_agent import memory

REPO = Path(__file__).resolve().parents[2]


def file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_migrated_schema_equals_the_orm_schema(store_url: str) -> None:
    Store(store_url).close()
    engine = sa.create_engine(store_url)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
        assert MigrationContext.configure(conn).get_current_revision() == head_revision()
    engine.dispose()
    assert diff == []


def test_older_database_is_upgraded_keeping_its_data(store_url: str) -> None:
    # Build a database at revision 0001 (before the file journal existed) and put a session in it.
    engine = create_store_engine(normalize_url(store_url))
    cfg = _alembic_config()
    with engine.execution_options(**{WRITE_OPTION: True}).begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0001")
    with engine.begin() as conn:
        assert "file_changes" not in sa.inspect(conn).get_table_names()
        conn.execute(
            sa.text(
                "INSERT INTO sessions (id, title, workspace, model_fingerprint, created_at, updated_at, "
                "meta) VALUES ('old-session', 'from 0001', '/w', 'fp', :t, :t, '{}')"
            ),
            {"t": "2026-01-01 00:00:00"},
        )
    engine.dispose()
    with Store(store_url) as store:
        assert store.get_session("old-session").title == "from 0001"
        store.save_turn(
            "old-session", 1, events=[Event("user", "hi")], recurrent={"x": torch.ones(2)}, n_tokens=1
        )
        store.record_file_change("old-session", 1, "a.txt", None, b"new")  # the table 0002 added
        assert store.file_changes("old-session")[0].after == b"new"


def test_newer_schema_is_refused_and_left_untouched(sqlite_path: Path) -> None:
    with Store(sqlite_path) as store:
        store.create_session("t", "/w", "fp")
    with sqlite3.connect(sqlite_path) as conn:
        conn.execute("UPDATE alembic_version SET version_num = '9999_from_the_future'")
    conn.close()
    before = file_digest(sqlite_path)
    with pytest.raises(SchemaTooNewError, match=r"9999_from_the_future.*upgrade hybrid-agent"):
        Store(sqlite_path)
    assert file_digest(sqlite_path) == before


def test_newer_schema_is_refused_on_every_backend(store_url: str) -> None:
    Store(store_url).close()
    engine = sa.create_engine(store_url)
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE alembic_version SET version_num = '9999_from_the_future'"))
    engine.dispose()
    with pytest.raises(SchemaTooNewError, match="newer than this hybrid-agent knows"):
        Store(store_url)


@pytest.mark.parametrize(
    "content", [b"hello, this is a text file\n" * 100, b"\x00" * 4096, b"SQLite format 2\x00xx"]
)
def test_file_that_is_not_sqlite_is_refused_untouched(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "notes.db"
    path.write_bytes(content)
    with pytest.raises(NotADatabaseError, match=r"not an SQLite database.*untouched"):
        Store(path)
    assert path.read_bytes() == content
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.db"]  # no -wal / -shm created either


def test_sqlite_database_of_another_program_is_refused_untouched(sqlite_path: Path) -> None:
    with sqlite3.connect(sqlite_path) as conn:
        conn.execute("CREATE TABLE recipes (name TEXT)")
        conn.execute("INSERT INTO recipes VALUES ('soup')")
    conn.close()
    before = file_digest(sqlite_path)
    with pytest.raises(NotADatabaseError, match=r"recipes.*no hybrid-agent schema"):
        Store(sqlite_path)
    assert file_digest(sqlite_path) == before


def test_database_of_another_program_is_refused_untouched_on_every_backend(store_url: str) -> None:
    engine = sa.create_engine(store_url)
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE recipes (name TEXT)"))
        conn.execute(sa.text("INSERT INTO recipes VALUES ('soup')"))
    with pytest.raises(NotADatabaseError, match=r"recipes.*no hybrid-agent schema"):
        Store(store_url)
    with engine.connect() as conn:
        assert sa.inspect(conn).get_table_names() == ["recipes"]
        assert conn.execute(sa.text("SELECT name FROM recipes")).scalars().all() == ["soup"]
    engine.dispose()


@pytest.mark.parametrize("store_url", [pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True)
def test_schema_committed_between_the_two_reads_of_a_first_open(
    store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Two processes open a new PostgreSQL database at once (CI caught this). This one reads "no
    # revision"; the other then commits the whole schema; this one's next statement (READ COMMITTED:
    # a new snapshot) lists the tables: "tables but no revision" must not be taken for a foreign
    # database. The other open is made to land exactly there.
    real_inspect = memory.database.inspect
    other_opens: list[str] = []

    def inspect_after_another_first_open(conn: sa.Connection) -> sa.Inspector:
        if not other_opens:
            other_opens.append(store_url)
            Store(store_url).close()  # its own reads come back here and go straight through
        return real_inspect(conn)

    monkeypatch.setattr(memory.database, "inspect", inspect_after_another_first_open)
    with Store(store_url) as store:
        assert store.list_sessions() == []
    assert other_opens == [store_url]


def test_default_database_lives_under_xdg_data_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    with Store() as store:
        sid = store.create_session("t", "/w", "fp").id
    expected = tmp_path / "data" / "hybrid-agent" / "sessions.db"
    assert expected.is_file()
    with Store(f"sqlite:///{expected}") as again:
        assert again.get_session(sid).title == "t"


def test_sqlite_pragmas_wal_foreign_keys_full_sync(sqlite_path: Path) -> None:
    with Store(sqlite_path) as store, store._engine.connect() as conn:
        pragmas = {
            p: conn.exec_driver_sql(f"PRAGMA {p}").scalar()
            for p in (
                "journal_mode",
                "foreign_keys",
                "synchronous",
                "busy_timeout",
                "page_size",
                "wal_autocheckpoint",
            )
        }
    assert pragmas["journal_mode"] == "wal"
    assert pragmas["foreign_keys"] == 1
    assert pragmas["synchronous"] == 2  # FULL
    assert pragmas["busy_timeout"] >= 1000
    assert pragmas["page_size"] == 65536
    assert pragmas["wal_autocheckpoint"] == 0  # memory/wal.py checkpoints off the commit path


def test_write_ahead_log_is_checkpointed_into_the_file(sqlite_path: Path) -> None:
    wal = sqlite_path.with_name(sqlite_path.name + "-wal")
    with Store(sqlite_path) as store:
        sid = store.create_session("t", "/w", "fp").id
        store.save_turn(sid, 1, events=[], recurrent={"x": torch.randn(1 << 20)}, n_tokens=1)
        assert wal.stat().st_size > 4 << 20  # the 4 MiB turn is durable in the log
        store.checkpoint()
        assert wal.stat().st_size == 0  # copied into the main file, log truncated
        assert sqlite_path.stat().st_size > 4 << 20
        assert store.load_snapshot(sid).recurrent["x"].numel() == 1 << 20


def test_migrations_ship_inside_the_package() -> None:
    packages = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    wanted = {"memory", "memory.migrations", "memory.migrations.versions"}
    assert {f"hybrid_agent.{name}" for name in wanted} <= set(packages)
    versions = sorted(p.name for p in (REPO / "memory" / "migrations" / "versions").glob("0*.py"))
    assert versions == [
        "0001_initial.py",
        "0002_file_changes.py",
        "0003_snapshot_digests.py",
        "0004_prefix_states.py",
        "0005_blob_digest_algorithm.py",
        "0006_prefix_last_used.py",
    ]
    assert (REPO / "memory" / "migrations" / "script.py.mako").is_file()  # package-data "*.mako"


def test_unreachable_database_gets_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    with pytest.raises(DatabaseUnavailableError, match="cannot create the directory"):
        Store(blocker / "sessions.db")
    with pytest.raises(DatabaseUnavailableError, match=r"cannot open postgresql.*server is running"):
        Store("postgresql+psycopg://nobody@127.0.0.1:1/none?connect_timeout=2")


@pytest.mark.parametrize(
    ("url", "needle"),
    [
        ("mysql://me@127.0.0.1/db", r"SQLite \(a file path\) or PostgreSQL .*not mysql"),
        ("postgresql+nosuchdriver://me@127.0.0.1/db", r"driver is missing .*'hybrid-agent\[postgres\]'"),
        ("sqlite://:bad::", "is not a database URL"),
        ("://nothing", "is not a database URL"),
    ],
)
def test_unsupported_or_malformed_urls_get_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, url: str, needle: str
) -> None:
    monkeypatch.chdir(tmp_path)  # nothing is created where the command runs either
    with pytest.raises(DatabaseUnavailableError, match=needle):
        Store(url)
    assert list(tmp_path.iterdir()) == []


def test_postgres_scheme_is_postgresql() -> None:
    # `postgres://` is how many hosts write PostgreSQL URLs (SQLAlchemy only knows `postgresql`).
    url = normalize_url("postgres://me:secret@db.example:5433/sessions")
    assert (url.drivername, url.host, url.port) == ("postgresql", "db.example", 5433)
    assert (url.username, url.password, url.database) == ("me", "secret", "sessions")
    assert normalize_url("postgres+psycopg://me@h/db").drivername == "postgresql+psycopg"


def test_only_sqlite_urls_name_a_local_file() -> None:
    # A server database's name is not a path: treating it as one would create files in the cwd.
    assert sqlite_file(normalize_url("postgresql+psycopg://u@localhost/sessions")) is None
    assert sqlite_file(normalize_url("sqlite://")) is None
    assert sqlite_file(normalize_url("/tmp/x/sessions.db")) == Path("/tmp/x/sessions.db")


def test_no_local_files_for_a_server_database(
    store_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if store_url.startswith("sqlite"):
        pytest.skip("server backends only")
    monkeypatch.chdir(tmp_path)
    with Store(store_url) as store:
        assert store._checkpointer is None  # WAL checkpoints are an SQLite-file matter
        sid = store.create_session("t", "/w", "fp").id
        store.save_turn(sid, 1, events=[], recurrent={"x": torch.ones(2)}, n_tokens=1)
        store.checkpoint()  # a no-op here
    assert list(tmp_path.iterdir()) == []


def test_the_quick_head_is_alembics_head() -> None:
    from hybrid_agent.memory.database import _quick_head, head_revision

    assert _quick_head() == head_revision()


def test_a_database_at_the_newest_schema_opens_without_alembic(sqlite_path: Path) -> None:
    """The usual open (every one but the first) needs no alembic, a large import on a start."""
    import subprocess
    import sys

    Store(sqlite_path).close()  # created (and migrated) here
    code = (
        "import sys\nfrom hybrid_agent.memory import Store\n"
        f"s = Store({str(sqlite_path)!r}); s.list_sessions(); s.close()\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'alembic'))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
    newer = sqlite3.connect(sqlite_path)  # any other revision still goes through alembic's checks
    newer.execute("UPDATE alembic_version SET version_num = '9999'")
    newer.commit()
    newer.close()
    with pytest.raises(SchemaTooNewError):
        Store(sqlite_path)

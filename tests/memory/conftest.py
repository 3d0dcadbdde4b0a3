"""Fixtures of the store's tests: the same tests run on SQLite and, when a server is given, PostgreSQL.

PostgreSQL: set HYBRID_AGENT_TEST_PG_URL to a server URL (`.ci/run` starts one and sets it), e.g.
    HYBRID_AGENT_TEST_PG_URL=postgresql+psycopg://postgres@127.0.0.1:54329/postgres
Each test gets a database of its own, created and dropped around it.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from hybrid_agent.memory import Store

PG_ENV = "HYBRID_AGENT_TEST_PG_URL"


def _pg_database(server_url: str) -> Iterator[str]:
    """A fresh, uniquely named database on the server; dropped afterwards."""
    admin = sa.create_engine(server_url, isolation_level="AUTOCOMMIT")
    name = f"hybrid_agent_test_{uuid.uuid4().hex[:12]}"
    try:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
        yield sa.make_url(server_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A URL of an empty database, on each backend."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'sessions.db'}"
        return
    server = os.environ.get(PG_ENV)
    if not server:
        pytest.skip(f"PostgreSQL store tests: set {PG_ENV}=postgresql+psycopg://USER@HOST:PORT/DB to run")
    yield from _pg_database(server)


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    with Store(store_url) as s:
        yield s


@pytest.fixture
def sqlite_path(tmp_path: Path) -> Path:
    return tmp_path / "sessions.db"

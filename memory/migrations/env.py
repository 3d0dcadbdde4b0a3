"""Alembic environment for the store.

Only the programmatic path is supported: `hybrid_agent.memory.database.migrate` passes an open connection
(inside a write transaction that it owns) through `config.attributes["connection"]`. No alembic.ini is needed.
"""

from __future__ import annotations

from alembic import context
from hybrid_agent.memory.schema import Base

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("memory migrations run only through memory.database.migrate (no alembic.ini)")

context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    # SQLite cannot ALTER most things; batch mode rebuilds tables when a later revision needs it.
    render_as_batch=True,
)
with context.begin_transaction():
    context.run_migrations()

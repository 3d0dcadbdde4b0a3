"""Alembic migrations of the store, applied by `hybrid_agent.memory.database.migrate` when a database is
opened.

A package (not just a folder) so that setuptools ships it in the wheel with the rest of `memory`.
"""

"""Alembic migrations of the store, applied by `memory.database.migrate` when a database is opened.

A package (not just a folder) so that setuptools ships it in the wheel with the rest of `memory`.
"""

"""Migration steps, one small named revision per file (see `memory/migrations/__init__.py`)."""

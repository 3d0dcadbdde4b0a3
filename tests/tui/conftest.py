"""TUI tests: the helper modules next to this file are imported by name (tests run with
--import-mode=importlib, where test directories are not packages)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))


import pytest


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # Textual runs on asyncio

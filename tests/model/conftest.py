"""Fixtures for model tests: tiny configs with weights large enough that every layer matters
(model/testing.py, shared with tests/engine)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from model import HybridLM
from model.testing import tiny_model


@pytest.fixture
def make_model() -> Callable[..., HybridLM]:
    return tiny_model

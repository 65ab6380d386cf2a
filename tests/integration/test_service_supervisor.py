"""A supervised service (a real reward server process) that dies is started again on the same port and answers
there; one that cannot start is reported, not restarted; stop ends the current process."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import httpx
import psutil
import pytest

from services.process import ServiceExitedError
from services.service_supervisor import supervised_service

pytestmark = [pytest.mark.integration, pytest.mark.slow]

HANG_GUARD_S = 120.0  # only against a hang


def _wait(predicate: object, what: str) -> None:
    deadline = time.monotonic() + HANG_GUARD_S
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.2)


def test_a_dead_service_comes_back_on_the_same_port(tmp_path: Path) -> None:
    with supervised_service("reward-server", ["--workers", "1"], tmp_path) as supervised:
        first = supervised.service.pid
        url = supervised.url
        os.kill(first, signal.SIGKILL)
        _wait(lambda: supervised.restarts == 1, "no restart")
        assert supervised.url == url and supervised.service.pid != first
        assert httpx.get(f"{url}/readyz", timeout=10).status_code == 200
        current = supervised.service.pid
    assert not psutil.pid_exists(current) or psutil.Process(current).status() == psutil.STATUS_ZOMBIE
    assert (tmp_path / "reward-server.restart-1.log").is_file()


def test_a_service_that_cannot_start_is_reported_not_restarted(tmp_path: Path) -> None:
    with (
        pytest.raises(ServiceExitedError, match="controller"),
        supervised_service("controller", ["--config", str(tmp_path / "missing.json")], tmp_path),
    ):
        pass  # pragma: no cover - never reached

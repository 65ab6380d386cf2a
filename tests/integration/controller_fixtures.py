"""Fixtures for the controller integration tests: both Redis kinds, unique runs, real uvicorn subprocesses.

Imported by the test module (not a conftest) so it cannot clash with shared Redis fixtures elsewhere; the
functions are named `*_fixture` and registered under `name=`, so test parameters do not shadow the imports.
The real server is the shared one at 127.0.0.1:6379: tests use unique run ids and delete only their own keys.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from services.controller.state import run_keys
from services.core.redis_conn import EmbeddedRedis, connect
from services.process import free_loopback_port, wait_until_ready

REPO_ROOT = Path(__file__).resolve().parents[2]
TOKEN_ENV = "RLVR_TEST_CONTROLLER_TOKEN"
TOKEN = "integration-token"
STARTUP_TIMEOUT_S = 30.0


@pytest.fixture(name="controller_redis_url", params=["real", "embedded"])
def controller_redis_url_fixture(request: pytest.FixtureRequest) -> Iterator[str]:
    """The shared Redis at 127.0.0.1:6379 (skipped if down, failed under CI) and a private embedded one."""
    if request.param == "embedded":
        with EmbeddedRedis() as server:
            yield server.url
        return
    yield str(request.getfixturevalue("server_url"))  # fails under CI, skips elsewhere, when it is down


@pytest.fixture(name="controller_run_id")
def controller_run_id_fixture(controller_redis_url: str) -> Iterator[str]:
    run = f"it-ctl-{uuid.uuid4().hex[:12]}"
    yield run
    client = connect(controller_redis_url)
    try:
        client.delete(*run_keys(run))
    finally:
        client.close()


@pytest.fixture(name="run_config_file")
def run_config_file_fixture(tmp_path: Path, controller_run_id: str) -> Path:
    """A TOML run config for this test's run: 12 steps, linear m0 0.99, ratios 0 -> 0.75 (max_step 9)."""
    path = tmp_path / "run.toml"
    path.write_text(
        f'run_id = "{controller_run_id}"\ntotal_steps = 12\nstrategy = "tp"\n\n'
        '[schedule]\nmode = "linear"\ninitial_magnitude = 0.99\nmin_ratio = 0.0\nmax_ratio = 0.75\n'
    )
    return path


class ControllerProcess:
    """`python -m services.controller.server` as a child process, stopped only through its own PID."""

    def __init__(self, redis_url: str, config: Path, log_path: Path, *, port: int, extra: list[str]) -> None:
        self.port = port
        self.log_path = log_path
        self.args = [
            sys.executable, "-m", "services.controller.server",
            "--host", "127.0.0.1", "--port", str(port), "--redis-url", redis_url, "--config", str(config),
            "--token-env", TOKEN_ENV, "--log-level", "info", *extra,
        ]  # fmt: skip
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self) -> ControllerProcess:
        env = {k: v for k, v in os.environ.items() if not k.startswith("RLVR_CONTROLLER_")}
        env[TOKEN_ENV] = TOKEN
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                self.args, cwd=REPO_ROOT, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
            )
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout_s: float = STARTUP_TIMEOUT_S) -> ControllerProcess:
        assert self.process is not None
        wait_until_ready(self.process, self.url, timeout_s, name="controller", log_tail=lambda: self.log()[-3000:])
        return self

    def wait_exit(self, timeout_s: float = STARTUP_TIMEOUT_S) -> int:
        assert self.process is not None
        return self.process.wait(timeout=timeout_s)

    def stop(self, sig: signal.Signals = signal.SIGTERM, timeout_s: float = 10.0) -> int:
        """Send `sig` to this child's PID and reap it (SIGKILL if it outlives `timeout_s`)."""
        assert self.process is not None
        if self.process.poll() is None:
            os.kill(self.process.pid, sig)
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                os.kill(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=timeout_s)
        return self.process.returncode


StartController = Callable[..., ControllerProcess]


@pytest.fixture(name="start_controller")
def start_controller_fixture(
    controller_redis_url: str, run_config_file: Path, tmp_path: Path
) -> Iterator[StartController]:
    """Start a controller on this test's Redis and run (`ready=False` to watch a refused start); all are stopped."""
    started: list[ControllerProcess] = []

    def start(*extra: str, port: int | None = None, ready: bool = True) -> ControllerProcess:
        log_path = tmp_path / f"controller-{len(started)}.log"
        proc = ControllerProcess(
            controller_redis_url, run_config_file, log_path, port=port or free_loopback_port(), extra=list(extra)
        )
        started.append(proc.start())
        return proc.wait_ready() if ready else proc

    yield start
    for proc in started:
        proc.stop(signal.SIGKILL)

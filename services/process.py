"""Child service processes of the local stack: start with a log file, wait for /readyz, stop by PID.

Every child dies with the process that started it (PR_SET_PDEATHSIG, services/core/lifecycle.py), so a launcher
killed by SIGKILL leaves no service behind. Secrets travel in the child's environment, never on its command line.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx

from services.core.lifecycle import child_preexec

LOOPBACK = "127.0.0.1"


def free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


class ServiceExitedError(RuntimeError):
    """A child service exited before it was ready; `reason` is the last line it logged (its own error message)."""

    def __init__(self, name: str, returncode: int, reason: str, log_tail: str) -> None:
        super().__init__(f"{name} exited with {returncode}: {reason}\n{log_tail}")
        self.name, self.returncode, self.reason = name, returncode, reason


def last_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1].strip() if lines else "(no output)"


def wait_until_ready(
    process: subprocess.Popen[bytes], url: str, timeout_s: float, *, name: str, log_tail: Callable[[], str]
) -> None:
    """Poll `url`/readyz until it answers 200; raise with the log tail if the child exits or time runs out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = log_tail()
            raise ServiceExitedError(name, process.returncode, last_line(tail), tail)
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(f"{url}/readyz", timeout=1.0).status_code == 200:
                return
        time.sleep(0.05)
    raise TimeoutError(f"{name} not ready within {timeout_s} s:\n{log_tail()}")


@dataclass
class ServiceProcess:
    """One `rlvr <command>` child serving HTTP on loopback."""

    name: str
    url: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def log_tail(self, chars: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:] if self.log_path.exists() else ""

    def wait_ready(self, timeout_s: float) -> None:
        wait_until_ready(self.process, self.url, timeout_s, name=self.name, log_tail=self.log_tail)

    def stop(self, timeout_s: float = 15.0) -> None:
        """SIGTERM (graceful shutdown), then SIGKILL after `timeout_s`; only our own child's PID."""
        if self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=5)


@contextlib.contextmanager
def run_service(
    name: str,
    argv: Sequence[str],
    log_dir: Path,
    *,
    env: Mapping[str, str] | None = None,
    ready_timeout_s: float = 120.0,
) -> Iterator[str]:
    """Run `rlvr <name> <argv> --host 127.0.0.1 --port <free>`; yield its base URL once ready; always stop it.

    `env` is added to this process's environment for the child (settings and secrets go there, not in argv).
    """
    port = free_loopback_port()
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{name}.log"
    command = [sys.executable, "-m", "services.cli", name, *argv, "--host", LOOPBACK, "--port", str(port)]
    with log_path.open("wb") as log:
        child = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            preexec_fn=child_preexec(),
        )
    service = ServiceProcess(name, f"http://{LOOPBACK}:{port}", child, log_path)
    try:
        service.wait_ready(ready_timeout_s)
        yield service.url
    finally:
        service.stop()

"""Child service processes of the local stack (and of the tests): start with a log file, wait for /readyz, stop by PID.

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

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def log_tail(self, chars: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:] if self.log_path.exists() else ""

    def wait_ready(self, timeout_s: float) -> None:
        wait_until_ready(self.process, self.url, timeout_s, name=self.name, log_tail=self.log_tail)

    def wait_exit(self, timeout_s: float) -> int:
        """Wait for the child to exit on its own (e.g. a refused start); its exit code."""
        return self.process.wait(timeout=timeout_s)

    def stop(self, sig: signal.Signals = signal.SIGTERM, timeout_s: float = 15.0) -> int:
        """Send `sig` to our own child's PID (SIGTERM: graceful shutdown; SIGKILL: a crash), SIGKILL it if it is
        still there after `timeout_s`, and reap it. Its exit code (negative: the signal that ended it)."""
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        return int(self.process.returncode)


def start_service(
    name: str,
    argv: Sequence[str],
    log_dir: Path,
    *,
    env: Mapping[str, str | None] | None = None,
    port: int | None = None,
    entry: Sequence[str] | None = None,
    log_name: str | None = None,
) -> ServiceProcess:
    """Start `rlvr <name> <argv> --host 127.0.0.1 --port <port>` and return at once (not waiting for /readyz).

    The caller owns the child: `wait_ready`, then `stop` it (run_service does both). `port` defaults to a free
    one (pass the old port to restart a service in place); `entry` replaces `services.cli <name>` with another
    module and its leading arguments (tests run the reward server with stand-in scorers that way); `env` is added
    to this process's environment, a None value removes that variable; the log goes to `log_dir/log_name`
    (default `<name>.log`, truncated).
    """
    port = port if port is not None else free_loopback_port()
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / (log_name or f"{name}.log")
    module_args = list(entry) if entry is not None else ["services.cli", name]
    command = [sys.executable, "-m", *module_args, *argv, "--host", LOOPBACK, "--port", str(port)]
    child_env = dict(os.environ)
    for key, value in (env or {}).items():
        if value is None:
            child_env.pop(key, None)
        else:
            child_env[key] = value
    with log_path.open("ab") as log:
        child = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=child_env,
            preexec_fn=child_preexec(),
        )
    return ServiceProcess(name, f"http://{LOOPBACK}:{port}", child, log_path)


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
    service = start_service(name, argv, log_dir, env=env)
    try:
        service.wait_ready(ready_timeout_s)
        yield service.url
    finally:
        service.stop()

"""`rlvr run` as a child process of a test: start it, read its output as it goes, signal it, find its leftovers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psutil

from tests.shared_data import REPO_ROOT

REPLAY_PRESET = str(REPO_ROOT / "deploy" / "presets" / "replay-cpu.toml")  # the run machinery, no world to build
RUN_TIMEOUT_S = 600  # only stops a hang from blocking the suite; nothing is asserted about time


def _interactive_sigint() -> None:
    """Ctrl-C as a terminal user has it: a suite started as a background job (CI, `nohup`) inherits SIGINT ignored,
    and an ignored SIGINT stays ignored in the child (POSIX), which would make the Ctrl-C test meaningless."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class RunProcess:
    """One `python -m services.cli run --out OUT ...`; stdout lines are collected by a reader thread."""

    def __init__(
        self, out: Path, *args: str, env: dict[str, str] | None = None, config: str | Path = REPLAY_PRESET
    ) -> None:
        self.out = out
        command = [sys.executable, "-m", "services.cli", "run", "--config", str(config), "--out", str(out), *args]
        self.process = subprocess.Popen(
            command, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**os.environ, **(env or {})}, preexec_fn=_interactive_sigint,
        )  # fmt: skip
        self.lines: list[str] = []
        self._new_line = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            with self._new_line:
                self.lines.append(line.rstrip("\n"))
                self._new_line.notify_all()

    def step_rows(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in list(self.lines) if line.startswith('{"step"')]

    def wait_for_steps(self, count: int) -> bool:
        """Until `count` step rows were printed (True) or the process ended first (False)."""
        deadline = time.monotonic() + RUN_TIMEOUT_S
        with self._new_line:
            while len(self.step_rows()) < count:
                if self.process.poll() is not None and not self._reader.is_alive():
                    return False
                if time.monotonic() > deadline:
                    raise TimeoutError(f"no {count} step rows within {RUN_TIMEOUT_S} s: {self.lines[-5:]}")
                self._new_line.wait(timeout=0.2)
        return True

    def startup_line(self) -> str:
        with self._new_line:
            while not any(line.startswith("rlvr run ") for line in self.lines):
                if self.process.poll() is not None and not self._reader.is_alive():
                    raise RuntimeError(f"rlvr run exited early: {self.stderr()}")
                self._new_line.wait(timeout=0.2)
        return next(line for line in self.lines if line.startswith("rlvr run "))

    def controller_url(self) -> str:
        return self.startup_line().split("controller ", 1)[1].split(",", 1)[0]

    def signal(self, sig: signal.Signals) -> None:
        if self.process.poll() is None:
            os.kill(self.process.pid, sig)

    def wait(self) -> int:
        code = self.process.wait(timeout=RUN_TIMEOUT_S)
        self._reader.join(timeout=10)
        return code

    def stderr(self) -> str:
        assert self.process.stderr is not None
        return self.process.stderr.read() if self.process.poll() is not None else ""


def descendants(pid: int) -> list[psutil.Process]:
    """Every process below `pid` now (services, their workers, the embedded Redis)."""
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def survivors(processes: list[psutil.Process], timeout_s: float = 60.0) -> list[psutil.Process]:
    """Poll until every process is gone (or a zombie); returns those still running at the deadline (the failure)."""
    deadline = time.monotonic() + timeout_s
    while True:
        alive = [p for p in processes if _running(p)]
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.2)


def _running(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False

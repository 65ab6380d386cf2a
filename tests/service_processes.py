"""Child services of the tests, started and stopped the one way the stack does it: services/process.py.

`run_reward_server` runs `rlvr reward-server` (or, with `stub=True`, the same server with the scorer stand-ins of
tests/stub_scorers.py) on a free loopback port, waits for /readyz and always stops it by its own PID.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psutil

from services.process import ServiceProcess, free_loopback_port, start_service

REPO_ROOT = Path(__file__).resolve().parents[1]
STUB_REWARD_SERVER = ("tests.stub_scorers",)


@dataclass(frozen=True)
class RewardServerProcess:
    service: ServiceProcess

    @property
    def url(self) -> str:
        return self.service.url

    @property
    def pid(self) -> int:
        return self.service.pid

    def log_tail(self, chars: int = 4000) -> str:
        return self.service.log_tail(chars)

    def tree_rss_bytes(self) -> int:
        """Resident memory of the server, its scorer workers and the forkserver."""
        root = psutil.Process(self.pid)
        total = 0
        for proc in [root, *root.children(recursive=True)]:
            try:
                total += proc.memory_info().rss
            except psutil.NoSuchProcess:
                continue
        return total


def _importable_tests(env: Mapping[str, str]) -> dict[str, str]:
    """`env` plus the repository root on PYTHONPATH, so the child can import `tests.*` from any working directory."""
    paths = [str(REPO_ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
    return {**env, "PYTHONPATH": os.pathsep.join(paths)}


@contextmanager
def run_reward_server(
    log_dir: Path,
    *,
    workers: int = 1,
    item_timeout_s: float = 2.0,
    stub: bool = False,
    env: Mapping[str, str] | None = None,
    ready_timeout_s: float = 120.0,
) -> Iterator[RewardServerProcess]:
    """A reward server on a free loopback port; `env` adds RLVR_REWARD_* settings. Ready timeout: a hang guard."""
    argv = ["--workers", str(workers), "--timeout-s", str(item_timeout_s), "--log-level", "warning"]
    port = free_loopback_port()
    service = start_service(
        "reward-server",
        argv,
        log_dir,
        env=_importable_tests(env or {}) if stub else env,
        port=port,
        entry=STUB_REWARD_SERVER if stub else None,
        log_name=f"reward-server-{port}.log",
    )
    try:
        service.wait_ready(ready_timeout_s)
        yield RewardServerProcess(service)
    finally:
        service.stop()

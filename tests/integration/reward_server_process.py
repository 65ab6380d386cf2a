"""Start a real reward server (uvicorn subprocess on a free loopback port), wait for /readyz, always stop it.

Run as a module it is the server itself with the test scorer stand-ins, so integration tests can make an
item hang or crash its worker on purpose:  python -m tests.integration.reward_server_process --port P
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psutil

from services.process import ServiceProcess, free_loopback_port

REPO_ROOT = Path(__file__).resolve().parents[2]
LOOPBACK = "127.0.0.1"


@dataclass(frozen=True)
class RewardServerProcess:
    url: str
    pid: int
    log_path: Path

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

    def log_tail(self, chars: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:] if self.log_path.exists() else ""


@contextmanager
def run_reward_server(
    log_dir: Path,
    *,
    workers: int = 1,
    item_timeout_s: float = 2.0,
    stub: bool = False,
    env: dict[str, str] | None = None,
    ready_timeout_s: float = 90.0,
) -> Iterator[RewardServerProcess]:
    """A reward server on a free loopback port; `env` adds RLVR_REWARD_* settings."""
    port = free_loopback_port()
    module = "tests.integration.reward_server_process" if stub else "reward_server"
    flags = ["--host", LOOPBACK, "--port", str(port), "--workers", str(workers), "--timeout-s", str(item_timeout_s)]
    command = [sys.executable, "-m", module, *flags, "--log-level", "warning"]
    log_path = log_dir / f"reward_server_{port}.log"
    url = f"http://{LOOPBACK}:{port}"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            command, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT, env=os.environ | (env or {})
        )
    service = ServiceProcess("reward server", url, process, log_path)
    try:
        service.wait_ready(ready_timeout_s)
        yield RewardServerProcess(url=url, pid=process.pid, log_path=log_path)
    finally:
        service.stop()


def _main_with_stub_scorer(argv: Sequence[str] | None = None) -> int:
    import uvicorn

    from reward_server.app import create_app
    from reward_server.server import settings_from_args
    from tests.unit.reward_server.stub_scorers import misbehaving_score

    settings = settings_from_args(argv)
    app = create_app(settings, score_fn=misbehaving_score)
    uvicorn.run(app, host=settings.host, port=settings.port, log_level=settings.log_level, access_log=False)
    return 0


if __name__ == "__main__":
    sys.exit(_main_with_stub_scorer())

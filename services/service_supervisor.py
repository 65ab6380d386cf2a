"""A ready child service that exits on its own is started again on the same port: its clients see a gap, not a new
address, and wait through it (the rollout role retries the reward server with backoff; the controller's state is in
Redis, so a restarted controller serves the same run). A service that fails while starting is not restarted: that
is a refusal (the controller's exit 3 for a conflicting run) and `run_service` reports it.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

from services.core.lifecycle import interrupted
from services.core.result_stream import say
from services.process import ServiceExitedError, ServiceProcess, start_service

POLL_S = 0.5
RESTART_READY_TIMEOUT_S = 120.0
RESTART_BACKOFF_S = 2.0
READY_SLICE_S = 1.0


class SupervisedService:
    def __init__(self, service: ServiceProcess, argv: Sequence[str], log_dir: Path, env: Mapping[str, str] | None):
        """`argv`: the arguments of a restart (they may differ from the first start's, e.g. a committed config)."""
        self.service, self._argv, self._log_dir, self._env = service, list(argv), log_dir, env
        self.url = service.url
        self.restarts = 0
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._watch, name=f"supervise-{service.name}", daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        while not self._stopping.wait(POLL_S):
            if self.service.process.poll() is None:
                continue
            if interrupted():  # the launcher is shutting down (a terminal's Ctrl-C reaches the services too)
                return
            name, code = self.service.name, self.service.process.returncode
            say(f"{name} exited with status {code}: starting it again on {self.url}")
            while not self._stopping.is_set():
                restarted = start_service(
                    name, self._argv, self._log_dir, env=self._env, port=self.service.port,
                    log_name=f"{name}.restart-{self.restarts + 1}.log",
                )  # fmt: skip
                try:
                    self._wait_ready(restarted)
                except (ServiceExitedError, TimeoutError) as exc:
                    restarted.stop()
                    say(f"{name} did not come back ({exc}); trying again")
                    self._stopping.wait(RESTART_BACKOFF_S)
                    continue
                self.service = restarted
                self.restarts += 1
                break

    def _wait_ready(self, service: ServiceProcess) -> None:
        """Ready within RESTART_READY_TIMEOUT_S, in short waits so that `stop` is not held up."""
        deadline = time.monotonic() + RESTART_READY_TIMEOUT_S
        while not self._stopping.is_set():
            try:
                service.wait_ready(min(READY_SLICE_S, max(0.1, deadline - time.monotonic())))
                return
            except TimeoutError:
                if time.monotonic() >= deadline:
                    raise

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join()
        self.service.stop()


@contextlib.contextmanager
def supervised_service(
    name: str, argv: Sequence[str], log_dir: Path, *, env: Mapping[str, str] | None = None,
    ready_timeout_s: float = 120.0, restart_argv: Sequence[str] | None = None,
) -> Iterator[SupervisedService]:  # fmt: skip
    """`run_service`, restarted on the same port (with `restart_argv`, default `argv`) whenever it exits after it was
    ready; always stopped at the end."""
    first = start_service(name, argv, log_dir, env=env)
    try:
        first.wait_ready(ready_timeout_s)
    except BaseException:
        first.stop()
        raise
    supervised = SupervisedService(first, restart_argv if restart_argv is not None else argv, log_dir, env)
    try:
        yield supervised
    finally:
        supervised.stop()

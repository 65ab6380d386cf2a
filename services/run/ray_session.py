"""The run's Ray: a local instance started and stopped with the run, or an existing cluster joined by address.

A local instance on CPU runs its workers at niceness 0 (`RAY_worker_niceness`): Ray nices workers to 15 by default,
which let the driver's own threads and the service children starve the actors (bench/rollout.py measured the HF
backend inside an actor at 0.69x the plain loop at niceness 15, 0.87x at 0). Actors get the repository on their
`PYTHONPATH` through the runtime environment, so a source checkout works without installing the package.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import ray

from services.core.config import RayConfig

REPO_ROOT = Path(__file__).resolve().parents[2]
LOCAL_WORKER_ENV = {"RAY_worker_niceness": "0", "RAY_AUTH_MODE": "disabled"}


def actor_runtime_env() -> dict[str, Any]:
    """What every actor of the run needs in its environment."""
    path = os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return {"env_vars": {"PYTHONPATH": path, "TOKENIZERS_PARALLELISM": "false"}}


@contextlib.contextmanager
def ray_session(config: RayConfig, namespace: str) -> Iterator[None]:
    """Ray for the run's lifetime. A local instance is shut down at the end (with every actor of the run); on a
    cluster only this driver disconnects, and the run's actors end with it (they are not detached)."""
    if ray.is_initialized():
        raise RuntimeError("Ray is already initialised in this process: the run must own its Ray session")
    if config.address is not None:
        ray.init(address=config.address, namespace=namespace, log_to_driver=False, configure_logging=False)
        try:
            yield
        finally:
            ray.shutdown()
        return
    for key, value in LOCAL_WORKER_ENV.items():
        os.environ.setdefault(key, value)  # read by the local raylet at start; a user's own setting wins
    before = {child.pid for child in psutil.Process().children()}
    reaper: subprocess.Popen[bytes] | None = None
    try:
        ray.init(
            num_cpus=config.num_cpus, include_dashboard=False, namespace=namespace, log_to_driver=False,
            configure_logging=False,
        )  # fmt: skip
        reaper = start_reaper([c.pid for c in psutil.Process().children() if c.pid not in before])
        yield
    finally:
        ray.shutdown()
        if reaper is not None:
            reaper.terminate()  # it ends what shutdown left behind, then exits
            reaper.wait()


def start_reaper(ray_roots: list[int]) -> subprocess.Popen[bytes] | None:
    """services/run/ray_reaper.py watching this process and the processes Ray started (`ray_roots`: the children
    that appeared with ray.init, and everything under them)."""
    if not ray_roots:
        return None
    return subprocess.Popen(
        [sys.executable, "-m", "services.run.ray_reaper", str(os.getpid()), *map(str, ray_roots)], cwd=REPO_ROOT,
        stdin=subprocess.DEVNULL,
    )  # fmt: skip

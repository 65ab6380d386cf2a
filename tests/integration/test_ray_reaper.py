"""The reaper kills what grew under the roots it watches once the watched run is gone, and leaves the run's other
children alone (real processes: a stand-in run, a root with a grandchild, and a sibling service)."""

from __future__ import annotations

import subprocess
import sys
import time

import psutil
import pytest

pytestmark = [pytest.mark.integration]

HANG_GUARD_S = 60.0
SLEEPER = [sys.executable, "-c", "import time; time.sleep(600)"]
RUN = """
import subprocess, sys, time
sleeper = [sys.executable, "-c", "import time; time.sleep(600)"]
root = subprocess.Popen([sys.executable, "-c", "import subprocess, sys, time; "
                         "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)']); time.sleep(600)"])
sibling = subprocess.Popen(sleeper)
print(root.pid, sibling.pid, flush=True)
time.sleep(600)
"""


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_the_reaper_kills_ray_s_processes_only_after_the_run_dies() -> None:
    run = subprocess.Popen([sys.executable, "-c", RUN], stdout=subprocess.PIPE, text=True)
    assert run.stdout is not None
    root, sibling = map(int, run.stdout.readline().split())
    deadline = time.monotonic() + HANG_GUARD_S
    while not psutil.Process(root).children():
        assert time.monotonic() < deadline
        time.sleep(0.1)
    grandchild = psutil.Process(root).children()[0].pid
    reaper = subprocess.Popen([sys.executable, "-m", "services.run.ray_reaper", str(run.pid), str(root)])
    try:
        time.sleep(1.5)  # a few of its polls: it has seen the tree
        assert _alive(root) and _alive(grandchild)  # nothing happens while the run lives
        run.kill()
        run.wait()
        assert reaper.wait(timeout=HANG_GUARD_S) == 0
        deadline = time.monotonic() + HANG_GUARD_S
        while _alive(root) or _alive(grandchild):
            assert time.monotonic() < deadline, "the reaper left Ray's processes running"
            time.sleep(0.1)
        assert _alive(sibling)  # the run's other child (a service) is not the reaper's business
    finally:
        for pid in (root, grandchild, sibling):
            if _alive(pid):
                psutil.Process(pid).kill()
        if reaper.poll() is None:
            reaper.kill()

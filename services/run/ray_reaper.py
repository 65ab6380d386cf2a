"""Ends the local Ray instance's processes when the run that started them is gone, however it went.

`ray.shutdown()` ends them on every exit the run sees (completion, errors, Ctrl-C, SIGTERM). A SIGKILLed run sees
nothing: Ray's raylet and workers notice their driver's death and exit, but its agent processes (`ray::DashboardAgent`,
`ray::RuntimeEnvAgent`) were measured still running 30 s later. This watcher, started by the run once its local
Ray instance is up, remembers the processes Ray started (the run's children that appeared with `ray.init`, and every
process that appears under them; never the run's other children, such as a restarted service) and, once the run has
exited or asks it to stop, kills those still alive (matched by pid and start time, so a recycled pid is never
touched).

    python -m services.run.ray_reaper RUN_PID RAY_ROOT_PID [RAY_ROOT_PID ...]
"""

from __future__ import annotations

import signal
import sys
import time
from types import FrameType

import psutil

POLL_S = 0.5


def _key(proc: psutil.Process) -> tuple[int, float] | None:
    try:
        return proc.pid, proc.create_time()
    except psutil.Error:
        return None


def _process(pid: int) -> psutil.Process | None:
    try:
        return psutil.Process(pid)
    except psutil.Error:
        return None


def _kill(seen: dict[int, float]) -> None:
    for pid, started in seen.items():
        try:
            proc = psutil.Process(pid)
            if proc.create_time() == started:
                proc.kill()
        except psutil.Error:
            continue


def watch(run_pid: int, roots: set[int]) -> None:
    stop = False

    def asked_to_stop(signum: int, frame: FrameType | None) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, asked_to_stop)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a terminal's Ctrl-C reaches the run, which stops us after
    me = psutil.Process()
    try:
        run = psutil.Process(run_pid)
    except psutil.NoSuchProcess:
        return
    seen: dict[int, float] = {}
    tops = [p for pid in roots if (p := _process(pid)) is not None]
    while not stop:
        try:
            if not run.is_running() or run.status() == psutil.STATUS_ZOMBIE:
                break
        except psutil.Error:
            break
        for top in tops:
            try:
                tree = [top, *top.children(recursive=True)]
            except psutil.Error:
                continue
            for proc in tree:
                if proc.pid != me.pid and (key := _key(proc)) is not None:
                    seen.setdefault(key[0], key[1])
        time.sleep(POLL_S)
    _kill(seen)


def main(argv: list[str]) -> int:
    if len(argv) < 2 or not all(a.isdigit() for a in argv):
        print("usage: python -m services.run.ray_reaper RUN_PID RAY_ROOT_PID [RAY_ROOT_PID ...]", file=sys.stderr)
        return 2
    watch(int(argv[0]), {int(a) for a in argv[1:]})
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

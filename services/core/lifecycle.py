"""Process lifecycle: children that die with their parent, and SIGTERM handled like Ctrl-C.

A launcher that is SIGKILLed (or OOM-killed) cannot clean up, so every child it starts asks the kernel to signal
it when the parent goes away (Linux `PR_SET_PDEATHSIG`). Elsewhere these are no-ops and clean shutdown relies on
the parent's own `finally` blocks.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
from collections.abc import Callable, Iterator
from types import FrameType

_PR_SET_PDEATHSIG = 1


def die_with_parent(sig: signal.Signals = signal.SIGTERM, *, parent_pid: int | None = None) -> None:
    """Ask for `sig` when this process's parent dies, even by SIGKILL (Linux); no-op elsewhere.

    `parent_pid` closes the race where the parent died before the request: if the parent is already someone else
    (we were re-parented), the signal is sent at once.
    """
    if not sys.platform.startswith("linux"):
        return
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(sig))
    if parent_pid is not None and os.getppid() != parent_pid:
        os.kill(os.getpid(), sig)


def child_preexec(sig: signal.Signals = signal.SIGTERM) -> Callable[[], None]:
    """A `preexec_fn` for `subprocess.Popen`: the child dies with the process that starts it."""
    parent = os.getpid()
    return lambda: die_with_parent(sig, parent_pid=parent)


class Terminated(KeyboardInterrupt):
    """SIGTERM received: unwinds like Ctrl-C (every `finally` and context manager runs), exit status 143."""


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM raises `Terminated` in the main thread, so shutdown is as clean as Ctrl-C."""

    def handler(signum: int, frame: FrameType | None) -> None:
        raise Terminated(f"received signal {signum}")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)

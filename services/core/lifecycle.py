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


_received: list[int] = []  # signals received inside `sigterm_as_interrupt()`, newest last


def _interrupt_for(signum: int) -> KeyboardInterrupt:
    return Terminated(f"received signal {signum}") if signum == signal.SIGTERM else KeyboardInterrupt()


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM raises `Terminated` and SIGINT `KeyboardInterrupt` in the main thread, so shutdown
    is as clean as Ctrl-C, and both are recorded for `raise_if_interrupted()`."""

    def handler(signum: int, frame: FrameType | None) -> None:
        _received.append(signum)
        raise _interrupt_for(signum)

    # a SIGINT ignored from the start (a background job of a non-interactive shell) stays ignored
    wanted = [sig for sig in (signal.SIGTERM, signal.SIGINT) if signal.getsignal(sig) is not signal.SIG_IGN]
    previous = {sig: signal.signal(sig, handler) for sig in wanted}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
        _received.clear()


def interrupted() -> bool:
    """Whether this process received SIGINT or SIGTERM inside `sigterm_as_interrupt()` (it is shutting down)."""
    return bool(_received)


def raise_if_interrupted() -> None:
    """Raise again the interrupt of a signal already received. A handler's exception can be lost: CPython runs
    signal handlers at the next bytecode, and an exception raised inside a finalizer (`__del__`, a weakref callback)
    is printed as "Exception ignored" and dropped. Long loops call this at their safe points, so a swallowed Ctrl-C
    or SIGTERM still stops them there."""
    if _received:
        raise _interrupt_for(_received[-1])

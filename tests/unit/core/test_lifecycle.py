"""Signals inside `sigterm_as_interrupt()`: raised as interrupts, and raised again at a safe point when CPython
dropped the first one (an exception raised inside a finalizer is printed as "Exception ignored" and lost)."""

from __future__ import annotations

import gc
import os
import signal
from collections.abc import Iterator

import pytest

from services.core.lifecycle import Terminated, raise_if_interrupted, sigterm_as_interrupt


@pytest.fixture(autouse=True)
def _sigint_as_in_a_terminal() -> Iterator[None]:
    """Python's own Ctrl-C handler, whatever this process inherited (a background job starts with SIGINT ignored)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


class _SignalledWhileFinalized:
    """Its finalizer receives `sig` and keeps running bytecode, so the handler's exception is raised inside it."""

    def __init__(self, sig: signal.Signals) -> None:
        self.sig = sig

    def __del__(self) -> None:
        os.kill(os.getpid(), self.sig)
        for _ in range(1000):  # the handler runs at one of these bytecodes, inside the finalizer
            pass


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # the lost interrupt, as expected
@pytest.mark.parametrize(("sig", "raised"), [(signal.SIGINT, KeyboardInterrupt), (signal.SIGTERM, Terminated)])
def test_an_interrupt_lost_in_a_finalizer_is_raised_again_at_the_next_safe_point(
    sig: signal.Signals, raised: type[KeyboardInterrupt]
) -> None:
    with sigterm_as_interrupt():
        obj = _SignalledWhileFinalized(sig)
        del obj  # the interrupt is raised in __del__ and dropped there ("Exception ignored")
        gc.collect()
        with pytest.raises(raised):
            raise_if_interrupted()
    raise_if_interrupted()  # outside the block nothing is pending


@pytest.mark.parametrize(("sig", "raised"), [(signal.SIGINT, KeyboardInterrupt), (signal.SIGTERM, Terminated)])
def test_a_signal_raises_its_interrupt_and_the_handlers_are_restored(
    sig: signal.Signals, raised: type[KeyboardInterrupt]
) -> None:
    before = signal.getsignal(sig)
    with pytest.raises(raised), sigterm_as_interrupt():
        os.kill(os.getpid(), sig)
        for _ in range(1000):
            pass
    assert signal.getsignal(sig) is before


def test_an_ignored_sigint_stays_ignored() -> None:
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with sigterm_as_interrupt():
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)

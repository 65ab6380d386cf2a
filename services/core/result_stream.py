"""A command's stdout carries its results and nothing else.

`rlvr prepare`, `rlvr run` and `rlvr eval` print JSON that scripts read. Libraries they load write to stdout on their
own: DeepSpeed's logger at import ("Setting accelerator to CPU"), vLLM's default logging, and every child process
inherits file descriptor 1. While a command runs under `results_on_stdout()`, descriptor 1 and `sys.stdout` point at
stderr, and only `say()` reaches the real stdout.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
from collections.abc import Iterator
from typing import TextIO

_results: TextIO | None = None


@contextlib.contextmanager
def results_on_stdout() -> Iterator[None]:
    """Send everything but `say()` to stderr until the block ends; then stdout is as it was."""
    global _results
    if _results is not None:
        raise RuntimeError("results_on_stdout() is already active")
    previous = sys.stdout
    previous.flush()
    if _descriptor(previous) != 1:  # stdout was replaced in-process (pytest's capsys): results go to that object
        sys.stdout, _results = sys.stderr, previous
        try:
            yield
        finally:
            _results, sys.stdout = None, previous
        return
    saved = os.dup(1)
    results = os.fdopen(saved, "w", encoding="utf-8", buffering=1)
    os.dup2(2, 1)
    sys.stdout, _results = sys.stderr, results
    try:
        yield
    finally:
        _results, sys.stdout = None, previous
        try:
            results.flush()  # a reader that left raises BrokenPipeError here, for the caller to handle
        finally:
            os.dup2(saved, 1)
            with contextlib.suppress(BrokenPipeError):
                results.close()


def _descriptor(stream: TextIO) -> int | None:
    try:
        return stream.fileno()
    except (AttributeError, OSError, io.UnsupportedOperation):
        return None


def say(text: str) -> None:
    """Print one result (a line, or a block of lines) to the real stdout and flush it."""
    stream = _results if _results is not None else sys.stdout
    stream.write(text + "\n")
    stream.flush()

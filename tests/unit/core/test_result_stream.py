"""A command's stdout holds only what it says: prints, loggers bound to stdout, raw writes to descriptor 1 and child
processes all land on stderr while `results_on_stdout()` is active."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from tests.shared_data import REPO_ROOT

SCRIPT = textwrap.dedent(
    """
    import logging, os, subprocess, sys
    from services.core.result_stream import results_on_stdout, say

    print("before")
    with results_on_stdout():
        logger = logging.getLogger("chatty")
        logger.addHandler(logging.StreamHandler(sys.stdout))  # bound the way DeepSpeed binds its logger
        logger.warning("library chatter")
        print("a stray print")
        os.write(1, b"raw fd write\\n")
        subprocess.run([sys.executable, "-c", "print('child process')"], check=True)
        say('{"result": 1}')
    print("after")
    """
)


def test_only_results_reach_stdout_while_active() -> None:
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT], cwd=REPO_ROOT, capture_output=True, text=True, check=True, timeout=60
    )
    assert done.stdout.splitlines() == ["before", '{"result": 1}', "after"]
    for noise in ("library chatter", "a stray print", "raw fd write", "child process"):
        assert noise in done.stderr

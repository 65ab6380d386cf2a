"""Scorer stand-ins for the reward server's tests, triggered by the response text; shared by the unit and the
integration tier. Module-level functions, because scorer workers import them by name.

Run as a module it is the reward server itself with `misbehaving_score`, so integration tests can make an item hang
or crash its worker on purpose:  python -m tests.stub_scorers --port P [reward-server flags]
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Sequence

from reward_server.scorers import Kind, ScoreOutcome, score

HANG = "__hang__"
CRASH = "__crash__"
RAISE = "__raise__"
NAN = "__nan__"


def misbehaving_score(kind: Kind, response: str, ground_truth: str) -> ScoreOutcome:
    """The real scorer, except that a response starting with a marker hangs, kills its process, raises or lies."""
    if response.startswith(HANG):
        while True:  # busy, not sleeping: like a runaway sympy evaluation
            time.monotonic()
    if response.startswith(CRASH):
        os._exit(3)
    if response.startswith(RAISE):
        raise RuntimeError("scorer bug")
    if response.startswith(NAN):
        return ScoreOutcome(reward=float("nan"), extracted=None, detail=None)
    return score(kind, response, ground_truth)


def serve_with_misbehaving_scorer(argv: Sequence[str] | None = None) -> int:
    """`rlvr reward-server` with `misbehaving_score` in its workers (same flags and RLVR_REWARD_* settings)."""
    import uvicorn

    from reward_server.app import create_app
    from reward_server.server import settings_from_args
    from tests import stub_scorers  # by its import name: run as __main__, workers could not import our functions

    settings = settings_from_args(argv)
    app = create_app(settings, score_fn=stub_scorers.misbehaving_score)
    uvicorn.run(app, host=settings.host, port=settings.port, log_level=settings.log_level, access_log=False)
    return 0


if __name__ == "__main__":
    sys.exit(serve_with_misbehaving_scorer())

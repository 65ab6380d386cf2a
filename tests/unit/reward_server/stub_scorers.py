"""Scorer stand-ins for pool tests: module-level (the workers import them by name), triggered by the response text."""

from __future__ import annotations

import os
import time

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

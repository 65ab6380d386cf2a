"""The one owner of the Redis key namespace (DESIGN.md §3): every key of a run is `rlvr:{run_id}:{name}`.

Queues, the controller's run state and test cleanup all take their keys from here, so a run's keys can be listed
(`run_pattern`) and deleted together without touching another run's.
"""

from __future__ import annotations

import re

from services.core.wire import RUN_ID_PATTERN

KEY_PREFIX = "rlvr"

PROMPTS_STREAM = "prompts"
ROLLOUTS_STREAM = "rollouts"
DEAD_STREAM = "dead"
STATE_HASH = "state"
STEPS_HASH = "steps"
STEP_DIGESTS_HASH = "step_digests"
CONTROLLER_KEYS = (STATE_HASH, STEPS_HASH, STEP_DIGESTS_HASH)


def run_key(run_id: str, name: str) -> str:
    """`rlvr:{run_id}:{name}`; refuses run ids that could escape the namespace."""
    if not re.fullmatch(RUN_ID_PATTERN, run_id):
        raise ValueError(f"run_id={run_id!r} is invalid: it must match {RUN_ID_PATTERN} (lowercase, digits, _ -).")
    return f"{KEY_PREFIX}:{run_id}:{name}"


def run_pattern(run_id: str) -> str:
    """The SCAN pattern matching every key of the run, and nothing of another run."""
    return run_key(run_id, "*")


def dead_key(run_id: str) -> str:
    """The run's dead-letter stream, shared by all its queues (each letter names its source stream)."""
    return run_key(run_id, DEAD_STREAM)


def controller_keys(run_id: str) -> list[str]:
    """Every key the controller writes for a run: the state hash, accepted steps and their digests."""
    return [run_key(run_id, name) for name in CONTROLLER_KEYS]

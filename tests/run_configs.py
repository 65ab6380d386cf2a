"""RunConfig builders for tests: a valid run with a replay backend (validation does not open the data file)."""

from __future__ import annotations

from typing import Any

from services.core.config import RunConfig

REPLAY_PATH = "/nonexistent/replay.jsonl"  # validation only makes paths absolute; nothing here reads it
LINEAR_SCHEDULE: dict[str, Any] = {"mode": "linear", "initial_magnitude": 0.99, "min_ratio": 0.0, "max_ratio": 0.8}


def run_config(
    run_id: str, total_steps: int = 10, *, schedule: dict[str, Any] | None = None, **sections: Any
) -> RunConfig:
    """A linear 0.99, 0 -> 0.8 run of `total_steps` unless `schedule` says otherwise; extra sections override."""
    data: dict[str, Any] = {
        "run_id": run_id,
        "total_steps": total_steps,
        "schedule": {**LINEAR_SCHEDULE, **(schedule or {})},
        "rollout": {"backend": {"type": "replay", "path": REPLAY_PATH}},
        **sections,
    }
    return RunConfig.model_validate(data)

"""`rlvr run`: preflight, stage the resolved config, bring up the local infrastructure, drive the run, summarise.

Exit codes: 0 the run is complete; 1 it stopped before the last step; 2 bad config or inputs (nothing written);
3 the stored run refuses this config (a changed schedule or settings; nothing written); 130/143 interrupted by
SIGINT/SIGTERM (children stopped; run the same command again to resume).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from services.core.config import ConfigError, RunConfig
from services.core.redis_conn import redact_url
from services.core.result_stream import say
from services.process import ServiceExitedError
from services.rollout.build import build_rollout
from services.run.driver import drive
from services.run.infra import local_infrastructure
from services.run.preflight import preflight
from services.run.run_dir import RunDirectory
from services.run.scrape import scrape
from services.run.world import ensure_world, world_summary

EXIT_COMPLETE, EXIT_INCOMPLETE, EXIT_CONFLICT = 0, 1, 3
CONTROLLER_REFUSED = 3  # `rlvr controller` exit status for a refused run (services/controller/server.py)


class RunConflictError(RuntimeError):
    """The run already exists with another schedule or other settings."""


def run_main_job(
    config: RunConfig, *, out_dir: Path | None, redis_url: str | None, force_schedule: bool = False
) -> int:
    preflight(config)
    world = ensure_world(config.world) if config.world is not None else None  # built on first use, then reused
    try:
        setup = build_rollout(config, world.path if world is not None else None, with_backend=not config.ray.enabled)
    except (ValueError, FileNotFoundError) as exc:
        raise ConfigError(f"rollout.backend ({config.rollout.backend.type}): {exc}") from None
    run_dir = RunDirectory(out_dir or Path("runs") / config.run_id)
    staged = run_dir.stage_config(config)
    try:
        with local_infrastructure(
            config, config_file=staged, redis_url=redis_url, run_path=run_dir.path, force_schedule=force_schedule
        ) as ends:
            run_dir.commit_config(config)  # the stored run accepted it
            say(
                f"rlvr run {config.run_id}: redis {redact_url(ends.redis_url)}, controller {ends.controller_url}, "
                f"reward server {ends.reward_url}, output {run_dir.path}"
            )
            world_path = world.path if world is not None else None
            result = drive(config, ends, run_dir, setup, emit=_print_row, world_path=world_path)
            summary: dict[str, Any] = {
                "run_id": config.run_id,
                "first_step": result.first_step,
                "steps_run": result.steps_run,
                "complete": result.complete,
                "accounting": result.accounting,
                "checkpoints": [
                    str(run_dir.path / "checkpoints" / "_actor" / f"global_step{step}") for step in result.checkpoints
                ],
                "world": world_summary(world) if world is not None else None,
                "controller": scrape(ends.controller_url, "rlvr_controller_"),
                "reward_server": scrape(ends.reward_url, "rlvr_reward_"),
                "rollout": result.rollout_metrics,
            }
    except ServiceExitedError as exc:
        run_dir.discard_staged()
        if exc.name == "controller" and exc.returncode == CONTROLLER_REFUSED:
            raise RunConflictError(exc.reason.removeprefix("rlvr controller: error: ")) from None
        raise
    run_dir.write_summary(summary)
    say(json.dumps({k: v for k, v in summary.items() if k not in ("controller", "reward_server", "rollout")}))
    return EXIT_COMPLETE if result.complete else EXIT_INCOMPLETE


def _print_row(row: dict[str, Any]) -> None:
    say(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}))

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
from services.run.driver import DriveResult, drive
from services.run.final_eval import evaluate_run, held_out_data
from services.run.infra import EndpointsError, given_infrastructure, local_infrastructure
from services.run.preflight import preflight
from services.run.report import RunReport
from services.run.run_dir import RunDirectory
from services.run.scrape import scrape
from services.run.world import ensure_world, world_summary

EXIT_COMPLETE, EXIT_INCOMPLETE, EXIT_CONFLICT = 0, 1, 3
CONTROLLER_REFUSED = 3  # `rlvr controller` exit status for a refused run (services/controller/server.py)


class RunConflictError(RuntimeError):
    """The run already exists with another schedule or other settings."""


def run_main_job(
    config: RunConfig, *, out_dir: Path | None, redis_url: str | None, force_schedule: bool = False,
    controller_url: str | None = None, reward_url: str | None = None,
) -> int:  # fmt: skip
    """With `controller_url` and `reward_url` (and a Redis URL) the run uses those services instead of starting its
    own (the Kubernetes entry point); otherwise it starts them locally."""
    if (controller_url is None) != (reward_url is None):
        raise ConfigError("--controller-url and --reward-url go together: give both, or neither to start them locally")
    preflight(config)
    world = ensure_world(config.world) if config.world is not None else None  # built on first use, then reused
    try:
        setup = build_rollout(config, world.path if world is not None else None, with_backend=not config.ray.enabled)
    except (ValueError, FileNotFoundError) as exc:
        raise ConfigError(f"rollout.backend ({config.rollout.backend.type}): {exc}") from None
    run_dir = RunDirectory(out_dir or Path("runs") / config.run_id)
    staged = run_dir.stage_config(config)
    try:
        infrastructure = (
            given_infrastructure(config, redis_url=redis_url, controller_url=controller_url, reward_url=reward_url)
            if controller_url is not None and reward_url is not None
            else local_infrastructure(
                config, config_file=staged, redis_url=redis_url, run_path=run_dir.path, force_schedule=force_schedule
            )
        )
        with infrastructure as ends:
            run_dir.commit_config(config)  # the stored run accepted it
            say(
                f"rlvr run {config.run_id}: redis {redact_url(ends.redis_url)}, controller {ends.controller_url}, "
                f"reward server {ends.reward_url}, output {run_dir.path}"
            )
            world_path = world.path if world is not None else None
            samples = config.rollout.prompts_per_step * config.rollout.samples_per_prompt
            report = RunReport(
                run_dir.path, config.build_schedule(), samples_per_step=samples, earlier=run_dir.read_steps()
            )
            try:
                result = drive(config, ends, run_dir, setup, emit=lambda row: _emit(report, row), world_path=world_path)
            finally:
                report.close()
            held_out = final_evaluation(config, result, setup.model_dir, world_path, ends.reward_url, run_dir)
            summary: dict[str, Any] = {
                "run_id": config.run_id,
                "first_step": result.first_step,
                "steps_run": result.steps_run,
                "complete": result.complete,
                "accounting": {**result.accounting, "service_restarts": ends.service_restarts()},
                "checkpoints": [
                    str(run_dir.path / "checkpoints" / "_actor" / f"global_step{step}") for step in result.checkpoints
                ],
                "world": world_summary(world) if world is not None else None,
                "held_out": held_out,
                "controller": scrape(ends.controller_url, "rlvr_controller_"),
                "reward_server": scrape(ends.reward_url, "rlvr_reward_"),
                "rollout": result.rollout_metrics,
            }
    except EndpointsError as exc:
        run_dir.discard_staged()
        raise ConfigError(str(exc)) from None
    except ServiceExitedError as exc:
        run_dir.discard_staged()
        if exc.name == "controller" and exc.returncode == CONTROLLER_REFUSED:
            raise RunConflictError(exc.reason.removeprefix("rlvr controller: error: ")) from None
        raise
    run_dir.write_summary(summary)
    say(json.dumps({k: v for k, v in summary.items() if k not in ("controller", "reward_server", "rollout")}))
    return EXIT_COMPLETE if result.complete else EXIT_INCOMPLETE


def final_evaluation(
    config: RunConfig, result: DriveResult, warm_start: Path | None, world_path: Path | None, reward_url: str,
    run_dir: RunDirectory,
) -> dict[str, Any] | None:  # fmt: skip
    """The last checkpoint's held-out accuracy against the warm start's, once the run is complete (None when there is
    nothing to evaluate: evaluation off, no policy, no held-out set, or no final model export)."""
    data = held_out_data(config, world_path)
    if not (config.evaluation.enabled and result.complete and warm_start is not None and data is not None):
        return None
    final = run_dir.path / "checkpoints" / "_actor" / f"global_step{config.total_steps}" / "hf"
    if not final.is_dir():
        return None
    return evaluate_run(
        config, warm_start=warm_start, final=final, data=data, reward_url=reward_url, out_dir=run_dir.path / "eval"
    )


def _emit(report: RunReport, row: dict[str, Any]) -> None:
    report.add(row)
    say(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}))

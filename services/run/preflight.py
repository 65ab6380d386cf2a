"""What can be known before a run starts is checked before it starts (also by `rlvr run --dry-run`).

The config schema already refused impossible combinations; here the run's inputs are opened: the data files and
the model directory must exist and hold what the config asks for, and the launcher's environment must not
contradict the config.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from services.core.config import ConfigError, RunConfig
from services.rollout.build import load_replay
from services.rollout.feeder import load_prompt_rows


def check_rollout_inputs(config: RunConfig) -> None:
    """Open the rollout's data and model as far as they exist before the world is prepared (a world the run builds
    itself is checked by building it)."""
    backend = config.rollout.backend
    try:
        if backend.type == "replay":
            load_replay(config)
            return
        if backend.model is not None and not (Path(backend.model) / "config.json").is_file():
            raise ValueError(f"model {backend.model} is not a Hugging Face model directory (no config.json)")
        if backend.prompts is not None:
            load_prompt_rows(
                backend.prompts, input_key=backend.input_key, label_key=backend.label_key,
                data_source_key=backend.data_source_key,
            )  # fmt: skip
    except ValueError as exc:
        raise ConfigError(f"rollout.backend ({backend.type}): {exc}") from None


def check_local_trainer(config: RunConfig) -> None:
    """Without Ray the run trains on one rank in its own process; more data-parallel ranks need `ray.enabled`."""
    engine = config.trainer.engine
    if config.rollout.backend.type != "replay" and engine.world_size != 1 and not config.ray.enabled:
        raise ConfigError(
            f"trainer.engine.world_size={engine.world_size}: without Ray, `rlvr run` trains on one rank in its own "
            "process; set trainer.engine.world_size=1, or ray.enabled=true (data-parallel ranks as TrainerWorker "
            "actors on Ray)"
        )


def check_environment(config: RunConfig, environ: Mapping[str, str] | None = None) -> None:
    """Refuse `RLVR_REWARD_*` variables that would contradict the run config's `reward` section."""
    env = os.environ if environ is None else environ
    conflicts = []
    for name, value in config.reward.server_env().items():
        given = env.get(name)
        if given is not None and not _same_number(given, value):
            conflicts.append(f"{name}={given} (the run config says {value})")
    if conflicts:
        raise ConfigError(
            "the environment contradicts the run config: "
            + "; ".join(conflicts)
            + ". The run's reward server takes its settings from the run config's [reward] section: unset the "
            "variable, or set the value with --set reward.<field>=..."
        )


def _same_number(given: str, value: str) -> bool:
    try:
        return float(given) == float(value)
    except ValueError:
        return False


def preflight(config: RunConfig) -> None:
    """Every check that needs no running service and no prepared world."""
    check_environment(config)
    check_rollout_inputs(config)
    check_local_trainer(config)

"""What can be known before a run starts is checked before it starts (also by `rlvr run --dry-run`).

The config schema already refused impossible combinations; here the run's inputs are opened: the data file must
exist and hold what the config asks for, and the launcher's environment must not contradict the config.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from services.core.config import ConfigError, RunConfig
from services.rollout.backends.replay import ReplayBackend, load_recorded_gsm8k


def load_backend(config: RunConfig) -> ReplayBackend:
    """The configured generation backend with its data loaded and checked against the config."""
    backend_config = config.rollout.backend
    try:
        backend = ReplayBackend(load_recorded_gsm8k(backend_config.path))
        backend.check_samples(config.rollout.samples_per_prompt)
    except ValueError as exc:
        raise ConfigError(f"rollout.backend ({backend_config.type}): {exc}") from None
    return backend


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


def preflight(config: RunConfig) -> ReplayBackend:
    """Every check that needs no running service; returns the loaded backend."""
    check_environment(config)
    return load_backend(config)

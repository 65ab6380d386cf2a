"""Deployment settings of the controller (env prefix `RLVR_CONTROLLER_`; `REDIS_URL` is honoured too).

The experiment itself (run id, total steps, schedule) comes from the run config file, not from here.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_PORT = 8100


class ControllerSettings(BaseSettings):
    """Where the controller listens, which Redis holds the run state, which run config it serves."""

    model_config = SettingsConfigDict(env_prefix="RLVR_CONTROLLER_", extra="forbid", populate_by_name=True)

    host: str = Field(default="127.0.0.1", description="Interface uvicorn binds to (0.0.0.0 in containers).")
    port: int = Field(default=DEFAULT_PORT, ge=1, le=65535, description="TCP port of the HTTP API.")
    redis_url: str | None = Field(
        default=None,
        validation_alias=AliasChoices("RLVR_CONTROLLER_REDIS_URL", "REDIS_URL"),
        description="Redis holding the run state (redis://, rediss://, unix://). None: an embedded server.",
    )
    embedded_redis_dir: Path | None = Field(
        default=None,
        description="Data dir of the embedded Redis when no URL is given; set it to keep the state across restarts "
        "(append-only file). None: a temp dir, so the state dies with the process.",
    )
    redis_socket_timeout_s: float = Field(default=5.0, gt=0, description="Per-command Redis timeout.")
    run_config_path: Path | None = Field(
        default=None, description="TOML run config (e.g. deploy/presets/tiny-cpu.toml) whose schedule is served."
    )
    run_config_overrides: list[str] = Field(
        default_factory=list, description="`key.path=value` overrides applied to the run config file."
    )
    force_schedule: bool = Field(
        default=False,
        description="Overwrite a run's stored schedule when it differs from the configured one (recorded in Redis). "
        "Without it the controller refuses to start.",
    )
    token: SecretStr | None = Field(
        default=None, description="Bearer token required by mutating endpoints; None: no authentication."
    )
    log_level: str = Field(default="info", description="uvicorn log level.")

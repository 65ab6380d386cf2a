"""Deployment settings of the reward server, read from `RLVR_REWARD_*` environment variables.

Precedence: field defaults < environment < explicit constructor arguments (the CLI passes its flags that way).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from reward_server.scorers import Kind


class RewardSettings(BaseSettings):
    """Where the server listens, how many scorer processes it runs, and the limits it enforces."""

    model_config = SettingsConfigDict(env_prefix="RLVR_REWARD_", extra="forbid", frozen=True)

    host: str = Field(default="127.0.0.1", description="Interface to bind; 0.0.0.0 inside a container.")
    port: int = Field(default=8200, ge=1, le=65535, description="TCP port to listen on.")
    workers: int = Field(default=2, ge=1, le=64, description="Scorer worker processes (one item at a time each).")
    item_timeout_s: float = Field(
        default=5.0, gt=0, le=600, description="Hard wall-clock limit for scoring one item; the worker is then killed."
    )
    request_timeout_s: float = Field(
        default=120.0,
        gt=0,
        le=3600,
        description="Every item of a request is answered within this time; items not finished by then get `timeout`.",
    )
    worker_start_timeout_s: float = Field(
        default=60.0, gt=0, description="How long a fresh worker may take to import the scorers and report ready."
    )
    worker_memory_mb: int = Field(
        default=2048, ge=0, description="Address-space cap per worker process (RLIMIT_AS), MiB; 0 = no cap."
    )
    start_method: Literal["forkserver", "spawn"] = Field(
        default="forkserver",
        description="How workers are started: forkserver (fast respawn, scorers preloaded) or spawn.",
    )
    max_items: int = Field(default=1024, ge=1, description="Most items in one request; more answers 413.")
    max_text_chars: int = Field(
        default=262_144, ge=1, description="Longest response / ground_truth / prompt / query; longer answers 413."
    )
    max_body_bytes: int = Field(default=32 * 2**20, ge=1024, description="Largest request body; larger answers 413.")
    max_queued_items: int = Field(
        default=20_000, ge=1, description="Items waiting for a worker beyond which new requests get 503 (overload)."
    )
    api_token: SecretStr | None = Field(
        default=None, description="If set, scoring routes require `Authorization: Bearer <token>`."
    )
    openrlhf_kind: Kind = Field(default="math", description="Scorer used for OpenRLHF `/get_reward` requests.")
    log_level: Literal["critical", "error", "warning", "info", "debug"] = Field(
        default="info", description="uvicorn log level."
    )

    @model_validator(mode="after")
    def _timeouts_consistent(self) -> RewardSettings:
        if self.request_timeout_s < self.item_timeout_s:
            raise ValueError(
                f"request_timeout_s={self.request_timeout_s} is shorter than item_timeout_s={self.item_timeout_s}: "
                "no item could use its full budget; raise RLVR_REWARD_REQUEST_TIMEOUT_S or lower the item timeout"
            )
        return self

"""The run's experiment config: one schema, loaded from a TOML preset with CLI overrides, validated loudly.

Precedence: field defaults < TOML preset < `--set key.path=value` overrides.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from services.core.schedule import Schedule, ScheduleConfig
from services.core.wire import RUN_ID_PATTERN

CreditStrategy = Literal["none", "tp", "forking", "entropy_adv"]


class RolloutConfig(BaseModel):
    """How each training step's samples are produced."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    backend: Literal["replay"] = Field(
        default="replay",
        description="Generation backend. `replay` replays recorded model outputs (GSM8K model solutions with "
        "human correctness labels) instead of sampling a policy; the vLLM/HF backends come with the rollout workers.",
    )
    prompts_per_step: int = Field(default=4, ge=1, description="Prompt groups per training step.")
    samples_per_prompt: int = Field(default=4, ge=1, description="Samples per prompt (the GRPO group size n).")
    replay_path: str = Field(
        default="../shared/data/bench/gsm8k_example_model_solutions.jsonl",
        description="Recorded outputs for the replay backend (relative paths are from the working directory).",
    )


class RunConfig(BaseModel):
    """One training run: its identity, its length, and its schedule (SPEC §2–§3)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    run_id: str = Field(pattern=RUN_ID_PATTERN, description="Namespace of every Redis key of the run.")
    total_steps: int = Field(ge=1, description="Optimizer steps of the whole run (T in SPEC §2).")
    strategy: CreditStrategy = Field(default="tp", description="Credit-allocation strategy the schedule drives.")
    schedule: ScheduleConfig = Field(description="The schedule curve r(s).")
    rollout: RolloutConfig = Field(default_factory=RolloutConfig, description="Sample generation per step.")

    @model_validator(mode="after")
    def _schedule_resolves(self) -> RunConfig:
        Schedule(self.schedule, self.total_steps)  # raises with the reason if the steps do not resolve
        return self

    def build_schedule(self) -> Schedule:
        return Schedule(self.schedule, self.total_steps)


def parse_override(text: str) -> tuple[list[str], Any]:
    """`a.b=value` -> (["a", "b"], value); the value is read as a TOML literal, else kept as a bare string."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ValueError(f"override {text!r} must look like key.path=value (e.g. schedule.max_ratio=0.5)")
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return [part.strip() for part in key.split(".")], value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """A copy of `data` with each `key.path=value` override set (intermediate tables are created)."""
    merged: dict[str, Any] = {k: (dict(v) if isinstance(v, dict) else v) for k, v in data.items()}
    for text in overrides:
        path, value = parse_override(text)
        node = merged
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ValueError(f"override {text!r}: {part!r} is a value, not a table")
            node[part] = child = dict(child)
            node = child
        node[path[-1]] = value
    return merged


def load_run_config(path: str | Path | None, overrides: list[str] | None = None) -> RunConfig:
    """Read a TOML preset (or nothing), apply overrides, validate. Errors name the file and the bad field."""
    data: dict[str, Any] = {}
    if path is not None:
        try:
            data = tomllib.loads(Path(path).read_text())
        except FileNotFoundError as exc:
            raise ValueError(f"run config file {path} does not exist") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ValueError(f"run config file {path} is not valid TOML: {exc}") from exc
    return RunConfig.model_validate(apply_overrides(data, overrides or []))

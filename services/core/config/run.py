"""The root of the run config: the run's identity and length, its schedule, and one section per component.

Cross-component checks live here (a strategy that needs something another component must provide, a step's
batch that the stream bound cannot hold). The resolved config is written once per run (`runs/<id>/config.json`)
and every child process loads that file; its fingerprint is stored with the run so a resume with other settings
is refused (services/controller/state.py).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from services.core.config.credit import ENTROPY_STRATEGIES, CreditConfig
from services.core.config.evaluation import EvaluationConfig
from services.core.config.queues import QueueSettings
from services.core.config.ray import RayConfig
from services.core.config.reward import RewardConfig
from services.core.config.rollout import RolloutConfig
from services.core.config.trainer import TrainerConfig
from services.core.config.world import WorldConfig
from services.core.schedule import MAX_TOTAL_STEPS, Schedule, ScheduleConfig
from services.core.wire import RUN_ID_PATTERN

OPERATIONAL_FIELDS: dict[str, Any] = {
    "reward": {"workers"},
    "rollout": {"workers", "worker_cpus", "worker_gpus"},
    "trainer": {"checkpoint"},
    "ray": True,
    "evaluation": True,
}
"""Settings that may change when a run resumes (they change speed, not what is trained): not fingerprinted."""


class RunConfig(BaseModel):
    """One training run: identity, length, schedule (SPEC §2), credit strategy (§3) and every component's settings."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    run_id: str = Field(pattern=RUN_ID_PATTERN, description="Namespace of every Redis key of the run.")
    total_steps: int = Field(
        ge=1, le=MAX_TOTAL_STEPS, description=f"Optimizer steps of the whole run (T in SPEC §2), 1..{MAX_TOTAL_STEPS}."
    )
    schedule: ScheduleConfig = Field(description="The schedule curve r(s).")
    credit: CreditConfig = Field(default_factory=CreditConfig, description="The strategy r drives, and its constants.")
    rollout: RolloutConfig = Field(description="Sample generation per step.")
    trainer: TrainerConfig = Field(default_factory=TrainerConfig, description="Advantages and the policy loss.")
    reward: RewardConfig = Field(default_factory=RewardConfig, description="The run's reward server.")
    queues: QueueSettings = Field(default_factory=QueueSettings, description="Bounds of the run's Redis streams.")
    evaluation: EvaluationConfig = Field(
        default_factory=EvaluationConfig, description="Held-out accuracy at the end of the run (operational)."
    )
    ray: RayConfig = Field(default_factory=RayConfig, description="Rollout and trainer as Ray actors (operational).")
    world: WorldConfig | None = Field(
        default=None,
        description="The tiny world (synthetic task, tokenizer, warm-started policy): `rlvr run` builds it on first "
        "use and reuses it after (`rlvr prepare` builds it alone). Absent: the run needs no world.",
    )

    @model_validator(mode="after")
    def _components_fit_together(self) -> RunConfig:
        Schedule(self.schedule, self.total_steps)  # raises with the reason if the steps do not resolve
        strategy, backend = self.credit.strategy, self.rollout.backend.type
        if strategy in ENTROPY_STRATEGIES and backend == "replay":
            raise ValueError(
                f"credit.strategy={strategy!r} needs per-token entropies from a forward pass of the policy, and the "
                "replay backend has no policy: use strategy 'tp' or 'none' with replay"
            )
        if self.ray.enabled and backend == "replay":
            raise ValueError(
                "ray.enabled needs a policy backend (hf or vllm): the replay backend runs in the driver's process only"
            )
        if backend in ("hf", "vllm") and self.world is None:
            policy = self.rollout.backend
            missing = [name for name in ("model", "prompts") if getattr(policy, name) is None]
            if missing:
                raise ValueError(
                    f"rollout.backend ({backend}) has no {' or '.join(missing)} and the run has no [world] section "
                    "to take it from: set rollout.backend." + " and rollout.backend.".join(missing) + ", or add [world]"
                )
        if self.rollout.prompts_per_step > self.queues.max_len:
            raise ValueError(
                f"rollout.prompts_per_step={self.rollout.prompts_per_step} exceeds queues.max_len="
                f"{self.queues.max_len}: one step's prompt groups could never all be in the stream at once; "
                "raise queues.max_len or lower prompts_per_step"
            )
        engine = self.trainer.engine
        samples = self.rollout.prompts_per_step * self.rollout.samples_per_prompt
        if samples % (engine.world_size * engine.micro_batch_size):
            raise ValueError(
                f"a step's {samples} samples (prompts_per_step x samples_per_prompt) do not split into micro-batches "
                f"of {engine.micro_batch_size} on {engine.world_size} rank(s): make the step's samples a multiple of "
                "trainer.engine.world_size x trainer.engine.micro_batch_size"
            )
        return self

    def build_schedule(self) -> Schedule:
        return Schedule(self.schedule, self.total_steps)

    def fingerprint(self) -> str:
        """sha256 of what defines the experiment (everything but OPERATIONAL_FIELDS), canonical JSON."""
        return hashlib.sha256(canonical_json(self.fingerprinted()).encode()).hexdigest()

    def fingerprinted(self) -> dict[str, Any]:
        """The fingerprinted part of the config as plain JSON data."""
        data: dict[str, Any] = self.model_dump(mode="json", exclude=OPERATIONAL_FIELDS)
        return data


def canonical_json(data: Any) -> str:
    return json.dumps(data, sort_keys=True, separators=(",", ":"))


def config_differences(stored: dict[str, Any], configured: dict[str, Any]) -> list[str]:
    """`key.path: stored -> configured` for every leaf that differs between two config dumps."""
    flat_a, flat_b = _flatten(stored), _flatten(configured)
    return [
        f"{key}: {flat_a.get(key, '(absent)')!r} -> {flat_b.get(key, '(absent)')!r}"
        for key in sorted(flat_a.keys() | flat_b.keys())
        if flat_a.get(key, _MISSING) != flat_b.get(key, _MISSING)
    ]


_MISSING = object()


def _flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(data, dict):
        return {prefix: data}
    out: dict[str, Any] = {}
    for key, value in data.items():
        out.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return out

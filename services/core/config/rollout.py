"""The rollout section of the run config: how each step's samples are produced.

The generation backend is a discriminated union keyed by `type`, each variant carrying only its own fields
(`replay` today; `hf` and `vllm` come with the rollout workers).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from services.core.config.paths import DataPath


class ReplayBackendConfig(BaseModel):
    """Replays recorded model outputs (GSM8K model solutions with human correctness labels) instead of sampling a
    policy: the pipeline runs on real model text before a policy exists. No policy means no log-probs or entropies.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    type: Literal["replay"] = Field(description="Backend discriminator.")
    path: DataPath = Field(
        description="The recorded-solutions JSONL (../shared/data/bench/gsm8k_example_model_solutions.jsonl). "
        "A relative path in a config file is relative to that file's folder; on the command line, to the working "
        "directory. The resolved config stores it absolute."
    )


RolloutBackendConfig = Annotated[ReplayBackendConfig, Field(discriminator="type")]


class RolloutConfig(BaseModel):
    """How many prompt groups each training step consumes, how many samples each, and from which backend."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    backend: RolloutBackendConfig = Field(description="Generation backend, chosen by its `type`.")
    prompts_per_step: int = Field(default=4, ge=1, le=4096, description="Prompt groups per training step.")
    samples_per_prompt: int = Field(default=4, ge=1, le=256, description="Samples per prompt (the GRPO group size n).")

"""The `[evaluation]` section: the held-out accuracy `rlvr run` reports at the end (last checkpoint vs warm start).

It samples like the run (its temperature, top-p and token limit), `k` answers for each of the first `prompts` rows
of the held-out set, graded by the run's reward server. Operational: it changes what is reported, not what is
trained, so a run may resume with other settings here.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class EvaluationConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    enabled: bool = Field(default=True, description="Evaluate the last checkpoint and the warm start at the end.")
    data: str | None = Field(
        default=None,
        min_length=1,
        description="Held-out jsonl prompt set (the rollout backend's keys); unset: the world's test split (no world "
        "and no data: nothing is evaluated).",
    )
    prompts: int = Field(default=200, ge=1, le=100_000, description="Evaluate the first N rows of the held-out set.")
    k: int = Field(default=4, ge=1, le=256, description="Answers sampled per prompt (the report's avg@k).")
    seed: int = Field(default=0, ge=0, le=2**31 - 1, description="Sampling seed, the same for both models.")

"""Wire types: what crosses process boundaries (Redis streams, HTTP). Frozen, versioned, lossless.

Every message carries `schema_version`; a reader refuses versions it does not know (DESIGN.md §3).
"""

from __future__ import annotations

import math
import time
from typing import Annotated, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from services.core.schedule import Phase

SCHEMA_VERSION: Literal[1] = 1
RUN_ID_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,62}$"
TOKEN_ID_LIMIT = 2**31  # token ids travel as int32 on Redis (wire_codec.py); every real vocabulary fits
RewardStatus = Literal["ok", "timeout", "error", "invalid"]
FinishReason = Literal["stop", "length"]
TokenId = Annotated[int, Field(ge=0, lt=TOKEN_ID_LIMIT)]
FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]
Seconds = Annotated[float, Field(ge=0.0, allow_inf_nan=False)]
PackKind = Literal["int32", "int32_ragged", "float64_ragged"]
MessageId = Annotated[str, Field(min_length=1, max_length=256, pattern=r"^\S+$")]
MAX_REPORT_METRICS = 512  # a step report is a summary, not a dump: a few dozen scalars in practice
MAX_METRIC_NAME_CHARS = 128
MAX_GENERATION_PHASES = 4096
MetricName = Annotated[str, Field(min_length=1, max_length=MAX_METRIC_NAME_CHARS)]


class WireModel(BaseModel):
    """Base of every wire type: frozen, no unknown fields, explicit schema version."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    schema_version: Literal[1] = Field(default=SCHEMA_VERSION, description="Wire format version of this message.")

    packed_fields: ClassVar[dict[str, PackKind]] = {}
    """Token-heavy list fields that travel as raw little-endian arrays on Redis (see wire_codec.py)."""

    @property
    def message_id(self) -> str:
        """The application-level id consumers deduplicate on (stable across redeliveries and re-publishing)."""
        raise NotImplementedError(f"{type(self).__name__} does not define a message_id")


class StepReport(WireModel):
    """The trainer's report of one finished optimizer step (POST /v1/steps)."""

    run_id: str = Field(pattern=RUN_ID_PATTERN, description="Run this step belongs to.")
    step: int = Field(ge=1, description="1-based optimizer step that finished.")
    policy_version: int = Field(ge=0, description="Policy version after this step's update.")
    phase: Phase = Field(description="The schedule phase the trainer applied at this step (SPEC §2).")
    generation_phases: list[Phase] = Field(
        default_factory=list,
        max_length=MAX_GENERATION_PHASES,
        description="The distinct phases the step's rollouts were stamped with at generation, by step; their distance "
        "to `phase` measures staleness.",
    )
    metrics: dict[MetricName, float | None] = Field(
        default_factory=dict,
        max_length=MAX_REPORT_METRICS,
        description=f"Training scalars (`train/...`), at most {MAX_REPORT_METRICS}; None where undefined.",
    )
    created_at: float = Field(default_factory=time.time, description="Unix time the report was made.")

    @property
    def message_id(self) -> str:
        return f"{self.run_id}:{self.step}"

    @field_validator("metrics")
    @classmethod
    def _finite_metrics(cls, metrics: dict[str, float | None]) -> dict[str, float | None]:
        bad = {k: v for k, v in metrics.items() if v is not None and not math.isfinite(v)}
        if bad:
            raise ValueError(f"metrics must be finite numbers or null; got {bad}. Report undefined values as null.")
        return metrics


class PromptGroup(WireModel):
    """One prompt to be sampled `n` times (the feeder's message on the `prompts` stream).

    `group_id` is the idempotency key of the whole pipeline: a redelivered prompt produces a `ScoredGroup` with the
    same `group_id`, which is how the trainer drops duplicates.
    """

    packed_fields: ClassVar[dict[str, PackKind]] = {"prompt_token_ids": "int32"}

    group_id: MessageId = Field(description="Unique id of this prompt group within the run (no whitespace).")
    step: int = Field(ge=1, description="The training step whose batch this group belongs to (the data contract).")
    prompt: str = Field(description="The prompt text (chat template not yet applied unless the data set did).")
    label: str = Field(description="Ground truth the reward server checks responses against.")
    data_source: str = Field(min_length=1, description="Data set / scorer kind, e.g. 'gsm8k', 'math'.")
    n: int = Field(ge=1, description="Samples to generate for this prompt (the GRPO group size).")
    prompt_token_ids: list[TokenId] | None = Field(
        default=None, description="Pre-tokenized prompt; None lets the rollout worker tokenize `prompt`."
    )
    created_at: float = Field(default_factory=time.time, description="Unix time the feeder made the message.")

    @property
    def message_id(self) -> str:
        return self.group_id


class ScoredGroup(WireModel):
    """The `n` sampled and scored responses of one prompt (a rollout worker's message on the `rollouts` stream).

    Per-sample lists are parallel: index i of `response_token_ids`, `logprobs`, `rewards` and `reward_status` is
    sample i. Logprobs are the engine's per-token log-probabilities as float64 (lossless for float32 engines too).
    """

    packed_fields: ClassVar[dict[str, PackKind]] = {
        "prompt_token_ids": "int32",
        "response_token_ids": "int32_ragged",
        "logprobs": "float64_ragged",
    }

    group_id: MessageId = Field(description="The `PromptGroup.group_id` these samples answer (dedup key).")
    step: int = Field(ge=1, description="`PromptGroup.step`: the training step whose batch this group belongs to.")
    data_source: str = Field(min_length=1, description="Data set / scorer kind of the prompt.")
    prompt_token_ids: list[TokenId] = Field(description="Token ids of the prompt as the engine saw it.")
    response_token_ids: list[list[TokenId]] = Field(description="Per sample: the generated token ids.")
    logprobs: list[list[FiniteFloat]] | None = Field(
        default=None, description="Per sample, per token: the engine's log-probability; None if not returned."
    )
    finish_reasons: list[FinishReason] | None = Field(
        default=None,
        description="Per sample: why generation ended, `stop` (EOS or a stop string) or `length` (the token limit); "
        "None when the backend has no engine (replay).",
    )
    rewards: list[FiniteFloat] = Field(description="Per sample: the reward (finite; failed scoring gives 0 + status).")
    reward_status: list[RewardStatus] = Field(description="Per sample: how scoring went (ok|timeout|error|invalid).")
    policy_version: int = Field(ge=0, description="Version of the weights that generated the samples.")
    phase: Phase = Field(description="The controller's schedule phase when the group was generated.")
    timings: dict[str, Seconds] = Field(
        default_factory=dict, description="Wall-clock seconds per stage, e.g. generate_s, score_s."
    )
    created_at: float = Field(default_factory=time.time, description="Unix time the rollout worker finished.")

    @property
    def message_id(self) -> str:
        return self.group_id

    @property
    def n(self) -> int:
        return len(self.response_token_ids)

    @model_validator(mode="after")
    def _parallel_lists(self) -> ScoredGroup:
        n = len(self.response_token_ids)
        if n == 0:
            raise ValueError(f"group {self.group_id!r} has no samples: response_token_ids is empty.")
        lengths = {"rewards": len(self.rewards), "reward_status": len(self.reward_status)}
        if self.logprobs is not None:
            lengths["logprobs"] = len(self.logprobs)
        if self.finish_reasons is not None:
            lengths["finish_reasons"] = len(self.finish_reasons)
        wrong = {name: size for name, size in lengths.items() if size != n}
        if wrong:
            raise ValueError(
                f"group {self.group_id!r}: every per-sample list needs {n} entries (one per response), got {wrong}."
            )
        if self.logprobs is not None:
            for i, (tokens, logprobs) in enumerate(zip(self.response_token_ids, self.logprobs, strict=True)):
                if len(tokens) != len(logprobs):
                    raise ValueError(
                        f"group {self.group_id!r} sample {i}: {len(logprobs)} logprobs for {len(tokens)} tokens; "
                        "the engine must return exactly one logprob per generated token."
                    )
        return self

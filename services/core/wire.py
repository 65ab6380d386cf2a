"""Wire types: what crosses process boundaries (Redis streams, HTTP). Frozen, versioned, lossless.

Every message carries `schema_version`; a reader refuses versions it does not know (DESIGN.md §3).
"""

from __future__ import annotations

import math
import time
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from services.core.schedule import Phase

SCHEMA_VERSION = 1
RUN_ID_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,62}$"


class WireModel(BaseModel):
    """Base of every wire type: frozen, no unknown fields, explicit schema version."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    schema_version: Literal[1] = Field(default=SCHEMA_VERSION, description="Wire format version of this message.")


class StepReport(WireModel):
    """The trainer's report of one finished optimizer step (POST /v1/steps)."""

    run_id: str = Field(pattern=RUN_ID_PATTERN, description="Run this step belongs to.")
    step: int = Field(ge=1, description="1-based optimizer step that finished.")
    policy_version: int = Field(ge=0, description="Policy version after this step's update.")
    phase: Phase = Field(description="The schedule phase the trainer applied at this step.")
    metrics: dict[str, float | None] = Field(
        default_factory=dict, description="Training scalars (`train/...`); None where undefined (e.g. empty bin)."
    )
    created_at: float = Field(default_factory=time.time, description="Unix time the report was made.")

    @field_validator("metrics")
    @classmethod
    def _finite_metrics(cls, metrics: dict[str, float | None]) -> dict[str, float | None]:
        bad = {k: v for k, v in metrics.items() if v is not None and not math.isfinite(v)}
        if bad:
            raise ValueError(f"metrics must be finite numbers or null; got {bad}. Report undefined values as null.")
        return metrics

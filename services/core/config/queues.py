"""The queue section of the run config: bounds and timeouts of the run's Redis streams (DESIGN.md §3)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class QueueSettings(BaseModel):
    """Bounds and timeouts of one stream queue."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_len: int = Field(default=1024, ge=1, description="Most unacked entries (unread + pending) the stream holds.")
    max_deliveries: int = Field(default=5, ge=1, description="Deliveries of one entry before it is dead-lettered.")
    claim_idle_ms: int = Field(
        default=300_000, ge=1, description="Idle time after which a pending entry counts as abandoned (reclaimable)."
    )
    publish_timeout_s: float = Field(
        default=30.0, ge=0.0, description="How long `publish` waits for room before raising QueueFullError."
    )

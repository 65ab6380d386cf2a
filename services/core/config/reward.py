"""The reward section of the run config: how the run's own reward server scores (forwarded to it by the launcher).

These are the settings of the reward server that `rlvr run` starts for the run. A reward server deployed on its
own reads `RLVR_REWARD_*` from its environment instead (reward_server/settings.py).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator


class RewardConfig(BaseModel):
    """Scorer processes and time limits of the run's reward server."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    workers: int = Field(default=2, ge=1, le=64, description="Scorer worker processes (one item at a time each).")
    item_timeout_s: float = Field(
        default=5.0, gt=0, le=600, description="Hard wall-clock limit for scoring one item (the item gets `timeout`)."
    )
    request_timeout_s: float = Field(
        default=120.0, gt=0, le=3600, description="Every item of one scoring request is answered within this time."
    )

    @model_validator(mode="after")
    def _timeouts_consistent(self) -> RewardConfig:
        if self.request_timeout_s < self.item_timeout_s:
            raise ValueError(
                f"reward.request_timeout_s={self.request_timeout_s} is shorter than reward.item_timeout_s="
                f"{self.item_timeout_s}: no item could use its full budget; raise the request timeout"
            )
        return self

    def server_env(self) -> dict[str, str]:
        """The reward server's environment variables that carry these settings (reward_server/settings.py)."""
        return {
            "RLVR_REWARD_WORKERS": str(self.workers),
            "RLVR_REWARD_ITEM_TIMEOUT_S": repr(self.item_timeout_s),
            "RLVR_REWARD_REQUEST_TIMEOUT_S": repr(self.request_timeout_s),
        }

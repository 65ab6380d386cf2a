"""The trainer section of the run config: how advantages are formed and the policy loss is built (SPEC §4)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from services.core.config.policy_loss import PolicyLossConfig


class TrainerConfig(BaseModel):
    """Advantage estimation and the policy loss; the optimizer and engine settings come with the DeepSpeed trainer."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    normalize_advantage_std: bool = Field(
        default=True,
        description="GRPO divides the centred group reward by (group std + 1e-6); false gives Dr. GRPO's R - mean.",
    )
    policy_loss: PolicyLossConfig = Field(
        default_factory=PolicyLossConfig, description="Clipping, aggregation, ratio level (GSPO), KL and entropy."
    )

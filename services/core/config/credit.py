"""The credit-allocation section of the run config (SPEC §3): which strategy the schedule drives, and its constants."""

from __future__ import annotations

from typing import Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, model_validator

CreditStrategy = Literal["none", "tp", "forking", "entropy_adv"]
CREDIT_STRATEGIES: tuple[str, ...] = get_args(CreditStrategy)
ENTROPY_STRATEGIES: frozenset[str] = frozenset({"forking", "entropy_adv"})
"""Strategies that need per-token entropies from a forward pass of the policy (SPEC §3.2, §3.3)."""


class CreditConfig(BaseModel):
    """Which credit-allocation strategy the schedule drives, and its constants (SPEC §3)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    strategy: CreditStrategy = Field(
        default="tp",
        description="none (plain GRPO/GSPO), tp (optimize the last 1 - r of each response), forking (top "
        "ceil(n * (1 - r)) tokens by entropy), entropy_adv (advantage + r * min(alpha * H, |A| / kappa)).",
    )
    entropy_alpha: float = Field(default=0.4, ge=0.0, allow_inf_nan=False, description="alpha of entropy_adv (§3.3).")
    entropy_kappa: float = Field(
        default=2.0,
        gt=0.0,
        allow_inf_nan=False,
        description="kappa of entropy_adv (§3.3): caps the bonus at |A|/kappa.",
    )
    entropy_static_scale: float | None = Field(
        default=None,
        ge=0.0,
        allow_inf_nan=False,
        description="entropy_adv only: a fixed bonus scale used instead of the schedule value r. The static "
        "Entropy-Adv baseline of Table 1 uses 1.0, which the schedule cannot express (it requires m0 < 1).",
    )

    @model_validator(mode="after")
    def _static_scale_only_for_entropy_adv(self) -> CreditConfig:
        if self.entropy_static_scale is not None and self.strategy != "entropy_adv":
            raise ValueError(
                f"entropy_static_scale={self.entropy_static_scale} only applies to strategy 'entropy_adv', "
                f"not {self.strategy!r}: remove it"
            )
        return self

"""The policy-loss section of the run config (SPEC §4): clipping, aggregation, ratio level, KL and entropy terms."""

from __future__ import annotations

import math
from typing import Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, model_validator

Aggregation = Literal["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"]
AGGREGATIONS: tuple[str, ...] = get_args(Aggregation)
RatioLevel = Literal["token", "sequence"]
KLEstimator = Literal["k1", "k3"]
SeqMeanDenominator = Literal["masked_sequences", "all_sequences"]
SEQ_MEAN_DENOMINATORS: tuple[str, ...] = get_args(SeqMeanDenominator)


class PolicyLossConfig(BaseModel):
    """How the clipped policy-gradient loss is formed and aggregated (SPEC §4)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    clip_eps_low: float = Field(default=0.2, description="Lower clip: ratio >= 1 - eps_low for A < 0; in [0, 1).")
    clip_eps_high: float = Field(default=0.28, description="Upper clip (clip-higher): ratio <= 1 + eps_high for A > 0.")
    dual_clip_c: float | None = Field(
        default=3.0,
        description="Dual clip for A < 0: ratio capped at c (> 1); None disables it. Under GSPO it caps the "
        "sequence ratio (verl's GSPO has no dual clip: set None for parity).",
    )
    aggregation: Aggregation = Field(
        default="token-mean",
        description="token-mean (sum over masked tokens / masked tokens of the whole mini-batch), "
        "seq-mean-token-mean (mean over sequences of the per-sequence token mean; GSPO), "
        "seq-mean-token-sum-norm (Dr. GRPO: per-sequence token sum / norm_length, mean over sequences).",
    )
    ratio_level: RatioLevel = Field(
        default="token",
        description="token (PPO/GRPO) or sequence (GSPO: ratio = exp(mean masked log-ratio), clipped per sequence; "
        "requires aggregation seq-mean-token-mean).",
    )
    seq_mean_denominator: SeqMeanDenominator = Field(
        default="masked_sequences",
        description="seq-mean-token-mean only: the sequences the mean runs over. masked_sequences (sequences with "
        "at least one masked token, as OpenRLHF) or all_sequences (every sequence, as verl; a sequence with no "
        "masked token then counts as a 0 term).",
    )
    norm_length: int | None = Field(
        default=None, description="Constant divisor of seq-mean-token-sum-norm (the max response length); >= 1."
    )
    kl_coef: float = Field(default=0.0, ge=0.0, allow_inf_nan=False, description="KL-to-reference weight; 0 = off.")
    kl_estimator: KLEstimator = Field(default="k3", description="k1 (log pi - log ref) or k3 (low variance, >= 0).")
    entropy_coef: float = Field(default=0.0, ge=0.0, allow_inf_nan=False, description="Entropy bonus weight; 0 = off.")

    @model_validator(mode="after")
    def _check(self) -> PolicyLossConfig:
        if not (math.isfinite(self.clip_eps_low) and 0.0 <= self.clip_eps_low < 1.0):
            raise ValueError(f"clip_eps_low={self.clip_eps_low!r} must be in [0, 1) (default 0.2)")
        if not (math.isfinite(self.clip_eps_high) and self.clip_eps_high >= 0.0):
            raise ValueError(f"clip_eps_high={self.clip_eps_high!r} must be finite and >= 0 (default 0.28)")
        c = self.dual_clip_c
        if c is not None and not (math.isfinite(c) and c > 1.0):
            raise ValueError(f"dual_clip_c={c!r} must be a finite number > 1 (default 3.0), or None to disable")
        if self.ratio_level == "sequence" and self.aggregation != "seq-mean-token-mean":
            raise ValueError(
                f"ratio_level='sequence' (GSPO) requires aggregation='seq-mean-token-mean', got {self.aggregation!r}"
            )
        if self.seq_mean_denominator != "masked_sequences" and self.aggregation != "seq-mean-token-mean":
            raise ValueError(
                f"seq_mean_denominator={self.seq_mean_denominator!r} only applies to seq-mean-token-mean, not "
                f"{self.aggregation!r}: remove it"
            )
        if self.aggregation == "seq-mean-token-sum-norm":
            if self.norm_length is None or self.norm_length < 1:
                raise ValueError(
                    f"aggregation='seq-mean-token-sum-norm' needs norm_length >= 1 (the max response length), "
                    f"got {self.norm_length!r}"
                )
        elif self.norm_length is not None:
            raise ValueError(
                f"norm_length={self.norm_length!r} only applies to seq-mean-token-sum-norm, not {self.aggregation!r}: "
                "remove it"
            )
        return self

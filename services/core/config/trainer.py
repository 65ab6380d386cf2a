"""The trainer section of the run config: advantages and the policy loss (SPEC §4), the optimizer, the DeepSpeed
engine that applies it, and checkpoints."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from services.core.config.policy_loss import PolicyLossConfig

LRScheduler = Literal["constant", "constant_with_warmup", "linear", "cosine", "cosine_with_min_lr"]
ParamDtype = Literal["fp32", "bf16", "fp16"]


class OptimizerConfig(BaseModel):
    """AdamW and its learning-rate schedule (the paper: lr 1e-6 constant, weight decay 0.01, clip 1.0)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    lr: float = Field(default=1e-6, gt=0.0, le=1.0, allow_inf_nan=False, description="Peak AdamW learning rate.")
    weight_decay: float = Field(default=0.01, ge=0.0, allow_inf_nan=False, description="AdamW weight decay.")
    betas: tuple[float, float] = Field(default=(0.9, 0.999), description="AdamW betas, each in [0, 1).")
    eps: float = Field(default=1e-8, gt=0.0, allow_inf_nan=False, description="AdamW epsilon.")
    max_grad_norm: float = Field(
        default=1.0, ge=0.0, allow_inf_nan=False, description="Global gradient-norm clip; 0 disables clipping."
    )
    lr_scheduler: LRScheduler = Field(default="constant", description="transformers scheduler name.")
    warmup_ratio: float = Field(
        default=0.0, ge=0.0, le=1.0, allow_inf_nan=False, description="Warm-up steps as a share of total_steps."
    )
    min_lr_ratio: float = Field(
        default=0.1, ge=0.0, le=1.0, allow_inf_nan=False, description="cosine_with_min_lr only: floor / peak lr."
    )
    implementation: Literal["deepspeed", "torch"] = Field(
        default="deepspeed",
        description="deepspeed: DeepSpeed's fused AdamW (GPU; JIT-compiled once on CPU); torch: torch.optim.AdamW "
        "inside the DeepSpeed engine (no compiled op; the CPU presets use it).",
    )

    @model_validator(mode="after")
    def _check(self) -> OptimizerConfig:
        if not all(0.0 <= beta < 1.0 for beta in self.betas):
            raise ValueError(f"optimizer.betas={self.betas!r}: each beta must be in [0, 1)")
        if self.warmup_ratio > 0 and self.lr_scheduler == "constant":
            raise ValueError(
                f"optimizer.warmup_ratio={self.warmup_ratio} has no effect with lr_scheduler='constant': use "
                "'constant_with_warmup' or set warmup_ratio=0"
            )
        return self


class EngineConfig(BaseModel):
    """The DeepSpeed engine of the data-parallel ranks (OpenRLHF's DeepspeedStrategy)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    world_size: int = Field(default=1, ge=1, le=1024, description="Data-parallel ranks (one TrainerWorker each).")
    zero_stage: Literal[0, 1, 2, 3] = Field(default=2, description="DeepSpeed ZeRO stage.")
    param_dtype: ParamDtype = Field(
        default="bf16", description="Training precision: bf16/fp16 (mixed, as OpenRLHF), or fp32 (CPU presets)."
    )
    micro_batch_size: int = Field(
        default=4, ge=1, le=4096, description="Samples per forward/backward on one rank; gradients accumulate."
    )
    logit_chunk_tokens: int = Field(
        default=4096,
        ge=1,
        le=1 << 20,
        description="Response positions (x rows) whose vocabulary logits exist at once when log-probs and entropy "
        "are computed: a long response never materialises a B x T x V float32 tensor.",
    )
    gradient_checkpointing: bool = Field(default=False, description="Recompute activations in backward.")
    seed: int = Field(default=42, ge=0, description="Seeds torch/transformers on every rank (OpenRLHF's seed).")
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2"] = Field(
        default="sdpa", description="transformers attention kernel of the trained model."
    )


class CheckpointConfig(BaseModel):
    """Checkpoints in OpenRLHF's layout (`<run>/checkpoints/_actor/global_step<N>/` + an HF export)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    every: int = Field(default=0, ge=0, description="Save every N steps; 0 = only at the end of the run.")
    keep: int = Field(default=2, ge=1, le=1000, description="Keep the last K checkpoints (older ones are deleted).")
    hf_export: bool = Field(default=True, description="Also write a Hugging Face model folder with each checkpoint.")


class TrainerConfig(BaseModel):
    """Advantage estimation, the policy loss, the optimizer, the engine and checkpoints."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    normalize_advantage_std: bool = Field(
        default=True,
        description="GRPO divides the centred group reward by (group std + 1e-6); false gives Dr. GRPO's R - mean.",
    )
    policy_loss: PolicyLossConfig = Field(
        default_factory=PolicyLossConfig, description="Clipping, aggregation, ratio level (GSPO), KL and entropy."
    )
    max_staleness: int = Field(
        default=0,
        ge=0,
        le=1000,
        description="Scored groups generated more than this many policy versions before the version being trained "
        "are dropped (counted, and their prompts generated again); 0 = synchronous GRPO.",
    )
    update_kl_every: int = Field(
        default=1,
        ge=0,
        le=100_000,
        description="Every N steps, one more no-grad pass after the update measures log pi_new - log pi_old by "
        "trajectory percentile (SPEC §5; ~20% of a step on the tiny model); 0 = never.",
    )
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig, description="AdamW and its lr schedule.")
    engine: EngineConfig = Field(default_factory=EngineConfig, description="DeepSpeed, data parallelism, precision.")
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig, description="When and how many to keep.")

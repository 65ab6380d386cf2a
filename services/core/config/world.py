"""The world section of the run config: the synthetic task, the tiny policy, and its warm start (`rlvr prepare`).

Everything here shapes the prepared world, so the whole section is part of the world's cache key: the same settings
reuse the same folder, any change builds a new one (trainer/world/prepare.py).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

IN_DISTRIBUTION_LEVELS = (1, 2, 3)
OOD_LEVELS = (4, 5, 6)
MAX_WORLD_LEVEL = 9


def _check_levels(name: str, levels: tuple[int, ...]) -> None:
    if not levels:
        raise ValueError(f"{name} must name at least one level")
    if len(set(levels)) != len(levels):
        raise ValueError(f"{name} repeats a level: {list(levels)}")
    bad = [level for level in levels if not 1 <= level <= MAX_WORLD_LEVEL]
    if bad:
        raise ValueError(f"{name} has levels outside 1..{MAX_WORLD_LEVEL}: {bad}")


class WorldTaskConfig(BaseModel):
    """The arithmetic-chain task family (trainer/world/tasks.py) and the sizes of its splits."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    levels: tuple[int, ...] = Field(
        default=IN_DISTRIBUTION_LEVELS,
        description="In-distribution levels (level L has 3 + L operations): train, validation and test use them.",
    )
    ood_levels: tuple[int, ...] = Field(
        default=OOD_LEVELS, description="Out-of-distribution levels: harder than every in-distribution level."
    )
    digits: int = Field(
        default=3,
        ge=2,
        le=6,
        description="Digits of every running total (3: totals in 100..999, so guessing scores ~0).",
    )
    train_tail_share: float = Field(
        default=0.02,
        ge=0.0,
        le=0.2,
        description="Share of training problems drawn from the first OOD level, a thin tail that makes length "
        "generalisation learnable (0 for none).",
    )
    train_size: int = Field(default=20_000, ge=100, le=1_000_000, description="Training problems.")
    validation_size: int = Field(
        default=150, ge=10, le=10_000, description="Validation problems: the SFT checkpoint selection scores them."
    )
    test_size: int = Field(default=500, ge=10, le=100_000, description="Held-out test problems (same levels).")
    ood_size: int = Field(default=500, ge=10, le=100_000, description="Out-of-distribution problems.")

    @model_validator(mode="after")
    def _levels_make_sense(self) -> WorldTaskConfig:
        _check_levels("world.task.levels", self.levels)
        _check_levels("world.task.ood_levels", self.ood_levels)
        if min(self.ood_levels) <= max(self.levels):
            raise ValueError(
                f"world.task.ood_levels {list(self.ood_levels)} must all be harder than the in-distribution levels "
                f"{list(self.levels)}"
            )
        return self


class WorldModelConfig(BaseModel):
    """The tiny Qwen2-architecture policy, built from this config (no weights are downloaded)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    hidden_size: int = Field(default=128, ge=16, le=4096, description="Width of the residual stream.")
    num_layers: int = Field(default=4, ge=1, le=64, description="Decoder layers.")
    num_heads: int = Field(
        default=2,
        ge=1,
        le=64,
        description="Attention heads (query and key/value alike), each hidden_size / num_heads wide; vLLM's CPU "
        "attention needs heads at least 64 wide (the default: 2 of 64).",
    )
    intermediate_size: int = Field(default=512, ge=16, le=16384, description="Width of the MLP.")
    max_position_embeddings: int = Field(default=512, ge=64, le=32768, description="Longest prompt + response.")

    @model_validator(mode="after")
    def _heads_divide_the_width(self) -> WorldModelConfig:
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"world.model.hidden_size={self.hidden_size} is not a multiple of num_heads={self.num_heads}"
            )
        return self


class WorldSFTConfig(BaseModel):
    """Supervised warm start on reference solutions, and how the kept checkpoint is chosen."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    batch_size: int = Field(default=32, ge=1, le=4096, description="Sequences per SFT step.")
    slip_rate: float = Field(
        default=0.25,
        ge=0.0,
        lt=0.5,
        allow_inf_nan=False,
        description="Probability that a demonstration forgets the carry or borrow of an operation that crosses a tens "
        "boundary (drawn afresh for every demonstration shown; the chain goes on from the written total, so the "
        "answer is wrong). A warm start that imitates it makes such slips when sampled: a discrete, learnable failure "
        "mode for RL to select against (trainer/world/tasks.py). Below 0.5, so the correct digit stays the mode.",
    )
    learning_rate: float = Field(default=5e-4, gt=0, le=1.0, allow_inf_nan=False, description="AdamW peak rate.")
    warmup_steps: int = Field(default=20, ge=0, le=100_000, description="Linear warm-up steps.")
    max_steps: int = Field(default=3000, ge=1, le=1_000_000, description="Upper bound on SFT steps.")
    ema_decay: float = Field(
        default=0.98,
        ge=0.0,
        lt=1.0,
        description="Decay of the exponential moving average of the weights that is evaluated and kept (0: the raw "
        "weights). At a constant rate the raw model's greedy accuracy swings by 20 points within 25 steps; the "
        "average is the steadier, more representative warm start.",
    )
    eval_every: int = Field(
        default=50,
        ge=1,
        le=100_000,
        description="Steps between greedy evaluations (a quick screen until accuracy nears the target).",
    )
    screen_size: int = Field(
        default=50,
        ge=1,
        le=100_000,
        description="Validation problems of the quick screen evaluated every eval_every steps until one reaches a "
        "quarter of the target; every evaluation after uses the whole validation split. SFT accuracy sits near 0 for "
        "hundreds of steps, then jumps within ~50: evaluating sparsely would step over the band.",
    )
    target_accuracy: float = Field(
        default=0.85,
        gt=0.0,
        lt=1.0,
        description="Greedy validation accuracy the kept checkpoint should have. With slipped demonstrations the "
        "greedy answer is the policy's competence (a slip is never the mode) and the sampled one is lower: the "
        "default world keeps a warm start that computes (greedy ~0.9) and slips when sampled (~0.5 at T = 1).",
    )
    tolerance: float = Field(
        default=0.10,
        gt=0.0,
        lt=1.0,
        description="Checkpoints within target ± tolerance are candidates; the flattest of them is kept.",
    )
    cooldown_at: float = Field(
        default=1.0,
        gt=0.0,
        le=1.0,
        description="Once the validation accuracy reaches this fraction of the target, training goes on from the "
        "averaged weights at cooldown_factor of the rate (1: never before the target).",
    )
    cooldown_factor: float = Field(
        default=0.2, gt=0.0, le=1.0, description="Learning-rate multiplier after the cool-down starts."
    )
    cooldown_steps: int = Field(
        default=150, ge=1, le=1_000_000, description="SFT stops this many steps after the cool-down started."
    )
    stop_after_above: int = Field(
        default=2,
        ge=1,
        le=1000,
        description="Stop SFT once this many evaluations in a row are above target + tolerance.",
    )


class WorldConfig(BaseModel):
    """The tiny world: task, tokenizer-free model sizes, warm start, and the base-accuracy measurement."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    seed: int = Field(default=0, ge=0, le=2**31 - 1, description="Seeds the problems, the initial weights and SFT.")
    task: WorldTaskConfig = Field(default_factory=WorldTaskConfig, description="The task family and split sizes.")
    model: WorldModelConfig = Field(default_factory=WorldModelConfig, description="The tiny policy's architecture.")
    sft: WorldSFTConfig = Field(default_factory=WorldSFTConfig, description="The warm start.")
    eval_size: int = Field(
        default=200, ge=10, le=100_000, description="Problems per split for the base accuracy in prepare.json."
    )
    temperature: float = Field(
        default=1.0, gt=0.0, le=10.0, description="Sampling temperature of the sampled base accuracy (the run's)."
    )
    max_new_tokens: int = Field(default=320, ge=16, le=4096, description="Generation limit when measuring accuracy.")

"""The temporal schedule r(s) of SPEC.md §2: when each credit-allocation criterion is applied.

Pure Python on purpose (no torch): the controller, the CLI and the plots use it without the training stack.
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

ScheduleMode = Literal["linear", "sigmoid", "gamma", "constant"]
Stage = Literal["warmup", "anneal", "general"]

MAX_TOTAL_STEPS = 100_000
"""Longest run the schedule accepts (the paper's run is ~118 steps); beyond it a typo like 1e10 would hang tools."""
SIGMOID_STEEPNESS = 8.0  # SPEC §2: k = 8, normalised so the curve hits both ends exactly


class ScheduleConfig(BaseModel):
    """How the schedule value r decays over training (SPEC §2)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    mode: ScheduleMode = Field(description="Curve shape: linear, sigmoid, gamma, or constant (static baselines).")
    initial_magnitude: float = Field(
        default=0.99, description="m0, the schedule value at progress 0; must satisfy 0 <= m0 < 1."
    )
    min_ratio: float = Field(default=0.0, description="Fraction of total steps before the ramp starts (0..1).")
    max_ratio: float | None = Field(
        default=None, description="Fraction of total steps at which r reaches 0 (0..1); required unless constant."
    )
    gamma: float = Field(default=2.0, description="Exponent of the gamma curve, r = (m0 (1-p))**gamma; > 0.")

    @model_validator(mode="after")
    def _check(self) -> ScheduleConfig:
        m0 = self.initial_magnitude
        if not (math.isfinite(m0) and 0.0 <= m0 < 1.0):
            raise ValueError(
                f"initial_magnitude={m0!r} is invalid: it must satisfy 0 <= m0 < 1 "
                "(m0 = 1 leaves TP responses with no optimized token; m0 > 1 empties forking masks). Use e.g. 0.99."
            )
        if not (math.isfinite(self.gamma) and self.gamma > 0):
            raise ValueError(f"gamma={self.gamma!r} is invalid: it must be a finite number > 0 (default 2.0).")
        if self.mode == "constant":
            if self.max_ratio is not None or self.min_ratio != 0.0:
                raise ValueError(
                    f"mode='constant' keeps r = m0 for the whole run, so min_ratio={self.min_ratio!r} and "
                    f"max_ratio={self.max_ratio!r} would have no effect: remove them, or pick a decaying mode."
                )
            return self
        if self.max_ratio is None:
            raise ValueError(
                f"mode={self.mode!r} needs max_ratio (the fraction of training where r reaches 0), e.g. 0.8."
            )
        for name, value in (("min_ratio", self.min_ratio), ("max_ratio", self.max_ratio)):
            if not (math.isfinite(value) and 0.0 <= value <= 1.0):
                raise ValueError(f"{name}={value!r} is invalid: it must be a fraction in [0, 1].")
        if self.max_ratio <= self.min_ratio:
            raise ValueError(
                f"max_ratio={self.max_ratio!r} must be greater than min_ratio={self.min_ratio!r}: "
                "the ramp runs from min_ratio to max_ratio of training."
            )
        return self


class Phase(BaseModel):
    """The schedule evaluated at one training step (SPEC §2)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    step: int = Field(description="1-based optimizer step.")
    progress: float = Field(description="p in [0, 1]: how far the ramp has gone.")
    ratio: float = Field(description="r(s): the schedule value (TP prefix fraction, 1 - forking token ratio, ...).")
    stage: Stage = Field(description="warmup (s <= min_step), anneal (between), general (s >= max_step).")


class ScheduleState(BaseModel):
    """What a run stores (Redis, checkpoints) so a resumed run keeps exactly the same curve."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    config: ScheduleConfig
    total_steps: int
    min_step: int
    max_step: int


def resolve_steps(config: ScheduleConfig, total_steps: int) -> tuple[int, int]:
    """SPEC §2: min_step = int(T * min_ratio), max_step = int(T * max_ratio) in float64, truncated."""
    if isinstance(total_steps, bool) or not isinstance(total_steps, int) or not 1 <= total_steps <= MAX_TOTAL_STEPS:
        raise ValueError(f"total_steps={total_steps!r} is invalid: it must be an integer in 1..{MAX_TOTAL_STEPS}.")
    if config.mode == "constant":
        return 0, total_steps
    assert config.max_ratio is not None  # guaranteed by ScheduleConfig validation
    min_step = int(total_steps * config.min_ratio)
    max_step = int(total_steps * config.max_ratio)
    if max_step <= min_step:
        raise ValueError(
            f"the schedule resolves to max_step={max_step} <= min_step={min_step} for total_steps={total_steps}, "
            f"min_ratio={config.min_ratio}, max_ratio={config.max_ratio}: there is no step on which r decays. "
            "Train for more steps or widen the ratios."
        )
    return min_step, max_step


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def curve_value(mode: ScheduleMode, progress: float, m0: float, gamma: float) -> float:
    """r as a function of progress p in [0, 1] (SPEC §2 curves)."""
    if mode == "linear":
        return m0 * (1.0 - progress)
    if mode == "sigmoid":
        k = SIGMOID_STEEPNESS
        low, high = _sigmoid(-k / 2), _sigmoid(k / 2)
        return m0 * (_sigmoid(k * (0.5 - progress)) - low) / (high - low)
    if mode == "gamma":
        # m0 sits inside the power, as in the reference: the curve starts at m0**gamma.
        return float((m0 * (1.0 - progress)) ** gamma)
    if mode == "constant":
        return m0
    raise ValueError(f"unknown schedule mode {mode!r}: expected one of linear, sigmoid, gamma, constant")


class Schedule:
    """A schedule resolved against a run length; `phase(step)` is the single source of truth for r."""

    def __init__(self, config: ScheduleConfig, total_steps: int) -> None:
        self.config = config
        self.total_steps = total_steps
        self.min_step, self.max_step = resolve_steps(config, total_steps)

    @classmethod
    def from_state(cls, state: ScheduleState) -> Schedule:
        """Rebuild a stored schedule; refuses a state whose steps do not match its own config."""
        schedule = cls(state.config, state.total_steps)
        if (schedule.min_step, schedule.max_step) != (state.min_step, state.max_step):
            raise ValueError(
                f"stored schedule steps (min_step={state.min_step}, max_step={state.max_step}) differ from the ones "
                f"its config resolves to ({schedule.min_step}, {schedule.max_step}): the state is corrupt or was "
                "written by an incompatible version; refusing to shift the schedule of a resumed run."
            )
        return schedule

    def state(self) -> ScheduleState:
        return ScheduleState(
            config=self.config, total_steps=self.total_steps, min_step=self.min_step, max_step=self.max_step
        )

    def phase(self, step: int) -> Phase:
        if isinstance(step, bool) or not isinstance(step, int) or step < 1:
            raise ValueError(f"step={step!r} is invalid: steps are 1-based integers (the first optimizer step is 1).")
        cfg = self.config
        if cfg.mode == "constant":
            # Static baselines: the criterion stays active all run long, so every step is in the anneal stage.
            progress = min(step / self.total_steps, 1.0)
            return Phase(step=step, progress=progress, ratio=cfg.initial_magnitude, stage="anneal")
        span = self.max_step - self.min_step
        progress = min(max((step - self.min_step) / span, 0.0), 1.0)
        if step >= self.max_step:
            ratio, stage = 0.0, "general"  # plain GRPO from max_step on, exactly
        else:
            ratio = curve_value(cfg.mode, progress, cfg.initial_magnitude, cfg.gamma)
            stage = "warmup" if step <= self.min_step else "anneal"
        return Phase(step=step, progress=progress, ratio=ratio, stage=stage)

    def curve(self) -> list[Phase]:
        """Every step's phase, 1..total_steps."""
        return [self.phase(step) for step in range(1, self.total_steps + 1)]

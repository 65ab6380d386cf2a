"""Controller API bodies. Pure pydantic (no FastAPI), so `client.py` can parse responses with the same models."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from services.core.schedule import Phase, ScheduleConfig
from services.core.wire import StepReport


class _Body(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class RunStatus(_Body):
    """The mutable part of a run's state, as stored in Redis."""

    run_id: str = Field(description="The run this controller serves.")
    last_reported_step: int = Field(description="Last accepted step; 0 before the first report.")
    policy_version: int = Field(description="Policy version of the last accepted report; 0 before the first.")
    paused: bool = Field(description="Rollout workers should stop generating while true.")
    paused_at: float | None = Field(default=None, description="Unix time of the pause, when paused.")
    pause_reason: str | None = Field(default=None, description="Why the run was paused, when given.")
    last_report_at: float | None = Field(default=None, description="Unix time the last report was accepted.")
    created_at: float = Field(description="Unix time the run state was created in Redis.")
    schedule_force_count: int = Field(
        default=0, description="How many times the stored schedule was overwritten with --force-schedule."
    )
    total_steps: int = Field(description="Optimizer steps of the whole run.")

    @property
    def current_step(self) -> int:
        """The step the trainer is about to take: last reported step + 1."""
        return self.last_reported_step + 1

    @property
    def complete(self) -> bool:
        return self.last_reported_step >= self.total_steps


class ScheduleResponse(_Body):
    """GET /v1/schedule: the fixed schedule of the run and its whole curve (steps 1..total_steps)."""

    run_id: str
    config: ScheduleConfig
    total_steps: int
    min_step: int = Field(description="Resolved int(T * min_ratio), fixed at run creation.")
    max_step: int = Field(description="Resolved int(T * max_ratio), fixed at run creation.")
    created_at: float = Field(description="Unix time the run state was created in Redis.")
    schedule_force_count: int = Field(description="Times the stored schedule was overwritten by force.")
    curve: list[Phase] = Field(description="phase(s) for s = 1..total_steps.")


class PhaseResponse(_Body):
    """GET /v1/phase: the phase of the requested step (or the current step) with the run's live status."""

    run_id: str
    phase: Phase = Field(description="Phase of `?step=N`, or of the current step when no step is given.")
    current_step: int = Field(description="The step the trainer is about to take (last reported + 1).")
    last_reported_step: int
    policy_version: int
    paused: bool
    complete: bool = Field(description="True once total_steps steps have been reported.")


class StepReportResponse(_Body):
    """POST /v1/steps: the accepted report's outcome; a repeated identical report gets the same body again."""

    run_id: str
    step: int
    policy_version: int
    phase: Phase = Field(description="The phase the step was trained with (equal to the schedule's).")
    accepted_at: float = Field(description="Unix time the controller first accepted this step.")
    duplicate: bool = Field(description="True when this exact report had already been accepted (nothing changed).")
    next_phase: Phase = Field(description="Phase of step + 1: what the trainer should apply next.")


class StoredStep(_Body):
    """GET /v1/steps/{step}: a report exactly as accepted, with the acceptance time."""

    report: StepReport
    accepted_at: float


class PauseRequest(_Body):
    """Optional body of POST /v1/pause."""

    reason: str | None = Field(default=None, max_length=500, description="Free text shown in the run status.")


class HealthResponse(_Body):
    status: Literal["ok"] = "ok"


class ReadyResponse(_Body):
    status: Literal["ready", "unavailable"]
    detail: str | None = None

"""Domain errors of the controller and the one place they become HTTP responses.

`state.py` and `app.py` raise these without knowing HTTP; `install_error_handlers` maps each class to a status code.
Every error body is `{"detail": <message that says what to do>, "error": <stable code>, ...extra fields}`.
"""

from __future__ import annotations

import math
from typing import Any

import redis
from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from services.core.redis_conn import RedisUnavailableError, redact_url


class ControllerError(Exception):
    """Base of every controller error; `code` is a stable machine-readable name, `extra` goes into the body."""

    code = "controller_error"

    def __init__(self, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.message = message
        self.extra = extra


class RunNotFoundError(ControllerError):
    """A request names a run this controller does not serve."""

    code = "run_not_found"


class StepNotReportedError(ControllerError):
    """GET /v1/steps/{step} for a step that has no accepted report."""

    code = "step_not_reported"


class StepConflictError(ControllerError):
    """A step report that cannot be accepted in the run's current state (subclasses say why)."""

    code = "step_conflict"


class DuplicateStepMismatchError(StepConflictError):
    """The step was already reported with different content (policy version, phase or metrics)."""

    code = "duplicate_step_mismatch"


class StepOutOfOrderError(StepConflictError):
    """Steps must be reported contiguously: the report is not the expected next step."""

    code = "step_out_of_order"


class StepBeyondRunError(StepConflictError):
    """The step lies after the run's last step (total_steps)."""

    code = "step_beyond_run"


class PhaseMismatchError(StepConflictError):
    """The trainer applied a phase that is not the schedule's phase for that step (off-policy safety net)."""

    code = "phase_mismatch"


class PolicyVersionRegressionError(StepConflictError):
    """The reported policy version is lower than one already reported."""

    code = "policy_version_regression"


class ScheduleConflictError(ControllerError):
    """The run's stored schedule differs from the configured one (startup refuses unless forced)."""

    code = "schedule_conflict"


class ConfigConflictError(ControllerError):
    """The run exists with other settings (strategy, batch sizes, model...) than the configured ones."""

    code = "config_conflict"


class RunPausedError(StepConflictError):
    """A step report while the run is paused: the trainer holds it and reports after resume."""

    code = "run_paused"


class ScheduleChangedError(ControllerError):
    """The run's schedule in Redis was replaced (forced) by another controller after this one started."""

    code = "schedule_changed"


class RunStateMissingError(ControllerError):
    """The run's state hash disappeared from Redis (e.g. Redis restarted without persistence)."""

    code = "run_state_missing"


class AuthRequiredError(ControllerError):
    """A mutating request without a bearer token while one is configured."""

    code = "auth_required"


class AuthForbiddenError(ControllerError):
    """A mutating request whose bearer token is wrong."""

    code = "auth_forbidden"


STATUS_BY_ERROR: dict[type[ControllerError], int] = {
    RunNotFoundError: 404,
    StepNotReportedError: 404,
    StepConflictError: 409,
    ScheduleConflictError: 409,
    ConfigConflictError: 409,
    ScheduleChangedError: 409,
    RunStateMissingError: 503,
    AuthRequiredError: 401,
    AuthForbiddenError: 403,
}


def status_for(error: ControllerError) -> int:
    """The HTTP status of a domain error: the entry of its nearest class in STATUS_BY_ERROR (500 if none)."""
    for cls in type(error).__mro__:
        if cls in STATUS_BY_ERROR:
            return STATUS_BY_ERROR[cls]
    return 500


def _controller_error_response(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ControllerError)
    headers = {"WWW-Authenticate": 'Bearer realm="rlvr-controller"'} if isinstance(exc, AuthRequiredError) else None
    body = {"detail": exc.message, "error": exc.code, **jsonable_encoder(exc.extra)}
    return JSONResponse(status_code=status_for(exc), content=body, headers=headers)


def _redis_error_response(request: Request, exc: Exception) -> JSONResponse:
    url = getattr(request.app.state, "redis_url", None)
    where = f" at {redact_url(url)}" if url else ""
    message = f"Redis{where} is unavailable ({type(exc).__name__}: {exc}); retry later"
    return JSONResponse(status_code=503, content={"detail": message, "error": "redis_unavailable"})


def _json_safe(value: Any) -> Any:
    """Non-finite floats (a NaN metric echoed back as `input`) as strings, so the error body is valid JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {key: _json_safe(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_json_safe(item) for item in value]
    return value


def _validation_error_response(_: Request, exc: Exception) -> JSONResponse:
    """FastAPI's 422 body (`detail` = list of errors) plus one readable `message` line naming each bad field."""
    assert isinstance(exc, RequestValidationError)
    errors = _json_safe(jsonable_encoder(exc.errors(), custom_encoder={Exception: str}))
    parts = [f"{'.'.join(str(p) for p in err.get('loc', ()))}: {err.get('msg', 'invalid')}" for err in errors]
    body = {"detail": errors, "error": "validation_error", "message": "; ".join(parts)}
    return JSONResponse(status_code=422, content=body)


def install_error_handlers(app: FastAPI) -> None:
    """Map domain errors, Redis outages and request validation errors to HTTP responses (the only mapping)."""
    app.add_exception_handler(ControllerError, _controller_error_response)
    for redis_error in (RedisUnavailableError, redis.ConnectionError, redis.TimeoutError):
        app.add_exception_handler(redis_error, _redis_error_response)
    app.add_exception_handler(RequestValidationError, _validation_error_response)

"""The controller's HTTP API: `create_app(settings)` builds it; Redis is connected and the run state created or
checked in the lifespan (refusing to start on a schedule conflict, see `state.py`).

Endpoints (mutating ones need `Authorization: Bearer <token>` when a token is configured: 401 without, 403 wrong):
- GET  /v1/schedule         config, resolved steps, the whole curve
- GET  /v1/phase[?step=N]   phase of step N (1 <= N <= MAX_PHASE_STEP; 422 otherwise) or of the current step
- GET  /v1/status           the run's live status
- POST /v1/steps            trainer's StepReport (200 accepted or duplicate; 404 other run; 409 refused, also while
                            paused; 413 body over MAX_BODY_BYTES; 422 invalid, e.g. over MAX_REPORT_METRICS metrics)
- GET  /v1/steps/{step}     an accepted report (404 if none)
- POST /v1/pause, /v1/resume  (idempotent; 200 with the status)
- GET  /healthz (200 while alive), /readyz (503 when Redis or the run state is unreachable), /metrics
"""

from __future__ import annotations

import contextlib
import functools
import logging
import secrets
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Annotated, Any

import redis
from fastapi import APIRouter, Body, Depends, FastAPI, Path, Query, Request, Response
from fastapi.responses import JSONResponse

from services.controller.errors import (
    AuthForbiddenError,
    AuthRequiredError,
    ControllerError,
    RunStateMissingError,
    install_error_handlers,
)
from services.controller.metrics import ControllerMetrics, observe_request
from services.controller.schemas import (
    HealthResponse,
    PauseRequest,
    PhaseResponse,
    ReadyResponse,
    RunStatus,
    ScheduleResponse,
    StepReportResponse,
    StoredStep,
)
from services.controller.settings import ControllerSettings
from services.controller.state import RunInit, RunStateStore
from services.core.config import RunConfig, load_run_config
from services.core.http_limits import BodyLimitMiddleware
from services.core.http_metrics import RequestMetricsMiddleware
from services.core.redis_conn import EmbeddedRedis, RedisUnavailableError, connect, redact_url
from services.core.schedule import MAX_TOTAL_STEPS
from services.core.wire import StepReport

log = logging.getLogger(__name__)

MAX_PHASE_STEP = 10 * MAX_TOTAL_STEPS  # phases exist past the last step (r = 0); a 20-digit step is a client bug
MAX_BODY_BYTES = 1 << 20  # a step report is a few KB; MAX_REPORT_METRICS scalars fit with room to spare

router = APIRouter()


def get_store(request: Request) -> RunStateStore:
    store: RunStateStore = request.app.state.store
    return store


def get_metrics(request: Request) -> ControllerMetrics:
    metrics: ControllerMetrics = request.app.state.metrics
    return metrics


def require_token(request: Request) -> None:
    """Bearer-token check for mutating endpoints; a no-op when no token is configured."""
    settings: ControllerSettings = request.app.state.settings
    if settings.token is None:
        return
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not given.strip():
        raise AuthRequiredError("this endpoint needs an 'Authorization: Bearer <token>' header")
    if not secrets.compare_digest(given.strip().encode(), settings.token.get_secret_value().encode()):
        raise AuthForbiddenError("the bearer token is not valid for this controller")


Store = Annotated[RunStateStore, Depends(get_store)]
Metrics = Annotated[ControllerMetrics, Depends(get_metrics)]
Authorized = [Depends(require_token)]


@router.get("/v1/schedule", response_model=ScheduleResponse)
def get_schedule(store: Store) -> ScheduleResponse:
    status, schedule = store.status(), store.schedule
    return ScheduleResponse(
        run_id=store.run_id,
        config=schedule.config,
        total_steps=schedule.total_steps,
        min_step=schedule.min_step,
        max_step=schedule.max_step,
        created_at=status.created_at,
        schedule_force_count=status.schedule_force_count,
        curve=schedule.curve(),
    )


@router.get("/v1/phase", response_model=PhaseResponse)
def get_phase(
    store: Store,
    step: Annotated[
        int | None, Query(ge=1, le=MAX_PHASE_STEP, description="1-based step; omitted: the current step.")
    ] = None,
) -> PhaseResponse:
    status = store.status()
    phase = store.phase(step if step is not None else status.current_step)
    return PhaseResponse(
        run_id=store.run_id,
        phase=phase,
        current_step=status.current_step,
        last_reported_step=status.last_reported_step,
        policy_version=status.policy_version,
        paused=status.paused,
        complete=status.complete,
    )


@router.get("/v1/status", response_model=RunStatus)
def get_status(store: Store) -> RunStatus:
    return store.status()


@router.post("/v1/steps", response_model=StepReportResponse, dependencies=Authorized)
def post_step(report: StepReport, store: Store, metrics: Metrics) -> StepReportResponse:
    try:
        outcome = store.report_step(report)
    except ControllerError:
        metrics.observe_report("rejected")
        raise
    metrics.observe_report("duplicate" if outcome.duplicate else "accepted")
    accepted = outcome.stored.report
    return StepReportResponse(
        run_id=accepted.run_id,
        step=accepted.step,
        policy_version=accepted.policy_version,
        phase=accepted.phase,
        accepted_at=outcome.stored.accepted_at,
        duplicate=outcome.duplicate,
        next_phase=store.phase(accepted.step + 1),
    )


@router.get("/v1/steps/{step}", response_model=StoredStep)
def get_step(store: Store, step: Annotated[int, Path(ge=1)]) -> StoredStep:
    return store.get_step(step)


@router.post("/v1/pause", response_model=RunStatus, dependencies=Authorized)
def pause(store: Store, body: Annotated[PauseRequest | None, Body()] = None) -> RunStatus:
    return store.set_paused(True, reason=body.reason if body is not None else None)


@router.post("/v1/resume", response_model=RunStatus, dependencies=Authorized)
def resume(store: Store) -> RunStatus:
    return store.set_paused(False)


@router.get("/healthz", response_model=HealthResponse)
def healthz() -> HealthResponse:
    return HealthResponse()


@router.get("/readyz", response_model=ReadyResponse, responses={503: {"model": ReadyResponse}})
def readyz(store: Store) -> Response:
    try:
        store.status()
    except (redis.RedisError, RedisUnavailableError, RunStateMissingError, OSError) as exc:
        body = ReadyResponse(status="unavailable", detail=f"{type(exc).__name__}: {exc}")
        return JSONResponse(status_code=503, content=body.model_dump())
    return JSONResponse(content=ReadyResponse(status="ready").model_dump())


@router.get("/metrics", include_in_schema=False)
def metrics_endpoint(store: Store, metrics: Metrics) -> Response:
    try:
        status = store.status()
    except (redis.RedisError, RedisUnavailableError, RunStateMissingError, OSError):
        metrics.mark_state_unreadable()
    else:
        metrics.refresh(status, store.phase(status.current_step))
        metrics.refresh_queues(store.queue_stats())
    payload, content_type = metrics.render()
    return Response(content=payload, media_type=content_type)


@contextlib.contextmanager
def _redis_url(settings: ControllerSettings) -> Iterator[str]:
    """The configured URL, or an embedded server (persistent when `embedded_redis_dir` is set) until exit."""
    if settings.redis_url:
        yield settings.redis_url
        return
    persist = settings.embedded_redis_dir is not None
    with EmbeddedRedis(settings.embedded_redis_dir, persist=persist) as server:
        log.info("no REDIS_URL: embedded Redis at %s (persistent: %s)", server.url, persist)
        yield server.url


@dataclass(frozen=True)
class OpenedRun:
    """The run state opened in Redis: created, reused or forced (`init`), with the URL it lives at."""

    store: RunStateStore
    init: RunInit
    redis_url: str


@contextlib.contextmanager
def open_run_state(settings: ControllerSettings, run_config: RunConfig) -> Iterator[OpenedRun]:
    """Connect Redis (or start the embedded one) and create or check the run's state; refusals raise
    ScheduleConflictError / ConfigConflictError / RedisUnavailableError before anything is served."""
    with contextlib.ExitStack() as stack:
        url = stack.enter_context(_redis_url(settings))
        client = connect(url, socket_timeout_s=settings.redis_socket_timeout_s)
        stack.callback(client.close)
        store = RunStateStore(client, run_config.run_id, run_config.build_schedule(), config=run_config)
        init = store.create_or_load(force=settings.force_schedule)
        log.info("run %s: state %s in Redis at %s", run_config.run_id, init.outcome, redact_url(url))
        yield OpenedRun(store, init, url)


def _lifespan(
    settings: ControllerSettings, run_config: RunConfig, opened: OpenedRun | None
) -> Callable[[FastAPI], Any]:
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        with contextlib.ExitStack() as stack:
            run = opened if opened is not None else stack.enter_context(open_run_state(settings, run_config))
            app.state.redis_url, app.state.store, app.state.run_init = run.redis_url, run.store, run.init
            yield

    return lifespan


def load_served_run_config(settings: ControllerSettings) -> RunConfig:
    """The run config named by the settings (file + overrides); ValueError naming what is missing or wrong."""
    if settings.run_config_path is None:
        raise ValueError(
            "no run config: pass --config PATH (or set RLVR_CONTROLLER_RUN_CONFIG_PATH), "
            "e.g. deploy/presets/tiny-cpu.toml"
        )
    return load_run_config(settings.run_config_path, settings.run_config_overrides)


def create_app(
    settings: ControllerSettings, *, run_config: RunConfig | None = None, opened: OpenedRun | None = None
) -> FastAPI:
    """Build the controller app; `run_config` overrides the settings' run config file (tests); `opened` is a run
    state already opened by the caller (`rlvr controller` opens it first, so a refusal is one line, not a trace)."""
    run_config = run_config if run_config is not None else load_served_run_config(settings)
    metrics = ControllerMetrics()
    metrics.set_run(run_config.run_id, run_config.schedule.mode, run_config.total_steps)
    app = FastAPI(title="rlvr-schedule controller", version="1", lifespan=_lifespan(settings, run_config, opened))
    app.state.settings, app.state.metrics = settings, metrics
    install_error_handlers(app)
    app.add_middleware(BodyLimitMiddleware, max_body_bytes=MAX_BODY_BYTES)
    app.add_middleware(RequestMetricsMiddleware, observe=functools.partial(observe_request, metrics))
    app.include_router(router)
    return app

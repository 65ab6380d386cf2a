"""The reward server's FastAPI app: `create_app(settings)` builds it; the lifespan starts and stops the scorer pool.

Routes: `POST /v1/score` (our batch API), `POST /get_reward` (OpenRLHF's remote reward protocol), `GET /healthz`,
`GET /readyz` (503 with a reason until every scorer worker has come up, and whenever none is alive), `GET /metrics`
(Prometheus text, this app's own registry).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from reward_server import scoring
from reward_server.errors import OverloadedError, PoolNotReadyError, UnauthorizedError, install_error_handlers
from reward_server.limits import BodyLimitMiddleware
from reward_server.metrics import RewardMetrics, create_metrics, observe_request
from reward_server.pool import ScoreFn, ScorerPool
from reward_server.schemas import (
    ErrorResponse,
    HealthResponse,
    OpenRLHFRewardRequest,
    OpenRLHFRewardResponse,
    ScoreRequest,
    ScoreResponse,
)
from reward_server.scorers import score
from reward_server.settings import RewardSettings
from services.core.http_metrics import RequestMetricsMiddleware

logger = logging.getLogger(__name__)

_ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    413: {"model": ErrorResponse, "description": "Batch, string or body over the configured limits."},
    503: {"model": ErrorResponse, "description": "Scorer pool not ready yet, or overloaded (see Retry-After)."},
}
_AUTH_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorResponse, "description": "Missing or wrong bearer token."}
}


def create_app(settings: RewardSettings | None = None, *, score_fn: ScoreFn = score) -> FastAPI:
    """Build the app. Nothing starts until the lifespan runs (the pool then starts in the background).

    `score_fn` replaces the scorers (tests use slow or crashing stand-ins); it must be a module-level function.
    """
    settings = settings if settings is not None else RewardSettings()
    metrics = create_metrics()
    app = FastAPI(
        title="rlvr reward server",
        version="1",
        summary="Verifiable rewards (math, gsm8k, mcq) for RLVR rollouts, with hard per-item timeouts.",
        lifespan=_lifespan(settings, metrics, score_fn),
    )
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.pool = None
    install_error_handlers(app)
    _add_scoring_routes(app, settings, metrics)
    _add_ops_routes(app, metrics)
    app.add_middleware(BodyLimitMiddleware, max_body_bytes=settings.max_body_bytes)
    # outermost: sees every answer, 413s included
    app.add_middleware(RequestMetricsMiddleware, observe=functools.partial(observe_request, metrics))
    return app


def _lifespan(settings: RewardSettings, metrics: RewardMetrics, score_fn: ScoreFn) -> Any:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        pool = ScorerPool(
            size=settings.workers,
            item_timeout_s=settings.item_timeout_s,
            start_timeout_s=settings.worker_start_timeout_s,
            memory_limit_mb=settings.worker_memory_mb,
            start_method=settings.start_method,
            max_queued_items=settings.max_queued_items,
            metrics=metrics,
            score_fn=score_fn,
        )
        app.state.pool = pool
        # Start in the background so the server listens (and /readyz answers 503) while workers come up.
        starting = asyncio.create_task(pool.start(), name="scorer-pool-start")
        starting.add_done_callback(_log_start_failure)
        try:
            yield
        finally:
            starting.cancel()
            await pool.close()
            app.state.pool = None

    return lifespan


def _log_start_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        logger.error("scorer pool failed to start", exc_info=task.exception())


def _ready_pool(request: Request, items: int) -> ScorerPool:
    pool: ScorerPool | None = request.app.state.pool
    if pool is None or not pool.ready:
        raise PoolNotReadyError("scorer pool is starting; retry shortly (GET /readyz says when it is up)")
    if not pool.has_room_for(items):
        raise OverloadedError(f"{pool.queue_depth} items already queued; retry shortly")
    return pool


class _BearerToken(HTTPBearer):
    """`Authorization: Bearer <token>` check (an HTTPBearer, so OpenAPI documents the security scheme)."""

    def __init__(self, token: str) -> None:
        super().__init__(auto_error=False, description="The value of RLVR_REWARD_API_TOKEN.")
        self._expected = token.encode()

    async def __call__(self, request: Request) -> HTTPAuthorizationCredentials | None:
        credentials = await super().__call__(request)
        if credentials is None or not secrets.compare_digest(credentials.credentials.encode(), self._expected):
            raise UnauthorizedError("missing or wrong bearer token (Authorization: Bearer <token>)")
        return credentials


def _auth_dependency(settings: RewardSettings) -> list[Any]:
    """Bearer-token check for the scoring routes, only when a token is configured."""
    if settings.api_token is None:
        return []
    return [Depends(_BearerToken(settings.api_token.get_secret_value()))]


def _add_scoring_routes(app: FastAPI, settings: RewardSettings, metrics: RewardMetrics) -> None:
    auth = _auth_dependency(settings)
    responses = _ERROR_RESPONSES | (_AUTH_RESPONSES if auth else {})

    @app.post(
        "/v1/score",
        response_model=ScoreResponse,
        response_model_exclude_none=True,
        dependencies=auth,
        responses=responses,
        summary="Score a batch of responses; results in request order, one status per item.",
    )
    async def score_items(body: ScoreRequest, request: Request) -> ScoreResponse:
        scoring.check_score_request(body, settings)
        pool = _ready_pool(request, len(body.items))
        deadline = asyncio.get_running_loop().time() + settings.request_timeout_s
        return await scoring.score_request(body, pool, metrics, deadline)

    @app.post(
        "/get_reward",
        response_model=OpenRLHFRewardResponse,
        dependencies=auth,
        responses=responses,
        summary="OpenRLHF remote reward protocol: {query, prompts, labels} -> {rewards, scores, extra_logs}.",
    )
    async def get_reward(body: OpenRLHFRewardRequest, request: Request) -> OpenRLHFRewardResponse:
        scoring.check_openrlhf_request(body, settings)
        pool = _ready_pool(request, len(body.query))
        deadline = asyncio.get_running_loop().time() + settings.request_timeout_s
        return await scoring.score_openrlhf(body, pool, metrics, settings.openrlhf_kind, deadline)


def _add_ops_routes(app: FastAPI, metrics: RewardMetrics) -> None:
    @app.get(
        "/healthz",
        response_model=HealthResponse,
        response_model_exclude_none=True,
        summary="Liveness: the server process answers.",
    )
    async def healthz() -> HealthResponse:
        return HealthResponse(status="ok")

    @app.get(
        "/readyz",
        response_model=HealthResponse,
        response_model_exclude_none=True,
        responses={503: {"model": HealthResponse, "description": "Not ready; `reason` says why."}},
        summary="Readiness: the pool has started and at least one scorer worker is alive (503 otherwise).",
    )
    async def readyz(request: Request) -> Any:
        pool: ScorerPool | None = request.app.state.pool
        # A pool mid-respawn with no live worker still queues items, but a balancer should send them elsewhere.
        reason = "scorer pool not created (server starting or stopping)" if pool is None else pool.not_ready_reason()
        workers = 0 if pool is None else pool.alive_workers
        if reason is not None:
            body = HealthResponse(status="not_ready", workers=workers, reason=reason)
            return JSONResponse(status_code=503, content=body.model_dump())
        return HealthResponse(status="ready", workers=workers)

    @app.get("/metrics", response_class=PlainTextResponse, summary="Prometheus metrics (text exposition format).")
    async def prometheus_metrics(request: Request) -> PlainTextResponse:
        pool: ScorerPool | None = request.app.state.pool
        if pool is not None:
            metrics.queue_depth.set(pool.queue_depth)
        return PlainTextResponse(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

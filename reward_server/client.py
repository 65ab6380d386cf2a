"""HTTP client of the reward server's `POST /v1/score` (DESIGN.md §3), used by rollout workers and benchmarks.

It sits next to `schemas.py` so that the answer is validated against the server's own wire model: a status outside
`RewardStatus`, a missing field or a reordered batch is a `RewardServiceError`, never a silently wrong reward.
Transport errors and 502/503/504 (a proxy or a restarting server) are retried under a `RetryPolicy`; scoring is
idempotent, so a retried batch is safe. Other non-200 answers (413, 422, 500, ...) would fail the same way again
and raise at once.
"""

from __future__ import annotations

import dataclasses
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Protocol

import httpx
from pydantic import ValidationError

from reward_server.schemas import ScoreResponse
from services.core.retry import RetryExhaustedError, RetryPolicy, retry_call
from services.core.wire import RewardStatus

RETRYABLE_STATUS = frozenset({502, 503, 504})
# A few seconds of backoff in all: long enough to ride out a scorer pool being replaced, short of a rollout stall.
DEFAULT_RETRY = RetryPolicy(max_attempts=4, base_delay_s=0.5, max_delay_s=2.0)
_BODY_EXCERPT_CHARS = 1000


class HttpResponse(Protocol):
    """The part of an httpx response the client reads."""

    status_code: int

    @property
    def text(self) -> str: ...

    @property
    def content(self) -> bytes: ...


class HttpClient(Protocol):
    """The part of `httpx.Client` the client uses (FastAPI's TestClient fits too)."""

    def post(self, url: str, *, json: Any) -> HttpResponse: ...

    def close(self) -> None: ...


class RewardServiceError(RuntimeError):
    """The reward server refused the batch, answered nonsense, or stayed unreachable through every retry.

    `status_code` is the HTTP status of a refusal (None for transport failures and malformed answers).
    """

    def __init__(self, message: str, *, status_code: int | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code


class RewardServerUnavailableError(RewardServiceError):
    """The server stayed unreachable (or kept answering 502/503/504) through every retry: an outage, not a verdict.
    Callers that must not lose work (the rollout workers) wait and try again."""


@dataclass(frozen=True)
class ScoreRequestItem:
    """One response to grade; `data_source` names the benchmark (mapped to a scorer by the server)."""

    id: str
    response: str
    ground_truth: str
    data_source: str


@dataclass(frozen=True)
class ScoreResult:
    """The server's verdict on one item: reward 0.0 unless `status` is ok; `detail` says why."""

    id: str
    reward: float
    status: RewardStatus
    detail: str | None


class RewardClient:
    """Batched scoring with a timeout per request and bounded retries (see the module docstring)."""

    def __init__(
        self,
        base_url: str,
        *,
        timeout_s: float = 120.0,
        retry: RetryPolicy = DEFAULT_RETRY,
        http_client: HttpClient | None = None,
        sleep: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
    ) -> None:
        """`http_client` replaces the owned httpx client (its base URL and timeout then apply) and is not closed here;
        tests pass one over `httpx.MockTransport` or a FastAPI TestClient. `sleep` and `rng` drive the backoff.
        """
        self.base_url = base_url.rstrip("/")
        self._retry = retry
        self._sleep = sleep
        self._rng = rng if rng is not None else random.Random()
        self._owns_http = http_client is None
        self._http: HttpClient = http_client or httpx.Client(base_url=self.base_url, timeout=timeout_s)

    def close(self) -> None:
        if self._owns_http:
            self._http.close()

    def __enter__(self) -> RewardClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def score(self, items: Sequence[ScoreRequestItem]) -> list[ScoreResult]:
        """Grade `items`; results come back in the same order, one per item (an empty batch sends nothing)."""
        if not items:
            return []
        body = {"items": [dataclasses.asdict(item) for item in items]}
        try:
            response = retry_call(
                lambda: self._post(body), policy=self._retry, retry_on=_is_transient, sleep=self._sleep, rng=self._rng
            )
        except RetryExhaustedError as exc:
            last = exc.last_error
            reason = str(last) if isinstance(last, RewardServiceError) else f"{type(last).__name__}: {last}"
            raise RewardServerUnavailableError(
                f"reward server at {self.base_url} unreachable after {exc.attempts} attempts: {reason}"
            ) from last
        return _parse_results(items, response)

    def _post(self, body: Any) -> HttpResponse:
        response = self._http.post("/v1/score", json=body)
        if response.status_code != 200:
            raise RewardServiceError(
                f"HTTP {response.status_code} from {self.base_url}/v1/score: {response.text[:_BODY_EXCERPT_CHARS]}",
                status_code=response.status_code,
            )
        return response


def _is_transient(error: Exception) -> bool:
    """Worth retrying: the batch may not have arrived, or a gateway / an overloaded server turned it away."""
    if isinstance(error, RewardServiceError):
        return error.status_code in RETRYABLE_STATUS
    return isinstance(error, httpx.TransportError)


def _parse_results(items: Sequence[ScoreRequestItem], response: HttpResponse) -> list[ScoreResult]:
    """Validate the answer against the server's schema and check it answers `items` one for one, in order."""
    try:
        answer = ScoreResponse.model_validate_json(response.content)
    except ValidationError as exc:
        raise RewardServiceError(f"reward server answered a malformed body: {str(exc)[:_BODY_EXCERPT_CHARS]}") from exc
    if [result.id for result in answer.results] != [item.id for item in items]:
        raise RewardServiceError(
            f"reward server answered {len(answer.results)} results for {len(items)} items, "
            "with ids out of order or missing"
        )
    return [ScoreResult(item.id, r.reward, r.status, r.detail) for item, r in zip(items, answer.results, strict=True)]

"""HTTP client of the controller, used by the trainer and the rollout workers.

Every request has a timeout. Transport failures (connection refused, timeouts, dropped connections) and 5xx answers
are retried under a `RetryPolicy` (services/core/retry.py: capped exponential backoff, full jitter); 4xx answers
are never retried: they raise `ControllerRequestError` at once with the server's explanation. Retrying is safe for
every endpoint because each is idempotent (a repeated identical step report returns the first result; pause/resume
set a flag).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any, Protocol

import httpx

from services.controller.schemas import PhaseResponse, RunStatus, ScheduleResponse, StepReportResponse, StoredStep
from services.core.retry import RetryExhaustedError, RetryPolicy, retry_call
from services.core.wire import StepReport

DEFAULT_RETRY = RetryPolicy(max_attempts=4, base_delay_s=0.2, max_delay_s=2.0)
RUN_RETRY = RetryPolicy(max_attempts=40, base_delay_s=0.5, max_delay_s=5.0)
"""The pipeline's own patience (driver and rollout workers): a controller restarted by its supervisor, or rescheduled
by Kubernetes, is waited for (~1-3 minutes of capped backoff) instead of failing the run."""


class HttpResponse(Protocol):
    """The part of an httpx response the client reads."""

    status_code: int

    @property
    def is_success(self) -> bool: ...

    @property
    def text(self) -> str: ...

    def json(self) -> Any: ...


class HttpClient(Protocol):
    """The part of `httpx.Client` the client uses (FastAPI's TestClient fits too)."""

    def request(
        self, method: str, url: str, *, params: dict[str, Any] | None, json: Any, headers: dict[str, str]
    ) -> HttpResponse: ...

    def get(self, url: str, *, headers: dict[str, str]) -> HttpResponse: ...

    def close(self) -> None: ...


class ControllerRequestError(Exception):
    """The controller refused a request (4xx): `status_code`, stable `code` (e.g. `step_out_of_order`), `body`.

    A 5xx answer is raised as this error only inside the retry loop; when retries run out it surfaces as
    `ControllerUnavailableError`.
    """

    def __init__(self, status_code: int, detail: str, code: str | None, body: Any) -> None:
        super().__init__(f"controller answered {status_code} ({code}): {detail}")
        self.status_code = status_code
        self.detail = detail
        self.code = code
        self.body = body

    @classmethod
    def from_response(cls, response: HttpResponse) -> ControllerRequestError:
        try:
            body = response.json()
        except ValueError:
            body = response.text
        detail: Any = body
        code = None
        if isinstance(body, dict):
            detail = body.get("message") or body.get("detail") or body
            code = body.get("error")
        return cls(response.status_code, str(detail), code, body)


class ControllerUnavailableError(Exception):
    """The controller could not be reached (or kept answering 5xx) within the retry budget."""


class ControllerClient:
    """Typed methods over the controller API with timeouts and bounded retries (see the module docstring)."""

    def __init__(
        self,
        base_url: str,
        *,
        token: str | None = None,
        timeout_s: float = 5.0,
        retry: RetryPolicy = DEFAULT_RETRY,
        http_client: HttpClient | None = None,
        sleep: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
    ) -> None:
        """`http_client` replaces the owned httpx client (tests pass a FastAPI TestClient); it is not closed here.

        `sleep` serves both the retry backoff and `wait_until_resumed`'s polling; `rng` draws the backoff jitter.
        """
        self.base_url = base_url.rstrip("/")
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._retry = retry
        self._sleep = sleep
        self._rng = rng if rng is not None else random.Random()
        self._owns_http = http_client is None
        self._http: HttpClient = http_client or httpx.Client(base_url=self.base_url, timeout=httpx.Timeout(timeout_s))

    def close(self) -> None:
        if self._owns_http:
            self._http.close()

    def __enter__(self) -> ControllerClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _request(self, method: str, path: str, *, params: dict[str, Any] | None = None, json: Any = None) -> Any:
        """Send with retries on transport errors and 5xx; return the decoded JSON of a 2xx answer."""

        def send() -> Any:
            response = self._http.request(method, path, params=params, json=json, headers=self._headers)
            if not response.is_success:
                raise ControllerRequestError.from_response(response)
            return response.json()

        try:
            return retry_call(send, policy=self._retry, retry_on=_is_transient, sleep=self._sleep, rng=self._rng)
        except RetryExhaustedError as exc:
            last = exc.last_error
            reason = str(last) if isinstance(last, ControllerRequestError) else f"{type(last).__name__}: {last}"
            raise ControllerUnavailableError(
                f"controller at {self.base_url} unavailable after {exc.attempts} attempts: {reason}"
            ) from last

    def get_schedule(self) -> ScheduleResponse:
        return ScheduleResponse.model_validate(self._request("GET", "/v1/schedule"))

    def get_phase(self, step: int | None = None) -> PhaseResponse:
        """The phase of `step`, or of the current step (last reported + 1), with policy version and paused flag."""
        params = {"step": step} if step is not None else None
        return PhaseResponse.model_validate(self._request("GET", "/v1/phase", params=params))

    def get_status(self) -> RunStatus:
        return RunStatus.model_validate(self._request("GET", "/v1/status"))

    def report_step(self, report: StepReport) -> StepReportResponse:
        """Report a finished step; safe to retry (a repeated identical report returns the first result)."""
        body = report.model_dump(mode="json")
        return StepReportResponse.model_validate(self._request("POST", "/v1/steps", json=body))

    def get_step(self, step: int) -> StoredStep:
        return StoredStep.model_validate(self._request("GET", f"/v1/steps/{step}"))

    def pause(self, reason: str | None = None) -> RunStatus:
        body = {"reason": reason} if reason is not None else None
        return RunStatus.model_validate(self._request("POST", "/v1/pause", json=body))

    def resume(self) -> RunStatus:
        return RunStatus.model_validate(self._request("POST", "/v1/resume"))

    def ready(self) -> bool:
        """One unretried /readyz probe: True when the controller and its Redis are up."""
        try:
            return self._http.get("/readyz", headers=self._headers).status_code == 200
        except httpx.TransportError:
            return False

    def wait_until_resumed(self, *, poll_interval_s: float = 1.0, timeout_s: float | None = None) -> PhaseResponse:
        """Poll the current phase until the run is not paused; TimeoutError after `timeout_s` (None: forever)."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            current = self.get_phase()
            if not current.paused:
                return current
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"run {current.run_id!r} still paused after {timeout_s} s")
            self._sleep(poll_interval_s)


def _is_transient(error: Exception) -> bool:
    """Worth retrying: the request may not have arrived, or the controller failed on its side (5xx)."""
    if isinstance(error, ControllerRequestError):
        return error.status_code >= 500
    return isinstance(error, httpx.TransportError)

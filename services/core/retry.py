"""Bounded retries with capped exponential backoff and full jitter: the one retry rule of the service clients.

Before retry number n (1-based) a caller sleeps a delay drawn uniformly from [0, min(max_delay_s, base_delay_s *
2**(n-1))] ("full jitter"): clients that failed at the same moment (a restarting server) spread their retries over
the whole window instead of returning together. Which errors are worth retrying is the caller's decision
(`retry_on`); everything else is raised at once. Sleep and randomness are injected so tests neither wait nor guess.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import TypeVar

from pydantic import BaseModel, ConfigDict, Field, model_validator

T = TypeVar("T")

_MAX_EXPONENT = 1023  # 2.0**1024 overflows; any base delay has reached the cap long before


class RetryPolicy(BaseModel):
    """How often to try and how long to wait in between."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_attempts: int = Field(default=4, ge=1, description="Tries in all, the first one included (1: no retry).")
    base_delay_s: float = Field(
        default=0.2, ge=0.0, allow_inf_nan=False, description="Backoff ceiling before the first retry; doubles after."
    )
    max_delay_s: float = Field(
        default=2.0, ge=0.0, allow_inf_nan=False, description="Cap on the backoff ceiling of any retry."
    )
    jitter: bool = Field(
        default=True, description="Full jitter: sleep uniform in [0, ceiling]. False sleeps the ceiling itself."
    )

    @model_validator(mode="after")
    def _cap_not_below_base(self) -> RetryPolicy:
        if self.max_delay_s < self.base_delay_s:
            raise ValueError(
                f"max_delay_s={self.max_delay_s} is below base_delay_s={self.base_delay_s}: every delay would be the"
                " cap; raise max_delay_s or lower base_delay_s"
            )
        return self

    def ceiling_s(self, retry: int) -> float:
        """The largest delay before retry number `retry` (1-based): base * 2**(retry-1), capped at max_delay_s."""
        if retry < 1:
            raise ValueError(f"retry={retry}: retries are numbered from 1")
        return min(self.max_delay_s, self.base_delay_s * 2.0 ** min(retry - 1, _MAX_EXPONENT))

    def delay_s(self, retry: int, rng: random.Random) -> float:
        """The delay to sleep before retry number `retry` (1-based), in [0, ceiling_s(retry)]."""
        ceiling = self.ceiling_s(retry)
        return rng.uniform(0.0, ceiling) if self.jitter else ceiling


class RetryExhaustedError(Exception):
    """Every attempt failed with a retryable error: `attempts` made, `last_error` the final failure (also the cause)."""

    def __init__(self, attempts: int, last_error: Exception) -> None:
        super().__init__(f"gave up after {attempts} attempts: {type(last_error).__name__}: {last_error}")
        self.attempts = attempts
        self.last_error = last_error


def retry_call(
    fn: Callable[[], T],
    *,
    policy: RetryPolicy,
    retry_on: Callable[[Exception], bool],
    sleep: Callable[[float], None] = time.sleep,
    rng: random.Random | None = None,
) -> T:
    """Call `fn` until it returns, retrying the errors `retry_on` accepts, at most `policy.max_attempts` times.

    An error `retry_on` rejects propagates at once, unchanged. When the attempts run out, `RetryExhaustedError`
    carries the attempt count and the last error. `rng` defaults to a fresh OS-seeded generator (no global state).
    """
    rng = rng if rng is not None else random.Random()
    attempt = 1
    while True:
        try:
            return fn()
        except Exception as exc:
            if not retry_on(exc):
                raise
            if attempt >= policy.max_attempts:
                raise RetryExhaustedError(attempt, exc) from exc
        sleep(policy.delay_s(attempt, rng))
        attempt += 1

"""The retry helper: attempts counted, delays capped and jittered within their window, refusals raised at once."""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest
from pydantic import ValidationError

from services.core.retry import RetryExhaustedError, RetryPolicy, retry_call


class Transient(Exception):
    pass


class Fatal(Exception):
    pass


class TopOfWindow(random.Random):
    """Jitter always draws the largest allowed delay, so the ceilings themselves are observable."""

    def uniform(self, a: float, b: float) -> float:
        return b


def failing(errors: list[Exception], result: str = "done") -> tuple[Callable[[], str], list[int]]:
    """A function that raises `errors` one per call, then returns `result`; also the list of calls made."""
    calls: list[int] = []

    def fn() -> str:
        calls.append(1)
        if len(calls) <= len(errors):
            raise errors[len(calls) - 1]
        return result

    return fn, calls


def is_transient(error: Exception) -> bool:
    return isinstance(error, Transient)


def test_succeeds_after_retries_with_doubling_capped_delays() -> None:
    fn, calls = failing([Transient("1"), Transient("2"), Transient("3"), Transient("4")])
    sleeps: list[float] = []
    policy = RetryPolicy(max_attempts=5, base_delay_s=0.5, max_delay_s=1.5)
    assert retry_call(fn, policy=policy, retry_on=is_transient, sleep=sleeps.append, rng=TopOfWindow()) == "done"
    assert len(calls) == 5 and sleeps == [0.5, 1.0, 1.5, 1.5]


def test_no_jitter_sleeps_the_ceiling() -> None:
    fn, _ = failing([Transient("1"), Transient("2")])
    sleeps: list[float] = []
    policy = RetryPolicy(max_attempts=3, base_delay_s=0.25, max_delay_s=10.0, jitter=False)
    retry_call(fn, policy=policy, retry_on=is_transient, sleep=sleeps.append, rng=random.Random(0))
    assert sleeps == [0.25, 0.5]


def test_full_jitter_stays_within_zero_and_the_cap() -> None:
    policy = RetryPolicy(max_attempts=100, base_delay_s=0.1, max_delay_s=0.8)
    rng = random.Random(1234)
    for retry in range(1, 2000):
        ceiling = policy.ceiling_s(retry)
        assert ceiling == (min(0.8, 0.1 * 2.0 ** (retry - 1)) if retry < 64 else 0.8)  # and no overflow
        assert 0.0 <= policy.delay_s(retry, rng) <= ceiling
    draws = [policy.delay_s(10, rng) for _ in range(1000)]
    assert min(draws) < 0.1 and max(draws) > 0.7  # spread over the whole window, not bunched at the top


def test_same_seed_same_delays() -> None:
    policy = RetryPolicy(max_attempts=6)
    first = [policy.delay_s(n, random.Random(7)) for n in range(1, 6)]
    assert first == [policy.delay_s(n, random.Random(7)) for n in range(1, 6)]


def test_non_retryable_error_raised_at_once_unchanged() -> None:
    error = Fatal("bad request")
    fn, calls = failing([Transient("1"), error])
    sleeps: list[float] = []
    with pytest.raises(Fatal) as raised:
        retry_call(fn, policy=RetryPolicy(max_attempts=5), retry_on=is_transient, sleep=sleeps.append)
    assert raised.value is error and len(calls) == 2 and len(sleeps) == 1


def test_exhaustion_surfaces_last_error_and_attempt_count() -> None:
    last = Transient("third")
    fn, calls = failing([Transient("first"), Transient("second"), last])
    sleeps: list[float] = []
    with pytest.raises(RetryExhaustedError, match="after 3 attempts: Transient: third") as raised:
        retry_call(fn, policy=RetryPolicy(max_attempts=3), retry_on=is_transient, sleep=sleeps.append)
    assert raised.value.attempts == 3 and raised.value.last_error is last and raised.value.__cause__ is last
    assert len(calls) == 3 and len(sleeps) == 2  # no sleep after the last attempt


def test_single_attempt_never_sleeps() -> None:
    fn, calls = failing([Transient("once")])
    with pytest.raises(RetryExhaustedError):
        retry_call(fn, policy=RetryPolicy(max_attempts=1), retry_on=is_transient, sleep=lambda _: pytest.fail("slept"))
    assert len(calls) == 1


def test_policy_validation_says_what_to_fix() -> None:
    with pytest.raises(ValidationError, match="max_attempts"):
        RetryPolicy(max_attempts=0)
    with pytest.raises(ValidationError, match="raise max_delay_s or lower base_delay_s"):
        RetryPolicy(base_delay_s=5.0, max_delay_s=1.0)
    with pytest.raises(ValidationError, match="base_delay_s"):
        RetryPolicy(base_delay_s=float("nan"))
    with pytest.raises(ValueError, match="numbered from 1"):
        RetryPolicy().ceiling_s(0)

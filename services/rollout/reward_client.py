"""HTTP client of the reward server's `POST /v1/score`, used by rollout workers (DESIGN.md §3)."""

from __future__ import annotations

import time
from dataclasses import dataclass

import httpx

RETRYABLE_STATUS = frozenset({502, 503, 504})


class RewardServiceError(RuntimeError):
    """The reward server refused the batch or stayed unreachable through every retry."""


@dataclass(frozen=True)
class ScoreRequestItem:
    id: str
    response: str
    ground_truth: str
    data_source: str


@dataclass(frozen=True)
class ScoreResult:
    id: str
    reward: float
    status: str
    detail: str | None


class RewardClient:
    """Batched scoring with timeouts; retries transport errors and 502/503/504 (scoring is idempotent)."""

    def __init__(
        self,
        base_url: str,
        *,
        timeout_s: float = 120.0,
        max_attempts: int = 4,
        backoff_s: float = 0.5,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        if max_attempts < 1:
            raise ValueError(f"max_attempts={max_attempts} must be >= 1")
        self._http = httpx.Client(base_url=base_url.rstrip("/"), timeout=timeout_s, transport=transport)
        self._max_attempts = max_attempts
        self._backoff_s = backoff_s

    def close(self) -> None:
        self._http.close()

    def score(self, items: list[ScoreRequestItem]) -> list[ScoreResult]:
        body = {"items": [item.__dict__ for item in items]}
        last_error = "no attempt made"
        for attempt in range(self._max_attempts):
            if attempt:
                time.sleep(self._backoff_s * 2 ** (attempt - 1))
            try:
                response = self._http.post("/v1/score", json=body)
            except httpx.TransportError as exc:
                last_error = f"{type(exc).__name__}: {exc}"
                continue
            if response.status_code in RETRYABLE_STATUS:
                last_error = f"HTTP {response.status_code}: {response.text[:500]}"
                continue
            if response.status_code != 200:
                raise RewardServiceError(
                    f"reward server refused the batch: HTTP {response.status_code}: {response.text[:1000]}"
                )
            results = [
                ScoreResult(r["id"], float(r["reward"]), r["status"], r.get("detail"))
                for r in response.json()["results"]
            ]
            if [r.id for r in results] != [item.id for item in items]:
                raise RewardServiceError("reward server answered with ids out of order or missing")
            return results
        raise RewardServiceError(f"reward server unreachable after {self._max_attempts} attempts: {last_error}")

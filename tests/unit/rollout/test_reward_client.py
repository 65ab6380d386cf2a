"""The rollout side's reward client: order check, retries on 5xx/transport only, loud refusals."""

from __future__ import annotations

import json

import httpx
import pytest

from services.rollout.reward_client import RewardClient, RewardServiceError, ScoreRequestItem

ITEMS = [ScoreRequestItem("a", "\\boxed{2}", "2", "math"), ScoreRequestItem("b", "3", "2", "gsm8k")]


def _client(handler: object, attempts: int = 3) -> RewardClient:
    return RewardClient("http://reward", max_attempts=attempts, backoff_s=0.0, transport=httpx.MockTransport(handler))  # type: ignore[arg-type]


def _ok(request: httpx.Request) -> httpx.Response:
    items = json.loads(request.content)["items"]
    return httpx.Response(200, json={"results": [{"id": i["id"], "reward": 1.0, "status": "ok"} for i in items]})


def test_scores_in_order() -> None:
    results = _client(_ok).score(ITEMS)
    assert [(r.id, r.reward, r.status) for r in results] == [("a", 1.0, "ok"), ("b", 1.0, "ok")]


def test_retries_503_and_transport_errors_then_succeeds() -> None:
    calls = []

    def flaky(request: httpx.Request) -> httpx.Response:
        calls.append(1)
        if len(calls) == 1:
            raise httpx.ConnectError("refused")
        if len(calls) == 2:
            return httpx.Response(503, text="overloaded")
        return _ok(request)

    assert len(_client(flaky).score(ITEMS)) == 2 and len(calls) == 3


def test_gives_up_after_max_attempts_and_never_retries_4xx() -> None:
    with pytest.raises(RewardServiceError, match="after 2 attempts: HTTP 503"):
        _client(lambda r: httpx.Response(503, text="down"), attempts=2).score(ITEMS)
    calls = []

    def refuse(request: httpx.Request) -> httpx.Response:
        calls.append(1)
        return httpx.Response(413, text="too many items")

    with pytest.raises(RewardServiceError, match="HTTP 413: too many items"):
        _client(refuse).score(ITEMS)
    assert len(calls) == 1


def test_refuses_answers_out_of_order() -> None:
    def shuffled(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"results": [{"id": "b", "reward": 0.0, "status": "ok"},
                                                     {"id": "a", "reward": 1.0, "status": "ok"}]})  # fmt: skip

    with pytest.raises(RewardServiceError, match="out of order"):
        _client(shuffled).score(ITEMS)
    with pytest.raises(ValueError, match="max_attempts"):
        RewardClient("http://x", max_attempts=0)

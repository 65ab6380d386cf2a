"""The reward client: validated answers in order, retries on 502/503/504 and transport errors only, loud refusals."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator

import httpx
import pytest
from fastapi.testclient import TestClient

from reward_server.app import create_app
from reward_server.client import RewardClient, RewardServiceError, ScoreRequestItem, ScoreResult
from reward_server.settings import RewardSettings
from services.core.retry import RetryPolicy

ITEMS = [ScoreRequestItem("a", "\\boxed{2}", "2", "math"), ScoreRequestItem("b", "3", "2", "gsm8k")]
Handler = Callable[[httpx.Request], httpx.Response]


def _client(handler: Handler, attempts: int = 3, sleeps: list[float] | None = None) -> RewardClient:
    sleep = sleeps.append if sleeps is not None else (lambda _: None)
    return RewardClient(
        "http://reward",
        retry=RetryPolicy(max_attempts=attempts, base_delay_s=0.5, max_delay_s=1.0),
        http_client=httpx.Client(base_url="http://reward", transport=httpx.MockTransport(handler)),
        sleep=sleep,
    )


def _ok(request: httpx.Request) -> httpx.Response:
    items = json.loads(request.content)["items"]
    results = [{"id": i["id"], "reward": 1.0, "status": "ok", "extracted": "2"} for i in items]
    return httpx.Response(200, json={"results": results})


def test_scores_in_order_and_sends_the_wire_fields() -> None:
    sent: list[dict[str, object]] = []

    def record(request: httpx.Request) -> httpx.Response:
        sent.extend(json.loads(request.content)["items"])
        return _ok(request)

    with _client(record) as client:
        results = client.score(ITEMS)
    assert results == [ScoreResult("a", 1.0, "ok", None), ScoreResult("b", 1.0, "ok", None)]
    assert sent[0] == {"id": "a", "response": "\\boxed{2}", "ground_truth": "2", "data_source": "math"}


def test_empty_batch_sends_nothing() -> None:
    assert _client(lambda r: pytest.fail("sent a request")).score([]) == []


def test_retries_503_and_transport_errors_then_succeeds() -> None:
    calls: list[int] = []
    sleeps: list[float] = []

    def flaky(request: httpx.Request) -> httpx.Response:
        calls.append(1)
        if len(calls) == 1:
            raise httpx.ConnectError("refused")
        if len(calls) == 2:
            return httpx.Response(503, text="overloaded")
        return _ok(request)

    assert len(_client(flaky, sleeps=sleeps).score(ITEMS)) == 2
    assert len(calls) == 3 and len(sleeps) == 2 and all(0.0 <= s <= 1.0 for s in sleeps)


def test_gives_up_after_max_attempts() -> None:
    sleeps: list[float] = []
    with pytest.raises(
        RewardServiceError, match="unreachable after 2 attempts: HTTP 504 from http://reward/v1/score: down"
    ) as err:
        _client(lambda r: httpx.Response(504, text="down"), attempts=2, sleeps=sleeps).score(ITEMS)
    assert err.value.status_code is None and len(sleeps) == 1
    with pytest.raises(RewardServiceError, match="after 2 attempts: ReadTimeout: slow"):
        _client(lambda r: (_ for _ in ()).throw(httpx.ReadTimeout("slow")), attempts=2).score(ITEMS)


@pytest.mark.parametrize("status", [400, 413, 422, 500])
def test_never_retries_other_refusals(status: int) -> None:
    calls: list[int] = []

    def refuse(request: httpx.Request) -> httpx.Response:
        calls.append(1)
        return httpx.Response(status, text="too many items")

    with pytest.raises(RewardServiceError, match=f"HTTP {status} from http://reward/v1/score: too many items") as err:
        _client(refuse, sleeps=[]).score(ITEMS)
    assert err.value.status_code == status and len(calls) == 1


def test_refuses_answers_out_of_order_or_missing() -> None:
    def answer(ids: list[str]) -> Handler:
        return lambda r: httpx.Response(200, json={"results": [{"id": i, "reward": 0.0, "status": "ok"} for i in ids]})

    for ids in (["b", "a"], ["a"], ["a", "b", "c"]):
        with pytest.raises(RewardServiceError, match="out of order or missing"):
            _client(answer(ids)).score(ITEMS)


@pytest.mark.parametrize(
    "body",
    [
        {"results": [{"id": "a", "reward": 0.0, "status": "crashed"}, {"id": "b", "reward": 0.0, "status": "ok"}]},
        {"results": [{"id": "a", "status": "ok"}, {"id": "b", "reward": 0.0, "status": "ok"}]},
        {"verdicts": []},
    ],
)
def test_refuses_malformed_answers(body: dict[str, object]) -> None:
    calls: list[int] = []

    def malformed(request: httpx.Request) -> httpx.Response:
        calls.append(1)
        return httpx.Response(200, json=body)

    with pytest.raises(RewardServiceError, match="malformed body"):
        _client(malformed).score(ITEMS)
    assert len(calls) == 1  # a wrong answer is not transient


def test_refuses_a_body_that_is_not_json() -> None:
    with pytest.raises(RewardServiceError, match="malformed body"):
        _client(lambda r: httpx.Response(200, text="<html>gateway</html>")).score(ITEMS)


@pytest.fixture(scope="module")
def reward_app() -> Iterator[TestClient]:
    """The real app with a one-worker pool (TestClient runs the lifespan)."""
    with TestClient(create_app(RewardSettings(workers=1, item_timeout_s=5.0, request_timeout_s=20.0))) as app:
        deadline = time.monotonic() + 60.0
        while app.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline, "scorer pool did not come up"
            time.sleep(0.05)
        yield app


def test_speaks_the_servers_schema(reward_app: TestClient) -> None:
    """Client and server agree on the wire: fields sent, ids echoed, statuses and rewards read back."""
    items = [*ITEMS, ScoreRequestItem("c", "1", "1", "no-such-benchmark")]
    with RewardClient("http://testserver", http_client=reward_app) as client:
        results = client.score(items)
    assert [(r.id, r.reward, r.status) for r in results] == [("a", 1.0, "ok"), ("b", 0.0, "ok"), ("c", 0.0, "invalid")]
    assert results[2].detail

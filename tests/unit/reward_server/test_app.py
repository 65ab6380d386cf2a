"""The reward server in-process (TestClient runs the lifespan, so a real 1-worker pool backs these tests)."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable, Iterator

import psutil
import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from reward_server.app import create_app
from reward_server.scoring import split_query
from reward_server.server import main, settings_from_args
from reward_server.settings import RewardSettings
from tests.stub_scorers import CRASH, HANG, NAN, RAISE, misbehaving_score

ITEM_TIMEOUT_S = 1.0


def _settings(**overrides: object) -> RewardSettings:
    base: dict[str, object] = {
        "workers": 1,
        "item_timeout_s": ITEM_TIMEOUT_S,
        "request_timeout_s": 20.0,
        "max_items": 8,
        "max_text_chars": 1000,
        "max_body_bytes": 64 * 1024,
    }
    return RewardSettings(**(base | overrides))  # type: ignore[arg-type]


def _wait_until(condition: Callable[[], bool], what: str, timeout_s: float = 120.0) -> None:
    """Poll `condition`; the timeout only keeps a broken pool from hanging the suite (no speed is asserted)."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"{what}: not within {timeout_s} s"
        time.sleep(0.05)


def _wait_ready(client: TestClient) -> None:
    _wait_until(lambda: client.get("/readyz").status_code == 200, "scorer pool up")


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    app = create_app(_settings(), score_fn=misbehaving_score)
    with TestClient(app) as test_client:
        _wait_ready(test_client)
        yield test_client


def _item(i: object, response: str, ground_truth: object = "2", **extra: object) -> dict[str, object]:
    return {"id": i, "response": response, "ground_truth": ground_truth, "kind": "math"} | extra


def _metric(client: TestClient, line_prefix: str) -> float:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(line_prefix + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


# ---------------------------------------------------------------- happy path


def test_health_and_ready(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json() == {"status": "ready", "workers": 1}


def test_score_keeps_order_ids_and_kinds(client: TestClient) -> None:
    items = [
        _item(7, "so \\boxed{2}"),
        {"id": "g", "response": "... #### 42", "ground_truth": 42, "data_source": "openai/gsm8k"},
        _item("wrong", "\\boxed{3}"),
        {"id": "bad-kind", "response": "1", "ground_truth": "1", "kind": "chess"},
        {"id": "no-kind", "response": "1", "ground_truth": "1"},
        _item("empty-gt", "\\boxed{1}", ground_truth="  "),
        _item("empty-response", ""),
    ]
    results = client.post("/v1/score", json={"items": items}).json()["results"]
    assert [r["id"] for r in results] == [7, "g", "wrong", "bad-kind", "no-kind", "empty-gt", "empty-response"]
    assert [r["status"] for r in results] == ["ok", "ok", "ok", "invalid", "invalid", "invalid", "ok"]
    assert [r["reward"] for r in results] == [1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0]
    assert results[0]["extracted"] == "2"
    assert "chess" in results[3]["detail"] and "math" in results[3]["detail"]
    assert "empty" in results[5]["detail"]


def test_empty_batch(client: TestClient) -> None:
    assert client.post("/v1/score", json={"items": []}).json() == {"results": []}


# ---------------------------------------------------------------- misbehaving scorers


def test_stuck_item_is_killed_answered_timeout_and_worker_replaced(client: TestClient) -> None:
    restarts = _metric(client, 'rlvr_reward_pool_restarts_total{reason="timeout"}')
    body = {"items": [_item("a", "\\boxed{2}"), _item("stuck", HANG), _item("b", "\\boxed{2}")]}
    results = client.post("/v1/score", json=body).json()["results"]
    assert [r["status"] for r in results] == ["ok", "timeout", "ok"]
    # The server's own deadline ended the item: its item limit (not the request's), however busy the machine.
    assert results[1]["detail"] == f"scoring exceeded the {ITEM_TIMEOUT_S:.2f}s item wall-clock limit; worker killed"
    assert _metric(client, 'rlvr_reward_pool_restarts_total{reason="timeout"}') == restarts + 1
    assert _metric(client, "rlvr_reward_timeouts_total") >= 1
    _wait_ready(client)
    assert client.get("/readyz").json()["workers"] == 1


@pytest.mark.parametrize(
    ("marker", "status", "detail"),
    [(CRASH, "error", "died"), (RAISE, "error", "scorer bug"), (NAN, "error", "non-finite")],
)
def test_scorer_failures_mark_only_their_item(client: TestClient, marker: str, status: str, detail: str) -> None:
    body = {"items": [_item("bad", marker), _item("good", "\\boxed{2}")]}
    results = client.post("/v1/score", json=body).json()["results"]
    assert (results[0]["status"], results[0]["reward"]) == (status, 0.0)
    assert detail in results[0]["detail"]
    assert (results[1]["status"], results[1]["reward"]) == ("ok", 1.0)


# ---------------------------------------------------------------- malformed requests: 422 with a message


@pytest.mark.parametrize(
    ("body", "where"),
    [
        ({"items": [{"id": 1, "ground_truth": "1"}]}, "items.0.response"),
        ({"items": [{"id": 1, "response": ["x"], "ground_truth": "1"}]}, "items.0.response"),
        ({"items": [{"id": None, "response": "x", "ground_truth": "1"}]}, "items.0.id"),
        ({"items": [{"id": 1, "response": "x", "ground_truth": "1", "answer": "1"}]}, "items.0.answer"),
        ({"items": {"id": 1}}, "body.items"),
        ({}, "body.items"),
        ([], "body"),
    ],
)
def test_schema_violations_are_422_naming_the_field(client: TestClient, body: object, where: str) -> None:
    response = client.post("/v1/score", json=body)
    assert response.status_code == 422
    assert where in response.json()["message"]


@pytest.mark.parametrize(
    ("raw", "expect"),
    [
        (b'{"items": [', "JSON"),
        (b'{"items": [{"id": 1, "response": "\xff\xfe", "ground_truth": "1"}]}', "UTF-8"),
        (b"[" * 10_000 + b"]" * 10_000, "nested"),
        (b"", "body: Field required"),
    ],
)
def test_unparseable_bodies_are_422(client: TestClient, raw: bytes, expect: str) -> None:
    response = client.post("/v1/score", content=raw, headers={"content-type": "application/json"})
    assert response.status_code == 422, response.text
    assert expect in response.json()["message"]


def test_validation_errors_do_not_echo_input(client: TestClient) -> None:
    response = client.post("/v1/score", json={"items": [{"id": 1, "response": ["x" * 5000], "ground_truth": "1"}]})
    assert response.status_code == 422
    assert "xxxxx" not in response.text


# ---------------------------------------------------------------- limits: 413


@pytest.mark.parametrize(
    ("route", "body", "expect"),
    [
        ("/v1/score", {"items": [_item(i, "1") for i in range(9)]}, "max_items=8"),
        ("/v1/score", {"items": [_item(0, "1"), _item(1, "x" * 1001)]}, "items.1.response"),
        ("/v1/score", {"items": [_item(0, "1", prompt="p" * 1001)]}, "items.0.prompt"),
        ("/get_reward", {"query": ["q" * 1001], "labels": ["1"]}, "query.0"),
        ("/get_reward", {"query": ["q"] * 9, "labels": ["1"] * 9}, "max_items=8"),
        ("/v1/score", {"items": [_item(0, "x" * 900)] * 100}, "max_body_bytes"),
    ],
)
def test_limits_answer_413(client: TestClient, route: str, body: object, expect: str) -> None:
    response = client.post(route, json=body)
    assert response.status_code == 413
    assert expect in response.json()["detail"]


def test_body_limit_refuses_declared_length_without_reading(client: TestClient) -> None:
    response = client.post("/v1/score", content=b"x" * (64 * 1024 + 1), headers={"content-type": "application/json"})
    assert response.status_code == 413


# ---------------------------------------------------------------- OpenRLHF shim


def test_get_reward_shape(client: TestClient) -> None:
    body = {
        "query": ["<s>Q: 1+1? Show \\boxed{7} style. A: \\boxed{2}", "Q: 2+2? A: \\boxed{5}", "no prompt \\boxed{3}"],
        "prompts": ["Q: 1+1? Show \\boxed{7} style. A:", "Q: 2+2? A:", "elsewhere"],
        "labels": ["2", "4", 3],
        "future_key": "ignored",
    }
    data = client.post("/get_reward", json=body).json()
    assert data == {
        "rewards": [1.0, 0.0, 1.0],
        "scores": [1.0, 0.0, 1.0],
        "extra_logs": {"reward_timeout": [0.0, 0.0, 0.0], "reward_failed": [0.0, 0.0, 0.0]},
    }


def test_get_reward_flags_failures_in_extra_logs(client: TestClient) -> None:
    data = client.post("/get_reward", json={"query": [RAISE, "\\boxed{1}"], "labels": ["1", ""]}).json()
    assert data["rewards"] == [0.0, 0.0]
    assert data["extra_logs"]["reward_failed"] == [1.0, 1.0]


@pytest.mark.parametrize(
    ("body", "expect"),
    [
        ({"query": ["a", "b"], "labels": ["1"]}, "one entry per sample"),
        ({"query": ["a"], "prompts": [], "labels": ["1"]}, "prompts=0"),
        ({"query": ["a"]}, "body.labels"),
    ],
)
def test_get_reward_malformed(client: TestClient, body: object, expect: str) -> None:
    response = client.post("/get_reward", json=body)
    assert response.status_code == 422
    assert expect in json.dumps(response.json())


@pytest.mark.parametrize(
    ("query", "prompt", "response"),
    [
        ("PROMPT answer", "PROMPT", " answer"),
        ("<bos>PROMPT answer", "PROMPT", " answer"),
        ("P R O M P T answer", "PROMPT", "P R O M P T answer"),
        ("whole", None, "whole"),
        ("whole", "", "whole"),
    ],
)
def test_split_query(query: str, prompt: str | None, response: str) -> None:
    assert split_query(query, prompt) == response


# ---------------------------------------------------------------- metrics, readiness, auth, settings


def test_metrics_catalog(client: TestClient) -> None:
    client.post("/v1/score", json={"items": [_item(1, "\\boxed{2}")]})
    text = client.get("/metrics").text
    for name in (
        'rlvr_reward_requests_total{code="200",route="/v1/score"}',
        'rlvr_reward_request_duration_seconds_bucket{le="0.005",route="/v1/score"}',
        'rlvr_reward_items_total{kind="math",status="ok"}',
        "rlvr_reward_item_duration_seconds_count",
        "rlvr_reward_timeouts_total",
        'rlvr_reward_pool_restarts_total{reason="crash"}',
        "rlvr_reward_queue_depth",
        "rlvr_reward_pool_workers 1.0",
    ):
        assert name in text
    client.get("/no/such/path")
    assert 'route="other"' in client.get("/metrics").text


def _forkserver() -> psutil.Process:
    """multiprocessing's forkserver of this test process: every scorer worker of the pools here is its child."""
    children = psutil.Process().children()
    [server] = [p for p in children if p.is_running() and "forkserver" in " ".join(p.cmdline())]
    return server


def test_readyz_is_503_with_a_reason_while_no_worker_is_alive(client: TestClient) -> None:
    forkserver = _forkserver()
    forkserver.suspend()  # SIGSTOP to our own child: no replacement worker can start until it is resumed
    try:
        [crashed] = client.post("/v1/score", json={"items": [_item("c", CRASH)]}).json()["results"]
        not_ready = client.get("/readyz")
    finally:
        forkserver.resume()
    assert crashed["status"] == "error"
    assert not_ready.status_code == 503
    assert not_ready.json()["status"] == "not_ready" and not_ready.json()["workers"] == 0
    assert not_ready.json()["reason"].startswith("no live scorer worker")
    _wait_ready(client)
    assert client.get("/readyz").json() == {"status": "ready", "workers": 1}


def test_worker_that_dies_idle_is_replaced_without_traffic(client: TestClient) -> None:
    """Else /readyz would stay 503 until an item came, and a load balancer sends none to a 503."""
    crashes = _metric(client, 'rlvr_reward_pool_restarts_total{reason="crash"}')
    [worker] = _forkserver().children()
    os.kill(worker.pid, signal.SIGKILL)  # as the OOM killer would; our own pool's worker, by its PID
    _wait_until(lambda: _metric(client, 'rlvr_reward_pool_restarts_total{reason="crash"}') > crashes, "replaced")
    _wait_ready(client)
    assert client.get("/readyz").json() == {"status": "ready", "workers": 1}
    assert worker.pid not in [p.pid for p in _forkserver().children()]


def test_not_ready_before_lifespan() -> None:
    client = TestClient(create_app(_settings()))  # no `with`: lifespan not run, no pool
    not_ready = client.get("/readyz")
    assert not_ready.status_code == 503 and not_ready.json()["reason"].startswith("scorer pool not created")
    response = client.post("/v1/score", json={"items": [_item(1, "1")]})
    assert response.status_code == 503
    assert response.headers["retry-after"] == "1"


def test_bearer_token() -> None:
    client = TestClient(create_app(_settings(api_token="s3cret")))
    body = {"items": [_item(1, "1")]}
    assert client.post("/v1/score", json=body).status_code == 401
    bad = client.post("/v1/score", json=body, headers={"Authorization": "Bearer nope"})
    assert bad.status_code == 401 and bad.headers["www-authenticate"] == "Bearer"
    good = client.post("/v1/score", json=body, headers={"Authorization": "Bearer s3cret"})
    assert good.status_code == 503  # past auth; no pool without the lifespan
    assert client.get("/healthz").status_code == 200


def test_settings_validation_and_env(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValidationError, match="request_timeout_s"):
        RewardSettings(item_timeout_s=10, request_timeout_s=5)
    with pytest.raises(ValidationError):
        RewardSettings(nonsense=1)  # type: ignore[call-arg]
    monkeypatch.setenv("RLVR_REWARD_WORKERS", "3")
    monkeypatch.setenv("RLVR_REWARD_PORT", "9000")
    settings = settings_from_args(["--port", "9100", "--timeout-s", "2.5"])
    assert (settings.workers, settings.port, settings.item_timeout_s) == (3, 9100, 2.5)


def test_main_refuses_bad_flags(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--workers", "0"]) == 2
    assert "workers" in capsys.readouterr().err

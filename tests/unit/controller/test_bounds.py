"""Request bounds of the controller API: phase steps, body size, metric count and metric names."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from services.controller.app import MAX_BODY_BYTES, MAX_PHASE_STEP, create_app
from services.controller.settings import ControllerSettings
from services.core.wire import MAX_METRIC_NAME_CHARS, MAX_REPORT_METRICS
from tests.run_configs import run_config

TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def client(embedded_redis_url: str, run_id: str) -> Iterator[TestClient]:
    settings = ControllerSettings(redis_url=embedded_redis_url, token=TOKEN)
    with contextlib.ExitStack() as stack:
        yield stack.enter_context(TestClient(create_app(settings, run_config=run_config(run_id, 10))))


def _body(client: TestClient, step: int, metrics: dict[str, Any]) -> dict[str, Any]:
    phase = client.get("/v1/phase", params={"step": step}).json()
    return {
        "run_id": phase["run_id"],
        "step": step,
        "policy_version": step,
        "phase": phase["phase"],
        "metrics": metrics,
    }


def test_phase_step_bound(client: TestClient) -> None:
    assert MAX_PHASE_STEP == 1_000_000
    last = client.get("/v1/phase", params={"step": MAX_PHASE_STEP})
    assert last.status_code == 200 and last.json()["phase"]["ratio"] == 0.0
    beyond = client.get("/v1/phase", params={"step": MAX_PHASE_STEP + 1})
    assert beyond.status_code == 422 and beyond.json()["message"].startswith("query.step: ")
    assert client.get("/v1/phase", params={"step": "9" * 25}).status_code == 422


def test_a_body_over_the_limit_is_413(client: TestClient) -> None:
    metrics = {f"train/{'x' * 120}_{i:06d}": 0.0 for i in range(MAX_BODY_BYTES // 120)}
    response = client.post("/v1/steps", json=_body(client, 1, metrics), headers=AUTH)
    assert response.status_code == 413
    raw = b'{"run_id": "' + b"a" * (MAX_BODY_BYTES + 1) + b'"}'
    response = client.post("/v1/steps", content=raw, headers={**AUTH, "Content-Type": "application/json"})
    assert response.status_code == 413 and "max_body_bytes" in response.json()["detail"]
    assert client.get("/v1/status").json()["last_reported_step"] == 0


def test_a_body_just_under_the_limit_is_parsed(client: TestClient) -> None:
    body = json.dumps(_body(client, 1, {})).encode()
    padded = body[:-1] + b" " * (MAX_BODY_BYTES - len(body)) + b"}"
    assert len(padded) == MAX_BODY_BYTES
    response = client.post("/v1/steps", content=padded, headers={**AUTH, "Content-Type": "application/json"})
    assert response.status_code == 200


def test_metric_count_bound(client: TestClient) -> None:
    too_many = {f"train/m{i}": 1.0 for i in range(MAX_REPORT_METRICS + 1)}
    response = client.post("/v1/steps", json=_body(client, 1, too_many), headers=AUTH)
    assert response.status_code == 422 and "metrics" in response.json()["message"]
    enough = {f"train/m{i}": 1.0 for i in range(MAX_REPORT_METRICS)}
    assert client.post("/v1/steps", json=_body(client, 1, enough), headers=AUTH).status_code == 200


def test_metric_name_bound(client: TestClient) -> None:
    long_name = "train/" + "n" * (MAX_METRIC_NAME_CHARS - 5)
    assert len(long_name) == MAX_METRIC_NAME_CHARS + 1
    response = client.post("/v1/steps", json=_body(client, 1, {long_name: 1.0}), headers=AUTH)
    assert response.status_code == 422 and "metrics" in response.json()["message"]
    exact = {long_name[:-1]: 1.0}
    assert client.post("/v1/steps", json=_body(client, 1, exact), headers=AUTH).status_code == 200

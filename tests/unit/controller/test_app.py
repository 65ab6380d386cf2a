"""The controller HTTP API through FastAPI's TestClient (lifespan included) on an embedded Redis."""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from services.controller import server
from services.controller.app import create_app
from services.controller.errors import ScheduleConflictError
from services.controller.settings import ControllerSettings
from services.core.config import RunConfig
from services.core.queues import PROMPTS
from services.core.redis_conn import EmbeddedRedis
from services.core.redis_streams import RedisStreamQueue, delete_run_streams
from services.core.wire import PromptGroup

TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
MakeClient = Callable[..., TestClient]


@pytest.fixture
def make_client(embedded_redis_url: str, make_run_config: Callable[..., RunConfig]) -> Iterator[MakeClient]:
    """Start apps (lifespan entered) for this test's run; all are closed at teardown."""
    with contextlib.ExitStack() as stack:

        def make(
            *, token: str | None = TOKEN, redis_url: str | None = None, run_config: RunConfig | None = None, **kw: Any
        ) -> TestClient:
            settings = ControllerSettings(redis_url=redis_url or embedded_redis_url, token=token, **kw)
            app = create_app(settings, run_config=run_config or make_run_config())
            return stack.enter_context(TestClient(app))

        yield make


def report_body(client: TestClient, step: int, **changes: Any) -> dict[str, Any]:
    phase = client.get("/v1/phase", params={"step": step}).json()
    body = {"run_id": phase["run_id"], "step": step, "policy_version": step, "phase": phase["phase"], "metrics": {}}
    return {**body, **changes}


def post_step(client: TestClient, step: int, **changes: Any) -> Any:
    return client.post("/v1/steps", json=report_body(client, step, **changes), headers=AUTH)


def metric_values(text: str) -> dict[str, float]:
    """`name{label="v"}` -> value for every sample of an exposition text."""
    values = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            values[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return values


def test_schedule_returns_config_steps_and_curve(make_client: MakeClient) -> None:
    body = make_client().get("/v1/schedule").json()
    assert (body["total_steps"], body["min_step"], body["max_step"]) == (10, 0, 8)
    assert body["config"]["mode"] == "linear" and body["schedule_force_count"] == 0
    assert [p["step"] for p in body["curve"]] == list(range(1, 11))
    assert body["curve"][7] == {"step": 8, "progress": 1.0, "ratio": 0.0, "stage": "general"}


def test_phase_current_requested_and_past_the_end(make_client: MakeClient) -> None:
    client = make_client()
    current = client.get("/v1/phase").json()
    assert current["current_step"] == 1 and current["phase"]["step"] == 1
    assert (current["policy_version"], current["paused"], current["complete"]) == (0, False, False)
    assert client.get("/v1/phase", params={"step": 4}).json()["phase"]["step"] == 4
    beyond = client.get("/v1/phase", params={"step": 50}).json()["phase"]
    assert beyond == {"step": 50, "progress": 1.0, "ratio": 0.0, "stage": "general"}


@pytest.mark.parametrize("step", ["0", "-3", "abc", "1.5"])
def test_bad_phase_step_is_422_with_message(make_client: MakeClient, step: str) -> None:
    response = make_client().get("/v1/phase", params={"step": step})
    assert response.status_code == 422
    body = response.json()
    assert body["error"] == "validation_error" and body["message"].startswith("query.step: ")


def test_step_report_flow(make_client: MakeClient) -> None:
    client = make_client()
    first = post_step(client, 1, metrics={"train/loss": 0.25})
    assert first.status_code == 200
    body = first.json()
    assert body["duplicate"] is False and body["next_phase"]["step"] == 2
    again = post_step(client, 1, metrics={"train/loss": 0.25})
    assert again.status_code == 200 and again.json() == {**body, "duplicate": True}
    current = client.get("/v1/phase").json()
    assert (current["current_step"], current["last_reported_step"], current["policy_version"]) == (2, 1, 1)
    stored = client.get("/v1/steps/1").json()
    assert stored["report"]["metrics"] == {"train/loss": 0.25}
    assert client.get("/v1/steps/2").status_code == 404
    assert client.get("/v1/steps/0").status_code == 422


@pytest.mark.parametrize(
    ("step", "changes", "code"),
    [
        (2, {}, "step_out_of_order"),
        (1, {"policy_version": 9}, "duplicate_step_mismatch"),
        (11, {}, "step_beyond_run"),
    ],
)
def test_conflicting_reports_are_409(make_client: MakeClient, step: int, changes: dict[str, Any], code: str) -> None:
    client = make_client()
    if code != "step_out_of_order":
        assert post_step(client, 1).status_code == 200
    response = post_step(client, step, **changes)
    assert response.status_code == 409 and response.json()["error"] == code
    assert response.json()["detail"]


def test_wrong_phase_is_409_with_expected_phase(make_client: MakeClient) -> None:
    client = make_client()
    body = report_body(client, 1)
    body["phase"] = {**body["phase"], "ratio": 0.5}
    response = client.post("/v1/steps", json=body, headers=AUTH)
    assert response.status_code == 409 and response.json()["error"] == "phase_mismatch"
    assert response.json()["expected_phase"]["ratio"] == pytest.approx(0.99 * 7 / 8)


def test_other_run_is_404(make_client: MakeClient) -> None:
    client = make_client()
    response = post_step(client, 1, run_id="another-run")
    assert response.status_code == 404 and "this controller serves run" in response.json()["detail"]


@pytest.mark.parametrize(
    ("mutate", "where"),
    [
        (lambda b: b.pop("phase"), "body.phase"),
        (lambda b: b.update(step=0), "body.step"),
        (lambda b: b.update(policy_version=-1), "body.policy_version"),
        (lambda b: b.update(metrics={"train/loss": math.nan}), "body.metrics"),
        (lambda b: b.update(surprise=1), "body.surprise"),
        (lambda b: b.update(schema_version=2), "body.schema_version"),
    ],
    ids=["missing-phase", "step-0", "negative-version", "nan-metric", "unknown-field", "schema-version"],
)
def test_malformed_report_is_422(make_client: MakeClient, mutate: Callable[[dict[str, Any]], Any], where: str) -> None:
    client = make_client()
    body = report_body(client, 1)
    mutate(body)
    # json.dumps writes NaN as a bare token (as some clients do); httpx's json= would refuse to send it.
    headers = {**AUTH, "Content-Type": "application/json"}
    response = client.post("/v1/steps", content=json.dumps(body), headers=headers)
    assert response.status_code == 422
    assert where in response.json()["message"]


def test_auth_on_mutating_endpoints_only(make_client: MakeClient) -> None:
    client = make_client()
    for path in ("/v1/pause", "/v1/resume", "/v1/steps"):
        missing = client.post(path, json={})
        assert missing.status_code == 401 and missing.headers["www-authenticate"].startswith("Bearer")
        assert client.post(path, json={}, headers={"Authorization": "Basic abc"}).status_code == 401
        assert client.post(path, json={}, headers={"Authorization": "Bearer wrong"}).status_code == 403
    assert client.get("/v1/schedule").status_code == 200 and client.get("/v1/phase").status_code == 200
    assert client.post("/v1/pause", headers=AUTH).status_code == 200


def test_no_token_means_open(make_client: MakeClient) -> None:
    client = make_client(token=None)
    assert client.post("/v1/pause").status_code == 200


def test_pause_resume_visible_in_phase(make_client: MakeClient) -> None:
    client = make_client()
    paused = client.post("/v1/pause", json={"reason": "rebalancing"}, headers=AUTH).json()
    assert paused["paused"] and paused["pause_reason"] == "rebalancing"
    assert client.get("/v1/phase").json()["paused"] is True
    assert client.post("/v1/resume", headers=AUTH).json()["paused"] is False
    assert client.get("/v1/status").json()["paused"] is False


def test_restarted_app_serves_the_same_state(make_client: MakeClient) -> None:
    first = make_client()
    assert post_step(first, 1).status_code == 200
    second = make_client()
    assert second.get("/v1/schedule").json() == first.get("/v1/schedule").json()
    assert second.get("/v1/phase").json()["current_step"] == 2


def test_startup_refuses_changed_schedule_unless_forced(
    make_client: MakeClient, make_run_config: Callable[..., RunConfig]
) -> None:
    make_client()
    with pytest.raises(ScheduleConflictError, match="--force-schedule"):
        make_client(run_config=make_run_config(max_ratio=0.5))
    forced = make_client(run_config=make_run_config(max_ratio=0.5), force_schedule=True)
    body = forced.get("/v1/schedule").json()
    assert body["max_step"] == 5 and body["schedule_force_count"] == 1


def test_health_ready_and_redis_outage(make_client: MakeClient) -> None:
    with EmbeddedRedis() as private:
        client = make_client(redis_url=private.url, redis_socket_timeout_s=1.0)
        assert client.get("/readyz").json()["status"] == "ready"
        private.stop()
        assert client.get("/healthz").status_code == 200
        assert client.get("/readyz").status_code == 503
        outage = client.get("/v1/phase")
        assert outage.status_code == 503 and outage.json()["error"] == "redis_unavailable"
        assert "Redis at unix://" in outage.json()["detail"]
        assert metric_values(client.get("/metrics").text)["rlvr_controller_redis_up"] == 0


def test_missing_run_state_is_503(make_client: MakeClient, redis_client: redis.Redis, run_id: str) -> None:
    client = make_client()
    redis_client.delete(f"rlvr:{run_id}:state")
    assert client.get("/readyz").status_code == 503
    response = client.get("/v1/phase")
    assert response.status_code == 503 and response.json()["error"] == "run_state_missing"


def test_metrics_reflect_redis_state(make_client: MakeClient, run_id: str) -> None:
    client = make_client()
    before_reports = time.time()
    for step in (1, 2):
        post_step(client, step, policy_version=step + 10)
    post_step(client, 2, policy_version=12)
    post_step(client, 5)
    client.post("/v1/pause", headers=AUTH)
    values = metric_values(client.get("/metrics").text)
    since_reports = time.time() - before_reports
    assert values["rlvr_controller_current_step"] == 3 and values["rlvr_controller_last_reported_step"] == 2
    assert values["rlvr_controller_policy_version"] == 12 and values["rlvr_controller_paused"] == 1
    assert values["rlvr_controller_schedule_ratio"] == pytest.approx(0.99 * (1 - 3 / 8))
    assert (
        values['rlvr_controller_stage{stage="anneal"}'] == 1 and values['rlvr_controller_stage{stage="general"}'] == 0
    )
    # the age of the last accepted report: no older than the time since this test began reporting
    assert 0 <= values["rlvr_controller_last_report_age_seconds"] <= since_reports + 1e-3
    assert values[f'rlvr_controller_run_info{{run_id="{run_id}",schedule_mode="linear"}}'] == 1
    assert values['rlvr_controller_step_reports_total{outcome="accepted"}'] == 2
    assert values['rlvr_controller_step_reports_total{outcome="duplicate"}'] == 1
    assert values['rlvr_controller_step_reports_total{outcome="rejected"}'] == 1
    assert values['rlvr_controller_requests_total{code="409",route="/v1/steps"}'] == 1
    assert values['rlvr_controller_request_duration_seconds_count{route="/v1/phase"}'] >= 4


def test_metrics_show_the_run_backlog_and_dead_letters(
    make_client: MakeClient, run_id: str, redis_client: redis.Redis
) -> None:
    """The controller exports the run's stream backlog (read-only: it creates no stream or group itself)."""
    client = make_client()
    values = metric_values(client.get("/metrics").text)
    assert values['rlvr_controller_queue_entries{state="lag",stream="prompts"}'] == 0
    assert values["rlvr_controller_dead_letters"] == 0
    assert redis_client.exists(f"rlvr:{run_id}:prompts") == 0
    try:
        prompts = RedisStreamQueue(redis_client, PROMPTS, run_id)
        for i in range(3):
            prompts.publish(PromptGroup(group_id=f"g{i}", step=1, prompt="p", label="1", data_source="gsm8k", n=2))
        prompts.read("worker-a", count=1)
        prompts.publish_fields({"garbage": b"\xff"})
        prompts.read("worker-a", count=5)  # the undecodable entry goes straight to the dead letters
        values = metric_values(client.get("/metrics").text)
        assert values['rlvr_controller_queue_entries{state="pending",stream="prompts"}'] == 3
        assert values['rlvr_controller_queue_entries{state="lag",stream="prompts"}'] == 0
        assert values['rlvr_controller_queue_consumers{stream="prompts"}'] == 1
        assert values['rlvr_controller_queue_entries{state="lag",stream="rollouts"}'] == 0
        assert values["rlvr_controller_dead_letters"] == 1
    finally:
        delete_run_streams(redis_client, run_id)


def test_settings_honour_redis_url_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_URL", "redis://from-env:6379/0")
    assert ControllerSettings().redis_url == "redis://from-env:6379/0"
    monkeypatch.setenv("RLVR_CONTROLLER_REDIS_URL", "redis://specific:6379/0")
    assert ControllerSettings().redis_url == "redis://specific:6379/0"
    assert ControllerSettings(redis_url="redis://explicit").redis_url == "redis://explicit"


def test_create_app_needs_a_run_config() -> None:
    with pytest.raises(ValueError, match="--config"):
        create_app(ControllerSettings(redis_url="redis://unused"))


def test_server_flags_override_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("RLVR_CONTROLLER_PORT", "9100")
    monkeypatch.setenv("MY_TOKEN", "tok")
    args = server.build_parser().parse_args(
        ["--port", "9200", "--config", "x.toml", "--set", "total_steps=5", "--token-env", "MY_TOKEN"]
    )
    settings = server.settings_from_args(args)
    assert settings.port == 9200 and settings.run_config_overrides == ["total_steps=5"]
    assert settings.token is not None and settings.token.get_secret_value() == "tok"
    assert settings.force_schedule is False
    assert server.main(["--config", str(tmp_path / "absent.toml")]) == server.EXIT_BAD_CONFIG
    assert server.main(["--config", "x.toml", "--token-env", "UNSET_TOKEN_VAR_FOR_TEST"]) == server.EXIT_BAD_CONFIG

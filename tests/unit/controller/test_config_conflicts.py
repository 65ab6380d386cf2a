"""The run's settings stored with it: a resume with other settings is refused; pausing holds new step reports."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient

from services.controller.app import create_app
from services.controller.errors import ConfigConflictError, RunPausedError, ScheduleConflictError
from services.controller.settings import ControllerSettings
from services.controller.state import CONFIG_FIELD, FINGERPRINT_FIELD, RunStateStore
from services.core.config import RunConfig, canonical_json
from services.core.schedule import Phase
from services.core.wire import StepReport
from tests.run_configs import run_config

MakeReport = Callable[..., StepReport]
TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def _config(
    run_id: str, total_steps: int = 10, *, schedule: dict[str, Any] | None = None, **sections: Any
) -> RunConfig:
    return run_config(run_id, total_steps, schedule=schedule, **sections)


def _open(client: redis.Redis, config: RunConfig | None, run_id: str, *, force: bool = False) -> RunStateStore:
    schedule = (config or _config(run_id)).build_schedule()
    store = RunStateStore(client, run_id, schedule, config=config)
    store.create_or_load(force=force)
    return store


def _stored_config(client: redis.Redis, store: RunStateStore) -> tuple[Any, str | None]:
    raw, fingerprint = client.hmget(store.state_key, [CONFIG_FIELD, FINGERPRINT_FIELD])
    return (json.loads(raw) if raw else None), (fingerprint.decode() if isinstance(fingerprint, bytes) else fingerprint)


def test_the_same_config_is_reused(redis_client: redis.Redis, run_id: str) -> None:
    config = _config(run_id)
    first = RunStateStore(redis_client, run_id, config.build_schedule(), config=config)
    assert first.create_or_load().outcome == "created"
    assert _stored_config(redis_client, first) == (config.fingerprinted(), config.fingerprint())
    second = RunStateStore(redis_client, run_id, config.build_schedule(), config=config)
    assert second.create_or_load().outcome == "reused"


@pytest.mark.parametrize("force", [False, True])
def test_another_credit_strategy_is_refused_even_forced(redis_client: redis.Redis, run_id: str, force: bool) -> None:
    original = _open(redis_client, _config(run_id), run_id)
    before = redis_client.hgetall(original.state_key)
    other = _config(run_id, credit={"strategy": "none"})
    with pytest.raises(ConfigConflictError, match=r"credit\.strategy") as err:
        _open(redis_client, other, run_id, force=force)
    assert err.value.extra["differences"] == ["credit.strategy: 'tp' -> 'none'"]
    assert redis_client.hgetall(original.state_key) == before


def test_a_forced_schedule_change_does_not_carry_another_strategy(redis_client: redis.Redis, run_id: str) -> None:
    _open(redis_client, _config(run_id), run_id)
    other = _config(run_id, schedule={"max_ratio": 0.5}, credit={"strategy": "none"})
    with pytest.raises(ConfigConflictError) as err:
        _open(redis_client, other, run_id, force=True)
    assert err.value.extra["differences"] == ["credit.strategy: 'tp' -> 'none'"]  # the schedule line is forceable


def test_only_a_changed_schedule_is_forced_and_the_stored_config_updated(
    redis_client: redis.Redis, run_id: str
) -> None:
    _open(redis_client, _config(run_id), run_id)
    changed = _config(run_id, 20, schedule={"max_ratio": 0.5})
    with pytest.raises(ScheduleConflictError):
        _open(redis_client, changed, run_id)
    store = RunStateStore(redis_client, run_id, changed.build_schedule(), config=changed)
    assert store.create_or_load(force=True).outcome == "forced"
    assert _stored_config(redis_client, store) == (changed.fingerprinted(), changed.fingerprint())
    assert store.schedule.max_step == 10
    assert _open(redis_client, changed, run_id).status().schedule_force_count == 1


def test_a_run_without_a_config_record_adopts_the_first_one(redis_client: redis.Redis, run_id: str) -> None:
    bare = _open(redis_client, None, run_id)
    assert _stored_config(redis_client, bare) == (None, None)
    config = _config(run_id)
    adopter = RunStateStore(redis_client, run_id, config.build_schedule(), config=config)
    assert adopter.create_or_load().outcome == "reused"
    assert redis_client.hget(adopter.state_key, CONFIG_FIELD) == canonical_json(config.fingerprinted()).encode()
    with pytest.raises(ConfigConflictError, match=r"credit\.strategy"):
        _open(redis_client, _config(run_id, credit={"strategy": "none"}), run_id)
    assert _open(redis_client, None, run_id).schedule.max_step == 8  # a store without a config checks nothing more


def test_changing_only_reward_workers_is_accepted(redis_client: redis.Redis, run_id: str) -> None:
    _open(redis_client, _config(run_id, reward={"workers": 2}), run_id)
    store = RunStateStore(
        redis_client, run_id, _config(run_id).build_schedule(), config=_config(run_id, reward={"workers": 8})
    )
    assert store.create_or_load().outcome == "reused"


def _report(run_id: str, phase: Phase) -> StepReport:
    return StepReport(run_id=run_id, step=phase.step, policy_version=phase.step, phase=phase, metrics={"train/x": 1.0})


def test_a_new_step_is_refused_while_paused_and_a_repeat_is_still_a_duplicate(
    redis_client: redis.Redis, run_id: str
) -> None:
    store = _open(redis_client, _config(run_id), run_id)
    first = store.report_step(_report(run_id, store.phase(1)))
    store.set_paused(True, reason="test")
    with pytest.raises(RunPausedError, match="paused"):
        store.report_step(_report(run_id, store.phase(2)))
    again = store.report_step(_report(run_id, store.phase(1)))
    assert again.duplicate and again.stored == first.stored
    assert store.status().last_reported_step == 1
    store.set_paused(False)
    accepted = store.report_step(_report(run_id, store.phase(2)))
    assert not accepted.duplicate and store.status().last_reported_step == 2


@pytest.fixture
def client(embedded_redis_url: str, run_id: str) -> Iterator[TestClient]:
    settings = ControllerSettings(redis_url=embedded_redis_url, token=TOKEN)
    with contextlib.ExitStack() as stack:
        yield stack.enter_context(TestClient(create_app(settings, run_config=_config(run_id))))


def _post(client: TestClient, step: int) -> Any:
    phase = client.get("/v1/phase", params={"step": step}).json()
    body = {"run_id": phase["run_id"], "step": step, "policy_version": step, "phase": phase["phase"], "metrics": {}}
    return client.post("/v1/steps", json=body, headers=AUTH)


def test_paused_run_answers_409_run_paused_over_http(client: TestClient) -> None:
    assert _post(client, 1).status_code == 200
    assert client.post("/v1/pause", headers=AUTH).status_code == 200
    refused = _post(client, 2)
    assert refused.status_code == 409 and refused.json()["error"] == "run_paused"
    repeat = _post(client, 1)
    assert repeat.status_code == 200 and repeat.json()["duplicate"] is True
    assert client.post("/v1/resume", headers=AUTH).status_code == 200
    resumed = _post(client, 2)
    assert resumed.status_code == 200 and resumed.json()["duplicate"] is False

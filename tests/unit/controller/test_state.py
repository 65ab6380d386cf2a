"""RunStateStore against a real (embedded) Redis: creation, phases, step reports, pause, concurrency."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import pytest
import redis

from services.controller.errors import (
    DuplicateStepMismatchError,
    PhaseMismatchError,
    PolicyVersionRegressionError,
    RunNotFoundError,
    RunStateMissingError,
    ScheduleChangedError,
    ScheduleConflictError,
    StepBeyondRunError,
    StepConflictError,
    StepNotReportedError,
    StepOutOfOrderError,
)
from services.controller.state import RunStateStore, report_digest, run_keys, state_key, steps_key
from services.core.config import RunConfig
from services.core.schedule import Phase
from services.core.wire import StepReport

MakeConfig = Callable[..., RunConfig]
MakeReport = Callable[..., StepReport]


def new_store(client: redis.Redis, config: RunConfig, *, force: bool = False) -> RunStateStore:
    store = RunStateStore(client, config.run_id, config.build_schedule())
    store.create_or_load(force=force)
    return store


def report_steps(store: RunStateStore, make_report: MakeReport, last: int) -> None:
    for step in range(1, last + 1):
        store.report_step(make_report(store.phase(step)))


def test_create_then_reuse(redis_client: redis.Redis, make_run_config: MakeConfig) -> None:
    config = make_run_config()
    first = RunStateStore(redis_client, config.run_id, config.build_schedule())
    assert first.create_or_load(now=100.0).outcome == "created"
    second = RunStateStore(redis_client, config.run_id, config.build_schedule())
    assert second.create_or_load(now=200.0).outcome == "reused"
    status = second.status()
    assert (status.last_reported_step, status.policy_version, status.paused) == (0, 0, False)
    assert status.created_at == 100.0 and status.current_step == 1 and status.schedule_force_count == 0
    assert second.schedule.curve() == config.build_schedule().curve()


@pytest.mark.parametrize(
    ("changed", "field"),
    [({"schedule": {"max_ratio": 0.5}}, "config.max_ratio"), ({"total_steps": 20}, "total_steps")],
)
def test_changed_schedule_is_refused_with_both_named(
    redis_client: redis.Redis, make_run_config: MakeConfig, changed: dict[str, object], field: str
) -> None:
    original = new_store(redis_client, make_run_config())
    before = redis_client.hgetall(original.state_key)
    kwargs = {"total_steps": changed.get("total_steps", 10), **changed.get("schedule", {})}  # type: ignore[dict-item]
    other = make_run_config(**kwargs)
    with pytest.raises(ScheduleConflictError) as err:
        new_store(redis_client, other)
    message = str(err.value)
    assert field in message and "stored:" in message and "configured:" in message and "--force-schedule" in message
    assert err.value.extra["stored"] != err.value.extra["configured"]
    assert redis_client.hgetall(original.state_key) == before


def test_force_overwrites_and_records(
    redis_client: redis.Redis, make_run_config: MakeConfig, make_report: MakeReport
) -> None:
    original = new_store(redis_client, make_run_config())
    report_steps(original, make_report, 2)
    store = RunStateStore(redis_client, original.run_id, make_run_config(max_ratio=0.5).build_schedule())
    init = store.create_or_load(force=True)
    assert init.outcome == "forced" and init.previous is not None and '"max_ratio":0.8' in init.previous
    status = store.status()
    assert status.schedule_force_count == 1 and status.last_reported_step == 2  # history kept
    assert redis_client.hget(store.state_key, "schedule_previous") == init.previous.encode()
    assert store.schedule.max_step == 5
    assert new_store(redis_client, make_run_config(max_ratio=0.5)).status().schedule_force_count == 1


def test_unreadable_stored_schedule_is_a_conflict(redis_client: redis.Redis, make_run_config: MakeConfig) -> None:
    config = make_run_config()
    redis_client.hset(state_key(config.run_id), mapping={"schedule": "{not json", "created_at": "1"})
    with pytest.raises(ScheduleConflictError, match="unreadable"):
        new_store(redis_client, config)
    store = RunStateStore(redis_client, config.run_id, config.build_schedule())
    assert store.create_or_load(force=True).outcome == "forced"
    status = store.status()  # the missing counters were initialised, the existing creation time kept
    assert (status.created_at, status.last_reported_step, status.schedule_force_count) == (1.0, 0, 1)


def test_concurrent_creation_creates_once(redis_client: redis.Redis, make_run_config: MakeConfig) -> None:
    config = make_run_config()
    stores = [RunStateStore(redis_client, config.run_id, config.build_schedule()) for _ in range(8)]
    with ThreadPoolExecutor(8) as pool:
        outcomes = [init.outcome for init in pool.map(lambda s: s.create_or_load(), stores)]
    assert sorted(outcomes) == ["created"] + ["reused"] * 7


def test_phase_is_defined_past_the_end_and_refuses_step_zero(
    redis_client: redis.Redis, make_run_config: MakeConfig
) -> None:
    store = new_store(redis_client, make_run_config())
    assert store.phase(1).ratio == pytest.approx(0.99 * (1 - 1 / 8))
    assert store.phase(11) == Phase(step=11, progress=1.0, ratio=0.0, stage="general")
    with pytest.raises(ValueError, match="1-based"):
        store.phase(0)


def test_reports_advance_the_current_phase(
    redis_client: redis.Redis, make_run_config: MakeConfig, make_report: MakeReport
) -> None:
    store = new_store(redis_client, make_run_config())
    outcome = store.report_step(make_report(store.phase(1), metrics={"train/loss": 0.5, "train/kl": None}), now=7.0)
    assert not outcome.duplicate and outcome.stored.accepted_at == 7.0
    store.report_step(make_report(store.phase(2), policy_version=4))
    status = store.status()
    assert (status.last_reported_step, status.current_step, status.policy_version) == (2, 3, 4)
    assert status.last_report_at is not None
    stored = store.get_step(1)
    assert stored.report.metrics == {"train/loss": 0.5, "train/kl": None} and stored.accepted_at == 7.0
    with pytest.raises(StepNotReportedError):
        store.get_step(3)


def test_identical_report_is_idempotent(
    redis_client: redis.Redis, make_run_config: MakeConfig, make_report: MakeReport
) -> None:
    store = new_store(redis_client, make_run_config())
    report = make_report(store.phase(1), metrics={"train/loss": 0.5})
    first = store.report_step(report, now=1.0)
    store.report_step(make_report(store.phase(2)))
    # A rebuilt report (new created_at) of the same step and content is the same report.
    again = store.report_step(report.model_copy(update={"created_at": report.created_at + 60}), now=99.0)
    assert again.duplicate and again.stored == first.stored
    assert store.status().last_reported_step == 2
    assert redis_client.hlen(steps_key(store.run_id)) == 2


@pytest.mark.parametrize(
    "change", [{"metrics": {"train/loss": 0.6}}, {"policy_version": 7}], ids=["metrics", "policy_version"]
)
def test_repeated_step_with_other_content_conflicts(
    redis_client: redis.Redis, make_run_config: MakeConfig, make_report: MakeReport, change: dict[str, object]
) -> None:
    store = new_store(redis_client, make_run_config())
    first = make_report(store.phase(1), metrics={"train/loss": 0.5})
    store.report_step(first)
    with pytest.raises(DuplicateStepMismatchError, match="already reported with different content") as err:
        store.report_step(first.model_copy(update=change))
    assert err.value.extra["stored"]["report"]["metrics"] == {"train/loss": 0.5}
    assert store.get_step(1).report == first


def test_gap_names_the_expected_step(
    redis_client: redis.Redis, make_run_config: MakeConfig, make_report: MakeReport
) -> None:
    store = new_store(redis_client, make_run_config())
    with pytest.raises(StepOutOfOrderError, match="expected next step is 1") as err:
        store.report_step(make_report(store.phase(2)))
    assert err.value.extra == {"expected_step": 1}
    report_steps(store, make_report, 3)
    with pytest.raises(StepOutOfOrderError) as err:
        store.report_step(make_report(store.phase(6)))
    assert err.value.extra["expected_step"] == 4


def test_wrong_phase_is_refused(
    redis_client: redis.Redis, make_run_config: MakeConfig, make_report: MakeReport
) -> None:
    store = new_store(redis_client, make_run_config())
    wrong = store.phase(2).model_copy(update={"step": 1})
    with pytest.raises(PhaseMismatchError, match="applied the wrong phase") as err:
        store.report_step(make_report(wrong))
    assert err.value.extra["expected_phase"] == store.phase(1).model_dump()
    # Float noise from another JSON stack is tolerated; the stage must match exactly.
    noisy = store.phase(1).model_copy(update={"ratio": store.phase(1).ratio + 1e-12})
    assert not store.report_step(make_report(noisy)).duplicate
    with pytest.raises(PhaseMismatchError):
        store.report_step(make_report(store.phase(2).model_copy(update={"stage": "general"})))


def test_step_beyond_the_run_is_refused(
    redis_client: redis.Redis, make_run_config: MakeConfig, make_report: MakeReport
) -> None:
    store = new_store(redis_client, make_run_config(total_steps=3))
    report_steps(store, make_report, 3)
    assert store.status().complete
    with pytest.raises(StepBeyondRunError, match="total_steps=3"):
        store.report_step(make_report(store.phase(4)))


def test_policy_version_never_goes_back(
    redis_client: redis.Redis, make_run_config: MakeConfig, make_report: MakeReport
) -> None:
    store = new_store(redis_client, make_run_config())
    store.report_step(make_report(store.phase(1), policy_version=5))
    store.report_step(make_report(store.phase(2), policy_version=5))  # equal is fine (no update published)
    with pytest.raises(PolicyVersionRegressionError, match="lower than the last reported policy_version 5"):
        store.report_step(make_report(store.phase(3), policy_version=4))
    assert store.status().last_reported_step == 2


def test_other_run_is_not_found(
    redis_client: redis.Redis, make_run_config: MakeConfig, make_report: MakeReport
) -> None:
    store = new_store(redis_client, make_run_config())
    with pytest.raises(RunNotFoundError, match="serves run"):
        store.report_step(make_report(store.phase(1), run="someone-else"))


def test_pause_and_resume_are_idempotent(redis_client: redis.Redis, make_run_config: MakeConfig) -> None:
    store = new_store(redis_client, make_run_config())
    paused = store.set_paused(True, reason="maintenance", now=10.0)
    assert paused.paused and paused.paused_at == 10.0 and paused.pause_reason == "maintenance"
    again = store.set_paused(True, reason="other", now=20.0)
    assert again.paused_at == 10.0 and again.pause_reason == "maintenance"
    resumed = store.set_paused(False)
    assert not resumed.paused and resumed.paused_at is None and resumed.pause_reason is None
    assert store.set_paused(False) == resumed


def test_missing_state_is_reported(
    redis_client: redis.Redis, make_run_config: MakeConfig, make_report: MakeReport
) -> None:
    store = new_store(redis_client, make_run_config())
    redis_client.delete(*run_keys(store.run_id))
    for action in (
        store.status,
        lambda: store.set_paused(True),
        lambda: store.report_step(make_report(store.phase(1))),
    ):
        with pytest.raises(RunStateMissingError, match="missing from Redis"):
            action()
    assert not redis_client.exists(store.state_key)  # pause did not create a partial hash


def test_schedule_forced_by_another_controller_stops_reports(
    redis_client: redis.Redis, make_run_config: MakeConfig, make_report: MakeReport
) -> None:
    store = new_store(redis_client, make_run_config())
    new_store(redis_client, make_run_config(max_ratio=0.5), force=True)
    with pytest.raises(ScheduleChangedError, match="restart this controller"):
        store.report_step(make_report(store.phase(1)))


def test_digest_ignores_only_created_at(make_report: MakeReport) -> None:
    phase = Phase(step=1, progress=0.1, ratio=0.9, stage="anneal")
    report = make_report(phase, metrics={"a": 1.0})
    assert report_digest(report) == report_digest(report.model_copy(update={"created_at": 0.0}))
    assert report_digest(report) != report_digest(report.model_copy(update={"metrics": {"a": 2.0}}))


def test_concurrent_identical_reports_count_once(
    redis_client: redis.Redis, make_run_config: MakeConfig, make_report: MakeReport
) -> None:
    store = new_store(redis_client, make_run_config(total_steps=20))
    reports = [make_report(store.phase(step), metrics={"train/loss": 1.0 / step}) for step in range(1, 21)]
    accepted: list[int] = []
    lock = threading.Lock()

    def trainer() -> None:
        # Each thread walks all steps; a step may be refused as out of order until another thread reports
        # its predecessor, so retry each step until it is accepted or seen as a duplicate.
        for report in reports:
            while True:
                try:
                    outcome = store.report_step(report)
                except StepOutOfOrderError:
                    continue
                if not outcome.duplicate:
                    with lock:
                        accepted.append(report.step)
                break

    threads = [threading.Thread(target=trainer) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert sorted(accepted) == list(range(1, 21))
    assert store.status().last_reported_step == 20
    assert redis_client.hlen(steps_key(store.run_id)) == 20


def test_concurrent_different_reports_of_one_step_accept_one(
    redis_client: redis.Redis, make_run_config: MakeConfig, make_report: MakeReport
) -> None:
    store = new_store(redis_client, make_run_config())
    candidates = [make_report(store.phase(1), metrics={"train/loss": float(i)}) for i in range(8)]

    def attempt(report: StepReport) -> str:
        try:
            store.report_step(report)
        except StepConflictError as exc:
            return type(exc).__name__
        return "accepted"

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(attempt, candidates))
    assert sorted(results) == ["DuplicateStepMismatchError"] * 7 + ["accepted"]
    winner = candidates[results.index("accepted")]
    assert store.get_step(1).report == winner

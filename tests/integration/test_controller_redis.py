"""The controller as real uvicorn processes on a real Redis (the shared server and an embedded one).

Covers the acceptance criteria: a restart mid-run serves identical phases and keeps the state; concurrent step
reports stay consistent; bad requests get 422/404/409 with clear messages; mutating endpoints need the token.
"""

from __future__ import annotations

import signal
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from services.controller.client import ControllerClient, ControllerRequestError
from services.core.retry import RetryPolicy
from services.core.wire import StepReport
from tests.integration.controller_fixtures import (  # noqa: F401 - the *_fixture imports register fixtures
    STARTUP_TIMEOUT_S,
    TOKEN,
    StartController,
    run_config_file_fixture,
    start_controller_fixture,
)

pytestmark = pytest.mark.integration
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def report_for(client: ControllerClient, run_id: str, step: int, **metrics: float) -> StepReport:
    """The report a well-behaved trainer sends: the controller's phase for the step, policy version = step."""
    phase = client.get_phase(step).phase
    return StepReport(run_id=run_id, step=step, policy_version=step, phase=phase, metrics=metrics)


@pytest.mark.slow
def test_restart_mid_run_serves_identical_phases(start_controller: StartController, run_id: str) -> None:
    first = start_controller()
    # Retries ride out the restart however slowly a busy machine brings the second controller up (~0.25 s a try).
    retry = RetryPolicy(max_attempts=1000, base_delay_s=0.1, max_delay_s=0.5)
    client = ControllerClient(first.url, token=TOKEN, retry=retry)
    schedule = client.get_schedule()
    phases = [client.get_phase(step).phase for step in range(1, 16)]
    reports = [report_for(client, run_id, step, **{"train/loss": 1.0 / step}) for step in range(1, 6)]
    for report in reports:
        client.report_step(report)
    client.pause("restart test")
    status, step3 = client.get_status(), client.get_step(3)

    assert first.stop(signal.SIGKILL) == -signal.SIGKILL  # a crash: no graceful shutdown
    # A worker polling during the outage rides it out on the client's retries.
    with ThreadPoolExecutor(1) as pool:
        during_outage = pool.submit(client.get_phase)
        second = start_controller(port=first.port)
        assert during_outage.result(timeout=STARTUP_TIMEOUT_S * 2).current_step == 6  # a hang guard only

    assert client.get_schedule() == schedule  # same curve, resolved steps and creation time
    assert [client.get_phase(step).phase for step in range(1, 16)] == phases
    assert client.get_status() == status and client.get_step(3) == step3
    current = client.get_phase()
    assert (current.current_step, current.policy_version, current.paused) == (6, 5, True)
    repeated = client.report_step(reports[-1])  # the trainer's retry of its last report after the restart
    assert repeated.duplicate and repeated.accepted_at == client.get_step(5).accepted_at
    client.resume()  # a paused run records no new step
    assert not client.report_step(report_for(client, run_id, 6)).duplicate
    assert second.stop(signal.SIGTERM) in (0, -signal.SIGTERM)  # uvicorn re-raises SIGTERM after a clean shutdown
    assert "Application shutdown complete" in second.log_tail()


@pytest.mark.slow
def test_changed_schedule_is_refused_unless_forced(start_controller: StartController) -> None:
    first = start_controller()
    original = ControllerClient(first.url).get_schedule()
    first.stop()
    refused = start_controller("--set", "schedule.max_ratio=0.5", ready=False)
    assert refused.wait_exit(STARTUP_TIMEOUT_S) == 3
    assert "different schedule" in refused.log_tail() and "--force-schedule" in refused.log_tail()
    forced = start_controller("--set", "schedule.max_ratio=0.5", "--force-schedule")
    schedule = ControllerClient(forced.url).get_schedule()
    assert (original.max_step, schedule.max_step, schedule.schedule_force_count) == (9, 6, 1)
    assert schedule.created_at == original.created_at


def test_concurrent_step_reports_are_consistent(start_controller: StartController, run_id: str) -> None:
    url = start_controller().url
    probe = ControllerClient(url)
    reports = [report_for(probe, run_id, step, **{"train/loss": float(step)}) for step in range(1, 9)]
    fresh: Counter[int] = Counter()
    lock = threading.Lock()

    def trainer() -> None:
        # Several trainers racing the same steps: each step is recorded once, the rest see duplicates.
        with ControllerClient(url, token=TOKEN) as client:
            for report in reports:
                while True:
                    try:
                        duplicate = client.report_step(report).duplicate
                    except ControllerRequestError as exc:
                        assert exc.code == "step_out_of_order", exc
                        continue
                    if not duplicate:
                        with lock:
                            fresh[report.step] += 1
                    break

    threads = [threading.Thread(target=trainer) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert fresh == Counter(range(1, 9))
    assert probe.get_status().last_reported_step == 8

    rivals = [report_for(probe, run_id, 9, **{"train/loss": float(i)}) for i in range(6)]
    with ThreadPoolExecutor(6) as pool:
        codes = list(
            pool.map(lambda r: httpx.post(f"{url}/v1/steps", json=r.model_dump(mode="json"), headers=AUTH), rivals)
        )
    assert sorted(response.status_code for response in codes) == [200] + [409] * 5
    assert {response.json()["error"] for response in codes if response.status_code == 409} == {
        "duplicate_step_mismatch"
    }


def test_bad_requests_get_clear_errors(start_controller: StartController, run_id: str) -> None:
    url = start_controller().url
    client = ControllerClient(url, token=TOKEN)
    client.report_step(report_for(client, run_id, 1))

    def post(report: StepReport | dict[str, object]) -> httpx.Response:
        body = report.model_dump(mode="json") if isinstance(report, StepReport) else report
        return httpx.post(f"{url}/v1/steps", json=body, headers=AUTH)

    for step in ("0", "abc"):
        response = httpx.get(f"{url}/v1/phase", params={"step": step})
        assert response.status_code == 422 and response.json()["message"].startswith("query.step:")
    missing_phase = post({"run_id": run_id, "step": 2, "policy_version": 2})
    assert missing_phase.status_code == 422 and "body.phase: Field required" in missing_phase.json()["message"]

    other_run = post(report_for(client, run_id, 2).model_copy(update={"run_id": "not-this-run"}))
    assert other_run.status_code == 404 and f"serves run '{run_id}'" in other_run.json()["detail"]
    unreported = httpx.get(f"{url}/v1/steps/7")
    assert unreported.status_code == 404 and "has not been reported" in unreported.json()["detail"]

    gap = post(report_for(client, run_id, 4))
    assert gap.status_code == 409 and gap.json()["expected_step"] == 2 and "expected next step is 2" in gap.text
    wrong_phase = post(report_for(client, run_id, 2).model_copy(update={"phase": client.get_phase(1).phase}))
    assert wrong_phase.status_code == 409 and "applied the wrong phase" in wrong_phase.json()["detail"]
    changed = post(report_for(client, run_id, 1, **{"train/loss": 9.0}))
    assert changed.status_code == 409 and changed.json()["error"] == "duplicate_step_mismatch"
    beyond = post(report_for(client, run_id, 13))
    assert beyond.status_code == 409 and "total_steps=12" in beyond.json()["detail"]


def test_mutating_endpoints_need_the_token(start_controller: StartController) -> None:
    url = start_controller().url
    for path in ("/v1/pause", "/v1/resume", "/v1/steps"):
        missing = httpx.post(f"{url}{path}")
        assert missing.status_code == 401 and missing.headers["WWW-Authenticate"].startswith("Bearer")
        assert httpx.post(f"{url}{path}", headers={"Authorization": "Bearer nope"}).status_code == 403
    assert httpx.get(f"{url}/v1/phase").status_code == 200 and httpx.get(f"{url}/metrics").status_code == 200
    assert httpx.post(f"{url}/v1/pause", headers=AUTH).json()["paused"] is True
    assert httpx.get(f"{url}/v1/phase").json()["paused"] is True

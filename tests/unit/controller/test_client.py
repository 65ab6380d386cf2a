"""ControllerClient: typed calls against the real app, and the retry policy against scripted HTTP answers."""

from __future__ import annotations

import random
import socket
from collections.abc import Callable, Iterator

import httpx
import pytest
from fastapi.testclient import TestClient

from services.controller.app import create_app
from services.controller.client import ControllerClient, ControllerRequestError, ControllerUnavailableError
from services.controller.schemas import RunStatus
from services.controller.settings import ControllerSettings
from services.core.config import RunConfig
from services.core.retry import RetryPolicy
from services.core.wire import StepReport

TOKEN = "client-token"
STATUS_BODY = RunStatus(
    run_id="scripted", last_reported_step=0, policy_version=0, paused=False, created_at=0.0, total_steps=1
).model_dump(mode="json")


@pytest.fixture
def controller(embedded_redis_url: str, make_run_config: Callable[..., RunConfig]) -> Iterator[ControllerClient]:
    settings = ControllerSettings(redis_url=embedded_redis_url, token=TOKEN)
    with TestClient(create_app(settings, run_config=make_run_config())) as http:
        yield ControllerClient("http://testserver", token=TOKEN, http_client=http, sleep=lambda _: None)


def scripted(answers: list[int | Exception]) -> tuple[httpx.Client, list[str]]:
    """An httpx client whose successive requests get `answers` (a status code, or a raised transport error)."""
    seen: list[str] = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(f"{request.method} {request.url.path}")
        answer = answers[min(len(seen), len(answers)) - 1]
        if isinstance(answer, Exception):
            raise answer
        body = {"detail": f"status {answer}", "error": "scripted"}
        return httpx.Response(answer, json=body if answer >= 400 else STATUS_BODY)

    return httpx.Client(base_url="http://controller", transport=httpx.MockTransport(handle)), seen


class TopOfWindow(random.Random):
    """Jitter always draws the largest allowed delay, so the backoff ceilings are observable."""

    def uniform(self, a: float, b: float) -> float:
        return b


def test_typed_round_trip(controller: ControllerClient, run_id: str) -> None:
    schedule = controller.get_schedule()
    assert schedule.run_id == run_id and len(schedule.curve) == schedule.total_steps
    current = controller.get_phase()
    assert current.current_step == 1 and current.phase == schedule.curve[0]
    report = StepReport(run_id=run_id, step=1, policy_version=1, phase=current.phase, metrics={"train/loss": 0.1})
    accepted = controller.report_step(report)
    assert not accepted.duplicate and accepted.next_phase == controller.get_phase(2).phase
    assert controller.report_step(report).duplicate
    assert controller.get_step(1).report == report
    assert controller.get_status().last_reported_step == 1


def test_refusals_raise_with_code_and_message(controller: ControllerClient, run_id: str) -> None:
    phase = controller.get_phase(3).phase
    with pytest.raises(ControllerRequestError) as err:
        controller.report_step(StepReport(run_id=run_id, step=3, policy_version=3, phase=phase))
    assert err.value.status_code == 409 and err.value.code == "step_out_of_order"
    assert "expected next step is 1" in str(err.value) and err.value.body["expected_step"] == 1


def test_pause_and_wait_until_resumed(embedded_redis_url: str, make_run_config: Callable[..., RunConfig]) -> None:
    settings = ControllerSettings(redis_url=embedded_redis_url, token=TOKEN)
    with TestClient(create_app(settings, run_config=make_run_config())) as http:
        admin = ControllerClient("http://testserver", token=TOKEN, http_client=http)
        polls: list[float] = []

        def resume_on_second_poll(interval_s: float) -> None:
            polls.append(interval_s)
            if len(polls) == 2:
                admin.resume()

        worker = ControllerClient("http://testserver", http_client=http, sleep=resume_on_second_poll)
        assert admin.pause("drain").pause_reason == "drain"
        assert not worker.wait_until_resumed(poll_interval_s=0.5).paused
        assert polls == [0.5, 0.5]
        admin.pause()
        with pytest.raises(TimeoutError, match="still paused"):
            ControllerClient("http://testserver", http_client=http, sleep=lambda _: None).wait_until_resumed(
                poll_interval_s=0.01, timeout_s=0.0
            )


def test_retries_5xx_then_succeeds_with_growing_backoff() -> None:
    http, seen = scripted([503, 502, 200])
    sleeps: list[float] = []
    retry = RetryPolicy(max_attempts=4, base_delay_s=0.1, max_delay_s=2.0)
    client = ControllerClient(
        "http://controller", http_client=http, sleep=sleeps.append, retry=retry, rng=TopOfWindow()
    )
    assert client.get_status().run_id == "scripted"
    assert len(seen) == 3 and sleeps == [0.1, 0.2]


def test_never_retries_4xx() -> None:
    http, seen = scripted([409, 200])
    client = ControllerClient("http://controller", http_client=http, sleep=lambda _: pytest.fail("slept"))
    with pytest.raises(ControllerRequestError) as err:
        client.resume()
    assert err.value.status_code == 409 and seen == ["POST /v1/resume"]


def test_gives_up_after_bounded_attempts() -> None:
    http, seen = scripted([httpx.ConnectError("refused"), 500])
    sleeps: list[float] = []
    retry = RetryPolicy(max_attempts=5, base_delay_s=1.0, max_delay_s=2.0)
    client = ControllerClient("http://controller", http_client=http, sleep=sleeps.append, retry=retry)
    with pytest.raises(ControllerUnavailableError, match="after 5 attempts: controller answered 500") as err:
        client.get_phase()
    assert len(seen) == 5 and len(sleeps) == 4 and all(0.0 <= s <= 2.0 for s in sleeps)
    assert isinstance(err.value.__cause__, ControllerRequestError) and err.value.__cause__.status_code == 500


def test_unreachable_controller_is_unavailable() -> None:
    with socket.socket() as sock:  # a port nobody listens on: bound, never listening
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        retry = RetryPolicy(max_attempts=2)
        client = ControllerClient(f"http://127.0.0.1:{port}", retry=retry, sleep=lambda _: None, timeout_s=1.0)
        with client:
            assert client.ready() is False
            with pytest.raises(ControllerUnavailableError, match="ConnectError"):
                client.get_schedule()

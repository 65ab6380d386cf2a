"""The run survives its own interruption: SIGKILL at any point resumes to completion with every step trained once,
SIGTERM and Ctrl-C stop every child, and a paused run makes no progress until resumed."""

from __future__ import annotations

import json
import random
import signal
import time
import uuid
from pathlib import Path

import httpx
import pytest
import redis

from services.core.keys import dead_key, run_key, run_pattern
from tests.e2e.run_process import RunProcess, descendants, survivors
from tests.shared_data import require_shared_data

pytestmark = pytest.mark.e2e


@pytest.fixture
def replay_data() -> None:
    require_shared_data("bench/gsm8k_example_model_solutions.jsonl")


def _steps(out: Path) -> list[int]:
    path = out / "metrics.jsonl"
    return [json.loads(line)["step"] for line in path.read_text().splitlines()] if path.exists() else []


def test_sigkill_at_random_points_resumes_to_completion(replay_data: None, server_url: str, tmp_path: Path) -> None:
    """Kills during start-up, mid-step and between steps; the last attempt completes; nothing lost or doubled."""
    run_id = f"e2e-kill-{uuid.uuid4().hex[:8]}"
    total = 14
    args = ("--redis-url", server_url, "--set", f"run_id={run_id}", "--set", f"total_steps={total}")
    client = redis.Redis.from_url(server_url)
    rng = random.Random(7)
    try:
        for attempt in range(5):
            run = RunProcess(tmp_path, *args)
            if attempt and run.wait_for_steps(len(_steps(tmp_path)) + rng.randint(0, 2)):
                time.sleep(rng.uniform(0.0, 0.4))  # anywhere inside the next step
            elif not attempt:
                time.sleep(rng.uniform(0.5, 3.0))  # during start-up
            children = descendants(run.process.pid)
            run.signal(signal.SIGKILL)
            run.wait()
            assert not survivors(children), "children of a SIGKILLed rlvr run outlived it"
        final = RunProcess(tmp_path, *args)
        assert final.wait() == 0, final.stderr()
        assert _steps(tmp_path) == list(range(1, total + 1))  # each step once, in order
        summary = json.loads((tmp_path / "summary.json").read_text())
        assert summary["complete"]
        for stream in ("prompts", "rollouts"):
            assert client.xlen(run_key(run_id, stream)) == 0, f"{stream} still holds entries"
        assert client.xlen(dead_key(run_id)) == 0
    finally:
        keys = list(client.scan_iter(match=run_pattern(run_id)))
        if keys:
            client.delete(*keys)
        client.close()


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_sigterm_and_ctrl_c_stop_every_child_and_the_run_resumes(
    replay_data: None, tmp_path: Path, sig: signal.Signals, code: int
) -> None:
    run = RunProcess(tmp_path, "--set", "total_steps=400")
    assert run.wait_for_steps(2)
    children = descendants(run.process.pid)
    assert children, "the run has no child processes to check"
    run.signal(sig)
    assert run.wait() == code
    assert "Traceback" not in run.stderr()
    assert not survivors(children), "a child of rlvr run outlived its shutdown"
    done = _steps(tmp_path)
    assert done == list(range(1, len(done) + 1))
    resumed = RunProcess(tmp_path, "--set", "total_steps=400")
    assert resumed.wait_for_steps(1)
    assert resumed.step_rows()[0]["step"] == len(done) + 1
    resumed.signal(signal.SIGTERM)
    assert resumed.wait() == 143


def test_pause_stops_the_run_until_resume(replay_data: None, tmp_path: Path) -> None:
    total = 30
    run = RunProcess(tmp_path, "--set", f"total_steps={total}")
    assert run.wait_for_steps(1)
    url = run.controller_url()
    status = httpx.post(f"{url}/v1/pause", json={"reason": "e2e"}, timeout=10).json()
    assert status["paused"]
    at_pause = httpx.get(f"{url}/v1/status", timeout=10).json()["last_reported_step"]
    for _ in range(15):  # while paused the controller accepts no step: the count never moves
        time.sleep(0.2)
        assert httpx.get(f"{url}/v1/status", timeout=10).json()["last_reported_step"] == at_pause
    assert run.process.poll() is None
    httpx.post(f"{url}/v1/resume", timeout=10)
    assert run.wait() == 0, run.stderr()
    assert _steps(tmp_path) == list(range(1, total + 1))

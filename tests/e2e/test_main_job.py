"""`rlvr run` as a user runs it: real controller and reward-server processes, Redis streams, the step loop."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import redis

from tests.shared_data import REPO_ROOT, require_shared_data

pytestmark = pytest.mark.integration


def _run(tmp_path: Path, *extra: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "services.cli", "run", "--out", str(tmp_path), *extra],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300, env=env,
    )  # fmt: skip


def test_main_job_on_the_embedded_default(tmp_path: Path) -> None:
    require_shared_data("bench/gsm8k_example_model_solutions.jsonl")
    done = _run(tmp_path, "--set", "total_steps=6", "--set", "schedule.max_ratio=0.5")
    assert done.returncode == 0, done.stdout + done.stderr
    steps = [json.loads(line) for line in (tmp_path / "steps.jsonl").read_text().splitlines()]
    assert [s["step"] for s in steps] == [1, 2, 3, 4, 5, 6]
    # max_step = int(6 * 0.5) = 3: r decays over steps 1-2 and is 0 (plain GRPO, every token optimized) from 3 on
    assert [s["stage"] for s in steps] == ["anneal", "anneal", "general", "general", "general", "general"]
    assert steps[0]["ratio"] == pytest.approx(0.99 * (1 - 1 / 3))
    assert all(s["train/optimized_token_fraction"] == 1.0 for s in steps[2:])
    assert all(s["train/optimized_token_fraction"] < 1.0 for s in steps[:2])
    # The reward server's verdicts on recorded GSM8K solutions agree with the human labels.
    assert min(s["reward/human_label_agreement"] for s in steps) >= 0.9
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["complete"] and summary["controller"]["rlvr_controller_last_reported_step"] == 6
    assert (tmp_path / "schedule.png").stat().st_size > 0


def test_main_job_resumes_against_a_real_redis(tmp_path: Path, server_url: str) -> None:
    """Against a persistent Redis the controller's state carries over: a second run finds the run complete."""
    require_shared_data("bench/gsm8k_example_model_solutions.jsonl")
    run_id = f"e2e-{uuid.uuid4().hex[:8]}"
    args = ("--redis-url", server_url, "--set", f"run_id={run_id}", "--set", "total_steps=3")
    client = redis.Redis.from_url(server_url)
    try:
        first = _run(tmp_path / "a", *args)
        assert first.returncode == 0, first.stdout + first.stderr
        second = _run(tmp_path / "b", *args)
        assert second.returncode == 0, second.stdout + second.stderr
        summary = json.loads((tmp_path / "b" / "summary.json").read_text())
        assert (summary["steps_run"], summary["resumed_from_step"], summary["complete"]) == (0, 4, True)
        changed = _run(tmp_path / "c", *args, "--set", "schedule.max_ratio=0.9")
        assert changed.returncode != 0  # the controller refuses a changed schedule for an existing run
    finally:
        keys = list(client.scan_iter(match=f"rlvr:{run_id}:*"))
        if keys:
            client.delete(*keys)
        client.close()

"""`rlvr run` as a user runs it: real controller and reward-server processes, Redis streams, the step loop."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.shared_data import REPO_ROOT, require_shared_data

pytestmark = pytest.mark.e2e
SHORT = ("--set", "total_steps=6", "--set", "schedule.max_ratio=0.5")
REPLAY_PRESET = str(REPO_ROOT / "deploy" / "presets" / "replay-cpu.toml")  # the run machinery, no world to build


def _run(out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "services.cli", "run", "--config", REPLAY_PRESET, "--out", str(out), *extra],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip


def _steps(out: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_main_job_on_the_embedded_default(tmp_path: Path) -> None:
    require_shared_data("bench/gsm8k_example_model_solutions.jsonl")
    done = _run(tmp_path, *SHORT)
    assert done.returncode == 0, done.stdout + done.stderr
    steps = _steps(tmp_path)
    assert [s["step"] for s in steps] == [1, 2, 3, 4, 5, 6]
    # max_step = int(6 * 0.5) = 3: r decays over steps 1-2 and is 0 (plain GRPO, every token optimized) from 3 on
    assert [s["stage"] for s in steps] == ["anneal", "anneal", "general", "general", "general", "general"]
    assert steps[0]["ratio"] == pytest.approx(0.99 * (1 - 1 / 3))
    assert all(s["train/optimized_token_fraction"] == 1.0 for s in steps[2:])
    assert all(s["train/optimized_token_fraction"] < 1.0 for s in steps[:2])
    assert min(s["reward/human_label_agreement"] for s in steps) >= 0.9  # type: ignore[type-var]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["complete"] and summary["controller"]["rlvr_controller_last_reported_step"] == 6
    assert summary["accounting"]["adopted_entries"] == 0
    assert (tmp_path / "schedule.png").stat().st_size > 0
    assert json.loads((tmp_path / "config.json").read_text())["run_id"] == "replay-cpu"
    assert not (tmp_path / "config.pending.json").exists()


def test_rerun_keeps_the_run_and_a_changed_config_is_refused_before_writing(tmp_path: Path) -> None:
    """The embedded Redis keeps its data in the run folder: a finished run stays finished, its files untouched."""
    require_shared_data("bench/gsm8k_example_model_solutions.jsonl")
    assert _run(tmp_path, *SHORT).returncode == 0
    files = {name: (tmp_path / name).read_bytes() for name in ("config.json", "schedule.json", "metrics.jsonl")}
    again = _run(tmp_path, *SHORT)
    assert again.returncode == 0, again.stderr
    assert json.loads((tmp_path / "summary.json").read_text())["steps_run"] == 0
    assert (tmp_path / "metrics.jsonl").read_bytes() == files["metrics.jsonl"]
    for change, code_word in (("schedule.max_ratio=0.9", "schedule"), ("credit.strategy=none", "credit.strategy")):
        refused = _run(tmp_path, *SHORT, "--set", change)
        assert refused.returncode == 3, refused.stdout + refused.stderr
        assert len(refused.stderr.strip().splitlines()) == 1 and "Traceback" not in refused.stderr
        assert code_word in refused.stderr
        assert {name: (tmp_path / name).read_bytes() for name in files} == files
    forced = _run(tmp_path, *SHORT, "--set", "schedule.max_ratio=0.9", "--force-schedule")
    assert forced.returncode == 0, forced.stderr
    assert json.loads((tmp_path / "config.json").read_text())["schedule"]["max_ratio"] == 0.9


def test_bad_config_exits_2_with_one_line_and_writes_nothing(tmp_path: Path) -> None:
    require_shared_data("bench/gsm8k_example_model_solutions.jsonl")
    done = _run(tmp_path / "out", "--set", "rollout.samples_per_prompt=5")
    assert done.returncode == 2
    assert len(done.stderr.strip().splitlines()) == 1 and "samples_per_prompt=5" in done.stderr
    assert not (tmp_path / "out").exists()

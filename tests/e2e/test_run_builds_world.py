"""`rlvr run` on the main preset builds the tiny world on first use (shrunk here by settings) and reuses it after."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.test_prepare_world import PRESET, SHRUNK
from tests.shared_data import REPO_ROOT, require_shared_data

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def _rlvr(*args: str, worlds: Path) -> subprocess.CompletedProcess[str]:
    # building on first use is what is tested here, not the warm start: a few SFT steps are enough
    settings = [a for setting in (*SHRUNK, "world.sft.max_steps=50") for a in ("--set", setting)]
    return subprocess.run(
        [sys.executable, "-m", "services.cli", *args, "--config", PRESET, *settings],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=900, env={**os.environ, "RLVR_WORLDS_DIR": str(worlds)},
    )  # fmt: skip


def test_run_builds_the_world_on_first_use_and_prepare_reuses_it(tmp_path: Path) -> None:
    require_shared_data("bench/gsm8k_example_model_solutions.jsonl")
    worlds = tmp_path / "worlds"
    evaluation = ["--set", "evaluation.prompts=8", "--set", "evaluation.k=2"]
    run = _rlvr("run", "--out", str(tmp_path / "run"), "--set", "total_steps=3", *evaluation, worlds=worlds)
    assert run.returncode == 0, run.stderr
    summary = json.loads(run.stdout.strip().splitlines()[-1])
    world = summary["world"]
    assert world["reused"] is False and Path(world["world"]).parent == worlds
    assert (Path(world["model"]) / "config.json").exists()
    assert "prepare: world ready" in run.stderr
    # the run sampled the world's warm-started policy through the hf backend: 3 steps x 16 prompts x 8 samples
    stored = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert stored["rollout"]["rlvr_rollout_samples_total"] == 3 * 16 * 8
    assert stored["rollout"]["rlvr_rollout_generated_tokens_total"] > 0
    assert stored["reward_server"]["rlvr_reward_pool_workers"] >= 1
    # what a user looks at: the held-out accuracy of the last checkpoint against the warm start's, plots, TensorBoard
    held_out = stored["held_out"]
    assert held_out["prompts"] == 8 and held_out["k"] == 2
    assert 0.0 <= held_out["warm_start_avg_at_k"] <= 1.0 and 0.0 <= held_out["final_avg_at_k"] <= 1.0
    assert held_out["final_model"].endswith("global_step3/hf")
    assert (tmp_path / "run" / "eval" / "final.json").is_file()
    assert {p.name for p in (tmp_path / "run" / "plots").iterdir()} >= {"reward.png", "kl_by_percentile.png"}
    assert any((tmp_path / "run" / "tensorboard").iterdir())

    prepared = _rlvr("prepare", worlds=worlds)
    assert prepared.returncode == 0, prepared.stderr
    again = json.loads(prepared.stdout)
    assert again["reused"] is True and again["world"] == world["world"] and again["key"] == world["key"]

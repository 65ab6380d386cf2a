"""`rlvr run` on the main preset builds the tiny world on first use (shrunk here by settings), trains and evaluates,
leaving what a user looks at; `rlvr prepare` reuses the world after. The run is the session's learning run
(tests/world_fixtures.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.shared_data import require_shared_data
from tests.world_fixtures import LEARNING_RUN_TIMEOUT_S, STEPS, LearningRun, rlvr

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(LEARNING_RUN_TIMEOUT_S)]


def test_run_builds_the_world_on_first_use_and_prepare_reuses_it(learning_run: LearningRun) -> None:
    require_shared_data("bench/gsm8k_example_model_solutions.jsonl")
    summary, out = learning_run.summary, learning_run.out
    world = summary["world"]
    assert world["reused"] is False and Path(world["world"]).parent == learning_run.worlds
    assert (Path(world["model"]) / "config.json").exists()
    assert "prepare: world ready" in learning_run.done.stderr
    # the run sampled the world's warm-started policy through the hf backend: every step 16 prompts x 8 samples
    assert summary["rollout"]["rlvr_rollout_samples_total"] == STEPS * 16 * 8
    assert summary["rollout"]["rlvr_rollout_generated_tokens_total"] > 0
    assert summary["reward_server"]["rlvr_reward_pool_workers"] >= 1
    # what a user looks at: the held-out accuracy of the last checkpoint against the warm start's, plots, TensorBoard
    held_out = summary["held_out"]
    assert 0.0 <= held_out["warm_start_avg_at_k"] <= 1.0 and 0.0 <= held_out["final_avg_at_k"] <= 1.0
    assert held_out["final_model"].endswith(f"global_step{STEPS}/hf")
    assert (out / "eval" / "final.json").is_file() and (out / "eval" / "warm_start.json").is_file()
    assert {p.name for p in (out / "plots").iterdir()} >= {"reward.png", "kl_by_percentile.png"}
    assert any((out / "tensorboard").iterdir())
    assert len((out / "metrics.jsonl").read_text().splitlines()) == STEPS

    prepared = rlvr("prepare", worlds=learning_run.worlds)
    assert prepared.returncode == 0, prepared.stderr
    again = json.loads(prepared.stdout)
    assert again["reused"] is True and again["world"] == world["world"] and again["key"] == world["key"]

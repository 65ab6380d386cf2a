"""RL on the tiny world raises the held-out sampled accuracy beyond its noise: `rlvr run` on the tiny-cpu preset
(TP-Schedule, the DeepSpeed trainer, the hf rollout backend, lr 5e-5, 16 prompts x 8 samples) trains the shrunk
world's warm start (tests/world_fixtures.py: slipped demonstrations, greedy ~0.93, sampled ~0.5) for 30 steps, and
the run's own final evaluation (`held_out` in its summary: the warm start and the last checkpoint on the same 200
held-out test problems x 4 samples at T = 1, graded by the run's reward server) shows the gain.

The margin is statistical: the gain must exceed three standard errors of the difference of two binomial rates of
800 samples each (~0.075 at these rates; a run that learned nothing passes with probability ~0.1%). Measured while
building this test: 0.511 -> 0.631 after 20 steps."""

from __future__ import annotations

import math

import pytest

from tests.world_fixtures import LEARNING_RUN_TIMEOUT_S, STEPS, LearningRun

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(LEARNING_RUN_TIMEOUT_S)]


def test_a_short_run_raises_held_out_sampled_accuracy_beyond_its_noise(learning_run: LearningRun) -> None:
    summary = learning_run.summary
    assert summary["steps_run"] == STEPS and summary["complete"] is True
    held_out = summary["held_out"]
    before, after = held_out["warm_start_avg_at_k"], held_out["final_avg_at_k"]
    samples = held_out["prompts"] * held_out["k"]
    assert samples == 800 and held_out["temperature"] == 1.0
    se_diff = math.sqrt(before * (1 - before) / samples + after * (1 - after) / samples)
    assert after - before > 3 * se_diff, held_out

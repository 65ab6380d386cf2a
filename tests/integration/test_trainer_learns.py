"""The trainer learns: a short GRPO run (TP-Schedule mask, real OpenRLHF Actor + DeepSpeed rank, transformers
sampling) raises a verifiable reward's rate on held-out prompts far beyond the noise of its measurement
(tests/trainer_learning.py; on the tiny world itself the same is measured by bench/learning.py)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.shared_data import REPO_ROOT
from tests.tiny_models import write_prompts, write_tiny_model

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_a_short_run_raises_the_held_out_reward_rate_beyond_its_noise(tmp_path: Path) -> None:
    model = write_tiny_model(tmp_path / "model")
    prompts = write_prompts(tmp_path / "prompts.jsonl", 192)
    done = subprocess.run(
        [sys.executable, "-m", "tests.trainer_learning", str(model), str(prompts)], cwd=REPO_ROOT,
        capture_output=True, text=True, timeout=900, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    before, after, n = result["before"], result["after"], result["eval_samples"]
    noise = math.sqrt(max(before * (1 - before), 1 / n) / n)  # binomial standard error of the warm start's rate
    assert after - before > 10 * noise, result

"""The shrunk tiny world and the learning run the slow tests share, once per session: `rlvr run` on the tiny-cpu
preset builds the world on first use (as a user's first run does), trains it for STEPS steps and evaluates.

Level 1 only (4 operations), 60 validation and 200 test problems, the default policy and slipped demonstrations,
kept in a greedy band of 0.92 ± 0.06 (measured: the jump comes at SFT step ~1,250, kept step 1,525 at validation
0.93, test greedy 0.93 / sampled 0.48; about 7 minutes on 2 cores). The band is high on purpose: a warm start kept at
0.75 (sampled 0.30) erred by more than its slips and did not learn in 20 steps (0.31 -> 0.32), the one at 0.93 did.
tests/integration/test_prepare_world.py checks how the world was built and `rlvr prepare` reuses it;
tests/e2e/test_run_builds_world.py what the run left behind; tests/e2e/test_world_learns.py its held-out gain.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.shared_data import REPO_ROOT

PRESET = str(REPO_ROOT / "deploy" / "presets" / "tiny-cpu.toml")
TARGET, TOLERANCE = 0.92, 0.06
LEARNING_RUN_TIMEOUT_S = 2400  # for a test that may be the one to start the session's run (~12 min on 2 cores)
MAX_NEW_TOKENS = 128  # level-1 responses are ~100 tokens
SHRUNK = (
    "world.task.levels=[1]", "world.task.ood_levels=[2]", "world.task.validation_size=60", "world.task.test_size=200",
    "world.task.ood_size=40", "world.eval_size=60", "world.sft.screen_size=20", "world.sft.eval_every=25",
    f"world.max_new_tokens={MAX_NEW_TOKENS}", f"world.sft.target_accuracy={TARGET}",
    f"world.sft.tolerance={TOLERANCE}", "world.sft.cooldown_steps=100",
)  # fmt: skip


def rlvr(
    command: str, *args: str, worlds: Path, settings: tuple[str, ...] = SHRUNK
) -> subprocess.CompletedProcess[str]:
    """`rlvr <command> --config tiny-cpu --set <settings>... <args>` with RLVR_WORLDS_DIR=worlds."""
    sets = [a for setting in settings for a in ("--set", setting)]
    return subprocess.run(
        [sys.executable, "-m", "services.cli", command, "--config", PRESET, *sets, *args], cwd=REPO_ROOT,
        capture_output=True, text=True, timeout=LEARNING_RUN_TIMEOUT_S,
        env={**os.environ, "RLVR_WORLDS_DIR": str(worlds)},
    )  # fmt: skip


STEPS = 30
LEARN = (f"total_steps={STEPS}", f"rollout.sampling.max_new_tokens={MAX_NEW_TOKENS}", "evaluation.prompts=200",
         "evaluation.k=4", "trainer.checkpoint.every=0")  # fmt: skip
"""The run: the preset's trainer (TP-Schedule, lr 5e-5, 16 prompts x 8 samples), a checkpoint at the end only, the
final evaluation on the 200 test problems x 4 samples at T = 1."""


@dataclass(frozen=True)
class LearningRun:
    worlds: Path  # RLVR_WORLDS_DIR: the world the run built is worlds/world-<key>
    out: Path  # the run folder
    done: subprocess.CompletedProcess[str]

    @property
    def summary(self) -> dict[str, Any]:
        assert self.done.returncode == 0, self.done.stderr[-3000:]
        summary: dict[str, Any] = json.loads((self.out / "summary.json").read_text())
        return summary


@pytest.fixture(scope="session")
def learning_run(tmp_path_factory: pytest.TempPathFactory) -> LearningRun:
    root = tmp_path_factory.mktemp("learning")
    worlds, out = root / "worlds", root / "run"
    return LearningRun(worlds, out, rlvr("run", "--out", str(out), worlds=worlds, settings=(*SHRUNK, *LEARN)))

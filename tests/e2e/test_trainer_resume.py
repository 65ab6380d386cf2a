"""`rlvr run` with a policy backend trains with the DeepSpeed trainer, and a run SIGKILLed mid-way resumes from its
checkpoint to the same result as an uninterrupted run: the same phases, the same data, the same weights.

The untrained tiny policy never answers correctly (every advantage is 0), so an entropy bonus gives the update a
gradient: the weights move by ~lr a step, far beyond the tolerance of the comparison."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest
from safetensors.torch import load_file

from tests.e2e.policy_run import policy_run_toml
from tests.e2e.run_process import RunProcess

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

TOTAL = 6
WEIGHT_TOL = 1e-6  # one process, same data and order: the resumed run repeats the same float operations


def _config(tmp: Path) -> Path:
    return policy_run_toml(tmp, f"resume-{tmp.name[-8:].replace('_', '-')}", total_steps=TOTAL, prompts=16)


def _rows(out: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def _final_weights(out: Path) -> dict[str, object]:
    return dict(load_file(str(out / "checkpoints" / "_actor" / f"global_step{TOTAL}" / "hf" / "model.safetensors")))


def test_a_killed_run_resumes_to_the_same_weights(tmp_path: Path) -> None:
    config = _config(tmp_path)
    straight = RunProcess(tmp_path / "straight", config=config)
    assert straight.wait() == 0, straight.stderr()
    interrupted = RunProcess(tmp_path / "killed", config=config)
    assert interrupted.wait_for_steps(3), interrupted.stderr()
    interrupted.signal(signal.SIGKILL)
    interrupted.wait()
    resumed = RunProcess(tmp_path / "killed", config=config)
    assert resumed.wait() == 0, resumed.stderr()

    a, b = _rows(tmp_path / "straight"), _rows(tmp_path / "killed")
    assert [r["step"] for r in b] == list(range(1, TOTAL + 1))
    for key in ("ratio", "train/reward_mean", "train/response_length_mean", "train/optimized_tokens"):
        assert [r[key] for r in a] == [r[key] for r in b], key  # same phases, same samples
    assert [r["train/policy_version"] for r in b] == [float(s) for s in range(1, TOTAL + 1)]
    summary = json.loads((tmp_path / "killed" / "summary.json").read_text())
    assert [Path(p).name for p in summary["checkpoints"]] == [f"global_step{TOTAL - 1}", f"global_step{TOTAL}"]
    wa, wb = _final_weights(tmp_path / "straight"), _final_weights(tmp_path / "killed")
    initial = load_file(str(tmp_path / "model" / "model.safetensors"))
    assert max(float((wa[k] - initial[k]).abs().max()) for k in initial) > 1000 * WEIGHT_TOL  # it trained
    assert max(float((wa[k] - wb[k]).abs().max()) for k in wa) <= WEIGHT_TOL

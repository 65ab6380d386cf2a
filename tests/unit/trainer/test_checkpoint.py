"""Checkpoint bookkeeping without an engine: which steps are complete, and a checkpoint of another config refused."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import pytest

from tests.run_configs import run_config
from trainer.checkpoint import ACTOR_DIR, STATE_FILE, CheckpointMismatchError, Checkpoints, TrainerState, tag


def _write(root: Path, step: int, state: TrainerState | None) -> None:
    folder = root / ACTOR_DIR / tag(step)
    folder.mkdir(parents=True)
    (folder / "mp_rank_00_model_states.pt").write_bytes(b"")
    if state is not None:
        (folder / STATE_FILE).write_text(json.dumps(asdict(state)))


def _state(step: int, config_steps: int = 10) -> TrainerState:
    config = run_config("ckpt-test", config_steps)
    return TrainerState(step=step, policy_version=step, fingerprint=config.fingerprint(),
                        config=config.fingerprinted(), schedule={}, next_step=step + 1)  # fmt: skip


def test_only_checkpoints_with_their_state_file_are_complete(tmp_path: Path) -> None:
    checkpoints = Checkpoints(tmp_path, keep=2, hf_export=False)
    assert checkpoints.complete_steps() == []
    _write(tmp_path, 3, _state(3))
    _write(tmp_path, 4, None)  # killed while saving: DeepSpeed files without rlvr_state.json
    (tmp_path / ACTOR_DIR / "latest").write_text("global_step4")
    assert checkpoints.complete_steps() == [3]
    assert checkpoints.read_state(3).next_step == 4
    with pytest.raises(FileNotFoundError, match="step 4"):
        checkpoints.read_state(4)


def test_a_checkpoint_of_another_config_is_refused_naming_the_difference(tmp_path: Path) -> None:
    _write(tmp_path, 2, _state(2, config_steps=10))
    other = run_config("ckpt-test", 12)
    checkpoints = Checkpoints(tmp_path, keep=2, hf_export=False)
    with pytest.raises(CheckpointMismatchError, match="total_steps"):
        checkpoints.check_matches(2, other.fingerprint(), other.fingerprinted())
    same = run_config("ckpt-test", 10)
    assert checkpoints.check_matches(2, same.fingerprint(), same.fingerprinted()).step == 2

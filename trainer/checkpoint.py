"""Trainer checkpoints in OpenRLHF's layout, with what a resume needs to continue the same run exactly.

    <run>/checkpoints/_actor/latest                       DeepSpeed's pointer to the newest tag
    <run>/checkpoints/_actor/global_step<N>/              DeepSpeed model + optimizer + scheduler states (OpenRLHF
                                                          save_ckpt; the oldest beyond `keep` are deleted first)
    <run>/checkpoints/_actor/global_step<N>/hf/           Hugging Face export (OpenRLHF save_model), optional
    <run>/checkpoints/_actor/global_step<N>/rlvr_state.json   written last: the checkpoint is complete only with it

rlvr_state.json holds the step, the policy version, the run's fingerprinted config (a checkpoint of another
config is refused, naming the differences), the schedule state and the data position (the next step to train; the
prompt feed is a pure function of the step). Each rank's torch RNG state goes into DeepSpeed's client state.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from services.core.config import config_differences
from trainer.engine import PolicyEngine

ACTOR_DIR = "_actor"
STATE_FILE = "rlvr_state.json"
TAG_PATTERN = re.compile(r"^global_step(\d+)$")


class CheckpointMismatchError(ValueError):
    """A checkpoint written by a run with another configuration."""


@dataclass(frozen=True)
class TrainerState:
    step: int  # the last step whose update the weights contain
    policy_version: int
    fingerprint: str
    config: dict[str, Any]  # RunConfig.fingerprinted()
    schedule: dict[str, Any]  # the controller's ScheduleState
    next_step: int  # data position: the prompt feed of a step is a function of the step


def tag(step: int) -> str:
    return f"global_step{step}"


class Checkpoints:
    """The checkpoints of one run (rank 0 writes the JSON; every rank takes part in the DeepSpeed save/load)."""

    def __init__(self, root: Path, *, keep: int, hf_export: bool) -> None:
        self.directory = root / ACTOR_DIR
        self.keep, self.hf_export = keep, hf_export

    def complete_steps(self) -> list[int]:
        """Steps with a complete checkpoint, ascending."""
        if not self.directory.is_dir():
            return []
        steps = []
        for entry in self.directory.iterdir():
            match = TAG_PATTERN.match(entry.name)
            if match and (entry / STATE_FILE).is_file():
                steps.append(int(match.group(1)))
        return sorted(steps)

    def save(self, engine: PolicyEngine, state: TrainerState) -> Path:
        """Every rank calls this; the checkpoint is complete when rlvr_state.json exists."""
        client_state = {"rlvr": asdict(state), f"torch_rng_rank{engine.rank}": torch.get_rng_state()}
        engine.save_checkpoint(self.directory, tag(state.step), client_state, keep=self.keep)
        folder = self.directory / tag(state.step)
        if self.hf_export:
            engine.export_hf(folder / "hf")
        if engine.rank == 0:
            temporary = folder / (STATE_FILE + ".tmp")
            temporary.write_text(json.dumps(asdict(state), indent=1, sort_keys=True), encoding="utf-8")
            os.replace(temporary, folder / STATE_FILE)
        engine.barrier()
        return folder

    def read_state(self, step: int) -> TrainerState:
        path = self.directory / tag(step) / STATE_FILE
        if not path.is_file():
            raise FileNotFoundError(f"no complete checkpoint for step {step} ({path} is missing)")
        return TrainerState(**json.loads(path.read_text(encoding="utf-8")))

    def check_matches(self, step: int, fingerprint: str, config: dict[str, Any]) -> TrainerState:
        """The stored state of `step`, or CheckpointMismatchError naming what differs from `config`."""
        state = self.read_state(step)
        if state.fingerprint != fingerprint:
            differences = config_differences(state.config, config)
            raise CheckpointMismatchError(
                f"checkpoint {self.directory / tag(step)} was written by a run with another configuration: "
                + "; ".join(differences[:10])
            )
        return state

    def load(self, engine: PolicyEngine, step: int, fingerprint: str, config: dict[str, Any]) -> TrainerState:
        """Restore weights, optimizer, scheduler and this rank's RNG from `step` (after checking its config)."""
        state = self.check_matches(step, fingerprint, config)
        client = engine.load_checkpoint(self.directory, tag(step))
        rng = client.get(f"torch_rng_rank{engine.rank}")
        if isinstance(rng, torch.Tensor):
            torch.set_rng_state(rng)
        return state

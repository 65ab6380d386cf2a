"""`TrainerRank`: one data-parallel rank of the trainer; `spawn_trainer_group` starts `trainer.engine.world_size` of
them as Ray actors (`TrainerWorker`), and the local run uses a single one in its own process.

The caller (the run's driver) owns the data contract: it collects a step's scored groups from the rollouts stream,
pulls the phase from the controller, hands the same groups and phase to every rank (`train`), publishes the new
weights (rank 0's `weights`) under the next policy version, checkpoints (`save`, every rank), reports the step and
only then acks. Each rank trains its share of the batch (trainer/update.py); the policy version is the number of
optimizer steps taken, so after step s it is s.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

import ray
import torch

from services.core.config import RunConfig
from services.core.schedule import Phase
from services.core.wire import ScoredGroup
from trainer.checkpoint import Checkpoints, TrainerState
from trainer.engine import PolicyEngine, set_distributed_env
from trainer.update import train_step

CHECKPOINTS_DIR = "checkpoints"


class TrainerRank:
    """One rank: its DeepSpeed engine, the run's checkpoints, and the policy version of its weights."""

    def __init__(
        self, config_json: str, model_dir: str, run_dir: str, *, rank: int = 0, master_addr: str = "127.0.0.1",
        master_port: int = 0, torch_threads: int | None = None,
    ) -> None:  # fmt: skip
        self.config = RunConfig.model_validate_json(config_json)
        engine = self.config.trainer.engine
        if torch_threads is not None:
            torch.set_num_threads(torch_threads)
        set_distributed_env(rank, engine.world_size, master_addr, master_port or free_port())
        rollout = self.config.rollout
        self.engine = PolicyEngine(
            Path(model_dir), self.config.trainer, total_steps=self.config.total_steps,
            samples_per_step=rollout.prompts_per_step * rollout.samples_per_prompt,
        )  # fmt: skip
        checkpoint = self.config.trainer.checkpoint
        self.checkpoints = Checkpoints(
            Path(run_dir) / CHECKPOINTS_DIR, keep=checkpoint.keep, hf_export=checkpoint.hf_export
        )
        self.policy_version = 0

    def train(self, step: int, groups: list[ScoredGroup], phase: Phase) -> dict[str, float | None]:
        """The update of `step` at `phase` (the phase of the step being trained); every rank gets the same groups."""
        if phase.step != step:
            raise ValueError(f"phase is for step {phase.step}, not for the step being trained ({step})")
        if step != self.policy_version + 1:
            raise ValueError(f"the weights hold {self.policy_version} steps: step {step} cannot be trained next")
        metrics = train_step(
            self.engine, groups, phase, self.config.credit, self.config.trainer,
            temperature=self.config.rollout.sampling.temperature,
        )  # fmt: skip
        self.policy_version = step
        metrics["train/policy_version"] = float(step)
        return metrics

    def weights(self) -> dict[str, torch.Tensor]:
        """The full state dict (every rank must call; under ZeRO-3 it is gathered)."""
        return self.engine.full_state_dict()

    def save(self, schedule: dict[str, Any]) -> str:
        """Checkpoint the current step (every rank)."""
        state = TrainerState(
            step=self.policy_version, policy_version=self.policy_version, fingerprint=self.config.fingerprint(),
            config=self.config.fingerprinted(), schedule=schedule, next_step=self.policy_version + 1,
        )  # fmt: skip
        return str(self.checkpoints.save(self.engine, state))

    def checkpoint_steps(self) -> list[int]:
        return self.checkpoints.complete_steps()

    def restore(self, step: int) -> dict[str, Any]:
        """Load the checkpoint of `step` (every rank); returns its stored state."""
        state = self.checkpoints.load(self.engine, step, self.config.fingerprint(), self.config.fingerprinted())
        self.policy_version = state.policy_version
        return {"step": state.step, "policy_version": state.policy_version, "next_step": state.next_step}

    def rank_info(self) -> dict[str, int]:
        return {
            "rank": self.engine.rank,
            "world_size": self.engine.world_size,
            "grad_accum": self.engine.grad_accum_steps,
        }

    def pid(self) -> int:
        """This rank's process id (for supervision and fault tests)."""
        return os.getpid()

    def close(self) -> None:
        self.engine.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@ray.remote
def _node_address() -> tuple[str, int]:
    """Where rank 0's process group listens: this node's address and a free port on it."""
    address: str = ray.util.get_node_ip_address()  # type: ignore[no-untyped-call]
    return address, free_port()


def spawn_trainer_group(
    config: RunConfig, model_dir: Path, run_dir: Path, *, cpus_per_rank: float = 1.0, gpus_per_rank: float = 0.0,
    torch_threads: int | None = None, runtime_env: dict[str, Any] | None = None,
) -> list[Any]:  # fmt: skip
    """Start the `trainer.engine.world_size` TrainerWorker actors (they join one process group as they start);
    rank 0 first in the returned list. Blocks until every rank's engine is built."""
    world = config.trainer.engine.world_size
    address, port = ray.get(_node_address.remote())
    actor = ray.remote(TrainerRank).options(num_cpus=cpus_per_rank, num_gpus=gpus_per_rank, runtime_env=runtime_env)
    config_json = config.model_dump_json()
    ranks = [
        actor.remote(config_json, str(model_dir), str(run_dir), rank=rank, master_addr=address, master_port=port,
                     torch_threads=torch_threads)
        for rank in range(world)
    ]  # fmt: skip
    ray.get([r.rank_info.remote() for r in ranks])  # type: ignore[attr-defined]
    return ranks

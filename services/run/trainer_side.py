"""The run's trainer, as the driver sees it: one rank in the driver's process (`TrainerRank` itself) or
`trainer.engine.world_size` TrainerWorker actors on Ray (`RayTrainerGroup`), restarted from the checkpoint of the
last reported step when a rank dies.

Both answer the same calls: `train(step, groups, phase)` on every rank with the same groups, `weights()` (rank 0's
full state dict; every rank takes part, as ZeRO-3 gathers), `save(schedule)`, `checkpoint_steps()`,
`restore(step)`, `close()`.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Protocol

import ray
import torch

from services.core.config import RunConfig
from services.core.result_stream import say
from services.core.schedule import Phase
from services.core.wire import ScoredGroup
from services.run.ray_session import actor_runtime_env
from trainer.worker import spawn_trainer_group


class TrainerSide(Protocol):
    def train(self, step: int, groups: list[ScoredGroup], phase: Phase) -> dict[str, float | None]: ...

    def weights(self) -> dict[str, torch.Tensor]: ...

    def save(self, schedule: dict[str, Any]) -> str: ...

    def checkpoint_steps(self) -> list[int]: ...

    def restore(self, step: int) -> dict[str, Any]: ...

    def close(self) -> None: ...


class TrainerLostError(RuntimeError):
    """A trainer rank died and the run cannot continue exactly (no checkpoint to restart from, or too many deaths)."""


class RayTrainerGroup:
    """The trainer ranks as Ray actors. A rank that dies (SIGKILL, out of memory, a lost node) takes the whole group
    down: the survivors' process group is broken. The group is started again, every rank restores the checkpoint of
    the last trained step, and the step that was interrupted is trained again from the same groups (they were not
    acked: the report comes after the update)."""

    def __init__(self, config: RunConfig, model_dir: Path, run_dir: Path) -> None:
        self.config, self.model_dir, self.run_dir = config, model_dir, run_dir
        self.restarts = 0
        self._at = 0  # the step whose weights the ranks hold
        self._last: tuple[int, list[ScoredGroup], Phase] | None = None  # what trained them (to train it again)
        self._ranks = self._spawn()

    def _spawn(self) -> list[Any]:
        ray_config = self.config.ray
        threads = getattr(self.config.rollout.backend, "torch_threads", None)
        return spawn_trainer_group(
            self.config, self.model_dir, self.run_dir, cpus_per_rank=ray_config.trainer_cpus,
            gpus_per_rank=ray_config.trainer_gpus, torch_threads=threads, runtime_env=actor_runtime_env(),
        )  # fmt: skip

    def _all(self, method: str, *args: Any) -> list[Any]:
        """`method` on every rank; the first rank to die raises at once (its peers may be blocked in a collective
        waiting for it, so waiting on them in order could hang)."""
        futures = [getattr(rank, method).remote(*args) for rank in self._ranks]
        pending = list(futures)
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            ray.get(done)
        return list(ray.get(futures))

    def train(self, step: int, groups: list[ScoredGroup], phase: Phase) -> dict[str, float | None]:
        while True:
            try:
                metrics: dict[str, float | None] = self._all("train", step, groups, phase)[0]
                self._at, self._last = step, (step, groups, phase)
                return metrics
            except ray.exceptions.RayActorError as exc:
                self._restart(self._at, exc)

    def _after_step(self, method: str, *args: Any) -> list[Any]:
        """`method` on every rank after a step; a death there retrains that step on new ranks first."""
        while True:
            try:
                return self._all(method, *args)
            except ray.exceptions.RayActorError as exc:
                if self._last is None or self._last[0] != self._at:
                    self._restart(self._at, exc)  # the weights came from a checkpoint: restore it again
                    continue
                step, groups, phase = self._last
                self._at = step - 1
                self._restart(self._at, exc)
                self.train(step, groups, phase)

    def _restart(self, last_trained: int, cause: Exception) -> None:
        """Start the ranks again at the checkpoint of `last_trained` (the weights the interrupted step started from)."""
        self.restarts += 1
        if self.restarts > self.config.ray.max_trainer_restarts:
            raise TrainerLostError(
                f"a trainer rank died {self.restarts} times (ray.max_trainer_restarts = "
                f"{self.config.ray.max_trainer_restarts}); last: {type(cause).__name__}"
            ) from cause
        say(f"trainer rank died ({type(cause).__name__}): restarting the group at step {last_trained}")
        self.close()
        self._ranks = self._spawn()
        if last_trained == 0:
            return
        if last_trained not in self.checkpoint_steps():
            raise TrainerLostError(
                f"a trainer rank died and no checkpoint of step {last_trained} exists (it has "
                f"{self.checkpoint_steps() or 'none'}): the weights it trained are lost; checkpoint every step "
                "(trainer.checkpoint.every = 1) to survive a trainer's death"
            ) from cause
        self._all("restore", last_trained)

    def restore(self, step: int) -> dict[str, Any]:
        state = dict(self._all("restore", step)[0])
        self._at, self._last = step, None
        return state

    def weights(self) -> dict[str, torch.Tensor]:
        return dict(self._after_step("weights")[0])

    def save(self, schedule: dict[str, Any]) -> str:
        return str(self._after_step("save", schedule)[0])

    def checkpoint_steps(self) -> list[int]:
        return list(ray.get(self._ranks[0].checkpoint_steps.remote()))

    def rank_pids(self) -> list[int]:
        return [int(pid) for pid in ray.get([rank.pid.remote() for rank in self._ranks])]

    def close(self) -> None:
        for rank in self._ranks:
            with contextlib.suppress(ray.exceptions.RayError):  # already dead
                ray.get(rank.close.remote(), timeout=60)
            ray.kill(rank)
        self._ranks = []

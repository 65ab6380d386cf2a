"""The `[ray]` section: whether the run's rollout and trainer run as Ray actors, and on which cluster.

Off (the default), `rlvr run` generates and trains in its own process (one rollout role, one trainer rank): the
lightest path, and the only one for the replay backend. On, the driver starts `rollout.workers` RolloutWorker
actors and `trainer.engine.world_size` TrainerWorker actors on a local Ray instance (or the cluster at `address`,
the Kubernetes entry point), supervises them, and overlaps rollout and training when `trainer.max_staleness` >= 1.
Every field here is operational: a run may resume with Ray switched on or off.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class RayConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    enabled: bool = Field(default=False, description="Run the rollout workers and trainer ranks as Ray actors.")
    address: str | None = Field(
        default=None,
        min_length=1,
        description="An existing Ray cluster (`auto`, `ray://host:10001`, `host:6379`); unset: a local instance "
        "started and stopped by the run.",
    )
    num_cpus: int | None = Field(
        default=None, ge=1, le=4096, description="CPUs the local instance offers (unset: the machine's count)."
    )
    trainer_cpus: float = Field(default=1.0, gt=0.0, le=256.0, description="Ray CPUs each trainer rank reserves.")
    trainer_gpus: float = Field(default=0.0, ge=0.0, le=8.0, description="Ray GPUs each trainer rank reserves.")
    stuck_after_s: float = Field(
        default=900.0,
        gt=0.0,
        le=86_400.0,
        description="A step whose groups stop arriving for this long (no worker published anything, none restarted) "
        "fails the run with the reason, instead of hanging.",
    )
    max_trainer_restarts: int = Field(
        default=3, ge=0, le=100, description="Trainer ranks restarted from the last checkpoint at most this often."
    )

"""`RolloutWorker`: the Ray actor around the rollout role (services/rollout/role.py).

A worker builds its backend from the run's resolved config (`hf` or `vllm`; the model and prompts of the prepared
world unless the config names its own), joins the prompts stream's consumer group under a fresh consumer name,
serves its Prometheus metrics on a port of its own (`metrics_url`), and fetches the run's latest weights from the
`WeightStore` before it generates anything and before every batch after (services/rollout/weights.py).

`run` loops until `stop` is called (the actor is threaded, `max_concurrency` 4, so `stop`, `status` and
`metrics_url` answer while `run` works). Several workers share one consumer group: each prompt group goes to one of
them; one that dies leaves its unacked groups pending, and a live one reclaims them after the queue's
`claim_idle_ms`. Ray's own resource model places them: `rollout.worker_cpus` (fractions let several share a core on
a small machine) and `rollout.worker_gpus`.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import ray

from reward_server.client import RewardClient
from services.controller.client import RUN_RETRY, ControllerClient
from services.core.config import RunConfig
from services.core.queues import PROMPTS, ROLLOUTS, new_consumer_name
from services.core.redis_conn import connect
from services.core.redis_streams import RedisStreamQueue
from services.rollout.build import build_backend, policy_inputs
from services.rollout.metrics import RolloutMetrics
from services.rollout.role import RolloutRole, RolloutStopped
from services.rollout.weights import fetch_newer, find_weight_store, weight_store

READ_BLOCK_MS = 500


@dataclass(frozen=True)
class WorkerEndpoints:
    redis_url: str
    controller_url: str
    reward_url: str


@dataclass
class WorkerStatus:
    name: str
    pid: int
    policy_version: int
    published: int
    stale_prompts: int
    weight_syncs: int
    running: bool


class RolloutWorker:
    """One rollout worker (see the module docstring); `spawn_rollout_workers` starts them as Ray actors."""

    def __init__(
        self, config_json: str, endpoints: WorkerEndpoints, *, world_path: str | None = None,
        read_batch: int | None = None, metrics_host: str = "0.0.0.0",
    ) -> None:  # fmt: skip
        self.config = RunConfig.model_validate_json(config_json)
        self.name = new_consumer_name("rollout")
        self._backend = build_backend(self.config, policy_inputs(self.config, Path(world_path) if world_path else None))
        self.metrics = RolloutMetrics(self.name)
        self.metrics.describe(self.config.rollout.backend.type)
        self._metrics_port = self.metrics.serve(host=metrics_host)
        self._store = find_weight_store(self.config.run_id)
        self._weight_syncs = 0
        self._sync_weights()  # the latest weights before anything is generated (a late or restarted worker)
        self._redis = connect(endpoints.redis_url)
        self._controller = ControllerClient(endpoints.controller_url, retry=RUN_RETRY)
        self._reward = RewardClient(endpoints.reward_url, timeout_s=self.config.reward.request_timeout_s)
        queues = self.config.queues
        self.role = RolloutRole(
            self._backend, self._reward, self._controller,
            RedisStreamQueue(self._redis, PROMPTS, self.config.run_id, queues),
            RedisStreamQueue(self._redis, ROLLOUTS, self.config.run_id, queues),
            self.name, read_batch=read_batch or self.config.rollout.prompts_per_step, metrics=self.metrics,
            sync_weights=self._sync_weights,
        )  # fmt: skip
        self._published = self._stale = 0
        self._running = False

    def _sync_weights(self) -> None:
        """Load the store's weights if they are newer than the backend's (between batches only)."""
        started = time.perf_counter()
        newer = fetch_newer(self._store, self._backend.policy_version)
        if newer is None:
            return
        waiting = self.metrics.waiting.labels(reason="weights")
        waiting.set(1)
        version, weights = newer
        try:
            self._backend.load_weights(weights, version)  # type: ignore[attr-defined]  # hf and vllm both have it
        finally:
            waiting.set(0)
        elapsed = time.perf_counter() - started
        self.metrics.weight_sync_seconds.observe(elapsed)
        self.metrics.wait_seconds.labels(reason="weights").inc(elapsed)
        self.metrics.policy_version.set(version)
        self._weight_syncs += 1

    def run(self, max_groups: int | None = None) -> dict[str, Any]:
        """Generate until `stop` (or until `max_groups` groups were published); returns the final status."""
        self.role.stop_event.clear()
        self._running = True
        try:
            while not self.role.stop_event.is_set():
                done = self.role.process_available(block_ms=READ_BLOCK_MS)
                self._published += done.published
                self._stale += done.stale_prompts
                if done.paused:
                    self._wait_while_paused()
                if max_groups is not None and self._published >= max_groups:
                    break
        except RolloutStopped:
            pass
        finally:
            self._running = False
        return self.status()

    def _wait_while_paused(self) -> None:
        waiting = self.metrics.waiting.labels(reason="controller")
        waiting.set(1)
        started = time.perf_counter()
        while not self.role.stop_event.wait(0.5) and self._controller.get_phase().paused:
            pass
        waiting.set(0)
        self.metrics.wait_seconds.labels(reason="controller").inc(time.perf_counter() - started)

    def stop(self) -> None:
        """Ask `run` to return after the batch in hand (a batch waiting for the reward server is left unacked)."""
        self.role.stop_event.set()

    def status(self) -> dict[str, Any]:
        return asdict(
            WorkerStatus(
                self.name, os.getpid(), self._backend.policy_version, self._published, self._stale,
                self._weight_syncs, self._running,
            )
        )  # fmt: skip

    def metrics_url(self) -> str:
        return f"http://{ray.util.get_node_ip_address()}:{self._metrics_port}/metrics"  # type: ignore[no-untyped-call]

    def close(self) -> None:
        """Release the engine and the connections (the actor is killed after)."""
        self.stop()
        close = getattr(self._backend, "close", None)
        if close is not None:
            close()
        self._reward.close()
        self._controller.close()
        self._redis.close()


@dataclass
class RolloutFleet:
    """The run's weight store and its rollout workers. Keep this object for the run: the store lives as long as
    this process holds its handle (a dropped handle ends it)."""

    store: Any
    workers: list[Any]


def spawn_rollout_workers(
    config: RunConfig, endpoints: WorkerEndpoints, *, world_path: Path | None = None, count: int | None = None,
    max_restarts: int = 0, runtime_env: dict[str, Any] | None = None,
) -> RolloutFleet:  # fmt: skip
    """Start `count` (default `rollout.workers`) RolloutWorker actors with the config's CPU and GPU reservations,
    after the run's weight store (created here unless it exists, so that this process owns it, not a worker)."""
    store = weight_store(config.run_id)
    rollout = config.rollout
    actor = ray.remote(RolloutWorker).options(
        num_cpus=rollout.worker_cpus, num_gpus=rollout.worker_gpus, max_concurrency=4, max_restarts=max_restarts,
        runtime_env=runtime_env,
    )  # fmt: skip
    config_json = config.model_dump_json()
    world = str(world_path) if world_path is not None else None
    workers = [actor.remote(config_json, endpoints, world_path=world) for _ in range(count or rollout.workers)]
    return RolloutFleet(store, workers)

"""The run's rollout, as the driver sees it: in its own process (`LocalRollout`) or a supervised fleet of Ray actors
(`RayRollout`). Both take prompt groups from the prompts stream and publish scored groups to the rollouts stream;
the driver feeds, collects and trains the same way over either.

`produce(block_ms)` is the driver's turn to move the rollout on: the local one generates what is available; the
Ray one checks its workers, replaces any that died (their unacked prompt groups go to a live worker after the
queue's `claim_idle_ms`; a new worker loads the latest weights before it generates) and reports how many groups the
fleet published since the last call.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol, cast

import ray
import torch

from reward_server.client import RewardClient
from services.controller.client import ControllerClient
from services.core.config import RunConfig
from services.core.queues import new_consumer_name
from services.core.redis_streams import RedisStreamQueue
from services.core.result_stream import say
from services.rollout.build import RolloutSetup
from services.rollout.role import PolicyBackend, RolloutPass, RolloutRole
from services.rollout.weights import publish_weights, weight_store
from services.rollout.worker import WorkerEndpoints, spawn_rollout_workers
from services.run.ray_session import actor_runtime_env

REQUEUE_BATCH = 512
STATUS_TIMEOUT_S = 30.0
CLOSE_TIMEOUT_S = 60.0


class RolloutSide(Protocol):
    restarts: int

    @property
    def metrics_urls(self) -> list[str]:
        """The Prometheus endpoints of the rollout (one per worker)."""

    def adopt_abandoned(self) -> int:
        """Take over what a dead earlier attempt left pending; returns how many prompt groups."""

    def in_flight_group_ids(self) -> set[str]:
        """Prompt group ids already queued for generation (the feeder need not publish them again)."""

    def produce(self, *, block_ms: int) -> RolloutPass: ...

    def load_weights(self, weights: Mapping[str, torch.Tensor], version: int) -> None:
        """Make `weights` the policy of every later generation, under `version`."""

    def close(self) -> None: ...


class LocalRollout:
    """The rollout role in the driver's process, generating with the run's backend between the driver's steps."""

    def __init__(
        self, setup: RolloutSetup, reward: RewardClient, controller: ControllerClient,
        prompts: RedisStreamQueue[Any], rollouts: RedisStreamQueue[Any], backend_type: str,
    ) -> None:  # fmt: skip
        if setup.backend is None:
            raise ValueError("the in-process rollout needs the run's backend (build_rollout with_backend=True)")
        self.setup = setup
        self.role = RolloutRole(setup.backend, reward, controller, prompts, rollouts, new_consumer_name("rollout"))
        self.role.metrics.describe(backend_type)
        port = self.role.metrics.serve(host="127.0.0.1")
        self.metrics_urls = [f"http://127.0.0.1:{port}/metrics"]
        self.restarts = 0

    def adopt_abandoned(self) -> int:
        return self.role.adopt_abandoned()

    def in_flight_group_ids(self) -> set[str]:
        return self.role.adopted_group_ids()

    def produce(self, *, block_ms: int) -> RolloutPass:
        return self.role.process_available(block_ms=block_ms)

    def load_weights(self, weights: Mapping[str, torch.Tensor], version: int) -> None:
        policy_backend(self.setup).load_weights(weights, version)

    def close(self) -> None:
        """The backend belongs to the run's setup, which closes it."""


def policy_backend(setup: RolloutSetup) -> PolicyBackend:
    if not callable(getattr(setup.backend, "load_weights", None)):
        raise TypeError(f"the rollout backend {type(setup.backend).__name__} cannot load trained weights")
    return cast(PolicyBackend, setup.backend)


class RayRollout:
    """`rollout.workers` RolloutWorker actors on the run's Ray, supervised by the driver (see the module docstring).

    Start-up order matters for resuming: prompt groups a dead earlier attempt left pending are published again
    (then acked) before any worker exists, so none is generated twice by the new workers and none is lost."""

    def __init__(
        self, config: RunConfig, endpoints: WorkerEndpoints, prompts: RedisStreamQueue[Any], world_path: Path | None
    ) -> None:
        self.config, self.endpoints, self.world_path = config, endpoints, world_path
        self.prompts = prompts
        self.restarts = 0
        self._requeued: set[str] = set()
        self._store = weight_store(config.run_id)  # owned by this process: it lives as long as this handle
        self._workers: list[Any] = []
        self._runs: dict[Any, Any] = {}  # run() future -> worker
        self._published: dict[Any, int] = {}  # worker -> groups published as of its last status
        self._urls: dict[Any, str] = {}

    @property
    def metrics_urls(self) -> list[str]:
        return list(self._urls.values())

    def adopt_abandoned(self) -> int:
        """Publish again what an earlier attempt's consumers left pending (before this fleet's workers start)."""
        if self._workers:
            raise RuntimeError("adopt_abandoned must run before the workers start")
        consumer = new_consumer_name("requeue")
        while batch := self.prompts.reclaim(consumer, min_idle_ms=0, count=REQUEUE_BATCH):
            for delivery in batch:
                self.prompts.publish(delivery.message)  # a copy first: a crash between the two loses nothing
                self._requeued.add(delivery.message.group_id)
            self.prompts.ack([d.entry_id for d in batch])
            if len(batch) < REQUEUE_BATCH:
                break
        return len(self._requeued)

    def start(self) -> None:
        """Start the workers; blocks until each has loaded its backend and the latest weights."""
        for _ in range(self.config.rollout.workers):
            self._start_worker()

    def _start_worker(self) -> Any:
        fleet = spawn_rollout_workers(
            self.config, self.endpoints, world_path=self.world_path, count=1, runtime_env=actor_runtime_env()
        )
        (worker,) = fleet.workers
        self._urls[worker] = ray.get(worker.metrics_url.remote())  # built: backend, metrics endpoint, weights
        self._workers.append(worker)
        self._published[worker] = 0
        self._runs[worker.run.remote()] = worker
        return worker

    def in_flight_group_ids(self) -> set[str]:
        return set(self._requeued)

    def produce(self, *, block_ms: int) -> RolloutPass:
        """Wait up to `block_ms` for a worker to end (replacing it), then count the fleet's new publications."""
        done, _ = ray.wait(list(self._runs), num_returns=1, timeout=block_ms / 1000)
        for future in done:
            self._replace(future)
        published = 0
        for worker in list(self._workers):
            try:
                status = ray.get(worker.status.remote(), timeout=STATUS_TIMEOUT_S)
            except ray.exceptions.RayActorError:
                continue  # died since: its run() future ends and the next call replaces it
            published += int(status["published"]) - self._published[worker]
            self._published[worker] = int(status["published"])
        return RolloutPass(published=published)

    def _replace(self, future: Any) -> None:
        worker = self._runs.pop(future)
        try:
            ray.get(future)
            reason = "returned"
        except ray.exceptions.RayError as exc:
            reason = type(exc).__name__
        self._workers.remove(worker)
        self._published.pop(worker, None)
        self._urls.pop(worker, None)
        ray.kill(worker)
        self.restarts += 1
        say(f"rollout worker ended ({reason}): starting a replacement ({self.restarts} so far)")
        started = time.monotonic()
        self._start_worker()
        say(f"rollout worker replaced in {time.monotonic() - started:.1f} s")

    def load_weights(self, weights: Mapping[str, torch.Tensor], version: int) -> None:
        """Publish to the run's weight store; each worker loads them before its next batch."""
        publish_weights(self._store, weights, version)

    def workers(self) -> list[Any]:
        return list(self._workers)

    def close(self) -> None:
        """Stop every worker after the batch in hand, release its engine, end the actors."""
        for worker in self._workers:
            worker.stop.remote()
        ray.wait(list(self._runs), num_returns=len(self._runs), timeout=CLOSE_TIMEOUT_S)
        closing = [w.close.remote() for w in self._workers]
        ray.wait(closing, num_returns=len(closing), timeout=CLOSE_TIMEOUT_S)
        for worker in self._workers:
            ray.kill(worker)
        self._workers.clear()
        self._runs.clear()
        self._urls.clear()

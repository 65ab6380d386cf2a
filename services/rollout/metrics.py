"""Prometheus metrics of a rollout worker, on an explicit registry owned by one worker.

Each worker serves its own `/metrics` endpoint (`serve`): on Ray every actor starts one on a free port and reports
its address, `rlvr run` prints them, and the Helm chart's Prometheus scrapes the rollout pods. An explicit endpoint
per actor was chosen over Ray's metrics export, which needs Ray's dashboard agent (`ray[default]`) running beside
every node. Names follow `rlvr_rollout_<quantity>_<unit>`; the README's metrics catalog lists them. Rates (tokens/s,
samples/s) are `rate()` of the counters.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from services.core.wire import RewardStatus

WAIT_REASONS = ("reward", "weights", "controller")
_LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


class RolloutMetrics:
    """Every metric one rollout worker exports."""

    def __init__(self, worker: str, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.info = Gauge("rlvr_rollout_worker_info", "Worker identity (always 1).", ["worker", "backend"], registry=r)
        self.worker = worker
        self.generated_tokens = Counter(
            "rlvr_rollout_generated_tokens_total", "Response tokens generated (EOS included).", registry=r
        )
        self.samples = Counter("rlvr_rollout_samples_total", "Samples generated and published.", registry=r)
        self.groups = Counter("rlvr_rollout_groups_total", "Scored prompt groups published.", registry=r)
        self.stale_prompts = Counter(
            "rlvr_rollout_stale_prompts_total",
            "Prompt groups acked unused: their step was already trained.",
            registry=r,
        )
        self.batch_seconds = Histogram(
            "rlvr_rollout_batch_seconds", "Generation time of one batch of prompt groups.",
            buckets=_LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.reward_seconds = Histogram(
            "rlvr_rollout_reward_seconds", "Time to score one batch (successful requests).",
            buckets=_LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.reward_status = Counter(
            "rlvr_rollout_reward_status_total", "Scored samples by the reward server's status.", ["status"], registry=r
        )
        self.reward_unavailable = Counter(
            "rlvr_rollout_reward_unavailable_total",
            "Scoring attempts that found the reward server unreachable (each is retried; nothing is published).",
            registry=r,
        )
        self.wait_seconds = Counter(
            "rlvr_rollout_wait_seconds_total",
            "Time spent waiting: for the reward server, for new weights, or for a paused controller.",
            ["reason"],
            registry=r,
        )
        self.waiting = Gauge(
            "rlvr_rollout_waiting", "1 while the worker waits for this reason.", ["reason"], registry=r
        )
        self.weight_sync_seconds = Histogram(
            "rlvr_rollout_weight_sync_seconds", "Time to fetch and load one weight update.",
            buckets=_LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.policy_version = Gauge(
            "rlvr_rollout_policy_version", "Policy version of the weights generating now.", registry=r
        )
        for reason in WAIT_REASONS:
            self.wait_seconds.labels(reason=reason)
            self.waiting.labels(reason=reason).set(0)

    def describe(self, backend: str) -> None:
        self.info.labels(worker=self.worker, backend=backend).set(1)

    def count_statuses(self, statuses: list[RewardStatus]) -> None:
        for status in statuses:
            self.reward_status.labels(status=status).inc()

    def serve(self, host: str = "0.0.0.0", port: int = 0) -> int:
        """Serve `/metrics` on a background thread; returns the bound port (a free one when `port` is 0)."""
        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        return int(server.server_port)

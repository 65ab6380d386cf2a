"""Prometheus metrics of the controller, on an explicit registry owned by one app instance.

Run gauges are refreshed from Redis at scrape time (`refresh`), so every controller replica and a restarted one
report the same values: Redis is the only source. Request metrics are counted by an ASGI middleware per route
template (small, fixed label set).
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.types import Scope

from services.controller.schemas import RunStatus
from services.core.queues import QueueStats
from services.core.schedule import Phase

STAGES = ("warmup", "anneal", "general")
REPORT_OUTCOMES = ("accepted", "duplicate", "rejected")


class ControllerMetrics:
    """Every metric the controller exports; names follow `rlvr_controller_<quantity>_<unit>`."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.run_info = Gauge(
            "rlvr_controller_run_info", "Run served (always 1).", ["run_id", "schedule_mode"], registry=r
        )
        self.total_steps = Gauge("rlvr_controller_total_steps", "Optimizer steps of the whole run.", registry=r)
        self.current_step = Gauge(
            "rlvr_controller_current_step", "Step the trainer is about to take (last reported + 1).", registry=r
        )
        self.last_reported_step = Gauge(
            "rlvr_controller_last_reported_step", "Last accepted step report (0 before any).", registry=r
        )
        self.schedule_ratio = Gauge("rlvr_controller_schedule_ratio", "r(s) at the current step.", registry=r)
        self.schedule_progress = Gauge(
            "rlvr_controller_schedule_progress", "Ramp progress p in [0, 1] at the current step.", registry=r
        )
        self.stage = Gauge(
            "rlvr_controller_stage", "1 for the current schedule stage, 0 otherwise.", ["stage"], registry=r
        )
        self.policy_version = Gauge("rlvr_controller_policy_version", "Policy version of the last report.", registry=r)
        self.last_report_age = Gauge(
            "rlvr_controller_last_report_age_seconds",
            "Seconds since the last accepted step report (since run creation before the first).",
            registry=r,
        )
        self.paused = Gauge("rlvr_controller_paused", "1 while the run is paused.", registry=r)
        self.queue_entries = Gauge(
            "rlvr_controller_queue_entries",
            "Unacked entries of the run's streams: state=lag (never delivered) or pending (delivered, not acked).",
            ["stream", "state"],
            registry=r,
        )
        self.queue_consumers = Gauge(
            "rlvr_controller_queue_consumers", "Consumers known to each stream's group.", ["stream"], registry=r
        )
        self.dead_letters = Gauge(
            "rlvr_controller_dead_letters", "Entries in the run's dead-letter stream (alert when > 0).", registry=r
        )
        self.redis_up = Gauge(
            "rlvr_controller_redis_up", "1 if the run state was readable at the last scrape.", registry=r
        )
        self.requests = Counter(
            "rlvr_controller_requests",
            "HTTP requests by route template and status code.",
            ["route", "code"],
            registry=r,
        )
        self.request_duration = Histogram(
            "rlvr_controller_request_duration_seconds", "HTTP request latency by route template.", ["route"], registry=r
        )
        self.step_reports = Counter(
            "rlvr_controller_step_reports",
            "Step reports by outcome (accepted, duplicate, rejected).",
            ["outcome"],
            registry=r,
        )
        for outcome in REPORT_OUTCOMES:
            self.step_reports.labels(outcome=outcome)

    def set_run(self, run_id: str, schedule_mode: str, total_steps: int) -> None:
        self.run_info.labels(run_id=run_id, schedule_mode=schedule_mode).set(1)
        self.total_steps.set(total_steps)

    def refresh(self, status: RunStatus, phase: Phase, now: float | None = None) -> None:
        """Set the run gauges from a status read from Redis and the phase of its current step."""
        now = time.time() if now is None else now
        self.redis_up.set(1)
        self.current_step.set(status.current_step)
        self.last_reported_step.set(status.last_reported_step)
        self.schedule_ratio.set(phase.ratio)
        self.schedule_progress.set(phase.progress)
        for stage in STAGES:
            self.stage.labels(stage=stage).set(1 if stage == phase.stage else 0)
        self.policy_version.set(status.policy_version)
        since = status.last_report_at if status.last_report_at is not None else status.created_at
        self.last_report_age.set(max(now - since, 0.0) if math.isfinite(since) else math.nan)
        self.paused.set(1 if status.paused else 0)

    def refresh_queues(self, stats: Mapping[str, QueueStats]) -> None:
        """Set the backlog gauges from read-only stream stats (`stream name -> stats`)."""
        for stream, snapshot in stats.items():
            self.queue_entries.labels(stream=stream, state="lag").set(snapshot.lag)
            self.queue_entries.labels(stream=stream, state="pending").set(snapshot.pending)
            self.queue_consumers.labels(stream=stream).set(snapshot.consumers)
            self.dead_letters.set(snapshot.dead)

    def mark_state_unreadable(self) -> None:
        self.redis_up.set(0)

    def observe_request(self, route: str, code: int, duration_s: float) -> None:
        self.requests.labels(route=route, code=str(code)).inc()
        self.request_duration.labels(route=route).observe(duration_s)

    def observe_report(self, outcome: str) -> None:
        self.step_reports.labels(outcome=outcome).inc()

    def render(self) -> tuple[bytes, str]:
        """The exposition text and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


def observe_request(metrics: ControllerMetrics, scope: Scope, code: int, duration_s: float) -> None:
    """The controller's request observer: labelled by route template (`/v1/steps/{step}`, not the raw path)."""
    route = getattr(scope.get("route"), "path", None) or "unmatched"
    metrics.observe_request(route, code, duration_s)

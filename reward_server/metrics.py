"""Prometheus metrics of the reward server, on an explicit registry created per app (never the global one)."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from starlette.types import Scope

# Route label values are this fixed set, so arbitrary paths (fuzzers, scanners) cannot grow the label space.
KNOWN_ROUTES = frozenset({"/v1/score", "/get_reward", "/healthz", "/readyz", "/metrics", "/openapi.json", "/docs"})
_LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


@dataclass(frozen=True)
class RewardMetrics:
    """Every metric the service exports; the catalog is in the README."""

    registry: CollectorRegistry
    requests: Counter
    request_duration: Histogram
    items: Counter
    item_duration: Histogram
    timeouts: Counter
    pool_restarts: Counter
    queue_depth: Gauge
    pool_workers: Gauge


RESTART_REASONS = ("timeout", "crash", "start_failed")


def create_metrics() -> RewardMetrics:
    """A fresh registry holding the service's metrics."""
    registry = CollectorRegistry(auto_describe=True)
    metrics = RewardMetrics(
        registry=registry,
        requests=Counter(
            "rlvr_reward_requests_total", "HTTP requests by route and code.", ["route", "code"], registry=registry
        ),
        request_duration=Histogram(
            "rlvr_reward_request_duration_seconds",
            "HTTP request latency by route.",
            ["route"],
            buckets=_LATENCY_BUCKETS_S,
            registry=registry,
        ),
        items=Counter(
            "rlvr_reward_items_total", "Scored items by scorer kind and status.", ["kind", "status"], registry=registry
        ),
        item_duration=Histogram(
            "rlvr_reward_item_duration_seconds",
            "Wall time a worker spent on one item (including killed ones), by kind.",
            ["kind"],
            buckets=_LATENCY_BUCKETS_S,
            registry=registry,
        ),
        timeouts=Counter(
            "rlvr_reward_timeouts_total", "Items killed at the hard per-item wall-clock limit.", registry=registry
        ),
        pool_restarts=Counter(
            "rlvr_reward_pool_restarts_total",
            "Scorer worker processes replaced, by reason (timeout, crash, start_failed).",
            ["reason"],
            registry=registry,
        ),
        queue_depth=Gauge("rlvr_reward_queue_depth", "Items waiting for a free scorer worker.", registry=registry),
        pool_workers=Gauge("rlvr_reward_pool_workers", "Scorer worker processes alive and ready.", registry=registry),
    )
    for reason in RESTART_REASONS:  # export zeros, so rate() works before the first restart
        metrics.pool_restarts.labels(reason=reason)
    return metrics


def route_label(path: str) -> str:
    return path if path in KNOWN_ROUTES else "other"


def observe_request(metrics: RewardMetrics, scope: Scope, code: int, duration_s: float) -> None:
    """The reward server's request observer (for services.core.http_metrics.RequestMetricsMiddleware)."""
    route = route_label(scope.get("path", ""))
    metrics.request_duration.labels(route=route).observe(duration_s)
    metrics.requests.labels(route=route, code=str(code)).inc()

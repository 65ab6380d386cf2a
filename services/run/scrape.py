"""Reading a service's Prometheus `/metrics` into a flat dict, for the run's summary."""

from __future__ import annotations

import httpx


def scrape_all(urls: list[str], prefix: str) -> dict[str, float]:
    """`scrape` over several endpoints (the rollout workers): counters and histogram sums/counts added, gauges (policy
    version, waiting) their maximum; an endpoint gone with its worker is skipped."""
    total: dict[str, float] = {}
    for url in urls:
        try:
            values = scrape(url.removesuffix("/metrics"), prefix)
        except httpx.HTTPError:
            continue
        for name, value in values.items():
            if name not in total:
                total[name] = value
            elif name.endswith(("_total", "_sum", "_count")):
                total[name] += value
            else:
                total[name] = max(total[name], value)
    return total


def scrape(url: str, prefix: str) -> dict[str, float]:
    """The unlabelled samples of a service's /metrics whose names start with `prefix`."""
    values = {}
    for line in httpx.get(f"{url}/metrics", timeout=5.0).text.splitlines():
        name, _, value = line.partition(" ")
        if name.startswith(prefix) and "{" not in name and value:
            values[name] = float(value)
    return values

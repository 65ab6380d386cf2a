"""Reading a service's Prometheus `/metrics` into a flat dict, for the run's summary."""

from __future__ import annotations

import httpx


def scrape_all(urls: list[str], prefix: str) -> dict[str, float]:
    """`scrape` over several endpoints (the rollout workers): counters and histogram sums/counts added, gauges (policy
    version, waiting) their maximum; an endpoint gone with its worker is skipped."""
    total: dict[str, float] = {}
    for url in urls:
        try:
            values = scrape(url.removesuffix("/metrics"), prefix, labelled=True)
        except httpx.HTTPError:
            continue
        for name, value in values.items():
            if name not in total:
                total[name] = value
            elif name.split("{")[0].endswith(("_total", "_sum", "_count", "_bucket")):
                total[name] += value
            else:
                total[name] = max(total[name], value)
    return total


def scrape(url: str, prefix: str, *, labelled: bool = False) -> dict[str, float]:
    """The samples of a service's /metrics whose names start with `prefix`: the unlabelled ones, and with `labelled`
    also those with labels (keyed `name{label="value"}` as exposed)."""
    values = {}
    for line in httpx.get(f"{url}/metrics", timeout=5.0).text.splitlines():
        if not line.startswith(prefix):
            continue
        name, _, value = line.rpartition(" ")
        if value and (labelled or "{" not in name):
            values[name] = float(value)
    return values

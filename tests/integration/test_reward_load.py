"""Steady-rate load on a real reward server (loopback only) for 60 s with pathological items mixed in.

Open loop: request i is sent at t = i / RATE whatever happened to earlier ones, so a server that falls behind shows
up as latency, not as a politely slower client. Bounded: a fixed number of requests, a cap on requests in flight.
Pass criteria, what the server promises however busy the machine is: no 5xx, no transport error, every request
answered with every item in order, every stuck item answered `timeout` by a limit the server itself enforced. The
latency summary is printed as one JSON line (run with -s to see it) and recorded as a test property; it is reported,
never bounded.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import httpx
import pytest

from tests.service_processes import RewardServerProcess, run_reward_server
from tests.shared_data import read_shared_jsonl
from tests.stub_scorers import HANG

pytestmark = [pytest.mark.integration, pytest.mark.slow]

DURATION_S = float(os.environ.get("RLVR_LOAD_TEST_S", "60"))
RATE_PER_S = 8.0
BATCH = 8
MAX_IN_FLIGHT = 64
ITEM_TIMEOUT_S = 1.0
REQUEST_DEADLINE_S = 60.0  # the server answers every item of a request within this (items not done: `timeout`)
CLIENT_TIMEOUT_S = REQUEST_DEADLINE_S + 120.0  # a hang guard, well past the server's own deadline
HOSTILE_EVERY = 10  # requests; one real pathological item (huge tower, deep braces, ...)
HANG_EVERY = 40  # requests; one item that never finishes (the worker must be killed)

HOSTILE_RESPONSES = [
    "\\boxed{9^{9^{9^9}}}",
    "\\boxed{1000000!}",
    "\\boxed{" + "{" * 50_000 + "1" + "}" * 50_000 + "}",
    "\\boxed{1} " * 10_000,
    "\\frac{" * 3_000 + "1" + "}{2}" * 3_000,
    "\\" * 100_000,
]


@dataclass
class LoadStats:
    latencies_s: list[float] = field(default_factory=list)
    codes: dict[int, int] = field(default_factory=dict)
    item_statuses: dict[str, int] = field(default_factory=dict)
    transport_errors: list[str] = field(default_factory=list)
    hung_answers: list[tuple[str, str]] = field(default_factory=list)  # (status, detail) of each HANG item
    lost: int = 0
    sent: int = 0


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RewardServerProcess]:
    env = {"RLVR_REWARD_REQUEST_TIMEOUT_S": str(REQUEST_DEADLINE_S)}
    log_dir = tmp_path_factory.mktemp("load")
    with run_reward_server(log_dir, workers=2, item_timeout_s=ITEM_TIMEOUT_S, stub=True, env=env) as s:
        yield s


def _batch(i: int, cases: list[dict[str, str]], rng: random.Random) -> list[dict[str, str]]:
    picked = rng.sample(cases, BATCH)
    items = [
        {"id": f"{i}-{j}", "response": c["response"], "ground_truth": c["ground_truth"], "kind": c["kind"]}
        for j, c in enumerate(picked)
    ]
    if i % HOSTILE_EVERY == 0:
        items[0]["response"] = HOSTILE_RESPONSES[(i // HOSTILE_EVERY) % len(HOSTILE_RESPONSES)]
    if i % HANG_EVERY == HANG_EVERY // 2:
        items[1]["response"] = HANG
    return items


async def _one(client: httpx.AsyncClient, items: list[dict[str, str]], stats: LoadStats) -> None:
    started = time.perf_counter()
    try:
        response = await client.post("/v1/score", json={"items": items})
    except httpx.HTTPError as exc:
        stats.transport_errors.append(repr(exc))
        return
    stats.latencies_s.append(time.perf_counter() - started)
    stats.codes[response.status_code] = stats.codes.get(response.status_code, 0) + 1
    if response.status_code != 200:
        return
    results = response.json()["results"]
    if [r["id"] for r in results] != [i["id"] for i in items]:
        stats.lost += 1
    for r, item in zip(results, items, strict=False):
        stats.item_statuses[r["status"]] = stats.item_statuses.get(r["status"], 0) + 1
        if item["response"] == HANG:
            stats.hung_answers.append((r["status"], r.get("detail") or ""))


async def _run_load(url: str, cases: list[dict[str, str]]) -> tuple[LoadStats, float]:
    stats, rng = LoadStats(), random.Random(7)
    total = int(DURATION_S * RATE_PER_S)
    in_flight = asyncio.Semaphore(MAX_IN_FLIGHT)
    limits = httpx.Limits(max_connections=MAX_IN_FLIGHT)

    async def guarded(items: list[dict[str, str]]) -> None:
        async with in_flight:
            await _one(client, items, stats)

    async with httpx.AsyncClient(base_url=url, timeout=CLIENT_TIMEOUT_S, limits=limits) as client:
        started = time.perf_counter()
        tasks = []
        for i in range(total):
            await asyncio.sleep(max(0.0, started + i / RATE_PER_S - time.perf_counter()))
            tasks.append(asyncio.create_task(guarded(_batch(i, cases, rng))))
            stats.sent += 1
        await asyncio.gather(*tasks)
        return stats, time.perf_counter() - started


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def test_steady_rate_with_pathological_items(
    server: RewardServerProcess, record_property: Callable[[str, object], None]
) -> None:
    assert server.url.startswith("http://127.0.0.1:")  # loopback only
    stats, wall_s = asyncio.run(_run_load(server.url, read_shared_jsonl("grading/cases.jsonl")))
    summary = {
        "load_test": "reward_server",
        "duration_s": round(wall_s, 1),
        "requests": stats.sent,
        "items": stats.sent * BATCH,
        "rate_req_per_s": RATE_PER_S,
        "codes": stats.codes,
        "item_statuses": stats.item_statuses,
        "transport_errors": len(stats.transport_errors),
        "lost": stats.lost,
        "latency_p50_ms": round(1000 * _percentile(stats.latencies_s, 0.5), 1),
        "latency_p99_ms": round(1000 * _percentile(stats.latencies_s, 0.99), 1),
        "latency_max_ms": round(1000 * max(stats.latencies_s), 1),
    }
    print(json.dumps(summary))
    record_property("load_summary", summary)
    assert not stats.transport_errors, stats.transport_errors[:3]
    assert not any(code >= 500 for code in stats.codes), summary
    assert stats.codes.get(200) == stats.sent and stats.lost == 0, summary
    # Each stuck item was stopped by the server: at its item limit, or by the request deadline if it queued long.
    assert len(stats.hung_answers) == len([i for i in range(stats.sent) if i % HANG_EVERY == HANG_EVERY // 2])
    item_limit = f"scoring exceeded the {ITEM_TIMEOUT_S:.2f}s item wall-clock limit; worker killed"
    stopped = [s == "timeout" and (d == item_limit or "request deadline" in d) for s, d in stats.hung_answers]
    assert all(stopped), stats.hung_answers
    assert httpx.get(f"{server.url}/healthz").status_code == 200
    assert "Traceback" not in server.log_tail(), server.log_tail()

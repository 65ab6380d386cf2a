"""Reward-scoring throughput on the shared grading cases; prints one JSON object, asserts nothing.

  (a)  math-verify called in-process, single-threaded: `verify(parse(gold), parse(response))` per case
  (a') our scorers (`reward_server.scorers.score`) in-process, single-threaded, for reference
  (b)  the reward server with 1 and 2 scorer workers, over HTTP on loopback, with a concurrent client

Each mode scores the same case list (all cases, `--repeat` times) after one warm-up pass. items/s is for the whole
run; latencies are per call (one item in-process, one batch over HTTP). Usage:
    .venv/bin/python bench/reward_throughput.py [--repeat 2] [--batch-size 16] [--concurrency 4] [--workers 1 2]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import httpx

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from tests.service_processes import run_reward_server  # noqa: E402

DEFAULT_CASES = REPO_ROOT.parent / "shared" / "data" / "grading" / "cases.jsonl"


def load_cases(path: Path) -> list[dict[str, Any]]:
    with path.open() as f:
        return [json.loads(line) for line in f if line.strip()]


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def summarize(name: str, items: int, wall_s: float, latencies_s: Sequence[float], **extra: Any) -> dict[str, Any]:
    return {
        "mode": name,
        "items": items,
        "wall_s": round(wall_s, 3),
        "items_per_s": round(items / wall_s, 1),
        "latency_p50_ms": round(1000 * percentile(latencies_s, 0.50), 2),
        "latency_p99_ms": round(1000 * percentile(latencies_s, 0.99), 2),
        "latency_per": extra.pop("latency_per", "item"),
        **extra,
    }


def run_in_process(
    name: str, cases: list[dict[str, Any]], repeat: int, fn: Callable[[dict[str, Any]], Any]
) -> dict[str, Any]:
    for case in cases:  # warm-up: imports, parser builds, caches
        fn(case)
    latencies: list[float] = []
    started = time.perf_counter()
    for _ in range(repeat):
        for case in cases:
            t0 = time.perf_counter()
            fn(case)
            latencies.append(time.perf_counter() - t0)
    return summarize(name, len(latencies), time.perf_counter() - started, latencies)


def math_verify_direct(case: dict[str, Any]) -> bool:
    from math_verify import parse, verify

    try:
        return bool(verify(parse(case["ground_truth"]), parse(case["response"])))
    except Exception:
        return False


def our_scorer(case: dict[str, Any]) -> float:
    from reward_server.scorers import score

    return score(case["kind"], case["response"], case["ground_truth"]).reward


async def _drive_server(url: str, batches: list[list[dict[str, Any]]], concurrency: int) -> tuple[float, list[float]]:
    queue: asyncio.Queue[list[dict[str, Any]]] = asyncio.Queue()
    for batch in batches:
        queue.put_nowait(batch)
    latencies: list[float] = []
    limits = httpx.Limits(max_connections=concurrency)

    async def client_loop(client: httpx.AsyncClient) -> None:
        while not queue.empty():
            batch = queue.get_nowait()
            t0 = time.perf_counter()
            response = await client.post(f"{url}/v1/score", json={"items": batch})
            response.raise_for_status()
            assert len(response.json()["results"]) == len(batch)
            latencies.append(time.perf_counter() - t0)

    async with httpx.AsyncClient(timeout=300, limits=limits) as client:
        started = time.perf_counter()
        await asyncio.gather(*(client_loop(client) for _ in range(concurrency)))
        return time.perf_counter() - started, latencies


def run_server(cases: list[dict[str, Any]], workers: int, args: argparse.Namespace, log_dir: Path) -> dict[str, Any]:
    items = [
        {"id": f"{r}-{c['id']}", "response": c["response"], "ground_truth": c["ground_truth"], "kind": c["kind"]}
        for r in range(args.repeat)
        for c in cases
    ]
    batches = [items[i : i + args.batch_size] for i in range(0, len(items), args.batch_size)]
    warmup = [items[i : i + args.batch_size] for i in range(0, len(cases), args.batch_size)]
    with run_reward_server(log_dir, workers=workers, item_timeout_s=args.item_timeout_s) as server:
        asyncio.run(_drive_server(server.url, warmup, args.concurrency))
        wall_s, latencies = asyncio.run(_drive_server(server.url, batches, args.concurrency))
    return summarize(
        f"server_{workers}_workers",
        len(items),
        wall_s,
        latencies,
        latency_per=f"request of {args.batch_size} items",
        concurrency=args.concurrency,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=Path, default=DEFAULT_CASES)
    parser.add_argument("--repeat", type=int, default=2, help="passes over the cases per mode (after a warm-up)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--concurrency", type=int, default=4, help="requests in flight from the client")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--item-timeout-s", type=float, default=5.0)
    args = parser.parse_args(argv)
    cases = load_cases(args.cases)
    baseline = run_in_process("math_verify_in_process", cases, args.repeat, math_verify_direct)
    ours = run_in_process("our_scorers_in_process", cases, args.repeat, our_scorer)
    with tempfile.TemporaryDirectory() as log_dir:
        served = [run_server(cases, n, args, Path(log_dir)) for n in args.workers]
    for result in [ours, *served]:
        result["ratio_to_math_verify_in_process"] = round(result["items_per_s"] / baseline["items_per_s"], 2)
        result["ratio_to_our_scorers_in_process"] = round(result["items_per_s"] / ours["items_per_s"], 2)
    report = {
        "bench": "reward_throughput",
        "cases": len(cases),
        "repeat": args.repeat,
        "cpu_count": os.cpu_count(),
        "load_avg_1m_at_end": round(os.getloadavg()[0], 2),
        "results": [baseline, ours, *served],
    }
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())

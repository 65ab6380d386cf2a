"""A real consumer process for test_queue_faults.py, so tests can SIGKILL it mid-flight.

    python -m tests.integration.queue_worker hold URL RUN_ID COUNT     read COUNT entries, print their ids, hang
    python -m tests.integration.queue_worker work URL RUN_ID [...]     consume until the stop key or idle

`work` applies each message exactly once by id: `SADD rlvr:{run}:test:done id` decides (atomically with the
counters) whether this delivery is the first; duplicates (redeliveries, re-published ids) are counted and
dropped; then the batch is acked. A kill anywhere in between only causes a redelivery, never a second effect.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time

from services.core.config import QueueSettings
from services.core.queues import PROMPTS, new_consumer_name, receive
from services.core.redis_conn import connect
from services.core.redis_streams import RedisStreamQueue
from services.core.wire import PromptGroup

APPLY_ONCE = """
if redis.call('SADD', KEYS[1], ARGV[1]) == 1 then redis.call('INCR', KEYS[2]) return 1 end
redis.call('INCR', KEYS[3])
return 0
"""


def bookkeeping_keys(run_id: str) -> dict[str, str]:
    """The bookkeeping keys of a fault run (inside the run's namespace, so clean-up by run id removes them)."""
    base = f"rlvr:{run_id}:test"
    names = ("done", "applied", "duplicates", "reclaimed", "stop")
    return {name: f"{base}:{name}" for name in names}


def hold(queue: RedisStreamQueue[PromptGroup], count: int) -> None:
    deliveries = queue.read(new_consumer_name("hold"), count=count, block_ms=5000)
    print(json.dumps([d.entry_id for d in deliveries]), flush=True)
    time.sleep(3600)  # killed by the test before it ever acks


def work(queue: RedisStreamQueue[PromptGroup], run_id: str, batch: int, max_hold_ms: float, exit_idle_s: float) -> None:
    keys = bookkeeping_keys(run_id)
    apply_once = queue.client.register_script(APPLY_ONCE)
    consumer, rng, last_work = new_consumer_name("work"), random.Random(), time.monotonic()
    while not queue.client.exists(keys["stop"]) and time.monotonic() - last_work < exit_idle_s:
        deliveries = receive(queue, consumer, count=batch, block_ms=100)
        if not deliveries:
            continue
        last_work = time.monotonic()
        for delivery in deliveries:
            apply_once(keys=[keys["done"], keys["applied"], keys["duplicates"]], args=[delivery.message.message_id])
        time.sleep(rng.uniform(0, max_hold_ms) / 1000)  # widen the window between effect and ack
        queue.ack(d.entry_id for d in deliveries)
        reclaimed = sum(d.delivery_count > 1 for d in deliveries)
        if reclaimed:
            queue.client.incrby(keys["reclaimed"], reclaimed)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("mode", choices=["hold", "work"])
    parser.add_argument("url")
    parser.add_argument("run_id")
    parser.add_argument("count", type=int, nargs="?", default=50, help="hold: entries to read; work: batch size")
    parser.add_argument("--claim-idle-ms", type=int, default=500)
    parser.add_argument("--max-deliveries", type=int, default=50)
    parser.add_argument("--max-hold-ms", type=float, default=10.0)
    parser.add_argument("--exit-idle-s", type=float, default=60.0)
    args = parser.parse_args(argv)
    settings = QueueSettings(claim_idle_ms=args.claim_idle_ms, max_deliveries=args.max_deliveries, max_len=100_000)
    queue = RedisStreamQueue(connect(args.url), PROMPTS, args.run_id, settings)
    if args.mode == "hold":
        hold(queue, args.count)
    else:
        work(queue, args.run_id, args.count, args.max_hold_ms, args.exit_idle_s)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Fault tests with real consumer processes (tests/integration/queue_worker.py) killed by SIGKILL.

Run against both the shared Redis 7 server and the embedded Redis 6.2 (tests/redis_fixtures.py). Asserted is what the
queue promises (nothing lost, each effect applied once, poison dead-lettered); how long it took is printed. The only
time limits are hang guards: a run fails when it makes no progress at all for STALL_GUARD_S.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from services.core.config import QueueSettings
from services.core.keys import PROMPTS_STREAM, run_key
from services.core.lifecycle import child_preexec
from services.core.queues import PROMPTS
from services.core.redis_conn import connect
from services.core.redis_streams import RedisStreamQueue
from services.core.wire import PromptGroup
from services.core.wire_codec import encode_entry
from tests.integration.queue_worker import bookkeeping_keys

pytestmark = pytest.mark.integration
REPO_ROOT = Path(__file__).resolve().parents[2]
STALL_GUARD_S = 120.0  # no progress for this long is a hang, not a slow machine
Spawn = Callable[..., subprocess.Popen[str]]


def prompt(i: int) -> PromptGroup:
    return PromptGroup(group_id=f"g{i}", step=1, prompt=f"q{i}", label=str(i), data_source="math", n=8)


def poison(i: int) -> dict[str, bytes]:
    """Alternately a wrong schema version and an undecodable body."""
    good = encode_entry(prompt(i))
    return {**good, "v": b"2"} if i % 2 else {**good, "meta": b"\xff\x00 not json"}


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Spawn]:
    """Start queue_worker subprocesses; any still running at the end are killed by PID."""
    procs: list[subprocess.Popen[str]] = []

    def start(*args: str) -> subprocess.Popen[str]:
        log = (tmp_path / f"worker-{len(procs)}.log").open("w")
        command = [sys.executable, "-m", "tests.integration.queue_worker", *args]
        proc = subprocess.Popen(  # dies with this process even if pytest itself is killed
            command, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=log, text=True, preexec_fn=child_preexec()
        )
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)


def worker_logs(tmp_path: Path) -> str:
    return "\n".join(
        f"{p.name}: {p.read_text()[-500:]}" for p in sorted(tmp_path.glob("worker-*.log")) if p.stat().st_size
    )


def test_killed_consumer_entries_are_redelivered_to_another(
    redis_url: str, redis_client: redis.Redis, run_id: str, spawn: Spawn
) -> None:
    queue = RedisStreamQueue(redis_client, PROMPTS, run_id, QueueSettings(claim_idle_ms=300))
    published = [queue.publish(prompt(i)) for i in range(5)]
    holder = spawn("hold", redis_url, run_id, "3")
    assert holder.stdout is not None
    held = json.loads(holder.stdout.readline())  # it has read (not acked) these
    holder.kill()  # SIGKILL
    assert holder.wait(timeout=10) == -9
    assert held == published[:3]
    assert queue.stats().pending == 3
    time.sleep(0.35)
    reclaimed = queue.reclaim("survivor")
    assert [(d.entry_id, d.delivery_count) for d in reclaimed] == [(entry_id, 2) for entry_id in held]
    fresh = queue.read("survivor", count=10)
    assert [d.entry_id for d in fresh] == published[3:]
    assert queue.ack(d.entry_id for d in reclaimed + fresh) == 5
    assert queue.stats().length == 0


def test_poison_messages_are_dead_lettered_and_the_consumer_keeps_going(
    redis_url: str, redis_client: redis.Redis, run_id: str, spawn: Spawn, tmp_path: Path
) -> None:
    queue = RedisStreamQueue(redis_client, PROMPTS, run_id)
    for i in range(5):
        queue.publish(prompt(i))
    poison_ids = [queue.publish_fields(poison(i)) for i in range(3)]
    for i in range(5, 10):
        queue.publish(prompt(i))
    worker = spawn("work", redis_url, run_id, "4")
    keys = bookkeeping_keys(run_id)
    # Stopped only once the stream is drained (not after an idle second, which a busy machine can spend anywhere).
    deadline = time.monotonic() + STALL_GUARD_S
    while redis_client.xlen(queue.key) or redis_client.scard(keys["done"]) < 10:
        assert time.monotonic() < deadline and worker.poll() is None, worker_logs(tmp_path)
        time.sleep(0.05)
    redis_client.set(keys["stop"], 1)
    assert worker.wait(timeout=STALL_GUARD_S) == 0, worker_logs(tmp_path)
    assert redis_client.scard(keys["done"]) == 10 and int(redis_client.get(keys["applied"]) or 0) == 10
    letters = queue.dead_letters()
    assert [letter.source_entry_id for letter in letters] == poison_ids
    assert letters[0].reason.startswith("undecodable 'meta' JSON")
    assert letters[1].reason.startswith("unsupported schema_version=b'2'")
    assert queue.stats().length == 0


N_MESSAGES, N_DUPLICATES, N_POISON, N_CONSUMERS, N_KILLS = 10_000, 300, 20, 3, 15


def produce(url: str, run: str, poison_ids: list[str], errors: list[BaseException]) -> None:
    """10,000 messages through a 1,000-entry bound, plus re-published ids (producer retries) and poison."""
    try:
        settings = QueueSettings(max_len=1000, publish_timeout_s=STALL_GUARD_S)  # backpressure, not a speed limit
        queue = RedisStreamQueue(connect(url), PROMPTS, run, settings)
        rng = random.Random(7)
        duplicate_at = set(rng.sample(range(1, N_MESSAGES), N_DUPLICATES))
        poison_at = set(rng.sample(range(N_MESSAGES), N_POISON))
        for i in range(N_MESSAGES):
            queue.publish(prompt(i))
            if i in duplicate_at:
                queue.publish(prompt(rng.randrange(i)))
            if i in poison_at:
                poison_ids.append(queue.publish_fields(poison(i)))
    except BaseException as exc:  # surfaced by the test thread
        errors.append(exc)


def counter(client: redis.Redis, key: str) -> int:
    return int(client.get(key) or 0)


def test_ten_thousand_messages_with_random_kills_exactly_once(
    redis_url: str, redis_client: redis.Redis, run_id: str, spawn: Spawn, tmp_path: Path
) -> None:
    keys, poison_ids, errors = bookkeeping_keys(run_id), list[str](), list[BaseException]()
    producer = threading.Thread(target=produce, args=(redis_url, run_id, poison_ids, errors))
    producer.start()

    def start_worker() -> subprocess.Popen[str]:
        return spawn("work", redis_url, run_id, "50", "--claim-idle-ms", "500")

    workers = [start_worker() for _ in range(N_CONSUMERS)]
    rng, kills, start = random.Random(), 0, time.monotonic()
    kill_at = sorted(rng.sample(range(1, N_MESSAGES * 9 // 10), N_KILLS))  # random progress points (applied)
    stream = run_key(run_id, PROMPTS_STREAM)
    progress, progressed_at = (-1, -1), time.monotonic()
    while (
        kill_at
        or producer.is_alive()
        or counter(redis_client, keys["applied"]) < N_MESSAGES
        or redis_client.xlen(stream)
    ):
        now, seen = time.monotonic(), (counter(redis_client, keys["applied"]), redis_client.xlen(stream))
        if seen != progress:
            progress, progressed_at = seen, now
        assert now - progressed_at < STALL_GUARD_S, f"no progress: applied, length = {seen}; {worker_logs(tmp_path)}"
        if kill_at and counter(redis_client, keys["applied"]) >= kill_at[0]:
            victim = rng.randrange(N_CONSUMERS)
            workers[victim].kill()  # SIGKILL, wherever it is: between read, effect and ack
            workers[victim].wait(timeout=10)
            workers[victim], kills = start_worker(), kills + 1
            kill_at.pop(0)
        time.sleep(rng.uniform(0.0, 0.05))
    producer.join()
    assert not errors, errors
    redis_client.set(keys["stop"], 1)
    assert all(worker.wait(timeout=STALL_GUARD_S) == 0 for worker in workers), worker_logs(tmp_path)

    queue = RedisStreamQueue(redis_client, PROMPTS, run_id)
    print(f"kills={kills} reclaimed={counter(redis_client, keys['reclaimed'])} "
          f"duplicates={counter(redis_client, keys['duplicates'])} took {time.monotonic() - start:.1f} s")  # fmt: skip
    assert kills == N_KILLS
    assert redis_client.scard(keys["done"]) == N_MESSAGES  # nothing lost
    assert counter(redis_client, keys["applied"]) == N_MESSAGES  # each id's effect applied exactly once
    assert counter(redis_client, keys["duplicates"]) >= N_DUPLICATES  # re-published ids detected and dropped
    assert counter(redis_client, keys["reclaimed"]) > 0  # kills did strand pending entries, and they came back
    assert queue.stats().__dict__ | {"dead": 0} == {"length": 0, "pending": 0, "lag": 0, "dead": 0, "consumers": 0}
    assert {letter.source_entry_id for letter in queue.dead_letters(limit=1000)} == set(poison_ids)

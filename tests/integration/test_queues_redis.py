"""RedisStreamQueue against real Redis: the server at 127.0.0.1:6379 (Redis 7) and the embedded one (6.2)."""

from __future__ import annotations

import contextlib
import threading
import time
from typing import Any

import pytest
import redis

from services.core.config import QueueSettings
from services.core.keys import run_pattern
from services.core.queues import PROMPTS, ROLLOUTS, QueueFullError, StreamSpec
from services.core.redis_conn import connect
from services.core.redis_streams import RedisStreamQueue, delete_run_streams
from services.core.schedule import Phase
from services.core.wire import PromptGroup, ScoredGroup, StepReport, WireModel
from services.core.wire_codec import encode_entry

pytestmark = pytest.mark.integration
PHASE = Phase(step=2, progress=0.5, ratio=0.25, stage="anneal")


def prompt(i: int) -> PromptGroup:
    return PromptGroup(group_id=f"g{i}", step=1, prompt=f"q{i}", label=str(i), data_source="math", n=4, created_at=1.0)


def big_scored_group(samples: int = 8, tokens: int = 1024) -> ScoredGroup:
    return ScoredGroup(
        group_id="big-1",
        step=1,
        data_source="gsm8k",
        prompt_token_ids=list(range(100)),
        response_token_ids=[[(s * 7919 + t) % 151_000 for t in range(tokens)] for s in range(samples)],
        logprobs=[[-((s + 1) * (t + 1)) / 3e3 for t in range(tokens)] for s in range(samples)],
        rewards=[float(s % 2) for s in range(samples)],
        reward_status=["ok"] * samples,
        policy_version=3,
        phase=PHASE,
        timings={"generate_s": 1.25, "score_s": 0.5},
        created_at=2.0,
    )


def queue_of(client: redis.Redis, run: str, **settings: int | float) -> RedisStreamQueue[PromptGroup]:
    return RedisStreamQueue(client, PROMPTS, run, QueueSettings.model_validate(settings))


@pytest.mark.parametrize("message", [prompt(1), big_scored_group()], ids=["PromptGroup", "ScoredGroup-8x1024"])
def test_message_round_trips_through_redis_losslessly(
    redis_client: redis.Redis, run_id: str, message: WireModel
) -> None:
    spec: StreamSpec[Any] = PROMPTS if isinstance(message, PromptGroup) else ROLLOUTS
    queue = RedisStreamQueue(redis_client, spec, run_id)
    entry_id = queue.publish(message)
    entries: Any = redis_client.xrange(queue.key)
    [stored] = entries
    assert stored[0].decode() == entry_id
    assert {k.decode(): v for k, v in stored[1].items()} == encode_entry(message)
    [delivery] = queue.read("a")
    assert delivery.message == message and delivery.delivery_count == 1
    assert encode_entry(delivery.message) == encode_entry(message)


def test_step_report_round_trips_on_a_stream_of_its_own(redis_client: redis.Redis, run_id: str) -> None:
    report = StepReport(run_id=run_id, step=4, policy_version=4, phase=PHASE, metrics={"train/loss": 0.1}, created_at=3)
    queue = RedisStreamQueue(redis_client, StreamSpec("steps", "controller", StepReport), run_id)
    queue.publish(report)
    assert [d.message for d in queue.read("c")] == [report]


def test_resp2_clients_work_too(redis_url: str, redis_client: redis.Redis, run_id: str) -> None:
    client = connect(f"{redis_url}{'&' if '?' in redis_url else '?'}protocol=2")
    queue = queue_of(client, run_id, claim_idle_ms=1)
    queue.publish(prompt(1))
    assert [d.message for d in queue.read("a", block_ms=100)] == [prompt(1)]
    time.sleep(0.01)
    assert [d.delivery_count for d in queue.reclaim("b")] == [2]
    assert queue.stats().pending == 1


def test_decode_responses_clients_are_refused(redis_url: str) -> None:
    with pytest.raises(ValueError, match="decode_responses=False"):
        RedisStreamQueue(redis.Redis.from_url(redis_url, decode_responses=True), PROMPTS, "x")


def test_group_creation_is_idempotent_and_sees_earlier_entries(redis_client: redis.Redis, run_id: str) -> None:
    key = f"rlvr:{run_id}:prompts"
    redis_client.xadd(key, encode_entry(prompt(0)))  # type: ignore[arg-type] # published before any consumer group existed
    first, second = queue_of(redis_client, run_id), queue_of(redis_client, run_id)
    assert [d.message for d in first.read("a")] == [prompt(0)]
    second.publish(prompt(1))
    assert [d.message for d in first.read("a")] == [prompt(1)]
    groups = redis_client.xinfo_groups(key)
    assert [g["name"] for g in groups] == [b"rollout"]


def test_ack_deletes_and_unacked_entries_stay_pending(redis_client: redis.Redis, run_id: str) -> None:
    queue = queue_of(redis_client, run_id)
    for i in range(3):
        queue.publish(prompt(i))
    got = queue.read("a", count=3)
    assert queue.stats().__dict__ == {"length": 3, "pending": 3, "lag": 0, "dead": 0, "consumers": 1}
    assert queue.ack([got[0].entry_id, got[1].entry_id]) == 2
    assert queue.ack([got[0].entry_id]) == 0
    assert queue.stats().__dict__ == {"length": 1, "pending": 1, "lag": 0, "dead": 0, "consumers": 1}
    assert queue.read("b") == []  # pending entries are not handed out again by read


def test_reclaim_after_idle_timeout_with_delivery_counts(redis_client: redis.Redis, run_id: str) -> None:
    queue = queue_of(redis_client, run_id, claim_idle_ms=200)
    patient = queue_of(redis_client, run_id, claim_idle_ms=600_000)  # same group; no test step takes 10 minutes
    queue.publish(prompt(0))
    queue.publish(prompt(1))
    first, second = queue.read("crashed", count=2)
    assert patient.reclaim("b") == []  # not idle for claim_idle_ms yet
    time.sleep(0.25)  # past claim_idle_ms; a busy machine only makes the entries idler
    again = queue.reclaim("b")
    assert [(d.entry_id, d.message, d.delivery_count) for d in again] == [
        (first.entry_id, prompt(0), 2), (second.entry_id, prompt(1), 2)
    ]  # fmt: skip
    time.sleep(0.01)
    assert queue.keepalive("b", [first.entry_id]) == 1
    # One XPENDING reply, one server instant: the kept-alive entry is the less idle one, and was not redelivered.
    pending = redis_client.xpending_range(queue.key, PROMPTS.group, min="-", max="+", count=10)
    idle = {p["message_id"].decode(): (p["time_since_delivered"], p["times_delivered"]) for p in pending}
    assert idle[first.entry_id][0] < idle[second.entry_id][0]
    assert idle[first.entry_id][1] == idle[second.entry_id][1] == 2
    assert queue.ack([d.entry_id for d in again]) == 2


def test_over_delivered_entries_go_to_dead_letters(redis_client: redis.Redis, run_id: str) -> None:
    queue = queue_of(redis_client, run_id, max_deliveries=2)
    entry_id = queue.publish(prompt(0))
    queue.publish(prompt(1))
    queue.read("a")
    assert [d.delivery_count for d in queue.reclaim("b", min_idle_ms=0)] == [2]
    assert queue.reclaim("c", min_idle_ms=0) == []
    [letter] = queue.dead_letters()
    assert (letter.source_entry_id, letter.message_id, letter.delivery_count) == (entry_id, "g0", 3)
    assert letter.reason == "delivered 3 times, more than max_deliveries=2"
    assert letter.fields == encode_entry(prompt(0))
    assert queue.stats().__dict__ == {"length": 1, "pending": 0, "lag": 1, "dead": 1, "consumers": 0}
    assert [d.message for d in queue.read("c")] == [prompt(1)]


def test_poison_entries_are_dead_lettered_with_reasons(redis_client: redis.Redis, run_id: str) -> None:
    queue = queue_of(redis_client, run_id)
    good = encode_entry(prompt(0))
    poison = [{**good, "v": b"9"}, {**good, "meta": b"\xff\xfe"}, {"junk": b"x"}, encode_entry(big_scored_group())]
    for fields in poison:
        redis_client.xadd(queue.key, fields)  # type: ignore[arg-type]
    queue.publish(prompt(1))
    assert [d.message for d in queue.read("a", count=10)] == [prompt(1)]
    reasons = [letter.reason for letter in queue.dead_letters()]
    assert reasons[0].startswith("unsupported schema_version=b'9'")
    assert reasons[1].startswith("undecodable 'meta' JSON")
    assert reasons[2].startswith("missing schema version field 'v'")
    assert reasons[3] == "message type b'ScoredGroup' on a stream of PromptGroup"
    assert queue.stats().length == 1 and queue.counters.dead_lettered == 4


def test_dead_letters_are_filtered_by_source_stream(redis_client: redis.Redis, run_id: str) -> None:
    prompts, rollouts = (
        queue_of(redis_client, run_id, max_deliveries=1),
        RedisStreamQueue(redis_client, ROLLOUTS, run_id),
    )
    redis_client.xadd(rollouts.key, {"v": b"2"})
    rollouts.read("t")
    prompts.publish(prompt(0))
    prompts.read("a")
    prompts.reclaim("b", min_idle_ms=0)
    assert [letter.source for letter in prompts.dead_letters()] == [prompts.key]
    assert [letter.source for letter in rollouts.dead_letters()] == [rollouts.key]
    assert prompts.stats().dead == 2  # the dead-letter stream is per run
    assert sorted(k.decode() for k in redis_client.scan_iter(match=run_pattern(run_id))) == [
        f"rlvr:{run_id}:dead", f"rlvr:{run_id}:prompts", f"rlvr:{run_id}:rollouts"
    ]  # fmt: skip
    assert delete_run_streams(redis_client, run_id) == 3


def test_entry_deleted_while_pending_is_recorded_not_lost_silently(redis_client: redis.Redis, run_id: str) -> None:
    queue = queue_of(redis_client, run_id)
    first = queue.publish(prompt(0))
    queue.publish(prompt(1))
    queue.read("a", count=2)
    redis_client.xdel(queue.key, first)  # someone else deletes a pending entry
    assert [d.message for d in queue.reclaim("b", min_idle_ms=0)] == [prompt(1)]
    [letter] = queue.dead_letters()
    assert letter.source_entry_id == first and "deleted from the stream while pending" in letter.reason
    assert queue.stats().pending == 1


def test_backpressure_bounds_the_stream_and_never_drops(redis_client: redis.Redis, run_id: str) -> None:
    queue = queue_of(redis_client, run_id, max_len=3)
    for i in range(3):
        queue.publish(prompt(i))
    with pytest.raises(QueueFullError, match=r"full: 3 unacked entries \(max_len=3\) for 0.05 s"):
        queue.publish(prompt(3), timeout_s=0.05)
    assert redis_client.xlen(queue.key) == 3
    [delivery] = queue.read("a")
    timer = threading.Timer(0.1, queue.ack, args=([delivery.entry_id],))
    timer.start()
    queue.publish(prompt(3), timeout_s=120)  # waits until the ack makes room (the timeout is a hang guard)
    timer.join()
    assert [d.message.group_id for d in queue.read("a", count=5)] == ["g1", "g2", "g3"]


def test_concurrent_producers_cannot_overshoot_max_len(redis_url: str, redis_client: redis.Redis, run_id: str) -> None:
    accepted: list[str] = []

    def produce(worker: int) -> None:
        queue = queue_of(connect(redis_url), run_id, max_len=10)
        for i in range(10):
            with contextlib.suppress(QueueFullError):
                accepted.append(queue.publish(prompt(worker * 100 + i), timeout_s=0))

    threads = [threading.Thread(target=produce, args=(w,)) for w in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(accepted) == 10 and redis_client.xlen(f"rlvr:{run_id}:prompts") == 10


def test_read_blocks_for_new_entries_and_guards_the_socket_timeout(
    redis_url: str, redis_client: redis.Redis, run_id: str
) -> None:
    queue = queue_of(redis_client, run_id)
    start = time.monotonic()
    assert queue.read("a", block_ms=100) == []
    assert time.monotonic() - start >= 0.09
    threading.Timer(0.1, queue_of(connect(redis_url), run_id).publish, args=(prompt(0),)).start()
    assert [d.message for d in queue.read("a", block_ms=9000)] == [prompt(0)]  # returns as soon as it comes
    with pytest.raises(ValueError, match=r"not below the client's socket_timeout=10\.0 s"):
        queue.read("a", block_ms=10_000)

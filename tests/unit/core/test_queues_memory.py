"""InMemoryQueue: the queue semantics (bounds, redelivery, dead letters) without a Redis server."""

from __future__ import annotations

import threading
import time

import pytest

from services.core.config import QueueSettings
from services.core.keys import dead_key, run_key
from services.core.queues import (
    PROMPTS,
    ROLLOUTS,
    InMemoryQueue,
    MessageQueue,
    QueueFullError,
    new_consumer_name,
    receive,
)
from services.core.wire import PromptGroup
from services.core.wire_codec import encode_entry


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def prompt(i: int) -> PromptGroup:
    return PromptGroup(group_id=f"g{i}", step=1, prompt=f"q{i}", label=str(i), data_source="math", n=4, created_at=1.0)


def make(clock: FakeClock | None = None, **settings: int | float) -> InMemoryQueue[PromptGroup]:
    return InMemoryQueue(PROMPTS, "run-1", QueueSettings.model_validate(settings), clock=clock or FakeClock())


def test_keys_are_namespaced_by_run() -> None:
    assert run_key("run-1", "prompts") == "rlvr:run-1:prompts"
    assert dead_key("run-1") == "rlvr:run-1:dead"
    assert make().key == "rlvr:run-1:prompts"
    assert (PROMPTS.group, ROLLOUTS.group) == ("rollout", "trainer")
    with pytest.raises(ValueError, match="run_id='bad:id' is invalid"):
        run_key("bad:id", "prompts")


def test_publish_read_ack_round_trip_and_stats() -> None:
    queue: MessageQueue[PromptGroup] = make()
    ids = [queue.publish(prompt(i)) for i in range(3)]
    got = queue.read("a", count=2)
    assert [d.message for d in got] == [prompt(0), prompt(1)]
    assert [d.entry_id for d in got] == ids[:2] and {d.delivery_count for d in got} == {1}
    assert queue.stats().__dict__ == {"length": 3, "pending": 2, "lag": 1, "dead": 0, "consumers": 1}
    assert queue.ack([got[0].entry_id]) == 1
    assert queue.ack([got[0].entry_id]) == 0  # already acked
    assert queue.stats().length == 2
    assert queue.counters.published == 3 and queue.counters.acked == 1


def test_publish_refuses_the_wrong_message_type() -> None:
    with pytest.raises(TypeError, match="carries PromptGroup, not StepReport"):
        from services.core.schedule import Phase
        from services.core.wire import StepReport

        phase = Phase(step=1, progress=0.0, ratio=0.0, stage="warmup")
        make().publish(StepReport(run_id="r", step=1, policy_version=0, phase=phase))  # type: ignore[arg-type]


def test_backpressure_raises_instead_of_dropping() -> None:
    queue = make(max_len=2)
    queue.publish(prompt(0))
    queue.publish(prompt(1))
    with pytest.raises(QueueFullError, match=r"full: 2 unacked entries \(max_len=2\)"):
        queue.publish(prompt(2), timeout_s=0)
    assert queue.stats().length == 2
    delivered = queue.read("a", count=2)
    with pytest.raises(QueueFullError):  # delivered but unacked still counts
        queue.publish(prompt(2), timeout_s=0)
    queue.ack([delivered[0].entry_id])
    queue.publish(prompt(2), timeout_s=0)


def test_blocked_publish_proceeds_when_a_consumer_acks() -> None:
    queue = make(max_len=1)
    queue.publish(prompt(0))
    entry = queue.read("a")[0]
    timer = threading.Timer(0.05, queue.ack, args=([entry.entry_id],))
    timer.start()
    queue.publish(prompt(1), timeout_s=60)  # returns once the ack makes room (QueueFullError otherwise)
    timer.join()
    assert queue.stats().length == 1


def test_blocking_read_waits_then_returns_nothing() -> None:
    queue = make()
    start = time.monotonic()
    assert queue.read("a", block_ms=50) == []
    assert time.monotonic() - start >= 0.04
    threading.Timer(0.05, queue.publish, args=(prompt(0),)).start()
    assert [d.message for d in queue.read("a", block_ms=5000)] == [prompt(0)]


def test_reclaim_only_after_idle_timeout_and_counts_deliveries() -> None:
    clock = FakeClock()
    queue = make(clock, claim_idle_ms=1000)
    queue.publish(prompt(0))
    first = queue.read("dead-consumer")
    clock.now += 0.5
    assert queue.reclaim("b") == []
    clock.now += 0.6
    again = queue.reclaim("b")
    assert [(d.entry_id, d.message, d.delivery_count) for d in again] == [(first[0].entry_id, prompt(0), 2)]
    assert queue.counters.reclaimed == 1
    assert queue.ack([again[0].entry_id]) == 1
    assert queue.stats().length == 0


def test_keepalive_protects_entries_from_reclaim() -> None:
    clock = FakeClock()
    queue = make(clock, claim_idle_ms=1000)
    queue.publish(prompt(0))
    entry = queue.read("slow")[0]
    clock.now += 0.9
    assert queue.keepalive("slow", [entry.entry_id, "99-0"]) == 1
    clock.now += 0.9
    assert queue.reclaim("thief") == []


def test_entry_delivered_more_than_max_deliveries_goes_to_dead_letters() -> None:
    clock = FakeClock()
    queue = make(clock, max_deliveries=2, claim_idle_ms=10)
    entry_id = queue.publish(prompt(0))
    queue.publish(prompt(1))
    assert len(queue.read("a")) == 1
    clock.now += 1
    assert [d.delivery_count for d in queue.reclaim("b")] == [2]
    clock.now += 1
    assert queue.reclaim("c") == []  # third delivery would exceed max_deliveries=2
    [letter] = queue.dead_letters()
    assert (letter.source, letter.source_entry_id, letter.message_id) == (queue.key, entry_id, "g0")
    assert letter.reason == "delivered 3 times, more than max_deliveries=2"
    assert letter.fields == encode_entry(prompt(0))  # kept for replay
    assert queue.stats().__dict__ == {"length": 1, "pending": 0, "lag": 1, "dead": 1, "consumers": 0}
    assert [d.message for d in queue.read("c")] == [prompt(1)]  # the queue keeps going


def test_poison_entries_are_dead_lettered_and_reading_continues() -> None:
    queue = make()
    good = encode_entry(prompt(0))
    queue.publish_fields({**good, "v": b"2"})
    queue.publish_fields({**good, "meta": b"\x00garbage"})
    queue.publish(prompt(1))
    got = queue.read("a", count=10)
    assert [d.message for d in got] == [prompt(1)]
    reasons = [letter.reason for letter in queue.dead_letters()]
    assert reasons[0].startswith("unsupported schema_version=b'2'")
    assert reasons[1].startswith("undecodable 'meta' JSON")
    assert queue.counters.dead_lettered == 2


def test_dead_letter_can_be_replayed_with_publish_fields() -> None:
    clock = FakeClock()
    queue = make(clock, max_deliveries=1, claim_idle_ms=1)
    queue.publish(prompt(0))
    queue.read("a")
    clock.now += 1
    assert queue.reclaim("b") == []
    queue.publish_fields(queue.dead_letters()[0].fields)
    assert [d.message for d in queue.read("b")] == [prompt(0)]


def test_receive_takes_abandoned_entries_first() -> None:
    clock = FakeClock()
    queue = make(clock, claim_idle_ms=100)
    for i in range(3):
        queue.publish(prompt(i))
    queue.read("dead", count=1)
    clock.now += 1
    got = receive(queue, "b", count=2)
    assert [(d.message.group_id, d.delivery_count) for d in got] == [("g0", 2), ("g1", 1)]


def test_consumer_names_are_unique() -> None:
    names = {new_consumer_name("trainer") for _ in range(50)}
    assert len(names) == 50 and all(name.startswith("trainer-") for name in names)


def test_concurrent_producers_and_consumers_lose_nothing() -> None:
    queue = make(max_len=8)
    seen: list[str] = []

    def consume() -> None:
        while len(seen) < 200:
            batch = queue.read("c", count=5, block_ms=20)
            seen.extend(d.message.group_id for d in batch)
            queue.ack(d.entry_id for d in batch)

    consumers = [threading.Thread(target=consume) for _ in range(2)]
    for thread in consumers:
        thread.start()
    for i in range(200):
        queue.publish(prompt(i), timeout_s=5)
    for thread in consumers:
        thread.join(timeout=10)
    assert sorted(seen) == sorted(f"g{i}" for i in range(200))

"""StepCollector: the trainer's side of the data contract over an in-memory rollouts queue."""

from __future__ import annotations

import pytest

from services.core.queues import ROLLOUTS, InMemoryQueue
from services.core.schedule import Phase
from services.core.wire import ScoredGroup
from trainer.collector import StepCollector

PHASE = Phase(step=1, progress=0.0, ratio=0.5, stage="anneal")
CONSUMER = "trainer-test"
SIZE = 3


def _group(gid: str, step: int, reward: float = 1.0) -> ScoredGroup:
    return ScoredGroup(
        group_id=gid, step=step, data_source="gsm8k", prompt_token_ids=[1, 2], response_token_ids=[[5, 6], [7]],
        rewards=[reward, 0.0], reward_status=["ok", "ok"], policy_version=0, phase=PHASE,
    )  # fmt: skip


def _queue() -> InMemoryQueue[ScoredGroup]:
    return InMemoryQueue(ROLLOUTS, "collector-test")


def _publish(queue: InMemoryQueue[ScoredGroup], step: int, *gids: str) -> list[str]:
    return [queue.publish(_group(gid, step)) for gid in gids]


def _poll_until_complete(collector: StepCollector, step: int, rounds: int = 10) -> None:
    for _ in range(rounds):
        if collector.poll(step, block_ms=0):
            return
    raise AssertionError(f"step {step} did not complete: {collector.have(step)} of {SIZE} groups")


def test_rejects_an_empty_step() -> None:
    with pytest.raises(ValueError, match="groups_per_step=0"):
        StepCollector(_queue(), CONSUMER, 0)


def test_a_step_completes_with_exactly_its_distinct_groups() -> None:
    queue = _queue()
    collector = StepCollector(queue, CONSUMER, SIZE)
    _publish(queue, 1, "a", "b")
    assert not collector.poll(1, block_ms=0)
    assert collector.have(1) == 2 and collector.group_ids(1) == {"a", "b"}
    _publish(queue, 1, "c")
    _poll_until_complete(collector, 1)
    taken = collector.take(1)
    assert taken.step == 1
    assert [g.group_id for g in taken.groups] == ["a", "b", "c"]
    assert (taken.duplicates, taken.leftovers) == (0, 0)
    assert len(taken.entry_ids) == 3


def test_take_before_complete_raises() -> None:
    queue = _queue()
    collector = StepCollector(queue, CONSUMER, SIZE)
    with pytest.raises(ValueError, match="step 1 has 0 of 3 groups"):
        collector.take(1)
    _publish(queue, 1, "a")
    collector.poll(1, block_ms=0)
    with pytest.raises(ValueError, match="step 1 has 1 of 3 groups"):
        collector.take(1)


def test_a_duplicate_group_is_counted_not_trained_twice_and_acked_with_the_step() -> None:
    queue = _queue()
    collector = StepCollector(queue, CONSUMER, SIZE)
    ids = _publish(queue, 1, "a", "b")
    duplicate_id = queue.publish(_group("a", 1, reward=0.0))  # a re-generated copy of "a"
    ids += [duplicate_id, *_publish(queue, 1, "c")]
    _poll_until_complete(collector, 1)
    taken = collector.take(1)
    assert [g.group_id for g in taken.groups] == ["a", "b", "c"]
    assert taken.groups[0].rewards == [1.0, 0.0]  # the first copy is the one trained
    assert taken.duplicates == 1
    assert duplicate_id in taken.entry_ids and sorted(taken.entry_ids) == sorted(ids)
    assert queue.ack(taken.entry_ids) == 4
    assert (queue.stats().length, queue.stats().pending) == (0, 0)


def test_groups_of_an_earlier_step_are_acked_at_once_and_counted_as_leftovers() -> None:
    queue = _queue()
    collector = StepCollector(queue, CONSUMER, SIZE)
    _publish(queue, 1, "a", "b", "c")
    _poll_until_complete(collector, 1)
    queue.ack(collector.take(1).entry_ids)
    # A copy of step 1's work arrives while step 2 is collected (e.g. an interrupted attempt re-published it).
    _publish(queue, 1, "a")
    _publish(queue, 2, "d", "e")
    assert not collector.poll(2, block_ms=0)
    stats = queue.stats()
    assert (stats.length, stats.pending) == (2, 2)  # the leftover is gone already; step 2's two are held
    _publish(queue, 2, "f")
    _poll_until_complete(collector, 2)
    taken = collector.take(2)
    assert [g.group_id for g in taken.groups] == ["d", "e", "f"]
    assert (taken.leftovers, taken.duplicates) == (1, 0)
    queue.ack(taken.entry_ids)
    assert (queue.stats().length, queue.stats().pending) == (0, 0)
    _publish(queue, 3, "g", "h", "i")
    _poll_until_complete(collector, 3)
    assert collector.take(3).leftovers == 0  # counted once, by the take that followed them


def test_groups_of_a_later_step_are_held_unacked_and_complete_it_later() -> None:
    queue = _queue()
    collector = StepCollector(queue, CONSUMER, SIZE)
    _publish(queue, 2, "x", "y", "z")
    _publish(queue, 1, "a", "b", "c")
    _poll_until_complete(collector, 1)
    assert collector.have(2) == 3 and collector.complete(2)
    step1 = collector.take(1)
    assert [g.group_id for g in step1.groups] == ["a", "b", "c"]
    queue.ack(step1.entry_ids)
    stats = queue.stats()
    assert (stats.length, stats.pending, stats.lag) == (3, 3, 0)  # step 2's groups: delivered, held, not acked
    assert collector.poll(2, block_ms=0)
    step2 = collector.take(2)
    assert [g.group_id for g in step2.groups] == ["x", "y", "z"] and step2.leftovers == 0
    queue.ack(step2.entry_ids)
    assert (queue.stats().length, queue.stats().pending) == (0, 0)


def test_adopt_abandoned_takes_over_a_dead_consumers_pending_entries() -> None:
    queue = _queue()
    ids = _publish(queue, 1, "a", "b", "c", "d")
    dead = queue.read("trainer-dead", count=4)  # delivered to a consumer that died before acking
    assert len(dead) == 4 and queue.stats().pending == 4
    collector = StepCollector(queue, CONSUMER, SIZE)
    assert collector.adopt_abandoned() == 4
    assert collector.complete(1) and collector.group_ids(1) == {"a", "b", "c"}
    taken = collector.take(1)
    assert taken.duplicates == 1  # a fourth distinct group beyond the step's size is not trained
    assert sorted(taken.entry_ids) == sorted(ids)
    assert queue.ack(taken.entry_ids) == 4
    assert (queue.stats().length, queue.stats().pending) == (0, 0)
    assert collector.adopt_abandoned() == 0


def test_nothing_lost_nothing_left_over_several_steps() -> None:
    queue = _queue()
    collector = StepCollector(queue, CONSUMER, SIZE)
    published = 0
    for step in (1, 2, 3):
        _publish(queue, step, *(f"s{step}-{i}" for i in range(SIZE)))
        queue.publish(_group(f"s{step}-0", step))  # a redelivered copy each step
        published += SIZE + 1
    trained: list[str] = []
    copies = 0
    for step in (1, 2, 3):
        _poll_until_complete(collector, step)
        taken = collector.take(step)
        trained += [g.group_id for g in taken.groups]
        copies += taken.duplicates + taken.leftovers
        queue.ack(taken.entry_ids)
    assert trained == [f"s{step}-{i}" for step in (1, 2, 3) for i in range(SIZE)]
    assert copies == 3  # one copy per step: a leftover (read after its take) or a duplicate (read before)
    assert queue.counters.acked == published
    stats = queue.stats()
    assert (stats.length, stats.pending, stats.dead) == (0, 0, 0)


def test_groups_older_than_max_staleness_are_dropped_counted_and_named_for_regeneration() -> None:
    queue = _queue()
    collector = StepCollector(queue, CONSUMER, SIZE, max_staleness=1)
    # step 4 trains from version 3: versions 2 and 3 are within a lag of 1, version 1 is not
    for gid, version in (("a", 3), ("b", 2), ("c", 1)):
        queue.publish(_group(gid, 4).model_copy(update={"policy_version": version}))
    assert not collector.poll(4, block_ms=0)
    assert collector.group_ids(4) == {"a", "b"}
    assert collector.take_stale_ids(4) == ["c"] and collector.take_stale_ids(4) == []
    assert queue.stats().pending == 2  # the stale copy was acked at once
    queue.publish(_group("c", 4).model_copy(update={"policy_version": 3}))
    _poll_until_complete(collector, 4)
    taken = collector.take(4)
    assert sorted(g.group_id for g in taken.groups) == ["a", "b", "c"] and taken.stale_dropped == 1


def test_without_max_staleness_every_version_is_accepted() -> None:
    queue = _queue()
    collector = StepCollector(queue, CONSUMER, SIZE)
    _publish(queue, 9, "a", "b", "c")  # policy_version 0 for step 9 (a replay run never updates)
    _poll_until_complete(collector, 9)
    assert collector.take(9).stale_dropped == 0
    with pytest.raises(ValueError, match="max_staleness"):
        StepCollector(queue, CONSUMER, SIZE, max_staleness=-1)

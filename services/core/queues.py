"""The durable hand-off between services (DESIGN.md §1, §3): stream keys, the queue protocol, an in-memory queue.

Semantics shared by both implementations (`RedisStreamQueue` in redis_streams.py, `InMemoryQueue` here):

- at-least-once: an entry stays pending for its consumer until acked; a consumer that dies leaves it pending and
  `reclaim` hands it to another consumer once it has been idle for `claim_idle_ms`. Consumers deduplicate on
  `Delivery.message.message_id` (a group's id), so redelivery never double-counts.
- an entry delivered more than `max_deliveries` times, or one that does not decode into the stream's message type
  (bad bytes, wrong schema version, failed validation), moves to the run's dead-letter stream with the reason.
- bounded: acked entries are deleted, so the stream length is exactly the unacked backlog; `publish` waits while
  it is at `max_len` and raises `QueueFullError` after `publish_timeout_s`. Nothing is ever trimmed or dropped.
- one consumer group per stream (it owns the stream: acking deletes the entry).
"""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

from services.core.config.queues import QueueSettings
from services.core.keys import PROMPTS_STREAM, ROLLOUTS_STREAM, run_key
from services.core.wire import PromptGroup, ScoredGroup, WireModel
from services.core.wire_codec import ID_FIELD, PoisonMessageError, decode_entry, encode_entry

M = TypeVar("M", bound=WireModel)


class QueueError(RuntimeError):
    """A queue operation failed for a reason the caller should see."""


class QueueFullError(QueueError):
    """The stream's unacked backlog stayed at `max_len` for the whole publish timeout (backpressure)."""


@dataclass(frozen=True)
class StreamSpec(Generic[M]):
    """A stream of the pipeline: its key suffix, the consumer group that reads it, and its message type."""

    name: str
    group: str
    message_type: type[M]


PROMPTS = StreamSpec(PROMPTS_STREAM, "rollout", PromptGroup)
ROLLOUTS = StreamSpec(ROLLOUTS_STREAM, "trainer", ScoredGroup)


def new_consumer_name(role: str) -> str:
    """A consumer name unique to this process: `{role}-{host}-{pid}-{random}` (never reuse a dead one's name)."""
    return f"{role}-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


@dataclass(frozen=True)
class Delivery(Generic[M]):
    """One entry handed to a consumer; ack it (by entry id) once its effect is durable."""

    entry_id: str
    message: M
    delivery_count: int


@dataclass(frozen=True)
class DeadLetter:
    """An entry moved to the dead-letter stream, with the reason and the original fields (for replay)."""

    entry_id: str
    source: str
    source_entry_id: str
    reason: str
    delivery_count: int
    message_id: str | None
    dead_at: float
    fields: dict[str, bytes]


@dataclass(frozen=True)
class QueueStats:
    """A snapshot for metrics: `length` = `lag` (never delivered) + `pending` (delivered, not acked)."""

    length: int
    pending: int
    lag: int
    dead: int
    consumers: int


@dataclass
class QueueCounters:
    """What this queue object did since it was made (process-local, for `_total` metrics)."""

    published: int = 0
    delivered: int = 0
    reclaimed: int = 0
    acked: int = 0
    dead_lettered: int = 0


class MessageQueue(Protocol[M]):
    """A durable, bounded, at-least-once stream of one message type, read by one consumer group."""

    key: str
    counters: QueueCounters

    def publish(self, message: M, *, timeout_s: float | None = None) -> str:
        """Append `message`; waits for room up to `timeout_s` (default from settings); returns the entry id."""
        ...

    def publish_fields(self, fields: Mapping[str, bytes], *, timeout_s: float | None = None) -> str:
        """Append already-encoded entry fields (replaying a dead letter, tools, tests)."""
        ...

    def read(self, consumer: str, *, count: int = 1, block_ms: int = 0) -> list[Delivery[M]]:
        """Up to `count` never-delivered entries; waits up to `block_ms` for the first (0: no wait).

        Poison entries are dead-lettered on the way, so fewer than `count` (even none) may come back.
        """
        ...

    def reclaim(self, consumer: str, *, min_idle_ms: int | None = None, count: int = 100) -> list[Delivery[M]]:
        """Take over entries pending longer than `min_idle_ms` (default `claim_idle_ms`) from other consumers."""
        ...

    def keepalive(self, consumer: str, entry_ids: Iterable[str]) -> int:
        """Reset the idle time of entries `consumer` still works on, so they are not reclaimed; returns how many."""
        ...

    def ack(self, entry_ids: Iterable[str]) -> int:
        """Mark entries done (and delete them); returns how many were still pending."""
        ...

    def stats(self) -> QueueStats: ...

    def dead_letters(self, *, limit: int = 100) -> list[DeadLetter]:
        """The oldest dead letters whose source is this stream."""
        ...


def receive(queue: MessageQueue[M], consumer: str, *, count: int, block_ms: int = 0) -> list[Delivery[M]]:
    """A consumer's usual fetch: abandoned entries first (reclaim), then new ones, `count` at most in all."""
    got = queue.reclaim(consumer, count=count)
    if len(got) < count:
        got += queue.read(consumer, count=count - len(got), block_ms=0 if got else block_ms)
    return got


def encode_for_stream(spec: StreamSpec[M], key: str, message: M) -> dict[str, bytes]:
    """The entry fields of `message`; a message of another type than the stream carries is a TypeError."""
    if not isinstance(message, spec.message_type):
        raise TypeError(f"{key} carries {spec.message_type.__name__}, not {type(message).__name__}")
    return encode_entry(message)


def dead_letter_fields(
    source: str, source_entry_id: str, reason: str, delivery_count: int, fields: Mapping[str, bytes]
) -> dict[str, bytes]:
    """The dead-letter entry for a source entry: metadata plus the original fields under `m:`."""
    letter = {
        "source": source.encode(),
        "source_entry_id": source_entry_id.encode(),
        "reason": reason.encode(),
        "delivery_count": str(delivery_count).encode(),
        "dead_at": repr(time.time()).encode(),
    }
    letter.update({f"m:{name}": value for name, value in fields.items()})
    return letter


def parse_dead_letter(entry_id: str, letter: Mapping[str, bytes]) -> DeadLetter:
    """Inverse of `dead_letter_fields`."""
    original = {name[2:]: value for name, value in letter.items() if name.startswith("m:")}
    message_id = original.get(ID_FIELD)
    return DeadLetter(
        entry_id=entry_id,
        source=letter["source"].decode(),
        source_entry_id=letter["source_entry_id"].decode(),
        reason=letter["reason"].decode(errors="replace"),
        delivery_count=int(letter["delivery_count"]),
        message_id=message_id.decode(errors="replace") if message_id is not None else None,
        dead_at=float(letter["dead_at"]),
        fields=original,
    )


def exceeded_reason(delivery_count: int, max_deliveries: int) -> str:
    return f"delivered {delivery_count} times, more than max_deliveries={max_deliveries}"


@dataclass
class _Pending:
    consumer: str
    delivered_at: float
    count: int


@dataclass
class _MemoryState:
    entries: dict[str, dict[str, bytes]] = field(default_factory=dict)  # insertion order = stream order
    unread: deque[str] = field(default_factory=deque)
    pending: dict[str, _Pending] = field(default_factory=dict)
    dead: list[tuple[str, dict[str, bytes]]] = field(default_factory=list)
    next_seq: int = 1


class InMemoryQueue(Generic[M]):
    """`MessageQueue` in one process, for unit tests: same encoding, bounds, redelivery and dead letters as Redis."""

    def __init__(
        self,
        spec: StreamSpec[M],
        run_id: str,
        settings: QueueSettings | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.spec = spec
        self.key = run_key(run_id, spec.name)
        self.settings = settings or QueueSettings()
        self.counters = QueueCounters()
        self._clock = clock
        self._state = _MemoryState()
        self._cond = threading.Condition()

    def publish(self, message: M, *, timeout_s: float | None = None) -> str:
        return self.publish_fields(encode_for_stream(self.spec, self.key, message), timeout_s=timeout_s)

    def publish_fields(self, fields: Mapping[str, bytes], *, timeout_s: float | None = None) -> str:
        timeout = self.settings.publish_timeout_s if timeout_s is None else timeout_s
        with self._cond:
            state = self._state
            if not self._cond.wait_for(lambda: len(state.entries) < self.settings.max_len, timeout=timeout):
                raise QueueFullError(
                    f"{self.key} is full: {len(state.entries)} unacked entries (max_len={self.settings.max_len}) "
                    f"for {timeout} s; consumers are not keeping up (add consumers or raise max_len)"
                )
            entry_id = f"{state.next_seq}-0"
            state.next_seq += 1
            state.entries[entry_id] = dict(fields)
            state.unread.append(entry_id)
            self.counters.published += 1
            self._cond.notify_all()
            return entry_id

    def read(self, consumer: str, *, count: int = 1, block_ms: int = 0) -> list[Delivery[M]]:
        with self._cond:
            state = self._state
            self._cond.wait_for(lambda: bool(state.unread), timeout=block_ms / 1000)
            taken = [state.unread.popleft() for _ in range(min(count, len(state.unread)))]
            now = self._clock()
            for entry_id in taken:
                state.pending[entry_id] = _Pending(consumer, now, 1)
            return self._deliver(taken)

    def reclaim(self, consumer: str, *, min_idle_ms: int | None = None, count: int = 100) -> list[Delivery[M]]:
        idle_s = (self.settings.claim_idle_ms if min_idle_ms is None else min_idle_ms) / 1000
        with self._cond:
            now = self._clock()
            taken = [eid for eid, p in self._state.pending.items() if now - p.delivered_at >= idle_s][:count]
            for entry_id in taken:
                pending = self._state.pending[entry_id]
                pending.consumer, pending.delivered_at, pending.count = consumer, now, pending.count + 1
            deliveries = self._deliver(taken)
            self.counters.reclaimed += len(deliveries)
            return deliveries

    def _deliver(self, entry_ids: list[str]) -> list[Delivery[M]]:
        """Decode claimed entries; dead-letter the over-delivered and the undecodable (lock held)."""
        deliveries = []
        for entry_id in entry_ids:
            fields, count = self._state.entries[entry_id], self._state.pending[entry_id].count
            if count > self.settings.max_deliveries:
                self._bury(entry_id, exceeded_reason(count, self.settings.max_deliveries))
                continue
            try:
                deliveries.append(Delivery(entry_id, decode_entry(fields, self.spec.message_type), count))
            except PoisonMessageError as exc:
                self._bury(entry_id, exc.reason)
        self.counters.delivered += len(deliveries)
        return deliveries

    def _bury(self, entry_id: str, reason: str) -> None:
        state = self._state
        letter = dead_letter_fields(self.key, entry_id, reason, state.pending[entry_id].count, state.entries[entry_id])
        state.dead.append((f"{len(state.dead) + 1}-0", letter))
        del state.pending[entry_id], state.entries[entry_id]
        self.counters.dead_lettered += 1
        self._cond.notify_all()

    def keepalive(self, consumer: str, entry_ids: Iterable[str]) -> int:
        with self._cond:
            now, kept = self._clock(), 0
            for entry_id in entry_ids:
                pending = self._state.pending.get(entry_id)
                if pending is not None:
                    pending.consumer, pending.delivered_at, kept = consumer, now, kept + 1
            return kept

    def ack(self, entry_ids: Iterable[str]) -> int:
        with self._cond:
            acked = 0
            for entry_id in entry_ids:
                if self._state.pending.pop(entry_id, None) is not None:
                    del self._state.entries[entry_id]
                    acked += 1
            self.counters.acked += acked
            self._cond.notify_all()
            return acked

    def stats(self) -> QueueStats:
        with self._cond:
            state = self._state
            consumers = len({p.consumer for p in state.pending.values()})
            length, pending = len(state.entries), len(state.pending)
            return QueueStats(length, pending, length - pending, len(state.dead), consumers)

    def dead_letters(self, *, limit: int = 100) -> list[DeadLetter]:
        with self._cond:
            return [parse_dead_letter(entry_id, letter) for entry_id, letter in self._state.dead[:limit]]

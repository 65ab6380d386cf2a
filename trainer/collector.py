"""The trainer's side of the run's data contract: a step trains exactly the groups produced for it.

Scored groups carry the step they were produced for (`ScoredGroup.step`, set by the feeder). Collecting step s:
- a group for s joins the batch once per `group_id`; a redelivered or re-generated copy is a duplicate: acked with
  the batch and counted (`duplicates`);
- a group for an earlier step is a leftover of an interrupted attempt: that step's report was accepted, so the
  group is a copy of work already trained; it is acked at once and counted (`leftovers`), never trained twice;
- a group for a later step is held (unacked) until its step is collected.
Nothing is acked before the step's report is accepted, so a crash at any point redelivers, never loses.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from services.core.queues import Delivery, MessageQueue, receive
from services.core.wire import ScoredGroup

ADOPT_BATCH = 512


@dataclass
class CollectedStep:
    """The step's groups (exactly `groups_per_step`, distinct ids, arrival order) and what to ack after its report."""

    step: int
    groups: list[ScoredGroup]
    entry_ids: list[str]
    duplicates: int
    leftovers: int


@dataclass
class _Pending:
    groups: dict[str, ScoredGroup] = field(default_factory=dict)
    entry_ids: list[str] = field(default_factory=list)
    duplicates: int = 0


class StepCollector:
    """Reads the rollouts stream for one consumer and sorts each delivery by the step it belongs to."""

    def __init__(self, queue: MessageQueue[ScoredGroup], consumer: str, groups_per_step: int) -> None:
        if groups_per_step < 1:
            raise ValueError(f"groups_per_step={groups_per_step} must be >= 1")
        self._queue, self._consumer, self._size = queue, consumer, groups_per_step
        self._by_step: dict[int, _Pending] = {}
        self._leftovers = 0
        self._current = 0

    def adopt_abandoned(self) -> int:
        """Take over every pending entry at once (min idle 0): only for a driver that knows it is the sole consumer,
        e.g. the local run resuming after its previous attempt died. Returns how many were adopted."""
        adopted = 0
        while batch := self._queue.reclaim(self._consumer, min_idle_ms=0, count=ADOPT_BATCH):
            self._sort(batch)
            adopted += len(batch)
            if len(batch) < ADOPT_BATCH:
                break
        return adopted

    def poll(self, step: int, *, block_ms: int) -> bool:
        """Read what is available (waiting up to `block_ms` for the first entry); True once `step` is complete."""
        self._advance(step)
        if not self.complete(step):
            self._sort(receive(self._queue, self._consumer, count=self._size, block_ms=block_ms))
        return self.complete(step)

    def complete(self, step: int) -> bool:
        pending = self._by_step.get(step)
        return pending is not None and len(pending.groups) >= self._size

    def group_ids(self, step: int) -> set[str]:
        """Ids of the distinct groups held for `step` (e.g. adopted from an interrupted attempt)."""
        pending = self._by_step.get(step)
        return set(pending.groups) if pending is not None else set()

    def have(self, step: int) -> int:
        pending = self._by_step.get(step)
        return len(pending.groups) if pending is not None else 0

    def take(self, step: int) -> CollectedStep:
        """The complete step (ValueError before it is complete); the caller acks `entry_ids` after the report."""
        if not self.complete(step):
            raise ValueError(f"step {step} has {self.have(step)} of {self._size} groups: poll until complete")
        pending = self._by_step.pop(step)
        leftovers, self._leftovers = self._leftovers, 0
        return CollectedStep(step, list(pending.groups.values()), pending.entry_ids, pending.duplicates, leftovers)

    def _advance(self, step: int) -> None:
        """Moving on to `step`: whatever is held for an earlier step is a leftover of reported work."""
        self._current = step
        stale = [s for s in self._by_step if s < step]
        for old in stale:
            pending = self._by_step.pop(old)
            self._leftovers += len(pending.entry_ids)
            self._queue.ack(pending.entry_ids)

    def _sort(self, deliveries: list[Delivery[ScoredGroup]]) -> None:
        stale: list[str] = []
        for delivery in deliveries:
            group = delivery.message
            if self._current and group.step < self._current:
                stale.append(delivery.entry_id)
                continue
            pending = self._by_step.setdefault(group.step, _Pending())
            pending.entry_ids.append(delivery.entry_id)
            if group.group_id in pending.groups or len(pending.groups) >= self._size:
                pending.duplicates += 1  # acked with the step; the first copy is the one trained
            else:
                pending.groups[group.group_id] = group
        if stale:
            self._leftovers += len(stale)
            self._queue.ack(stale)

"""The rollout role: prompt groups in, scored groups out (DESIGN.md §1 step 2).

Read a batch of prompt groups with the `rollout` consumer group, take new weights if the trainer published some
(between batches, never inside one), generate `n` samples per group in one backend call, score them through the
reward server in one request, stamp the controller's phase and the policy version that generated them, publish each
scored group, and only then ack its prompt (a crash in between redelivers the prompt; the trainer drops the duplicate
by `group_id`). Entries another consumer left pending longer than the queue's `claim_idle_ms` are reclaimed first
(`receive`), so a killed worker's groups are finished by a live one.

Nothing is lost to an outage: a paused run generates nothing; an unreachable reward server makes the role wait and
retry the same samples (exported as `rlvr_rollout_waiting{reason="reward"}`), never publish zero rewards. A prompt
group for a step the run has already passed is acked unused and counted. The Ray `RolloutWorker` actor wraps this
role (services/rollout/worker.py); the local driver calls it in-process.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from reward_server.client import RewardClient, RewardServerUnavailableError, ScoreRequestItem, ScoreResult
from services.controller.client import ControllerClient
from services.core.queues import Delivery, MessageQueue, receive
from services.core.schedule import Phase
from services.core.wire import FinishReason, PromptGroup, ScoredGroup
from services.rollout.metrics import RolloutMetrics

if TYPE_CHECKING:
    import torch

ADOPT_BATCH = 512
REWARD_WAIT_MAX_S = 5.0  # cap of the backoff between scoring attempts while the reward server is down
BATCH_WINDOW_MS = 50  # how long a batch waits for the rest of a step's prompt groups


class GeneratedSample(Protocol):
    """One sample as a backend returns it: its text, the token ids the engine produced, the sampling policy's
    per-token log-probs and why generation ended (both None when the backend has no policy, as replay)."""

    @property
    def text(self) -> str: ...

    @property
    def token_ids(self) -> Sequence[int]: ...

    @property
    def logprobs(self) -> Sequence[float] | None: ...

    @property
    def finish_reason(self) -> FinishReason | None: ...


class GenerationBackend(Protocol):
    """What the role needs from a backend: samples for a batch of prompt groups (one list per group, in order), the
    token ids of a prompt, and the version of the weights it generates with."""

    @property
    def policy_version(self) -> int: ...

    def generate(self, groups: Sequence[PromptGroup]) -> Sequence[Sequence[GeneratedSample]]: ...

    def token_ids(self, text: str) -> list[int]: ...


class PolicyBackend(GenerationBackend, Protocol):
    """A backend that generates with a policy the trainer updates (hf, vllm)."""

    def load_weights(self, weights: Mapping[str, torch.Tensor], policy_version: int) -> None: ...


@dataclass
class RolloutPass:
    """What one pass over the prompts stream did."""

    published: int = 0
    stale_prompts: int = 0
    paused: bool = False


class RolloutStopped(Exception):
    """The role was asked to stop while it waited (nothing was published or acked for the batch in hand)."""


class RolloutRole:
    def __init__(
        self,
        backend: GenerationBackend,
        reward: RewardClient,
        controller: ControllerClient,
        prompts: MessageQueue[PromptGroup],
        rollouts: MessageQueue[ScoredGroup],
        consumer: str,
        *,
        read_batch: int = 16,
        metrics: RolloutMetrics | None = None,
        sync_weights: Callable[[], None] | None = None,
    ) -> None:
        """`sync_weights` is called before every batch (it loads newer weights into the backend, if any)."""
        self._backend, self._reward, self._controller = backend, reward, controller
        self._prompts, self._rollouts, self._consumer = prompts, rollouts, consumer
        self._read_batch = read_batch
        self._adopted: list[Delivery[PromptGroup]] = []
        self.metrics = metrics if metrics is not None else RolloutMetrics(consumer)
        self._sync_weights = sync_weights
        self.stop_event = threading.Event()
        self._rng = random.Random()

    @property
    def policy_version(self) -> int:
        return self._backend.policy_version

    def adopt_abandoned(self) -> int:
        """Take over every pending prompt at once (min idle 0): only for the sole consumer (a resuming local run)."""
        while batch := self._prompts.reclaim(self._consumer, min_idle_ms=0, count=ADOPT_BATCH):
            self._adopted += batch
            if len(batch) < ADOPT_BATCH:
                break
        return len(self._adopted)

    def adopted_group_ids(self) -> set[str]:
        """Ids of adopted prompt groups not yet generated (the feeder need not publish them again)."""
        return {delivery.message.group_id for delivery in self._adopted}

    def process_available(self, *, block_ms: int) -> RolloutPass:
        """Generate for every prompt group available now (waiting up to `block_ms` for the first one)."""
        done = RolloutPass()
        while not self.stop_event.is_set():
            deliveries = self._next_deliveries(block_ms=0 if done.published else block_ms)
            if not deliveries:
                return done
            # The phase and the weights are taken when the batch is in hand, not before waiting for it: the step's
            # prompts are fed right after the previous update was published, and a batch generated with the
            # weights of before that would be dropped as stale (bench/pipeline.py found every synchronous step on
            # Ray generated twice that way).
            current = self._controller.get_phase()
            if current.paused:
                self._adopted = deliveries + self._adopted  # held (unacked), generated after the pause
                done.paused = True
                return done
            if self._sync_weights is not None:
                self._sync_weights()
            fresh = []
            for delivery in deliveries:
                if delivery.message.step < current.current_step:
                    done.stale_prompts += 1  # its step was trained and reported: generating would be waste
                    self.metrics.stale_prompts.inc()
                    self._prompts.ack([delivery.entry_id])
                else:
                    fresh.append(delivery)
            if fresh:
                for delivery, scored in zip(fresh, self._generate_and_score(fresh, current.phase), strict=True):
                    self._rollouts.publish(scored)
                    self._prompts.ack([delivery.entry_id])
                    done.published += 1
                    self.metrics.groups.inc()
                    self.metrics.samples.inc(len(scored.rewards))
        return done

    def _next_deliveries(self, *, block_ms: int) -> list[Delivery[PromptGroup]]:
        if self._adopted:
            deliveries, self._adopted = self._adopted[: self._read_batch], self._adopted[self._read_batch :]
            return deliveries
        deliveries = receive(self._prompts, self._consumer, count=self._read_batch, block_ms=block_ms)
        # A step's prompt groups arrive one XADD at a time: a read woken by the first would generate a batch of one.
        # Keep reading while more arrive within BATCH_WINDOW_MS, up to the batch size.
        while deliveries and len(deliveries) < self._read_batch:
            more = receive(
                self._prompts, self._consumer, count=self._read_batch - len(deliveries), block_ms=BATCH_WINDOW_MS
            )
            if not more:
                break
            deliveries += more
        return deliveries

    def _generate_and_score(self, deliveries: list[Delivery[PromptGroup]], phase: Phase) -> list[ScoredGroup]:
        groups = [delivery.message for delivery in deliveries]
        version = self._backend.policy_version  # weights change only between batches (sync_weights)
        started = time.perf_counter()
        per_group = self._backend.generate(groups)
        generated = time.perf_counter()
        self.metrics.batch_seconds.observe(generated - started)
        self.metrics.policy_version.set(version)
        items = [
            ScoreRequestItem(f"{group.group_id}/{i}", sample.text, group.label, group.data_source)
            for group, samples in zip(groups, per_group, strict=True)
            for i, sample in enumerate(samples)
        ]
        results = self._score_until_answered(items)
        scored_at = time.perf_counter()
        out, offset = [], 0
        for group, samples in zip(groups, per_group, strict=True):
            group_results = results[offset : offset + len(samples)]
            offset += len(samples)
            self.metrics.generated_tokens.inc(sum(len(s.token_ids) for s in samples))
            self.metrics.count_statuses([r.status for r in group_results])
            out.append(
                ScoredGroup(
                    group_id=group.group_id,
                    step=group.step,
                    data_source=group.data_source,
                    prompt_token_ids=group.prompt_token_ids or self._backend.token_ids(group.prompt),
                    response_token_ids=[list(s.token_ids) for s in samples],
                    logprobs=_logprobs(samples),
                    finish_reasons=_finish_reasons(samples),
                    rewards=[r.reward for r in group_results],
                    reward_status=[r.status for r in group_results],
                    policy_version=version,
                    phase=phase,  # the controller's phase at generation; the trainer applies its own step's phase
                    timings={"generate_s": generated - started, "score_s": scored_at - generated},
                )
            )
        return out

    def _score_until_answered(self, items: list[ScoreRequestItem]) -> list[ScoreResult]:
        """Score the batch; while the reward server is unreachable, wait and try the same items again."""
        attempt = 0
        waiting = self.metrics.waiting.labels(reason="reward")
        try:
            while True:
                started = time.perf_counter()
                try:
                    results = self._reward.score(items)
                    self.metrics.reward_seconds.observe(time.perf_counter() - started)
                    return results
                except RewardServerUnavailableError:
                    attempt += 1
                    self.metrics.reward_unavailable.inc()
                    waiting.set(1)
                delay = self._rng.uniform(0.5, 1.0) * min(REWARD_WAIT_MAX_S, 0.5 * 2 ** min(attempt, 10))
                self.stop_event.wait(delay)
                self.metrics.wait_seconds.labels(reason="reward").inc(time.perf_counter() - started)
                if self.stop_event.is_set():
                    raise RolloutStopped("stopped while waiting for the reward server")
        finally:
            waiting.set(0)


def _logprobs(samples: Sequence[GeneratedSample]) -> list[list[float]] | None:
    """Per-sample log-probs when the backend gave them for every sample, else None."""
    per_sample = [s.logprobs for s in samples]
    if any(lp is None for lp in per_sample):
        return None
    return [list(lp) for lp in per_sample if lp is not None]


def _finish_reasons(samples: Sequence[GeneratedSample]) -> list[FinishReason] | None:
    reasons = [s.finish_reason for s in samples]
    return None if any(r is None for r in reasons) else [r for r in reasons if r is not None]

"""The rollout role: prompt groups in, scored groups out (DESIGN.md §1 step 2).

Read prompt groups with the `rollout` consumer group, generate `n` samples each, score them through the reward
server, stamp the controller's phase and the policy version, publish the scored group, and only then ack the
prompt (a crash in between redelivers the prompt; the trainer drops the duplicate by `group_id`).
A paused run generates nothing; a prompt group for a step the run has already passed is acked unused and counted.
The Ray `RolloutWorker` actor wraps this role; the local driver calls it in-process.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from reward_server.client import RewardClient, ScoreRequestItem
from services.controller.client import ControllerClient
from services.core.queues import Delivery, MessageQueue, receive
from services.core.schedule import Phase
from services.core.wire import PromptGroup, ScoredGroup

ADOPT_BATCH = 512


class GeneratedSample(Protocol):
    """One sample as a backend returns it: its text, the token ids the engine produced, and the sampling policy's
    per-token log-probs (None when the backend has no policy, as replay)."""

    @property
    def text(self) -> str: ...

    @property
    def token_ids(self) -> Sequence[int]: ...

    @property
    def logprobs(self) -> Sequence[float] | None: ...


class GenerationBackend(Protocol):
    """What the role needs from a backend: samples for a prompt group, and the token ids of a prompt."""

    def generate(self, group: PromptGroup) -> Sequence[GeneratedSample]: ...

    def token_ids(self, text: str) -> list[int]: ...


@dataclass
class RolloutPass:
    """What one pass over the prompts stream did."""

    published: int = 0
    stale_prompts: int = 0
    paused: bool = False


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
        policy_version: int = 0,
        read_batch: int = 16,
    ) -> None:
        self._backend, self._reward, self._controller = backend, reward, controller
        self._prompts, self._rollouts, self._consumer = prompts, rollouts, consumer
        self.policy_version = policy_version
        self._read_batch = read_batch
        self._adopted: list[Delivery[PromptGroup]] = []

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
        while True:
            current = self._controller.get_phase()
            if current.paused:
                done.paused = True
                return done
            deliveries, self._adopted = self._adopted, []
            if not deliveries:
                deliveries = receive(self._prompts, self._consumer, count=self._read_batch,
                                     block_ms=0 if done.published else block_ms)  # fmt: skip
            if not deliveries:
                return done
            for delivery in deliveries:
                if delivery.message.step < current.current_step:
                    done.stale_prompts += 1  # its step was trained and reported: generating would be waste
                else:
                    self._rollouts.publish(self._generate_and_score(delivery.message, current.phase))
                    done.published += 1
                self._prompts.ack([delivery.entry_id])

    def _generate_and_score(self, group: PromptGroup, phase: Phase) -> ScoredGroup:
        started = time.perf_counter()
        samples = self._backend.generate(group)
        generated = time.perf_counter()
        items = [ScoreRequestItem(f"{group.group_id}/{i}", s.text, group.label, group.data_source)
                 for i, s in enumerate(samples)]  # fmt: skip
        results = self._reward.score(items)
        return ScoredGroup(
            group_id=group.group_id,
            step=group.step,
            data_source=group.data_source,
            prompt_token_ids=group.prompt_token_ids or self._backend.token_ids(group.prompt),
            response_token_ids=[list(s.token_ids) for s in samples],
            logprobs=_logprobs(samples),
            rewards=[r.reward for r in results],
            reward_status=[r.status for r in results],
            policy_version=self.policy_version,
            phase=phase,  # the controller's phase at generation; the trainer applies its own step's phase
            timings={"generate_s": generated - started, "score_s": time.perf_counter() - generated},
        )


def _logprobs(samples: Sequence[GeneratedSample]) -> list[list[float]] | None:
    """Per-sample log-probs when the backend gave them for every sample, else None."""
    per_sample = [s.logprobs for s in samples]
    if any(lp is None for lp in per_sample):
        return None
    return [list(lp) for lp in per_sample if lp is not None]

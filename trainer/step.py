"""One training step, readable top to bottom as the algorithm (SPEC §3-§4).

    batch + phase + configs
      -> GRPO advantages per group            (trainer/advantages.py, SPEC §4)
      -> the strategy's loss mask and token advantages at the phase's r   (trainer/credit.py, SPEC §3)
      -> the clipped policy loss over that mask                          (trainer/losses.py, SPEC §4)
      -> metrics

`plan_step` needs no policy: it is everything the rollouts and the phase decide. `step_loss` adds the policy's
log-probs from the engine's forward pass. Pure functions on tensors: no queues, no processes, no engine.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor

from services.core.config import CreditConfig, TrainerConfig
from services.core.schedule import Phase
from trainer.advantages import compute_group_advantages, groups_without_signal
from trainer.batch import RolloutBatch
from trainer.credit import CreditAssignment, apply_credit_strategy
from trainer.losses import PolicyLossOutput, compute_policy_loss


@dataclass(frozen=True)
class StepPlan:
    """What a step optimizes, before any forward pass: advantages (N,), the credit assignment (N, T), metrics."""

    phase: Phase
    advantages: Tensor  # (N,) per sample
    credit: CreditAssignment  # loss_mask (N, T) bool, advantages (N, T) 0 off the mask
    metrics: dict[str, float] = field(default_factory=dict)


def plan_step(
    batch: RolloutBatch, phase: Phase, credit: CreditConfig, trainer: TrainerConfig, *, entropy: Tensor | None = None
) -> StepPlan:
    """Advantages and the credit strategy's tokens for the step at `phase` (the phase of the step being trained).

    entropy (N, T): the old policy's token entropies, needed by `forking` and `entropy_adv` (SPEC §3.2-§3.3).
    """
    # ---- GRPO advantages: one scalar per sample, relative to its group (SPEC §4)
    advantages = compute_group_advantages(batch.rewards, batch.group_ids, normalize_std=trainer.normalize_advantage_std)
    # ---- when and where: the schedule value r of this step picks the tokens that learn (SPEC §3)
    assignment = apply_credit_strategy(
        credit, phase, advantages=advantages, response_mask=batch.response_mask, entropy=entropy
    )
    # ---- what the step is about, for the report
    metrics = {
        **batch_metrics(batch, advantages),
        "train/optimized_tokens": float(assignment.loss_mask.sum()),
        "train/optimized_token_fraction": optimized_fraction(assignment.loss_mask, batch.response_mask),
        **assignment.metrics,
    }
    return StepPlan(phase=phase, advantages=advantages, credit=assignment, metrics=metrics)


def batch_metrics(batch: RolloutBatch, advantages: Tensor) -> dict[str, float]:
    """What a step's whole batch is about: rewards, advantages, groups, response lengths."""
    return {
        "train/reward_mean": float(batch.rewards.mean()),
        "train/advantage_abs_mean": float(advantages.abs().mean()),
        "train/groups": float(len(set(batch.group_ids))),
        "train/groups_without_signal": float(len(groups_without_signal(batch.rewards, batch.group_ids))),
        "train/response_length_mean": float(batch.response_mask.sum(dim=1).double().mean()),
    }


def optimized_fraction(loss_mask: Tensor, response_mask: Tensor) -> float:
    valid = int(response_mask.sum())
    return float(loss_mask.sum()) / valid if valid else 0.0


def step_loss(
    plan: StepPlan,
    batch: RolloutBatch,
    logprobs: Tensor,
    trainer: TrainerConfig,
    *,
    denominator: float | None = None,
    ref_logprobs: Tensor | None = None,
    entropy: Tensor | None = None,
) -> PolicyLossOutput:
    """The SPEC §4 policy loss of the planned step for the current policy's log-probs.

    logprobs (N, T) with grad, from the trainer's forward pass over the batch's responses; the old log-probs are
    the sampling policy's, carried by the batch. `denominator`: see trainer/losses.py (whole mini-batch count).
    """
    if batch.old_logprobs is None:
        raise ValueError("the batch carries no sampling log-probs (the rollout engine returned none): no ratio exists")
    return compute_policy_loss(
        logprobs,
        batch.old_logprobs,
        plan.credit.advantages,
        plan.credit.loss_mask,
        batch.response_mask,
        trainer.policy_loss,
        denominator=denominator,
        ref_logprobs=ref_logprobs,
        entropy=entropy,
    )

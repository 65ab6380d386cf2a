"""One training step: plan_step (advantages, credit mask, metrics) and step_loss (the policy loss of the plan)."""

from __future__ import annotations

import math

import pytest
import torch

from services.core.config import CreditConfig, TrainerConfig
from services.core.schedule import Phase, Schedule, ScheduleConfig
from services.core.wire import ScoredGroup
from trainer.advantages import compute_group_advantages
from trainer.batch import RolloutBatch, collate_groups
from trainer.step import plan_step, step_loss

SCHEDULE = Schedule(ScheduleConfig(mode="linear", initial_magnitude=0.99, max_ratio=0.8), total_steps=10)
HALF = Phase(step=3, progress=0.5, ratio=0.5, stage="anneal")
TP, NONE = CreditConfig(strategy="tp"), CreditConfig(strategy="none")
TRAINER = TrainerConfig()
METRIC_KEYS = {
    "train/reward_mean",
    "train/advantage_abs_mean",
    "train/groups",
    "train/groups_without_signal",
    "train/response_length_mean",
    "train/optimized_tokens",
    "train/optimized_token_fraction",
    "train/credit_ratio",
}


def _group(gid: str, responses: list[list[int]], rewards: list[float], logprobs: bool = True) -> ScoredGroup:
    return ScoredGroup(
        group_id=gid, step=1, data_source="gsm8k", prompt_token_ids=[1, 2], response_token_ids=responses,
        logprobs=[[-0.1 * (i + 1)] * len(r) for i, r in enumerate(responses)] if logprobs else None,
        rewards=rewards, reward_status=["ok"] * len(responses), policy_version=0, phase=HALF,
    )  # fmt: skip


def _batch(logprobs: bool = True) -> RolloutBatch:
    return collate_groups(
        [
            _group("a", [[5, 6, 7, 8, 9], [3, 4, 5]], [1.0, 0.0], logprobs),
            _group("b", [[1, 2, 3, 4], [7], [8, 8]], [1.0, 1.0, 0.5], logprobs),
            _group("c", [[2, 2, 2, 2, 2, 2], [9, 9]], [0.0, 0.0], logprobs),  # no signal
        ]
    )


def test_at_r_zero_tp_is_plain_grpo() -> None:
    phase = SCHEDULE.phase(SCHEDULE.max_step)
    assert phase.ratio == 0.0
    batch = _batch()
    plan = plan_step(batch, phase, TP, TRAINER)
    assert torch.equal(plan.credit.loss_mask, batch.response_mask)
    none = plan_step(batch, phase, NONE, TRAINER)
    assert torch.equal(plan.credit.advantages, none.credit.advantages)
    assert plan.metrics["train/optimized_token_fraction"] == 1.0


def test_at_half_tp_masks_the_first_half_of_each_response() -> None:
    batch = _batch()
    plan = plan_step(batch, HALF, TP, TRAINER)
    lengths = batch.response_mask.sum(dim=1).tolist()
    width = batch.response_mask.shape[1]
    expected = torch.tensor(
        [[math.floor(n * 0.5) <= t < n for t in range(width)] for n in lengths],
        dtype=torch.bool,
    )
    assert torch.equal(plan.credit.loss_mask, expected)
    off = ~plan.credit.loss_mask
    assert bool((plan.credit.advantages[off] == 0).all())


def test_advantages_are_the_group_advantages() -> None:
    batch = _batch()
    plan = plan_step(batch, HALF, TP, TRAINER)
    assert torch.equal(plan.advantages, compute_group_advantages(batch.rewards, batch.group_ids))
    on = plan.credit.loss_mask
    per_token = plan.advantages.unsqueeze(1).expand_as(on)
    assert torch.equal(plan.credit.advantages[on], per_token[on])


def test_dr_grpo_advantages_are_reward_minus_group_mean() -> None:
    batch = _batch()
    plan = plan_step(batch, HALF, TP, TrainerConfig(normalize_advantage_std=False))
    expected = [0.5, -0.5, 1.0 / 6, 1.0 / 6, -1.0 / 3, 0.0, 0.0]
    assert plan.advantages.tolist() == pytest.approx(expected, abs=1e-12)


def test_metrics_are_present_and_the_optimized_fraction_is_right() -> None:
    batch = _batch()
    plan = plan_step(batch, HALF, TP, TRAINER)
    assert plan.metrics.keys() >= METRIC_KEYS
    valid = int(batch.response_mask.sum())
    optimized = int(plan.credit.loss_mask.sum())
    assert (valid, optimized) == (23, 13)  # lengths 5,3,4,1,2,6,2 keep 3,2,2,1,1,3,1
    assert plan.metrics["train/optimized_tokens"] == 13.0
    assert plan.metrics["train/optimized_token_fraction"] == pytest.approx(13 / 23)
    assert plan.metrics["train/groups"] == 3.0 and plan.metrics["train/groups_without_signal"] == 1.0
    assert plan.metrics["train/credit_ratio"] == 0.5
    assert plan.metrics["train/reward_mean"] == pytest.approx(3.5 / 7)
    assert plan.metrics["train/response_length_mean"] == pytest.approx(23 / 7)


def test_step_loss_at_ratio_one_is_minus_the_mean_masked_advantage() -> None:
    batch = _batch()
    assert batch.old_logprobs is not None
    plan = plan_step(batch, HALF, TP, TRAINER)
    logprobs = batch.old_logprobs.clone().requires_grad_(True)
    out = step_loss(plan, batch, logprobs, TRAINER)
    mask = plan.credit.loss_mask
    expected = -float(plan.credit.advantages[mask].mean())
    assert out.metrics["train/pg_loss"] == pytest.approx(expected, abs=1e-6)
    assert float(out.loss.detach()) == pytest.approx(expected, abs=1e-6)
    assert out.metrics["train/approx_kl"] == 0.0  # ratio exactly 1
    assert all(out.metrics[f"train/clip_fraction_{kind}"] == 0.0 for kind in ("high", "low", "dual"))
    assert out.counts["loss_tokens"] == int(mask.sum())
    (grad,) = torch.autograd.grad(out.loss, logprobs)
    assert bool((grad[~mask] == 0).all()) and bool((grad[mask] != 0).any())


def test_step_loss_needs_old_logprobs() -> None:
    batch = _batch(logprobs=False)
    plan = plan_step(batch, HALF, TP, TRAINER)
    with pytest.raises(ValueError, match="no sampling log-probs"):
        step_loss(plan, batch, torch.zeros_like(batch.response_mask, dtype=torch.float32), TRAINER)

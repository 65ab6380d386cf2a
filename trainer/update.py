"""One optimizer step of one data-parallel rank, readable top to bottom as the algorithm (SPEC §3-§5).

Every rank holds the step's whole batch of scored groups and trains its contiguous share of the samples:
  1. GRPO advantages over the whole batch (groups are never split by the sharding)        SPEC §4
  2. no-grad pass: the old policy's log-probs and full-vocabulary entropies, at the sampling temperature
     (recomputed by the trainer, as the reference does; the engine's log-probs measure the mismatch)
  3. the credit strategy at the phase of the step being trained: loss mask and token advantages   SPEC §3
  4. the global loss denominator, summed over ranks, BEFORE the first backward                      SPEC §4
  5. micro-batched forward/backward, the loss scaled by engine_loss_scale(ranks, accumulation steps), so DeepSpeed's
     averaging reproduces the full-batch gradient exactly; one optimizer step at the accumulation boundary
  6. no-grad pass with the updated policy: log pi_new - log pi_old per token, by trajectory percentile     SPEC §5
  7. metrics: integer counts and sums all-reduced over ranks, then divided (never an average of averages)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from services.core.config import CreditConfig, TrainerConfig
from services.core.schedule import Phase
from services.core.wire import ScoredGroup
from trainer.advantages import compute_group_advantages
from trainer.analysis import percentile_bin_sums, stage_entropy_from_sums, stage_sums
from trainer.batch import RolloutBatch, collate_groups
from trainer.credit import apply_credit_strategy
from trainer.engine import PolicyEngine
from trainer.losses import (
    COUNT_KEYS,
    compute_policy_loss,
    engine_loss_scale,
    fractions_from_counts,
    policy_loss_denominator,
)
from trainer.step import batch_metrics

KL_BINS = 20
TOKEN_WEIGHTED = ("train/approx_kl", "train/kl_ref", "train/entropy_masked_mean")
"""Loss metrics that are means over a micro-batch's masked tokens: combined weighted by loss_tokens."""


@dataclass(frozen=True)
class Shard:
    """This rank's rows of the batch, trimmed to their longest response."""

    prompts: list[list[int]]
    response_ids: Tensor
    response_mask: Tensor
    engine_logprobs: Tensor | None
    advantages: Tensor

    def rows(self, start: int, stop: int) -> Shard:
        width = max(1, int(self.response_mask[start:stop].sum(dim=1).max())) if stop > start else 1
        logprobs = self.engine_logprobs[start:stop, :width] if self.engine_logprobs is not None else None
        return Shard(
            self.prompts[start:stop], self.response_ids[start:stop, :width], self.response_mask[start:stop, :width],
            logprobs, self.advantages[start:stop],
        )  # fmt: skip


def shard_of(batch: RolloutBatch, groups: Sequence[ScoredGroup], advantages: Tensor, rank: int, ranks: int) -> Shard:
    """Rows [rank * N / ranks, (rank + 1) * N / ranks) of the batch."""
    n = batch.response_ids.shape[0]
    if n % ranks:
        raise ValueError(f"{n} samples do not split evenly over {ranks} ranks")
    prompts = [list(g.prompt_token_ids) for g in groups for _ in range(g.n)]
    whole = Shard(prompts, batch.response_ids, batch.response_mask, batch.old_logprobs, advantages)
    per = n // ranks
    return whole.rows(rank * per, (rank + 1) * per)


def train_step(
    engine: PolicyEngine, groups: Sequence[ScoredGroup], phase: Phase, credit: CreditConfig, trainer: TrainerConfig,
    *, temperature: float,
) -> dict[str, float | None]:  # fmt: skip
    """Train one step on `groups` (the same list on every rank) at `phase`; returns the step's metrics (the same
    on every rank). Empty percentile bins and stage windows are None."""
    batch = collate_groups(list(groups))
    loss_config = trainer.policy_loss
    # ---- 1. GRPO advantages over the whole batch (SPEC §4)
    advantages = compute_group_advantages(batch.rewards, batch.group_ids, normalize_std=trainer.normalize_advantage_std)
    shard = shard_of(batch, groups, advantages, engine.rank, engine.world_size)
    inputs = engine.inputs(shard.prompts, shard.response_ids, shard.response_mask)
    # ---- 2. the old policy, as the trainer computes it, at the sampling temperature
    with torch.no_grad():
        old_logprobs, entropy = engine.token_stats(
            inputs, shard.response_ids, shard.response_mask, temperature=temperature, with_entropy=True
        )
        ref_logprobs = (
            engine.token_stats(
                inputs, shard.response_ids, shard.response_mask, temperature=temperature, with_entropy=False,
                reference=True,
            )[0]
            if engine.reference is not None
            else None
        )  # fmt: skip
    assert entropy is not None
    # ---- 3. when and where: the schedule value r of this step picks the tokens that learn (SPEC §3)
    credit_assignment = apply_credit_strategy(
        credit, phase, advantages=shard.advantages, response_mask=shard.response_mask, entropy=entropy
    )
    # ---- 4. the denominator of the whole mini-batch, over every rank, before any backward
    (denominator,) = engine.all_reduce_sum([policy_loss_denominator(credit_assignment.loss_mask, loss_config)])
    scale = engine_loss_scale(engine.world_size, engine.grad_accum_steps)
    # ---- 5. micro-batched forward/backward, one optimizer step
    micro = trainer.engine.micro_batch_size
    counts = dict.fromkeys(COUNT_KEYS, 0)
    sums = {"train/loss": 0.0, "train/pg_loss": 0.0, **dict.fromkeys(TOKEN_WEIGHTED, 0.0)}
    present: set[str] = set()  # the token-weighted metrics this configuration computes
    step_stats: dict[str, float] = {}
    rows = shard.response_ids.shape[0]
    for start in range(0, rows, micro):
        part = shard.rows(start, start + micro)
        width = part.response_ids.shape[1]
        part_inputs = engine.inputs(part.prompts, part.response_ids, part.response_mask)
        logprobs, part_entropy = engine.token_stats(
            part_inputs, part.response_ids, part.response_mask, temperature=temperature,
            with_entropy=loss_config.entropy_coef > 0,
        )  # fmt: skip
        window = slice(start, start + micro)
        output = compute_policy_loss(
            logprobs, old_logprobs[window, :width], credit_assignment.advantages[window, :width],
            credit_assignment.loss_mask[window, :width], part.response_mask, loss_config,
            denominator=max(denominator, 1.0), loss_scale=scale,
            ref_logprobs=ref_logprobs[window, :width] if ref_logprobs is not None else None, entropy=part_entropy,
        )  # fmt: skip
        engine.backward(output.loss)
        step_stats = engine.optimizer_step()
        for key in COUNT_KEYS:
            counts[key] += output.counts[key]
        sums["train/loss"] += output.metrics["train/loss"]
        sums["train/pg_loss"] += output.metrics["train/pg_loss"]
        for key in TOKEN_WEIGHTED:
            if key in output.metrics:
                present.add(key)
                sums[key] += output.metrics[key] * output.counts["loss_tokens"]
    # ---- 6. what the update did, by trajectory percentile (SPEC §5), every trainer.update_kl_every steps
    new_logprobs = None
    if trainer.update_kl_every and phase.step % trainer.update_kl_every == 0:
        with torch.no_grad():
            new_logprobs, _ = engine.token_stats(
                inputs, shard.response_ids, shard.response_mask, temperature=temperature, with_entropy=False
            )
    return _step_metrics(
        engine, batch, advantages, shard, credit_assignment.metrics, counts, sums, present, step_stats,
        old_logprobs=old_logprobs, new_logprobs=new_logprobs, entropy=entropy,
    )  # fmt: skip


def _step_metrics(
    engine: PolicyEngine, batch: RolloutBatch, advantages: Tensor, shard: Shard, credit_metrics: dict[str, float],
    counts: dict[str, int], sums: dict[str, float], present: set[str], step_stats: dict[str, float], *,
    old_logprobs: Tensor, new_logprobs: Tensor | None, entropy: Tensor,
) -> dict[str, float | None]:  # fmt: skip
    """Reduce every additive quantity over ranks in one collective, then form the step's metrics."""
    mask = shard.response_mask
    valid = int(mask.sum())
    stages = stage_sums(entropy, mask)
    update_kl = (
        (new_logprobs - old_logprobs).double()
        if new_logprobs is not None
        else torch.zeros_like(mask, dtype=torch.float64)
    )
    kl_sums, kl_counts = percentile_bin_sums(update_kl, mask, KL_BINS)
    if shard.engine_logprobs is not None:
        gap = torch.where(mask, shard.engine_logprobs - old_logprobs.double(), torch.zeros_like(shard.engine_logprobs))
        mismatch = [float(gap.abs().sum()), float((torch.expm1(gap) - gap).sum())]
    else:
        mismatch = [0.0, 0.0]
    credit_bonus = credit_metrics.get("train/entropy_adv_bonus_mean", 0.0) * valid
    local = (
        [float(counts[key]) for key in COUNT_KEYS]
        + list(sums.values())
        + [v for stage in stages.values() for v in (stage[0], float(stage[1]))]
        + kl_sums + [float(c) for c in kl_counts]
        + mismatch + [credit_bonus, float(update_kl[mask].sum())]
    )  # fmt: skip
    total = engine.all_reduce_sum(local)
    at = 0

    def take(n: int) -> list[float]:
        nonlocal at
        at += n
        return total[at - n : at]

    summed_counts = {key: round(v) for key, v in zip(COUNT_KEYS, take(len(COUNT_KEYS)), strict=True)}
    summed = dict(zip(sums, take(len(sums)), strict=True))
    stage_values = take(2 * len(stages))
    summed_stages = {key: (stage_values[2 * i], int(stage_values[2 * i + 1])) for i, key in enumerate(stages)}
    bin_sums, bin_counts = take(KL_BINS), [int(c) for c in take(KL_BINS)]
    abs_gap, k3_gap, bonus, kl_total = take(4)
    tokens, valid_total = summed_counts["loss_tokens"], summed_counts["valid_tokens"]
    metrics: dict[str, float | None] = {
        **batch_metrics(batch, advantages),
        **step_stats,
        "train/loss": summed["train/loss"],
        "train/pg_loss": summed["train/pg_loss"],
        **{key: summed[key] / tokens if tokens else 0.0 for key in TOKEN_WEIGHTED if key in present},
        **fractions_from_counts(summed_counts),
        "train/optimized_tokens": float(tokens),
        "train/credit_ratio": credit_metrics["train/credit_ratio"],
        **_none_for_nan(stage_entropy_from_sums(summed_stages)),
        "train/kl_update_mean": kl_total / valid_total if valid_total else None,
        **{
            f"train/kl_update_bin_{j:02d}": s / c if c else None
            for j, (s, c) in enumerate(zip(bin_sums, bin_counts, strict=True))
        },
        **{f"train/kl_update_bin_{j:02d}_count": float(c) for j, c in enumerate(bin_counts)},
    }
    if "train/forking_token_ratio" in credit_metrics:
        metrics["train/forking_token_ratio"] = credit_metrics["train/forking_token_ratio"]
    if "train/entropy_adv_bonus_mean" in credit_metrics:
        metrics["train/entropy_adv_bonus_mean"] = bonus / valid_total if valid_total else 0.0
    if shard.engine_logprobs is not None:
        metrics["train/rollout_logprob_abs_diff_mean"] = abs_gap / valid_total if valid_total else 0.0
        metrics["train/rollout_kl_k3"] = k3_gap / valid_total if valid_total else 0.0
    return metrics


def _kl_bins(sums: list[float], counts: list[int]) -> dict[str, float | None]:
    """train/kl_update_bin_JJ (mean log pi_new - log pi_old; None when empty) and its token count."""
    metrics: dict[str, float | None] = {}
    for j, (total, count) in enumerate(zip(sums, counts, strict=True)):
        metrics[f"train/kl_update_bin_{j:02d}"] = total / count if count else None
        metrics[f"train/kl_update_bin_{j:02d}_count"] = float(count)
    return metrics


def _none_for_nan(values: dict[str, float]) -> dict[str, float | None]:
    return {key: None if math.isnan(value) else value for key, value in values.items()}

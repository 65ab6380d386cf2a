"""The policy loss of SPEC.md §4: PPO clip with clip-higher and dual-clip, optional KL and entropy terms.

Shapes: B responses, T padded response length. Mask semantics are exact: a token off the loss mask contributes
nothing (its log-ratio is replaced by 0 *before* any arithmetic, so even NaN/inf there gives a zero gradient), and
under `token-mean` it is not in the denominator either.

Micro-batching / data parallelism: pass `denominator` = the sum of `loss_denominator(...)` over every micro-batch
and rank of the optimizer step's mini-batch; then summing the micro-batch losses (gradient accumulation, DP
all-reduce-sum) gives exactly the loss of the whole mini-batch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

from services.core.config import AGGREGATIONS, PolicyLossConfig
from trainer.advantages import sequence_log_ratio
from trainer.credit import as_bool_mask


@dataclass(frozen=True)
class PolicyLossOutput:
    loss: Tensor  # () scalar with grad
    metrics: dict[str, float] = field(default_factory=dict)


def _check_aggregation(aggregation: str) -> None:
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"unknown aggregation {aggregation!r}: expected one of {', '.join(AGGREGATIONS)}")


def loss_denominator(loss_mask: Tensor, aggregation: str) -> int:
    """This micro-batch's share of the aggregation denominator (sum it over micro-batches and ranks).

    token-mean: masked tokens; seq-mean-token-mean: sequences with at least one masked token;
    seq-mean-token-sum-norm: all sequences.
    """
    _check_aggregation(aggregation)
    mask = as_bool_mask(loss_mask, "loss_mask")
    if aggregation == "token-mean":
        return int(mask.sum())
    if aggregation == "seq-mean-token-mean":
        return int(mask.any(dim=1).sum())
    return int(mask.shape[0])


def aggregate_loss(
    token_values: Tensor,
    loss_mask: Tensor,
    aggregation: str,
    *,
    denominator: float | None = None,
    norm_length: int | None = None,
) -> Tensor:
    """SPEC §4 aggregations of (B, T) per-token values over the loss mask -> () scalar.

    `denominator` defaults to `loss_denominator(loss_mask, aggregation)` (this batch alone); an all-empty batch
    then gives 0 with zero gradient. Sequences with no masked token contribute 0.
    """
    local = loss_denominator(loss_mask, aggregation)
    mask = as_bool_mask(loss_mask, "loss_mask")
    if token_values.shape != mask.shape:
        raise ValueError(f"token_values {tuple(token_values.shape)} and loss_mask {tuple(mask.shape)} differ")
    if denominator is None:
        denominator = max(local, 1)
    elif not (math.isfinite(denominator) and denominator > 0 and denominator >= local):
        raise ValueError(
            f"denominator={denominator!r} is invalid: it must be > 0 and at least this batch's own count ({local}); "
            "pass the sum of loss_denominator(...) over the whole mini-batch (all micro-batches and ranks)"
        )
    masked = torch.where(mask, token_values, torch.zeros_like(token_values))
    if aggregation == "token-mean":
        return masked.sum() / denominator
    if aggregation == "seq-mean-token-mean":
        per_seq = masked.sum(dim=1) / mask.sum(dim=1).clamp(min=1).to(masked.dtype)
        return per_seq.sum() / denominator
    if norm_length is None or norm_length < 1:
        raise ValueError(f"seq-mean-token-sum-norm needs norm_length >= 1 (max response length), got {norm_length!r}")
    return (masked.sum(dim=1) / norm_length).sum() / denominator


def clipped_surrogate(
    log_ratio: Tensor, advantages: Tensor, eps_low: float, eps_high: float, dual_clip_c: float | None
) -> tuple[Tensor, dict[str, Tensor]]:
    """PPO clip with clip-higher and dual-clip (SPEC §4), written per advantage sign:

    A > 0: loss = -A * min(ratio, 1 + eps_high)
    A < 0: loss = -A * min(max(ratio, 1 - eps_low), c)      (= the max/min form of dual-clip PPO)
    A token is "clipped" only strictly beyond a bound (its gradient is then 0); at the bound it keeps the gradient.
    log_ratio, advantages (B, T) -> per-token loss (B, T) and the bool masks "high", "low", "dual".
    """
    ratio = torch.exp(log_ratio)
    positive, negative = advantages > 0, advantages < 0
    high = positive & (ratio > 1.0 + eps_high)
    low = negative & (ratio < 1.0 - eps_low)
    dual = negative & (ratio > dual_clip_c) if dual_clip_c is not None else torch.zeros_like(positive)
    used = torch.where(high, 1.0 + eps_high, ratio)
    used = torch.where(low, 1.0 - eps_low, used)
    if dual_clip_c is not None:
        used = torch.where(dual, dual_clip_c, used)
    return -advantages * used, {"high": high, "low": low, "dual": dual}


def kl_divergence(log_ratio_to_ref: Tensor, estimator: str) -> Tensor:
    """Per-token KL(pi || ref) estimate from log pi - log ref on tokens sampled from pi: k1 = x; k3 = e^-x - 1 + x."""
    if estimator == "k1":
        return log_ratio_to_ref
    if estimator == "k3":
        return torch.expm1(-log_ratio_to_ref) + log_ratio_to_ref
    raise ValueError(f"unknown KL estimator {estimator!r}: expected k1 or k3")


def _masked_mean(values: Tensor, mask: Tensor) -> float:
    count = int(mask.sum())
    return float(values.detach()[mask].sum()) / count if count else 0.0


def _check_inputs(
    logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, loss_mask: Tensor, response_mask: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    if logprobs.dim() != 2 or old_logprobs.shape != logprobs.shape:
        raise ValueError(
            f"logprobs {tuple(logprobs.shape)} and old_logprobs {tuple(old_logprobs.shape)} must be (B, T)"
        )
    mask, valid = as_bool_mask(loss_mask, "loss_mask"), as_bool_mask(response_mask, "response_mask")
    if mask.shape != logprobs.shape or valid.shape != logprobs.shape:
        raise ValueError(f"loss_mask and response_mask must be (B, T)={tuple(logprobs.shape)}")
    if bool((mask & ~valid).any()):
        raise ValueError("loss_mask selects tokens outside response_mask: only response tokens can be optimized")
    if advantages.dim() == 1 and advantages.shape[0] == logprobs.shape[0]:
        advantages = advantages.unsqueeze(1).expand_as(logprobs)
    elif advantages.shape != logprobs.shape:
        raise ValueError(f"advantages must be (B,) or (B, T)={tuple(logprobs.shape)}, got {tuple(advantages.shape)}")
    return mask, valid, torch.where(mask, advantages.detach(), torch.zeros_like(logprobs))


def _policy_log_ratio(logprobs: Tensor, old_logprobs: Tensor, mask: Tensor, ratio_level: str) -> tuple[Tensor, Tensor]:
    """(B, T) log-ratios used for clipping, and the plain token log-ratios (0 off the mask in both)."""
    zeros = torch.zeros_like(logprobs)
    token_log_ratio = torch.where(mask, logprobs - old_logprobs.detach(), zeros)
    if ratio_level == "token":
        return token_log_ratio, token_log_ratio
    # GSPO-token form: value = the sequence log-ratio, gradient = each token's own log-prob gradient; with one
    # advantage per sequence this is exactly GSPO's sequence-level objective under seq-mean-token-mean.
    seq = sequence_log_ratio(token_log_ratio, mask).detach().unsqueeze(1)
    return torch.where(mask, seq + logprobs - logprobs.detach(), zeros), token_log_ratio


def _regularizers(
    logprobs: Tensor, mask: Tensor, config: PolicyLossConfig, ref_logprobs: Tensor | None, entropy: Tensor | None
) -> tuple[Tensor, dict[str, float]]:
    """Per-token KL-to-reference and entropy-bonus terms to add to the loss (0 when their coefficient is 0)."""
    zeros = torch.zeros_like(logprobs)
    extra, metrics = zeros, {}
    if config.kl_coef > 0 and ref_logprobs is None:
        raise ValueError(f"kl_coef={config.kl_coef} needs ref_logprobs (B, T); set kl_coef=0 to train without KL")
    if ref_logprobs is not None:
        if ref_logprobs.shape != logprobs.shape:
            raise ValueError(f"ref_logprobs must be (B, T)={tuple(logprobs.shape)}, got {tuple(ref_logprobs.shape)}")
        kl = kl_divergence(torch.where(mask, logprobs - ref_logprobs.detach(), zeros), config.kl_estimator)
        metrics["train/kl_ref"] = _masked_mean(kl, mask)
        if config.kl_coef > 0:
            extra = extra + config.kl_coef * kl
    if config.entropy_coef > 0:
        if entropy is None or entropy.shape != logprobs.shape:
            raise ValueError(f"entropy_coef={config.entropy_coef} needs entropy (B, T)={tuple(logprobs.shape)}")
        token_entropy = torch.where(mask, entropy, zeros)
        metrics["train/entropy_masked_mean"] = _masked_mean(token_entropy, mask)
        extra = extra - config.entropy_coef * token_entropy
    return extra, metrics


def compute_policy_loss(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    loss_mask: Tensor,
    response_mask: Tensor,
    config: PolicyLossConfig,
    *,
    denominator: float | None = None,
    ref_logprobs: Tensor | None = None,
    entropy: Tensor | None = None,
) -> PolicyLossOutput:
    """SPEC §4 policy loss of one (micro-)batch and its metrics.

    logprobs (B, T) with grad; old_logprobs, ref_logprobs (B, T); advantages (B,) or (B, T) (detached);
    loss_mask (B, T) (the credit strategy's tokens), response_mask (B, T) (all response tokens, for metrics);
    entropy (B, T) with grad (current policy; needed when entropy_coef > 0). Metrics are this batch's own;
    clip fractions and approx_kl (k3 estimate of KL(old || new)) are means over masked tokens, 0 when none.
    """
    mask, valid, adv = _check_inputs(logprobs, old_logprobs, advantages, loss_mask, response_mask)
    log_ratio, token_log_ratio = _policy_log_ratio(logprobs, old_logprobs, mask, config.ratio_level)
    pg_loss, clipped = clipped_surrogate(log_ratio, adv, config.clip_eps_low, config.clip_eps_high, config.dual_clip_c)
    extra, metrics = _regularizers(logprobs, mask, config, ref_logprobs, entropy)
    loss = aggregate_loss(
        pg_loss + extra, mask, config.aggregation, denominator=denominator, norm_length=config.norm_length
    )
    pg_value = aggregate_loss(
        pg_loss.detach(), mask, config.aggregation, denominator=denominator, norm_length=config.norm_length
    )
    metrics["train/pg_loss"] = float(pg_value)
    for name, flags in clipped.items():
        metrics[f"train/clip_fraction_{name}"] = _masked_mean(flags.float(), mask)
    metrics["train/approx_kl"] = _masked_mean(torch.expm1(token_log_ratio) - token_log_ratio, mask)
    n_valid = int(valid.sum())
    metrics["train/optimized_token_fraction"] = int(mask.sum()) / n_valid if n_valid else 0.0
    return PolicyLossOutput(loss=loss, metrics=metrics)

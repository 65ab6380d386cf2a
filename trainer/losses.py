"""The policy loss of SPEC.md §4: PPO clip with clip-higher and dual-clip, optional KL and entropy terms.

Shapes: B responses, T padded response length. Mask semantics are exact: a token off the loss mask contributes
nothing (its log-ratio is replaced by 0 *before* any arithmetic, so even NaN/inf there gives a zero gradient), and
under `token-mean` it is not in the denominator either.

Numerics. Log-ratios, KL and the loss are computed in float32 at least (bf16/fp16 inputs are upcast first; token
counts are never cast to a low-precision dtype). Every log-ratio is clamped to +-LOG_RATIO_CLAMP before `exp`
(as OpenRLHF and verl), so a ratio is at most e^20 even for an old log-prob of -inf on a masked-in token; under
token-level ratios a token beyond the clamp gets zero gradient (under GSPO the clamp bounds the sequence ratio's
value, while every masked token keeps its own log-prob gradient), and a zero-advantage token contributes exactly 0
loss and 0 gradient. The k3 KL estimate is clamped to +-KL_CLAMP (as verl).

Micro-batches, data parallelism, gradient accumulation (SPEC §4: the denominator spans the whole mini-batch):
- `denominator` = the sum of `policy_loss_denominator(...)` over every micro-batch and rank of the optimizer step's
  mini-batch. Then the SUM of the micro-batch losses over micro-batches and ranks is the mini-batch loss.
- `loss_scale` = `engine_loss_scale(dp_size, grad_accum_steps)`. Engines do not sum: DeepSpeed divides each
  backward by its gradient_accumulation_steps and averages gradients over ranks (DDP averages over ranks). The
  scale undoes both, so the engine's gradient is exactly the full mini-batch gradient. Metrics are never scaled.

Metrics. `PolicyLossOutput.counts` are integers that add up over micro-batches and ranks (all-reduce SUM);
`fractions_from_counts` turns the summed counts into clip and optimized-token fractions. `train/loss` and
`train/pg_loss` are additive contributions when `denominator` is the global one; every other metric is a mean over
this batch's masked tokens (combine with weights counts["loss_tokens"]).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import Tensor

from services.core.config import AGGREGATIONS, PolicyLossConfig
from services.core.config.policy_loss import SEQ_MEAN_DENOMINATORS
from trainer.advantages import sequence_log_ratio
from trainer.credit import as_bool_mask, at_least_float32

LOG_RATIO_CLAMP = 20.0  # |log pi_new - log pi_old| (and log pi - log ref) used at most this (OpenRLHF, verl)
KL_CLAMP = 10.0  # the k3 KL estimate per token is clamped to [-10, 10] (verl)
CLIP_KINDS = ("high", "low", "dual")
COUNT_KEYS = ("loss_tokens", "valid_tokens", "sequences", "loss_sequences", "clip_high", "clip_low", "clip_dual")
"""Keys of PolicyLossOutput.counts: masked tokens, response tokens, rows, rows with a masked token, and the masked
tokens clipped above (A > 0), below (A < 0) and by dual-clip (A < 0). Under GSPO a clipped sequence counts all of
its masked tokens."""


@dataclass(frozen=True)
class PolicyLossOutput:
    loss: Tensor  # () scalar with grad, multiplied by loss_scale: call backward on this
    metrics: dict[str, float] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)  # COUNT_KEYS; sum them over micro-batches and ranks


def engine_loss_scale(dp_size: int, grad_accum_steps: int) -> float:
    """The `loss_scale` for an engine that AVERAGES gradients over `dp_size` data-parallel ranks and divides each
    backward by `grad_accum_steps` (DeepSpeed: its world size and gradient_accumulation_steps; DDP with manual
    accumulation: grad_accum_steps = 1; a single process summing micro-batch gradients: 1, 1)."""
    for name, value in (("dp_size", dp_size), ("grad_accum_steps", grad_accum_steps)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}={value!r} is invalid: it must be an integer >= 1")
    return float(dp_size * grad_accum_steps)


def _check_aggregation(aggregation: str, seq_mean_denominator: str) -> None:
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"unknown aggregation {aggregation!r}: expected one of {', '.join(AGGREGATIONS)}")
    if seq_mean_denominator not in SEQ_MEAN_DENOMINATORS:
        raise ValueError(
            f"unknown seq_mean_denominator {seq_mean_denominator!r}: expected one of {', '.join(SEQ_MEAN_DENOMINATORS)}"
        )


def loss_denominator(loss_mask: Tensor, aggregation: str, *, seq_mean_denominator: str = "masked_sequences") -> int:
    """This micro-batch's share of the aggregation denominator (sum it over micro-batches and ranks).

    token-mean: masked tokens; seq-mean-token-mean: sequences with at least one masked token (masked_sequences,
    OpenRLHF) or all sequences (all_sequences, verl); seq-mean-token-sum-norm: all sequences.
    """
    _check_aggregation(aggregation, seq_mean_denominator)
    mask = as_bool_mask(loss_mask, "loss_mask")
    if aggregation == "token-mean":
        return int(mask.sum())
    if aggregation == "seq-mean-token-mean" and seq_mean_denominator == "masked_sequences":
        return int(mask.any(dim=1).sum())
    return int(mask.shape[0])


def policy_loss_denominator(loss_mask: Tensor, config: PolicyLossConfig) -> int:
    """`loss_denominator` for the aggregation `config` selects: what compute_policy_loss's `denominator` sums."""
    return loss_denominator(loss_mask, config.aggregation, seq_mean_denominator=config.seq_mean_denominator)


def _check_positive(value: float, name: str, hint: str) -> None:
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name}={value!r} is invalid: it must be a finite number > 0; {hint}")


def aggregate_loss(
    token_values: Tensor,
    loss_mask: Tensor,
    aggregation: str,
    *,
    denominator: float | None = None,
    norm_length: int | None = None,
    seq_mean_denominator: str = "masked_sequences",
    loss_scale: float = 1.0,
) -> Tensor:
    """SPEC §4 aggregations of (B, T) per-token values over the loss mask -> () scalar (float32 at least).

    `denominator` defaults to `loss_denominator(loss_mask, aggregation)` (this batch alone); an all-empty batch
    then gives 0 with zero gradient. Any finite denominator > 0 is accepted, including one already divided by an
    engine's averaging factor. Sequences with no masked token contribute 0. The result is multiplied by loss_scale.
    """
    local = loss_denominator(loss_mask, aggregation, seq_mean_denominator=seq_mean_denominator)
    mask = as_bool_mask(loss_mask, "loss_mask")
    if token_values.shape != mask.shape:
        raise ValueError(f"token_values {tuple(token_values.shape)} and loss_mask {tuple(mask.shape)} differ")
    if denominator is None:
        denominator = max(local, 1)
    hint = "pass the sum of loss_denominator(...) over the whole mini-batch (all micro-batches and ranks)"
    _check_positive(denominator, "denominator", hint)
    _check_positive(loss_scale, "loss_scale", "use engine_loss_scale(dp_size, grad_accum_steps), or 1.0")
    values = at_least_float32(token_values)
    masked = torch.where(mask, values, torch.zeros_like(values))
    if aggregation == "token-mean":
        total = masked.sum()
    elif aggregation == "seq-mean-token-mean":
        total = (masked.sum(dim=1) / mask.sum(dim=1).clamp(min=1).to(masked.dtype)).sum()
    elif norm_length is None or norm_length < 1:
        raise ValueError(f"seq-mean-token-sum-norm needs norm_length >= 1 (max response length), got {norm_length!r}")
    else:
        total = (masked.sum(dim=1) / norm_length).sum()
    return total / denominator * loss_scale


def clipped_surrogate(
    log_ratio: Tensor, advantages: Tensor, eps_low: float, eps_high: float, dual_clip_c: float | None
) -> tuple[Tensor, dict[str, Tensor]]:
    """PPO clip with clip-higher and dual-clip (SPEC §4), written per advantage sign:

    A > 0: loss = -A * min(ratio, 1 + eps_high)
    A < 0: loss = -A * min(max(ratio, 1 - eps_low), c)      (= the max/min form of dual-clip PPO)
    A token is "clipped" only strictly beyond a bound (its gradient is then 0); at the bound it keeps the gradient.
    ratio = exp(log_ratio clamped to +-LOG_RATIO_CLAMP), so it is finite and A = 0 gives exactly 0.
    log_ratio, advantages (B, T) -> per-token loss (B, T) and the bool masks "high", "low", "dual".
    """
    ratio = torch.exp(log_ratio.clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP))
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
    """Per-token KL(pi || ref) estimate from x = log pi - log ref on tokens sampled from pi: k1 = x;
    k3 = e^-x - 1 + x. x is clamped to +-LOG_RATIO_CLAMP first and k3 to +-KL_CLAMP (as verl), so both are
    finite (a ref log-prob of -inf gives k1 = 20, k3 = 10); beyond a clamp the gradient is 0."""
    x = log_ratio_to_ref.clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    if estimator == "k1":
        return x
    if estimator == "k3":
        return (torch.expm1(-x) + x).clamp(-KL_CLAMP, KL_CLAMP)
    raise ValueError(f"unknown KL estimator {estimator!r}: expected k1 or k3")


def fractions_from_counts(counts: Mapping[str, int]) -> dict[str, float]:
    """Clip fractions (per masked token) and the optimized-token fraction from (summed) counts; 0 when empty."""
    tokens, valid = counts["loss_tokens"], counts["valid_tokens"]
    out = {f"train/clip_fraction_{kind}": counts[f"clip_{kind}"] / tokens if tokens else 0.0 for kind in CLIP_KINDS}
    out["train/optimized_token_fraction"] = tokens / valid if valid else 0.0
    return out


def _masked_mean(values: Tensor, mask: Tensor) -> float:
    count = int(mask.sum())
    return float(values.detach()[mask].double().sum()) / count if count else 0.0


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
    advantages = at_least_float32(advantages.detach())
    if advantages.dim() == 1 and advantages.shape[0] == logprobs.shape[0]:
        advantages = advantages.unsqueeze(1).expand_as(logprobs)
    elif advantages.shape != logprobs.shape:
        raise ValueError(f"advantages must be (B,) or (B, T)={tuple(logprobs.shape)}, got {tuple(advantages.shape)}")
    return mask, valid, torch.where(mask, advantages, torch.zeros_like(advantages))


def _policy_log_ratio(logprobs: Tensor, old_logprobs: Tensor, mask: Tensor, ratio_level: str) -> tuple[Tensor, Tensor]:
    """(B, T) log-ratios used for clipping, and the plain token log-ratios clamped to +-LOG_RATIO_CLAMP (0 off the
    mask in both)."""
    zeros = torch.zeros_like(logprobs)
    raw = torch.where(mask, logprobs - old_logprobs.detach(), zeros)
    token_log_ratio = raw.clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    if ratio_level == "token":
        return token_log_ratio, token_log_ratio
    # GSPO-token form: value = the sequence log-ratio, gradient = each token's own log-prob gradient; with one
    # advantage per sequence this is exactly GSPO's sequence-level objective under seq-mean-token-mean.
    # (logprobs - logprobs.detach()) is exactly 0, so every token of a sequence sees the bit-identical ratio;
    # seq + logprobs - ... would round seq to the precision of each token's log-prob.
    seq = sequence_log_ratio(token_log_ratio, mask).detach().unsqueeze(1)
    return torch.where(mask, (logprobs - logprobs.detach()) + seq, zeros), token_log_ratio


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
        ref = at_least_float32(ref_logprobs.detach())
        kl = kl_divergence(torch.where(mask, logprobs - ref, zeros), config.kl_estimator)
        metrics["train/kl_ref"] = _masked_mean(kl, mask)
        if config.kl_coef > 0:
            extra = extra + config.kl_coef * kl
    if config.entropy_coef > 0:
        if entropy is None or entropy.shape != logprobs.shape:
            raise ValueError(f"entropy_coef={config.entropy_coef} needs entropy (B, T)={tuple(logprobs.shape)}")
        token_entropy = torch.where(mask, at_least_float32(entropy), zeros)
        metrics["train/entropy_masked_mean"] = _masked_mean(token_entropy, mask)
        extra = extra - config.entropy_coef * token_entropy
    return extra, metrics


def _counts(mask: Tensor, valid: Tensor, clipped: dict[str, Tensor]) -> dict[str, int]:
    counts = {
        "loss_tokens": int(mask.sum()),
        "valid_tokens": int(valid.sum()),
        "sequences": int(mask.shape[0]),
        "loss_sequences": int(mask.any(dim=1).sum()),
    }
    counts.update({f"clip_{kind}": int((clipped[kind] & mask).sum()) for kind in CLIP_KINDS})
    return counts


def compute_policy_loss(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    loss_mask: Tensor,
    response_mask: Tensor,
    config: PolicyLossConfig,
    *,
    denominator: float | None = None,
    loss_scale: float = 1.0,
    ref_logprobs: Tensor | None = None,
    entropy: Tensor | None = None,
) -> PolicyLossOutput:
    """SPEC §4 policy loss of one (micro-)batch, its metrics and its counts.

    logprobs (B, T) with grad; old_logprobs, ref_logprobs (B, T); advantages (B,) or (B, T) (detached);
    loss_mask (B, T) (the credit strategy's tokens), response_mask (B, T) (all response tokens, for metrics);
    entropy (B, T) with grad (current policy; needed when entropy_coef > 0). `denominator`: see the module
    docstring (default: this batch alone); `loss_scale`: engine_loss_scale(...) for averaging engines, else 1.
    Under GSPO (ratio_level="sequence") clip-higher, the lower clip and dual-clip all act on the sequence ratio.
    Metrics: train/loss and train/pg_loss (unscaled contributions), clip fractions and optimized_token_fraction
    (from counts), approx_kl (mean k3 estimate of KL(old || new) from the clamped log-ratios; not KL_CLAMPed: a
    diagnostic), kl_ref and entropy_masked_mean when present; all 0 when no token is masked.
    """
    mask, valid, adv = _check_inputs(logprobs, old_logprobs, advantages, loss_mask, response_mask)
    logprobs, old_logprobs = at_least_float32(logprobs), at_least_float32(old_logprobs)
    log_ratio, token_log_ratio = _policy_log_ratio(logprobs, old_logprobs, mask, config.ratio_level)
    pg_loss, clipped = clipped_surrogate(log_ratio, adv, config.clip_eps_low, config.clip_eps_high, config.dual_clip_c)
    extra, metrics = _regularizers(logprobs, mask, config, ref_logprobs, entropy)

    def aggregate(values: Tensor, scale: float = 1.0) -> Tensor:
        return aggregate_loss(
            values,
            mask,
            config.aggregation,
            denominator=denominator,
            norm_length=config.norm_length,
            seq_mean_denominator=config.seq_mean_denominator,
            loss_scale=scale,
        )

    loss = aggregate(pg_loss + extra, loss_scale)
    metrics["train/loss"] = float(aggregate((pg_loss + extra).detach()))
    metrics["train/pg_loss"] = float(aggregate(pg_loss.detach()))
    counts = _counts(mask, valid, clipped)
    metrics.update(fractions_from_counts(counts))
    metrics["train/approx_kl"] = _masked_mean(torch.expm1(token_log_ratio) - token_log_ratio, mask)
    return PolicyLossOutput(loss=loss, metrics=metrics, counts=counts)

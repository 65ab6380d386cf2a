"""Token-level credit allocation driven by the schedule value r (SPEC.md §3).

Each strategy turns one phase of the schedule into a loss mask (which tokens are optimized) and per-token advantages.
Masks returned here are `torch.bool`; every mask argument accepts bool or 0/1 integer/float tensors.
Shapes: B responses, T padded response length; responses are right-padded (valid tokens are a prefix of each row).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

from services.core.config import CREDIT_STRATEGIES, CreditConfig
from services.core.schedule import Phase


@dataclass(frozen=True)
class CreditAssignment:
    """What a strategy hands to the loss: the loss mask, the per-token advantages (0 off the mask), log scalars."""

    loss_mask: Tensor  # (B, T) bool
    advantages: Tensor  # (B, T) float, exactly 0 where loss_mask is False
    metrics: dict[str, float] = field(default_factory=dict)


def as_bool_mask(mask: Tensor, name: str) -> Tensor:
    """A 0/1 (or bool) 2-D mask as bool; anything else is an error, never rounded."""
    if mask.dim() != 2:
        raise ValueError(f"{name} must be 2-D (B, T), got shape {tuple(mask.shape)}")
    if mask.dtype == torch.bool:
        return mask
    if not bool(((mask == 0) | (mask == 1)).all()):
        raise ValueError(f"{name} must contain only 0 and 1 (or be a bool tensor); got other values")
    return mask != 0


def at_least_float32(values: Tensor) -> Tensor:
    """bf16/fp16 (and integer) tensors as float32; float32/float64 unchanged. Log-ratios, KL, losses and token
    counts are computed in float32 at least (SPEC §4): bf16 keeps 8 significant bits, so 257 rounds to 256."""
    if values.dtype in (torch.float32, torch.float64):
        return values
    return values.to(torch.float32)


def response_lengths(response_mask: Tensor) -> Tensor:
    """(B, T) right-padded response mask -> (B,) int64 lengths; a mask with holes or left padding raises."""
    mask = as_bool_mask(response_mask, "response_mask")
    lengths = mask.sum(dim=1)
    positions = torch.arange(mask.shape[1], device=mask.device)
    contiguous = positions.unsqueeze(0) < lengths.unsqueeze(1)
    if not torch.equal(contiguous, mask):
        bad = (contiguous != mask).any(dim=1).nonzero().flatten().tolist()
        raise ValueError(
            f"response_mask rows {bad} are not right-padded contiguous prefixes (holes or left padding): "
            "the trajectory position of a token must equal its column. Strip prompt/pad tokens before calling."
        )
    return lengths


def _check_fraction(value: float, name: str) -> None:
    if not (math.isfinite(value) and 0.0 <= value <= 1.0):
        raise ValueError(f"{name}={value!r} is invalid: it must be a finite fraction in [0, 1]")


def tp_loss_mask(response_lengths: Tensor, width: int, ratio: float) -> Tensor:
    """SPEC §3.1: per row exclude the first k = min(floor(L * r), L - 1) tokens, optimize the rest of the L.

    `response_lengths` (B,) int; returns (B, width) bool. floor(L * r) is taken on the float64 product, exactly as
    Python's `math.floor(L * r)` (L = 100, r = 0.29 gives 28.999999999999996, so 28 tokens are excluded).
    Rows with L = 0 are all False; padding (columns >= L) is always False.
    """
    _check_fraction(ratio, "ratio")
    if response_lengths.dim() != 1:
        raise ValueError(f"response_lengths must be 1-D (B,), got shape {tuple(response_lengths.shape)}")
    if response_lengths.dtype.is_floating_point or response_lengths.dtype == torch.bool:
        raise ValueError(f"response_lengths must be an integer tensor, got {response_lengths.dtype}")
    if response_lengths.numel() and (response_lengths.min() < 0 or response_lengths.max() > width):
        raise ValueError(
            f"response_lengths must lie in [0, width={width}], got min {int(response_lengths.min())} and "
            f"max {int(response_lengths.max())}: widen the tensor or fix the lengths"
        )
    lengths = response_lengths.to(torch.int64)
    excluded = torch.floor(lengths.to(torch.float64) * ratio).to(torch.int64)
    excluded = torch.minimum(excluded, (lengths - 1).clamp(min=0))  # always keep the last token (§3.1)
    positions = torch.arange(width, device=lengths.device).unsqueeze(0)
    return (positions >= excluded.unsqueeze(1)) & (positions < lengths.unsqueeze(1))


def forking_mask(entropy: Tensor, valid: Tensor, token_ratio: float) -> Tensor:
    """SPEC §3.2: per row keep the top ceil(n * clamp(tau, 0, 1)) valid tokens by entropy (n = valid tokens in row).

    entropy (B, T) float, valid (B, T) mask -> (B, T) bool, never True on an invalid token.
    - The budget is ceil(n * tau) on the float64 product; the reference computes it in float32, so the two may
      differ by one token (accepted by SPEC §3.2). tau = 0 keeps no token; rows with n = 0 are all False.
    - tau outside [0, 1] is clamped (that is the method's definition, SPEC §3.2); NaN tau raises.
    - Ties in entropy go to the earlier position (stable sort), so the selection is deterministic.
    - Entropy is treated as data: it is detached, and must be finite on valid tokens.
    """
    if math.isnan(token_ratio):
        raise ValueError("token_ratio is NaN: pass tau = 1 - r with r the schedule value in [0, 1]")
    tau = min(max(token_ratio, 0.0), 1.0)
    valid_mask = as_bool_mask(valid, "valid")
    if entropy.shape != valid_mask.shape:
        raise ValueError(f"entropy shape {tuple(entropy.shape)} != valid shape {tuple(valid_mask.shape)}")
    scores = entropy.detach()
    if not bool(torch.isfinite(scores[valid_mask]).all()):
        raise ValueError("entropy has NaN/inf on valid tokens: forking selection needs finite entropies")
    counts = valid_mask.sum(dim=1)
    budget = torch.ceil(counts.to(torch.float64) * tau).to(torch.int64)
    # Invalid tokens rank strictly below every valid one, so they are never picked (budget <= n).
    keys = torch.where(valid_mask, scores.to(torch.float64), torch.full_like(scores, -math.inf, dtype=torch.float64))
    order = torch.argsort(keys, dim=1, descending=True, stable=True)
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(order.shape[1], device=order.device).expand_as(order).contiguous())
    return (ranks < budget.unsqueeze(1)) & valid_mask


def _per_token(advantages: Tensor, shape: torch.Size) -> Tensor:
    """Advantages (B,) per sequence or (B, T) per token -> (B, T)."""
    if advantages.dim() == 1 and advantages.shape[0] == shape[0]:
        return advantages.unsqueeze(1).expand(shape)
    if advantages.shape == shape:
        return advantages
    raise ValueError(f"advantages must be (B,)=({shape[0]},) or (B, T)={tuple(shape)}, got {tuple(advantages.shape)}")


def entropy_shaped_advantages(
    advantages: Tensor, entropy: Tensor, mask: Tensor, scale: float, alpha: float = 0.4, kappa: float = 2.0
) -> Tensor:
    """SPEC §3.3: A'_t = (A_t + scale * psi_t) * M_t with psi_t = min(alpha * H_t, |A_t| / kappa), H detached.

    advantages (B,) (broadcast to every token of its response) or (B, T); entropy (B, T); mask (B, T) -> (B, T).
    Off-mask tokens get exactly 0, whatever advantages/entropy hold there. On masked tokens the entropy must be
    finite (as for forking_mask); entropy is >= 0 in exact arithmetic, so round-off negatives are clamped at 0.
    alpha must be >= 0 and kappa > 0 (a negative alpha would turn the bonus into a penalty).
    """
    if not (math.isfinite(kappa) and kappa > 0):
        raise ValueError(f"kappa={kappa!r} is invalid: it must be a finite number > 0 (default 2.0)")
    if not (math.isfinite(alpha) and alpha >= 0):
        raise ValueError(f"alpha={alpha!r} is invalid: it must be a finite number >= 0 (default 0.4)")
    if not math.isfinite(scale):
        raise ValueError(f"scale={scale!r} must be finite (the schedule value r, or a static scale)")
    bool_mask = as_bool_mask(mask, "mask")
    if entropy.shape != bool_mask.shape:
        raise ValueError(f"entropy shape {tuple(entropy.shape)} != mask shape {tuple(bool_mask.shape)}")
    ent = entropy.detach()
    if not bool(torch.isfinite(ent[bool_mask]).all()):
        raise ValueError("entropy has NaN/inf on masked tokens: entropy-shaped advantages need finite entropies")
    # Off the mask the value is discarded; zero it so NaN there cannot reach the arithmetic below.
    ent = torch.where(bool_mask, ent, torch.zeros_like(ent)).clamp(min=0.0)
    adv = _per_token(advantages, bool_mask.shape)
    psi = torch.minimum(alpha * ent, adv.abs() / kappa)
    return torch.where(bool_mask, adv + scale * psi, torch.zeros_like(adv))


def _need_entropy(entropy: Tensor | None, strategy: str) -> Tensor:
    if entropy is None:
        raise ValueError(
            f"strategy {strategy!r} needs per-token entropy (B, T) from the trainer's forward pass of the old policy"
        )
    return entropy


def apply_credit_strategy(
    config: CreditConfig,
    phase: Phase,
    *,
    advantages: Tensor,
    response_mask: Tensor,
    entropy: Tensor | None = None,
) -> CreditAssignment:
    """SPEC §3: the loss mask and per-token advantages of one mini-batch under `config.strategy` at `phase`.

    advantages (B,) or (B, T); response_mask (B, T) right-padded; entropy (B, T) (forking and entropy_adv only).
    r = phase.ratio drives every strategy: tp excludes the first r of each response, forking keeps tau = 1 - r,
    entropy_adv scales the bonus by r. With r = 0 every strategy is plain GRPO (tp and forking exactly).
    """
    strategy = config.strategy
    if strategy not in CREDIT_STRATEGIES:
        raise ValueError(f"unknown credit strategy {strategy!r}: expected one of {', '.join(CREDIT_STRATEGIES)}")
    ratio = phase.ratio
    _check_fraction(ratio, "phase.ratio")
    valid = as_bool_mask(response_mask, "response_mask")
    adv = _per_token(advantages, valid.shape)
    metrics = {"train/credit_ratio": ratio}
    if strategy == "entropy_adv":
        ent = _need_entropy(entropy, strategy)
        scale = ratio if config.entropy_static_scale is None else config.entropy_static_scale
        shaped = entropy_shaped_advantages(
            adv, ent, valid, scale=scale, alpha=config.entropy_alpha, kappa=config.entropy_kappa
        )
        bonus = (shaped - torch.where(valid, adv, torch.zeros_like(adv)))[valid]
        metrics["train/entropy_adv_bonus_mean"] = float(bonus.mean()) if bonus.numel() else 0.0
        return CreditAssignment(loss_mask=valid, advantages=shaped, metrics=metrics)
    if strategy == "tp":
        loss_mask = tp_loss_mask(response_lengths(valid), valid.shape[1], ratio)
    elif strategy == "forking":
        tau = 1.0 - ratio  # SPEC §3.2
        loss_mask = forking_mask(_need_entropy(entropy, strategy), valid, tau)
        metrics["train/forking_token_ratio"] = tau
    else:
        loss_mask = valid
    masked_adv = torch.where(loss_mask, adv, torch.zeros_like(adv))
    return CreditAssignment(loss_mask=loss_mask, advantages=masked_adv, metrics=metrics)

"""Group-relative advantages (SPEC.md §4) and the sequence log-ratio GSPO needs.

Group statistics are computed per group on the group's rewards sorted by value, in float64: the result is then
bit-for-bit independent of the order in which samples arrive (floating-point sums depend on summation order).
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import torch
from torch import Tensor

from trainer.credit import as_bool_mask, at_least_float32

GROUP_STD_EPS = 1e-6  # SPEC §4: A = (R - mean) / (std + 1e-6)


def _group_index(group_ids: Tensor | Sequence[Hashable], size: int) -> tuple[list[Hashable], list[list[int]]]:
    """Group keys in first-appearance order and, for each, the sample indices that belong to it."""
    keys = group_ids.tolist() if isinstance(group_ids, Tensor) else list(group_ids)
    if isinstance(group_ids, Tensor) and group_ids.dim() != 1:
        raise ValueError(f"group_ids must be 1-D (N,), got shape {tuple(group_ids.shape)}")
    if len(keys) != size:
        raise ValueError(f"group_ids has {len(keys)} entries but rewards has {size}: one group id per sample")
    members: dict[Hashable, list[int]] = {}
    for index, key in enumerate(keys):
        members.setdefault(key, []).append(index)
    return list(members), list(members.values())


def _check_rewards(rewards: Tensor) -> None:
    if rewards.dim() != 1:
        raise ValueError(f"rewards must be 1-D (N,), got shape {tuple(rewards.shape)}")
    if not bool(torch.isfinite(rewards).all()):
        raise ValueError("rewards contain NaN/inf: the reward service must map failures to a finite reward")


def compute_group_advantages(
    rewards: Tensor, group_ids: Tensor | Sequence[Hashable], *, normalize_std: bool = True
) -> Tensor:
    """SPEC §4 GRPO advantage per sample: (R - group mean) / (unbiased group std + 1e-6).

    rewards (N,) float; group_ids (N,) int tensor or any sequence of hashable ids (e.g. prompt uids) -> (N,) in
    rewards' dtype (float64 for integer rewards). `normalize_std=False` gives Dr. GRPO's R - mean.
    A group of size 1 gets exactly 0 by definition (SPEC §4: its unbiased std is undefined and it has no peer to
    compare with), and so does a group whose rewards are all equal (no signal, not rounding noise / 1e-6).
    """
    _check_rewards(rewards)
    _, groups = _group_index(group_ids, rewards.shape[0])
    values = rewards.detach().to(torch.float64)
    out = torch.zeros_like(values)
    for indices in groups:
        index = torch.tensor(indices, dtype=torch.long, device=rewards.device)
        group = values[index]
        if len(indices) < 2 or bool((group == group[0]).all()):
            continue  # no signal: exactly 0, not (R - mean) rounding noise / 1e-6
        ordered = torch.sort(group).values  # order-independent summation
        mean = ordered.sum() / len(indices)
        centered = group - mean
        if normalize_std:
            std = torch.sqrt(((ordered - mean) ** 2).sum() / (len(indices) - 1))
            centered = centered / (std + GROUP_STD_EPS)
        out[index] = centered
    dtype = rewards.dtype if rewards.dtype.is_floating_point else torch.float64
    return out.to(dtype)


def groups_without_signal(rewards: Tensor, group_ids: Tensor | Sequence[Hashable]) -> list[Hashable]:
    """Ids of groups whose rewards are all equal (size-1 groups included), in first-appearance order.

    Their advantages are all 0, so they add nothing to the policy gradient: dynamic sampling drops them (SPEC §4).
    """
    _check_rewards(rewards)
    keys, groups = _group_index(group_ids, rewards.shape[0])
    flat = rewards.detach().tolist()
    return [key for key, indices in zip(keys, groups, strict=True) if len({flat[i] for i in indices}) == 1]


def sequence_log_ratio(log_ratio: Tensor, mask: Tensor) -> Tensor:
    """GSPO's per-sequence log importance ratio: mean over masked tokens of log pi_new - log pi_old.

    log_ratio (B, T), mask (B, T) -> (B,); rows with no masked token give 0 (ratio 1). Masked-out entries are
    ignored entirely (even NaN/inf there) and receive exactly zero gradient. Computed in float32 at least (bf16/fp16
    inputs give a float32 result): a bf16 token count would round 257 to 256.
    """
    if log_ratio.dim() != 2 or log_ratio.shape != mask.shape:
        raise ValueError(f"log_ratio {tuple(log_ratio.shape)} and mask {tuple(mask.shape)} must both be (B, T)")
    bool_mask = as_bool_mask(mask, "mask")
    values = at_least_float32(log_ratio)
    total = torch.where(bool_mask, values, torch.zeros_like(values)).sum(dim=1)
    counts = bool_mask.sum(dim=1)
    return total / counts.clamp(min=1).to(values.dtype)

"""The paper's analysis metrics (SPEC.md §5): per-token quantities by relative position in the trajectory.

Relative position of token t (0-based) in a response of length L: u = (t + 0.5) / L, always strictly inside (0, 1).
All position tests below are done in exact integer arithmetic on 2L * u = 2t + 1, so bin and window membership
never depends on float rounding. Means pool tokens over the whole batch (a long response weighs more).
Empty windows/bins have mean NaN (and count 0): "no data" must not look like "entropy 0" on a dashboard.
Responses must be right-padded (SPEC §5 positions are trajectory positions).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from trainer.credit import as_bool_mask, response_lengths

# SPEC §5 stage windows as closed intervals [lo, hi] of u, in percent (integers, for exact comparison).
STAGE_WINDOWS_PERCENT: dict[str, tuple[int, int]] = {"early": (0, 10), "middle": (45, 55), "late": (90, 100)}


def relative_positions(response_mask: Tensor) -> Tensor:
    """(B, T) right-padded mask -> (B, T) float64 u = (t + 0.5) / L on response tokens, NaN on padding."""
    lengths = response_lengths(response_mask).to(torch.float64)
    positions = torch.arange(response_mask.shape[1], dtype=torch.float64, device=response_mask.device)
    u = (positions.unsqueeze(0) + 0.5) / lengths.unsqueeze(1)
    return torch.where(as_bool_mask(response_mask, "response_mask"), u, torch.full_like(u, math.nan))


def _doubled_positions(response_mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(2t + 1) and 2L as int64 (B, T) tensors, plus the bool mask: u = (2t + 1) / 2L exactly."""
    mask = as_bool_mask(response_mask, "response_mask")
    lengths = response_lengths(mask)
    positions = torch.arange(mask.shape[1], device=mask.device).unsqueeze(0).expand_as(mask)
    return 2 * positions + 1, (2 * lengths).unsqueeze(1).expand_as(mask), mask


def _checked_values(values: Tensor, mask: Tensor, name: str) -> Tensor:
    if values.shape != mask.shape:
        raise ValueError(f"{name} shape {tuple(values.shape)} != response_mask shape {tuple(mask.shape)}")
    return values.detach().to(torch.float64)


def _mean(values: Tensor, selected: Tensor) -> float:
    count = int(selected.sum())
    return float(values[selected].sum()) / count if count else math.nan


def stage_sums(values: Tensor, response_mask: Tensor) -> dict[str, tuple[float, int]]:
    """Sum and token count of a per-token quantity in each SPEC §5 stage window and over whole responses
    ("sequence"): additive over micro-batches and ranks (all-reduce SUM, then divide)."""
    odd, double_length, mask = _doubled_positions(response_mask)
    data = _checked_values(values, mask, "values")
    sums: dict[str, tuple[float, int]] = {}
    for stage, (lo, hi) in STAGE_WINDOWS_PERCENT.items():
        # lo/100 <= (2t+1)/(2L) <= hi/100  <=>  lo * 2L <= 100 (2t+1) <= hi * 2L
        inside = mask & (lo * double_length <= 100 * odd) & (100 * odd <= hi * double_length)
        sums[stage] = (float(data[inside].sum()), int(inside.sum()))
    sums["sequence"] = (float(data[mask].sum()), int(mask.sum()))
    return sums


def stage_entropy_from_sums(sums: dict[str, tuple[float, int]]) -> dict[str, float]:
    """train/entropy_stage_{early,middle,late} and train/entropy_sequence from (summed) `stage_sums`; NaN if empty."""
    names = {stage: f"train/entropy_stage_{stage}" for stage in STAGE_WINDOWS_PERCENT} | {
        "sequence": "train/entropy_sequence"
    }
    return {name: sums[key][0] / sums[key][1] if sums[key][1] else math.nan for key, name in names.items()}


def stage_entropy(entropy: Tensor, response_mask: Tensor) -> dict[str, float]:
    """SPEC §5 stage and sequence entropy over the full (unsplit) responses, pooled over the batch.

    entropy (B, T), response_mask (B, T) -> {"train/entropy_stage_early": ..., "_middle", "_late",
    "train/entropy_sequence": mean over all response tokens}. Windows are closed: u in [0, .1], [.45, .55], [.9, 1].
    """
    return stage_entropy_from_sums(stage_sums(entropy, response_mask))


def percentile_bin_sums(values: Tensor, response_mask: Tensor, num_bins: int = 20) -> tuple[list[float], list[int]]:
    """Sum and token count of a per-token quantity in `num_bins` equal bins of relative position u: bin j holds
    the tokens with j / K <= u < (j + 1) / K (half-open; u < 1 always). Additive over micro-batches and ranks."""
    if isinstance(num_bins, bool) or not isinstance(num_bins, int) or num_bins < 1:
        raise ValueError(f"num_bins={num_bins!r} is invalid: it must be an integer >= 1 (e.g. 20)")
    odd, double_length, mask = _doubled_positions(response_mask)
    data = _checked_values(values, mask, "values")
    bins = (odd[mask] * num_bins) // double_length[mask]  # floor(u * K), exact
    sums = torch.zeros(num_bins, dtype=torch.float64, device=data.device).index_add_(0, bins, data[mask])
    counts = torch.bincount(bins, minlength=num_bins)
    return [float(v) for v in sums], [int(c) for c in counts]


def percentile_bins(values: Tensor, response_mask: Tensor, num_bins: int = 20) -> tuple[list[float], list[int]]:
    """Mean of a per-token quantity (entropy, KL, ...) in `num_bins` equal bins of relative position u.

    values (B, T), response_mask (B, T) -> (bin_means, bin_counts), each of length num_bins (bins as in
    `percentile_bin_sums`). An empty bin has mean NaN and count 0.
    """
    sums, counts = percentile_bin_sums(values, response_mask, num_bins)
    return [s / c if c else math.nan for s, c in zip(sums, counts, strict=True)], counts


def binned_metrics(name: str, bin_means: list[float], bin_counts: list[int]) -> dict[str, float]:
    """Flatten percentile bins into log scalars: train/{name}_bin_{j:02d} (means) and ..._count (token counts)."""
    if len(bin_means) != len(bin_counts):
        raise ValueError(f"bin_means ({len(bin_means)}) and bin_counts ({len(bin_counts)}) differ in length")
    metrics: dict[str, float] = {}
    for j, (mean, count) in enumerate(zip(bin_means, bin_counts, strict=True)):
        metrics[f"train/{name}_bin_{j:02d}"] = mean
        metrics[f"train/{name}_bin_{j:02d}_count"] = float(count)
    return metrics

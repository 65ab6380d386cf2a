"""SPEC §5 analysis metrics: relative positions, stage/sequence entropy, percentile bins."""

from __future__ import annotations

import math

import pytest
import torch

from trainer.analysis import binned_metrics, percentile_bins, relative_positions, stage_entropy


def _mask(lengths: list[int], width: int) -> torch.Tensor:
    return torch.arange(width).unsqueeze(0) < torch.tensor(lengths).unsqueeze(1)


def test_relative_positions() -> None:
    u = relative_positions(_mask([4, 1, 0], 4))
    assert u[0].tolist() == [0.125, 0.375, 0.625, 0.875]
    assert u[1, 0].item() == 0.5
    assert bool(torch.isnan(u[1, 1:]).all()) and bool(torch.isnan(u[2]).all())


def test_stage_entropy_by_hand() -> None:
    # L=10: u = 0.05, 0.15, ..., 0.95; windows are closed, so u = 0.45 and u = 0.55 are both "middle".
    # L=1: u = 0.5 (middle). L=0 contributes nothing.
    entropy = torch.tensor([list(range(10)), [7.0] + [99.0] * 9, [99.0] * 10], dtype=torch.float32)
    metrics = stage_entropy(entropy, _mask([10, 1, 0], 10))
    assert metrics["train/entropy_stage_early"] == 0.0
    assert metrics["train/entropy_stage_middle"] == pytest.approx((4 + 5 + 7) / 3)
    assert metrics["train/entropy_stage_late"] == 9.0
    assert metrics["train/entropy_sequence"] == pytest.approx((45 + 7) / 11)


def test_stage_windows_for_length_twenty() -> None:
    entropy = torch.arange(20, dtype=torch.float64).unsqueeze(0)
    metrics = stage_entropy(entropy, torch.ones(1, 20))
    assert metrics["train/entropy_stage_early"] == 0.5  # t = 0, 1 (u = .025, .075)
    assert metrics["train/entropy_stage_middle"] == 9.5  # t = 9, 10 (u = .475, .525)
    assert metrics["train/entropy_stage_late"] == 18.5  # t = 18, 19 (u = .925, .975)


def test_empty_stage_is_nan() -> None:
    metrics = stage_entropy(torch.ones(2, 3), _mask([1, 1], 3))
    assert math.isnan(metrics["train/entropy_stage_early"]) and math.isnan(metrics["train/entropy_stage_late"])
    assert metrics["train/entropy_stage_middle"] == 1.0


def test_percentile_bins_by_hand() -> None:
    values = torch.arange(10, dtype=torch.float32).unsqueeze(0)
    means, counts = percentile_bins(values, torch.ones(1, 10), num_bins=4)
    # u = .05 .15 | .25 .35 .45 | .55 .65 | .75 .85 .95  (lower edges inclusive)
    assert counts == [2, 3, 2, 3]
    assert means == pytest.approx([0.5, 3.0, 5.5, 8.0])


def test_percentile_bins_edges_and_empty_bins() -> None:
    means, counts = percentile_bins(torch.tensor([[1.0, 3.0]]), torch.ones(1, 2), num_bins=4)  # u = .25, .75
    assert counts == [0, 1, 0, 1]
    assert math.isnan(means[0]) and math.isnan(means[2]) and means[1] == 1.0 and means[3] == 3.0


def test_percentile_bins_ignore_padding_and_validate() -> None:
    values = torch.tensor([[2.0, math.nan], [4.0, 6.0]])
    means, counts = percentile_bins(values, _mask([1, 2], 2), num_bins=2)
    assert counts == [1, 2] and means == [4.0, 4.0]
    with pytest.raises(ValueError, match="num_bins"):
        percentile_bins(values, _mask([1, 2], 2), num_bins=0)
    with pytest.raises(ValueError, match="right-padded"):
        percentile_bins(values, torch.tensor([[0, 1], [1, 1]]), num_bins=2)
    with pytest.raises(ValueError, match="shape"):
        percentile_bins(values[:, :1], _mask([1, 2], 2))


def test_binned_metrics_names() -> None:
    metrics = binned_metrics("kl", [0.5, math.nan], [3, 0])
    assert list(metrics) == ["train/kl_bin_00", "train/kl_bin_00_count", "train/kl_bin_01", "train/kl_bin_01_count"]
    assert metrics["train/kl_bin_00"] == 0.5 and metrics["train/kl_bin_01_count"] == 0.0

"""SPEC §4: group advantages (GRPO, Dr. GRPO), no-signal groups, GSPO's sequence log-ratio."""

from __future__ import annotations

import math

import pytest
import torch

from trainer.advantages import compute_group_advantages, groups_without_signal, sequence_log_ratio


def test_grpo_advantages_by_hand() -> None:
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 0.5, 2.0, 2.0, 3.0], dtype=torch.float64)
    groups = [0, 0, 0, 0, 1, 2, 2, 7]  # group 0 of 4, group 1 of size 1, group 2 all equal, group 7 of size 1
    out = compute_group_advantages(rewards, groups)
    # group 0: mean 0.5, unbiased std = sqrt(4 * 0.25 / 3) = sqrt(1/3)
    a = 0.5 / (math.sqrt(1.0 / 3.0) + 1e-6)
    assert out.tolist() == pytest.approx([a, -a, -a, a, 0.0, 0.0, 0.0, 0.0], rel=1e-12)
    assert out[4:].tolist() == [0.0, 0.0, 0.0, 0.0]  # exactly zero, not rounding noise
    assert out.dtype == torch.float64


def test_dr_grpo_has_no_std_normalisation() -> None:
    out = compute_group_advantages(torch.tensor([3.0, 1.0, 2.0, 5.0]), torch.tensor([4, 4, 4, 9]), normalize_std=False)
    assert out.tolist() == pytest.approx([1.0, -1.0, 0.0, 0.0])


def test_all_equal_group_is_exactly_zero_even_when_the_mean_rounds() -> None:
    # 0.1 summed three times is 0.30000000000000004; a naive (R - mean) / (0 + 1e-6) would not be 0.
    out = compute_group_advantages(torch.tensor([0.1, 0.1, 0.1], dtype=torch.float64), ["a", "a", "a"])
    assert out.tolist() == [0.0, 0.0, 0.0]


def test_group_ids_may_be_strings_or_tensors() -> None:
    rewards = torch.tensor([1.0, 0.0, 0.0, 0.5, 0.5, 1.0], dtype=torch.float64)
    by_str = compute_group_advantages(rewards, ["p1", "p2", "p1", "p2", "p1", "p2"])
    by_tensor = compute_group_advantages(rewards, torch.tensor([5, 6, 5, 6, 5, 6]))
    assert torch.equal(by_str, by_tensor)
    # each group holds {1, 0, 0.5}: mean 0.5, unbiased std 0.5 -> A = +-0.5 / (0.5 + 1e-6), 0
    a = 0.5 / (0.5 + 1e-6)
    assert by_str.tolist() == pytest.approx([a, -a, -a, 0.0, 0.0, a], rel=1e-12)
    assert by_str[3] == 0.0 and by_str[4] == 0.0


def test_integer_rewards_give_float64() -> None:
    out = compute_group_advantages(torch.tensor([1, 0]), [0, 0])
    assert out.dtype == torch.float64
    # mean 0.5, unbiased std sqrt(0.5) = 0.70710678: A = +-0.5 / 0.70710778 = +-0.70710578
    assert out.tolist() == pytest.approx([0.7071057811, -0.7071057811], rel=1e-9)


def test_bf16_log_ratio_gives_a_float32_sequence_mean() -> None:
    # 257 masked tokens: bf16 cannot hold 257 (it rounds to 256), so the count must not be cast to bf16.
    log_ratio = torch.full((1, 300), 0.5, dtype=torch.bfloat16)
    mask = torch.arange(300).unsqueeze(0) < 257
    out = sequence_log_ratio(log_ratio, mask)
    assert out.dtype == torch.float32 and out.tolist() == [0.5]


def test_bad_inputs_raise() -> None:
    with pytest.raises(ValueError, match="one group id per sample"):
        compute_group_advantages(torch.ones(3), [0, 0])
    with pytest.raises(ValueError, match="NaN"):
        compute_group_advantages(torch.tensor([1.0, math.nan]), [0, 0])
    with pytest.raises(ValueError, match="1-D"):
        compute_group_advantages(torch.ones(2, 2), [0, 0])


def test_groups_without_signal() -> None:
    rewards = torch.tensor([1.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.7])
    ids = ["a", "a", "b", "b", "c", "c", "d"]
    assert groups_without_signal(rewards, ids) == ["a", "c", "d"]


def test_sequence_log_ratio_is_the_masked_mean() -> None:
    log_ratio = torch.tensor([[0.2, 0.4, math.inf], [1.0, 2.0, 3.0]], requires_grad=True)
    mask = torch.tensor([[1, 1, 0], [0, 0, 0]])
    out = sequence_log_ratio(log_ratio, mask)
    assert out.tolist() == pytest.approx([0.3, 0.0])
    out.sum().backward()
    assert log_ratio.grad is not None
    assert log_ratio.grad.tolist() == [[0.5, 0.5, 0.0], [0.0, 0.0, 0.0]]

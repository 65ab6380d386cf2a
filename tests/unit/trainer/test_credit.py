"""SPEC §3: TP masks, forking masks, entropy-shaped advantages and the strategy entry point."""

from __future__ import annotations

import math

import pytest
import torch
from pydantic import ValidationError

from services.core.schedule import Phase
from trainer.credit import (
    CreditConfig,
    apply_credit_strategy,
    entropy_shaped_advantages,
    forking_mask,
    response_lengths,
    tp_loss_mask,
)


def _rows(mask: torch.Tensor) -> list[list[int]]:
    return mask.int().tolist()


def _close(actual: torch.Tensor, expected: list[list[float]]) -> None:
    torch.testing.assert_close(actual, torch.tensor(expected, dtype=actual.dtype))


def _phase(ratio: float) -> Phase:
    return Phase(step=1, progress=0.0, ratio=ratio, stage="anneal")


def _right_padded(lengths: list[int], width: int) -> torch.Tensor:
    return torch.arange(width).unsqueeze(0) < torch.tensor(lengths).unsqueeze(1)


# ---------------------------------------------------------------- tp (§3.1)


def test_tp_mask_hand_example() -> None:
    # L=4, r=0.5 -> k=2; L=3 -> floor(1.5)=1; L=1 -> min(0, 0)=0; L=0 -> nothing.
    mask = tp_loss_mask(torch.tensor([4, 3, 1, 0]), width=5, ratio=0.5)
    assert mask.dtype == torch.bool
    assert _rows(mask) == [[0, 0, 1, 1, 0], [0, 1, 1, 0, 0], [1, 0, 0, 0, 0], [0, 0, 0, 0, 0]]


def test_tp_ratio_zero_keeps_every_valid_token() -> None:
    lengths = torch.tensor([5, 2, 0])
    assert torch.equal(tp_loss_mask(lengths, 5, 0.0), _right_padded([5, 2, 0], 5))


def test_tp_ratio_close_to_one_keeps_the_last_token_only() -> None:
    mask = tp_loss_mask(torch.tensor([7, 1]), width=7, ratio=0.999)
    assert _rows(mask) == [[0, 0, 0, 0, 0, 0, 1], [1, 0, 0, 0, 0, 0, 0]]
    # r = 1 is a valid fraction too: still the last token (k capped at L - 1).
    assert _rows(tp_loss_mask(torch.tensor([3]), 3, 1.0)) == [[0, 0, 1]]


def test_tp_uses_the_float64_product_floor() -> None:
    # SPEC §3.1: floor(L * r) on the float64 product; 100 * 0.29 = 28.999999999999996, so 28 (not 29) are excluded.
    mask = tp_loss_mask(torch.tensor([100]), width=100, ratio=0.29)
    assert int((~mask[0]).sum()) == 28
    assert not bool(mask[0, :28].any()) and bool(mask[0, 28:].all())


@pytest.mark.parametrize("ratio", [-0.1, 1.1, math.nan, math.inf])
def test_tp_rejects_bad_ratio(ratio: float) -> None:
    with pytest.raises(ValueError, match="ratio"):
        tp_loss_mask(torch.tensor([3]), 3, ratio)


def test_tp_rejects_bad_lengths() -> None:
    with pytest.raises(ValueError, match="width"):
        tp_loss_mask(torch.tensor([4]), 3, 0.5)
    with pytest.raises(ValueError, match="width"):
        tp_loss_mask(torch.tensor([-1]), 3, 0.5)
    with pytest.raises(ValueError, match="1-D"):
        tp_loss_mask(torch.tensor([[2]]), 3, 0.5)
    with pytest.raises(ValueError, match="integer"):
        tp_loss_mask(torch.tensor([2.0]), 3, 0.5)


def test_response_lengths_rejects_holes_and_left_padding() -> None:
    assert response_lengths(torch.tensor([[1, 1, 0], [0, 0, 0]])).tolist() == [2, 0]
    with pytest.raises(ValueError, match=r"rows \[0\]"):
        response_lengths(torch.tensor([[1, 0, 1], [1, 0, 0]]))
    with pytest.raises(ValueError, match=r"rows \[1\]"):
        response_lengths(torch.tensor([[1, 0, 0], [0, 1, 1]]))
    with pytest.raises(ValueError, match="only 0 and 1"):
        response_lengths(torch.tensor([[1.0, 0.5]]))


# ---------------------------------------------------------------- forking (§3.2)


def test_forking_hand_example() -> None:
    entropy = torch.tensor([[0.1, 0.9, 0.5, 0.7, 9.0], [0.3, 0.2, 0.1, 0.0, 0.0]])
    valid = _right_padded([4, 3], 5)
    # n=4, tau=0.5 -> 2 tokens (0.9, 0.7); n=3 -> ceil(1.5)=2 tokens (0.3, 0.2). The padded 9.0 is never picked.
    assert _rows(forking_mask(entropy, valid, 0.5)) == [[0, 1, 0, 1, 0], [1, 1, 0, 0, 0]]


def test_forking_ties_go_to_the_earlier_position() -> None:
    entropy = torch.tensor([[1.0, 2.0, 2.0, 2.0, 1.0]])
    valid = torch.ones(1, 5, dtype=torch.bool)
    assert _rows(forking_mask(entropy, valid, 0.4)) == [[0, 1, 1, 0, 0]]
    assert _rows(forking_mask(torch.zeros(1, 5), valid, 0.4)) == [[1, 1, 0, 0, 0]]


def test_forking_never_selects_invalid_tokens_even_with_holes() -> None:
    entropy = torch.tensor([[5.0, 4.0, 3.0, 2.0]])
    valid = torch.tensor([[0, 1, 0, 1]])  # forking_mask itself accepts any valid mask
    assert _rows(forking_mask(entropy, valid, 1.0)) == [[0, 1, 0, 1]]
    assert _rows(forking_mask(entropy, valid, 0.5)) == [[0, 1, 0, 0]]


def test_forking_edge_ratios() -> None:
    entropy = torch.tensor([[0.3, 0.1, 0.2], [0.0, 0.0, 0.0]])
    valid = _right_padded([3, 0], 3)
    assert _rows(forking_mask(entropy, valid, 0.0)) == [[0, 0, 0], [0, 0, 0]]  # ceil(n * 0) = 0: no token
    assert _rows(forking_mask(entropy, valid, -0.5)) == [[0, 0, 0], [0, 0, 0]]  # clamped to 0
    assert _rows(forking_mask(entropy, valid, 1.0)) == [[1, 1, 1], [0, 0, 0]]
    assert _rows(forking_mask(entropy, valid, 7.0)) == [[1, 1, 1], [0, 0, 0]]  # clamped to 1
    assert _rows(forking_mask(entropy, valid, 0.01)) == [[1, 0, 0], [0, 0, 0]]  # ceil(0.03) = 1
    with pytest.raises(ValueError, match="NaN"):
        forking_mask(entropy, valid, math.nan)


def test_forking_budget_is_float64_ceil() -> None:
    # tau = 1 - 0.99 = 0.010000000000000009 in float64, so n = 100 gives ceil(1.0000000000000009) = 2.
    entropy = torch.arange(100, dtype=torch.float32).unsqueeze(0)
    assert int(forking_mask(entropy, torch.ones(1, 100), 1.0 - 0.99).sum()) == 2


def test_forking_rejects_non_finite_entropy_on_valid_tokens() -> None:
    valid = _right_padded([2], 3)
    assert _rows(forking_mask(torch.tensor([[1.0, 2.0, math.nan]]), valid, 0.5)) == [[0, 1, 0]]
    with pytest.raises(ValueError, match="finite"):
        forking_mask(torch.tensor([[math.nan, 2.0, 0.0]]), valid, 0.5)


# ---------------------------------------------------------------- entropy-shaped advantages (§3.3)


def test_entropy_shaped_advantages_by_hand() -> None:
    adv = torch.tensor([[1.0, 1.0, -1.0, 2.0]])
    entropy = torch.tensor([[0.5, 3.0, 3.0, 9.0]])
    mask = torch.tensor([[1, 1, 1, 0]])
    out = entropy_shaped_advantages(adv, entropy, mask, scale=0.5, alpha=0.4, kappa=2.0)
    # psi = min(0.4 H, |A| / 2): 0.2, 0.5, 0.5; A' = A + 0.5 psi; masked token -> 0.
    _close(out, [[1.1, 1.25, -0.75, 0.0]])


def test_entropy_shaped_advantages_broadcasts_sequence_advantages_and_detaches_entropy() -> None:
    entropy = torch.tensor([[1.0, 0.0]], requires_grad=True)
    out = entropy_shaped_advantages(torch.tensor([4.0]), entropy, torch.ones(1, 2), scale=1.0)
    _close(out, [[4.4, 4.0]])
    assert not out.requires_grad


@pytest.mark.parametrize("kappa", [0.0, -1.0, math.nan])
def test_entropy_shaped_advantages_rejects_bad_kappa(kappa: float) -> None:
    with pytest.raises(ValueError, match="kappa"):
        entropy_shaped_advantages(torch.ones(1), torch.ones(1, 1), torch.ones(1, 1), scale=1.0, kappa=kappa)


@pytest.mark.parametrize("alpha", [-0.4, -1e-9, math.inf])
def test_entropy_shaped_advantages_rejects_bad_alpha(alpha: float) -> None:
    with pytest.raises(ValueError, match="alpha"):
        entropy_shaped_advantages(torch.ones(1), torch.ones(1, 1), torch.ones(1, 1), scale=1.0, alpha=alpha)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_entropy_shaped_advantages_rejects_non_finite_entropy_on_masked_tokens(bad: float) -> None:
    mask = torch.tensor([[1, 1, 0]])
    out = entropy_shaped_advantages(torch.ones(1), torch.tensor([[1.0, 0.5, bad]]), mask, scale=1.0)
    _close(out, [[1.4, 1.2, 0.0]])  # off the mask anything goes
    with pytest.raises(ValueError, match="finite"):
        entropy_shaped_advantages(torch.ones(1), torch.tensor([[bad, 0.5, 1.0]]), mask, scale=1.0)


def test_entropy_shaped_advantages_clamps_round_off_negative_entropy_at_zero() -> None:
    entropy = torch.tensor([[-1e-7, -3e-12, 0.0]], dtype=torch.float64)
    out = entropy_shaped_advantages(torch.tensor([1.0], dtype=torch.float64), entropy, torch.ones(1, 3), scale=1.0)
    assert out.tolist() == [[1.0, 1.0, 1.0]]  # psi = min(alpha * max(H, 0), |A| / kappa) = 0, exactly


# ---------------------------------------------------------------- entry point


def test_apply_credit_strategy_per_strategy() -> None:
    response_mask = _right_padded([4, 2], 4)
    adv = torch.tensor([1.0, -2.0])
    entropy = torch.tensor([[0.1, 0.4, 0.3, 0.2], [0.5, 0.6, 9.0, 9.0]])
    kwargs = {"advantages": adv, "response_mask": response_mask, "entropy": entropy}

    none = apply_credit_strategy(CreditConfig(strategy="none"), _phase(0.5), **kwargs)
    assert torch.equal(none.loss_mask, response_mask)
    assert none.advantages.tolist() == [[1.0, 1.0, 1.0, 1.0], [-2.0, -2.0, 0.0, 0.0]]

    tp = apply_credit_strategy(CreditConfig(strategy="tp"), _phase(0.5), **kwargs)
    assert _rows(tp.loss_mask) == [[0, 0, 1, 1], [0, 1, 0, 0]]
    assert tp.advantages.tolist() == [[0.0, 0.0, 1.0, 1.0], [0.0, -2.0, 0.0, 0.0]]
    assert tp.metrics["train/credit_ratio"] == 0.5

    forking = apply_credit_strategy(CreditConfig(strategy="forking"), _phase(0.75), **kwargs)
    assert _rows(forking.loss_mask) == [[0, 1, 0, 0], [0, 1, 0, 0]]  # tau = 0.25: ceil(1.0), ceil(0.5)
    assert forking.metrics["train/forking_token_ratio"] == 0.25

    shaped = apply_credit_strategy(CreditConfig(strategy="entropy_adv"), _phase(1.0), **kwargs)
    assert torch.equal(shaped.loss_mask, response_mask)
    expected = [[1.04, 1.16, 1.12, 1.08], [-2.0 + 0.2, -2.0 + 0.24, 0.0, 0.0]]
    _close(shaped.advantages, expected)


@pytest.mark.parametrize("strategy", ["forking", "entropy_adv"])
def test_entropy_strategies_need_entropy(strategy: str) -> None:
    with pytest.raises(ValueError, match="entropy"):
        apply_credit_strategy(
            CreditConfig(strategy=strategy),
            _phase(0.5),
            advantages=torch.ones(1),
            response_mask=torch.ones(1, 2),
        )


def test_unknown_strategy_lists_the_valid_ones() -> None:
    with pytest.raises(ValidationError, match="tp"):
        CreditConfig(strategy="nope")
    bypassed = CreditConfig.model_construct(strategy="nope")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="none, tp, forking, entropy_adv"):
        apply_credit_strategy(bypassed, _phase(0.5), advantages=torch.ones(1), response_mask=torch.ones(1, 2))


def test_credit_config_is_strict() -> None:
    with pytest.raises(ValidationError):
        CreditConfig(strategy="tp", surprise=1)  # type: ignore[call-arg]
    with pytest.raises(ValidationError):
        CreditConfig(entropy_kappa=0.0)


def test_tp_strategy_rejects_masks_with_holes() -> None:
    with pytest.raises(ValueError, match="right-padded"):
        apply_credit_strategy(
            CreditConfig(strategy="tp"), _phase(0.5), advantages=torch.ones(1), response_mask=torch.tensor([[1, 0, 1]])
        )


def test_entropy_static_scale_replaces_the_schedule_value() -> None:
    """Table 1's static Entropy-Adv baseline: scale 1 whatever the phase (the schedule itself needs m0 < 1)."""
    kwargs = {
        "advantages": torch.tensor([1.0]),
        "response_mask": torch.ones(1, 2),
        "entropy": torch.tensor([[0.1, 5.0]]),
    }
    static = CreditConfig(strategy="entropy_adv", entropy_static_scale=1.0)
    got = apply_credit_strategy(static, _phase(0.3), **kwargs)
    _close(got.advantages, [[1.0 + 0.04, 1.0 + 0.5]])  # psi = min(0.4 H, |A| / 2)
    scheduled = apply_credit_strategy(CreditConfig(strategy="entropy_adv"), _phase(0.3), **kwargs)
    _close(scheduled.advantages, [[1.0 + 0.3 * 0.04, 1.0 + 0.3 * 0.5]])
    with pytest.raises(ValidationError, match="only applies to strategy 'entropy_adv'"):
        CreditConfig(strategy="tp", entropy_static_scale=1.0)

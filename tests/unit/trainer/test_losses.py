"""SPEC §4 policy loss: every aggregation against hand arithmetic, clip boundaries, KL/entropy terms, validation."""

from __future__ import annotations

import math

import pytest
import torch
from pydantic import ValidationError

from trainer.losses import (
    PolicyLossConfig,
    aggregate_loss,
    clipped_surrogate,
    compute_policy_loss,
    loss_denominator,
)

F64 = torch.float64
LOG = math.log


def _example() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Row 0: A=+1, ratios 1.1 (kept), 1.5 (clipped high), 0.5 (kept: no lower clip for A > 0).
    Row 1: A=-2, ratios 0.7 (clipped low to 0.8), 4.0 (dual-clipped to 3), then a response token off the loss mask
    whose old log-prob is -inf."""
    old = torch.tensor([[-1.0, -2.0, -0.5], [-1.5, -3.0, -math.inf]], dtype=F64)
    log_ratio = torch.tensor([[LOG(1.1), LOG(1.5), LOG(0.5)], [LOG(0.7), LOG(4.0), 0.0]], dtype=F64)
    logprobs = (old.nan_to_num(neginf=-1.0) + log_ratio).requires_grad_(True)
    advantages = torch.tensor([1.0, -2.0], dtype=F64)
    loss_mask, response_mask = torch.tensor([[1, 1, 1], [1, 1, 0]]), torch.ones(2, 3)
    return logprobs, old, advantages, loss_mask, response_mask


# hand-computed per-token losses of _example: -A * used_ratio
ROW0 = [-1.1, -1.28, -0.5]
ROW1 = [2 * 0.8, 2 * 3.0]


@pytest.mark.parametrize(
    ("aggregation", "norm_length", "expected"),
    [
        ("token-mean", None, (sum(ROW0) + sum(ROW1)) / 5),
        ("seq-mean-token-mean", None, (sum(ROW0) / 3 + sum(ROW1) / 2) / 2),
        ("seq-mean-token-sum-norm", 4, (sum(ROW0) / 4 + sum(ROW1) / 4) / 2),
    ],
)
def test_aggregations_by_hand(aggregation: str, norm_length: int | None, expected: float) -> None:
    config = PolicyLossConfig(aggregation=aggregation, norm_length=norm_length)
    out = compute_policy_loss(*_example(), config)
    assert out.loss.item() == pytest.approx(expected, rel=1e-12)
    assert out.metrics["train/pg_loss"] == pytest.approx(expected, rel=1e-12)


def test_token_mean_gradient_and_metrics_by_hand() -> None:
    inputs = _example()
    out = compute_policy_loss(*inputs, PolicyLossConfig())
    out.loss.backward()
    # d/d logprob of -A * ratio is -A * ratio; clipped tokens get 0; divided by the 5 masked tokens.
    expected = [[-1.1 / 5, 0.0, -0.5 / 5], [0.0, 0.0, 0.0]]
    grad = inputs[0].grad
    assert grad is not None
    torch.testing.assert_close(grad, torch.tensor(expected, dtype=F64))
    assert grad[1, 2].item() == 0.0 and math.isfinite(out.loss.item())
    assert out.metrics["train/clip_fraction_high"] == pytest.approx(1 / 5)
    assert out.metrics["train/clip_fraction_low"] == pytest.approx(1 / 5)
    assert out.metrics["train/clip_fraction_dual"] == pytest.approx(1 / 5)
    assert out.metrics["train/optimized_token_fraction"] == pytest.approx(5 / 6)
    ratios = [1.1, 1.5, 0.5, 0.7, 4.0]
    assert out.metrics["train/approx_kl"] == pytest.approx(sum(r - 1 - math.log(r) for r in ratios) / 5)


def _surrogate_grad(log_ratio: float, advantage: float, **clip: float | None) -> tuple[float, dict[str, bool]]:
    x = torch.tensor([[log_ratio]], dtype=F64, requires_grad=True)
    params = {"eps_low": 0.2, "eps_high": 0.28, "dual_clip_c": 3.0, **clip}
    loss, flags = clipped_surrogate(x, torch.tensor([[advantage]], dtype=F64), **params)  # type: ignore[arg-type]
    loss.sum().backward()
    assert x.grad is not None
    return float(x.grad), {name: bool(flag) for name, flag in flags.items()}


def test_clip_higher_boundary() -> None:
    bound = math.exp(0.2)
    eps_high = bound - 1.0  # exact (Sterbenz), so 1 + eps_high == exp(0.2) bit for bit
    grad, flags = _surrogate_grad(0.2, 1.0, eps_high=eps_high)
    assert grad == pytest.approx(-bound) and not flags["high"]  # at the bound: still optimized
    grad, flags = _surrogate_grad(0.2 + 1e-9, 1.0, eps_high=eps_high)
    assert grad == 0.0 and flags["high"]  # beyond it: clipped
    grad, flags = _surrogate_grad(LOG(5.0), 1.0)
    assert grad == 0.0 and flags["high"] and not flags["dual"]  # dual-clip is for negative advantages only


def test_lower_clip_boundary_and_negative_advantages_above_one() -> None:
    bound = math.exp(-0.2)
    eps_low = 1.0 - bound  # exact, so 1 - eps_low == exp(-0.2)
    grad, flags = _surrogate_grad(-0.2, -1.0, eps_low=eps_low)
    assert grad == pytest.approx(bound) and not flags["low"]
    grad, flags = _surrogate_grad(-0.2 - 1e-9, -1.0, eps_low=eps_low)
    assert grad == 0.0 and flags["low"]
    grad, flags = _surrogate_grad(LOG(2.0), -1.0)  # A < 0, 1.28 < ratio < c: PPO does not clip
    assert grad == pytest.approx(2.0) and not any(flags.values())


def test_dual_clip_boundary_and_switch() -> None:
    c = math.exp(1.1)  # the ratio at log-ratio 1.1, bit for bit
    grad, flags = _surrogate_grad(1.1, -1.0, dual_clip_c=c)
    assert grad == pytest.approx(c) and not flags["dual"]
    grad, flags = _surrogate_grad(1.1 + 1e-9, -1.0, dual_clip_c=c)
    assert grad == 0.0 and flags["dual"]
    grad, flags = _surrogate_grad(LOG(4.0), -1.0, dual_clip_c=None)
    assert grad == pytest.approx(4.0) and not flags["dual"]


def test_zero_advantage_is_never_clipped() -> None:
    grad, flags = _surrogate_grad(LOG(9.0), 0.0)
    assert grad == 0.0 and not any(flags.values())


def test_gspo_sequence_ratio_by_hand() -> None:
    old = torch.zeros(2, 3, dtype=F64)
    logprobs = torch.tensor([[0.1, 0.3, 0.0], [0.5, 0.3, 7.0]], dtype=F64, requires_grad=True)
    mask = torch.tensor([[1, 1, 0], [1, 1, 0]])
    config = PolicyLossConfig(aggregation="seq-mean-token-mean", ratio_level="sequence")
    out = compute_policy_loss(logprobs, old, torch.tensor([1.0, 1.0], dtype=F64), mask, mask, config)
    # row 0: s = 0.2, exp(0.2) < 1.28 kept; row 1: s = 0.4, exp(0.4) > 1.28 clipped for the whole sequence.
    assert out.loss.item() == pytest.approx((-math.exp(0.2) - 1.28) / 2, rel=1e-12)
    out.loss.backward()
    g = -math.exp(0.2) / 2 / 2  # d exp(s)/d lp_t = exp(s) / n_tokens; then mean over 2 sequences
    assert logprobs.grad is not None
    torch.testing.assert_close(logprobs.grad, torch.tensor([[g, g, 0.0], [0.0, 0.0, 0.0]], dtype=F64))
    assert out.metrics["train/clip_fraction_high"] == pytest.approx(0.5)


@pytest.mark.parametrize("estimator", ["k1", "k3"])
def test_kl_penalty_by_hand(estimator: str) -> None:
    logprobs = torch.tensor([[-1.0, -2.0]], dtype=F64, requires_grad=True)
    ref = torch.tensor([[-1.5, -1.0]], dtype=F64)
    config = PolicyLossConfig(kl_coef=0.1, kl_estimator=estimator)
    mask = torch.ones(1, 2)
    out = compute_policy_loss(
        logprobs, logprobs.detach(), torch.zeros(1, dtype=F64), mask, mask, config, ref_logprobs=ref
    )
    xs = [0.5, -1.0]  # log pi - log ref
    kl = xs if estimator == "k1" else [math.exp(-x) - 1 + x for x in xs]
    assert out.loss.item() == pytest.approx(0.1 * sum(kl) / 2, rel=1e-12)
    assert out.metrics["train/kl_ref"] == pytest.approx(sum(kl) / 2, rel=1e-12)


def test_entropy_bonus_by_hand() -> None:
    logprobs = torch.zeros(1, 3, dtype=F64, requires_grad=True)
    entropy = torch.tensor([[1.0, 2.0, 100.0]], dtype=F64, requires_grad=True)
    loss_mask, response_mask = torch.tensor([[1, 1, 0]]), torch.ones(1, 3)
    config = PolicyLossConfig(entropy_coef=0.01)
    out = compute_policy_loss(
        logprobs, logprobs.detach(), torch.zeros(1, dtype=F64), loss_mask, response_mask, config, entropy=entropy
    )
    assert out.loss.item() == pytest.approx(-0.01 * 1.5, rel=1e-12)
    out.loss.backward()
    assert entropy.grad is not None
    assert entropy.grad[0].tolist() == pytest.approx([-0.005, -0.005, 0.0])


def test_empty_batch_gives_zero_loss_and_zero_gradient() -> None:
    logprobs = torch.zeros(2, 2, requires_grad=True)
    mask = torch.zeros(2, 2)
    out = compute_policy_loss(logprobs, logprobs.detach(), torch.ones(2), mask, mask, PolicyLossConfig())
    out.loss.backward()
    assert out.loss.item() == 0.0 and logprobs.grad is not None and not bool(logprobs.grad.any())
    assert out.metrics["train/clip_fraction_high"] == 0.0 and out.metrics["train/optimized_token_fraction"] == 0.0


def test_loss_denominator_per_aggregation() -> None:
    mask = torch.tensor([[1, 1, 0], [0, 0, 0], [1, 0, 0]])
    assert loss_denominator(mask, "token-mean") == 3
    assert loss_denominator(mask, "seq-mean-token-mean") == 2
    assert loss_denominator(mask, "seq-mean-token-sum-norm") == 3
    with pytest.raises(ValueError, match="token-mean, seq-mean-token-mean, seq-mean-token-sum-norm"):
        loss_denominator(mask, "sum")


@pytest.mark.parametrize(
    "kwargs",
    [
        {"dual_clip_c": 1.0},
        {"dual_clip_c": 0.5},
        {"clip_eps_low": -0.1},
        {"clip_eps_low": 1.0},
        {"clip_eps_high": -0.01},
        {"clip_eps_high": math.inf},
        {"aggregation": "mean"},
        {"ratio_level": "sequence"},  # GSPO needs seq-mean-token-mean
        {"aggregation": "seq-mean-token-sum-norm"},  # needs norm_length
        {"norm_length": 128},  # has no effect under token-mean
        {"kl_coef": -1.0},
        {"kl_estimator": "k2"},
        {"surprise": True},
    ],
)
def test_config_validation(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        PolicyLossConfig(**kwargs)


def test_input_validation() -> None:
    lp, mask = torch.zeros(1, 2, requires_grad=True), torch.ones(1, 2)
    cfg = PolicyLossConfig()
    with pytest.raises(ValueError, match="outside response_mask"):
        compute_policy_loss(lp, lp.detach(), torch.ones(1), mask, torch.tensor([[1, 0]]), cfg)
    with pytest.raises(ValueError, match="advantages"):
        compute_policy_loss(lp, lp.detach(), torch.ones(3), mask, mask, cfg)
    with pytest.raises(ValueError, match="ref_logprobs"):
        compute_policy_loss(lp, lp.detach(), torch.ones(1), mask, mask, PolicyLossConfig(kl_coef=0.1))
    with pytest.raises(ValueError, match="entropy"):
        compute_policy_loss(lp, lp.detach(), torch.ones(1), mask, mask, PolicyLossConfig(entropy_coef=0.1))
    with pytest.raises(ValueError, match="denominator"):
        compute_policy_loss(lp, lp.detach(), torch.ones(1), mask, mask, cfg, denominator=1)
    with pytest.raises(ValueError, match="only 0 and 1"):
        compute_policy_loss(lp, lp.detach(), torch.ones(1), mask * 0.5, mask, cfg)
    with pytest.raises(ValueError, match="norm_length"):
        aggregate_loss(torch.zeros(1, 2), mask, "seq-mean-token-sum-norm")

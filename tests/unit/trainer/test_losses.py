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
    policy_loss_denominator,
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
    # k3 of KL(old || new) per token, r - 1 - ln r worked out for r = 1.1, 1.5, 0.5, 0.7, 4.0:
    # 0.0046898, 0.0945349, 0.1931472, 0.0566749, 1.6137056; their mean:
    assert out.metrics["train/approx_kl"] == pytest.approx(0.39255049509325957, rel=1e-12)
    assert out.counts == {
        "loss_tokens": 5,
        "valid_tokens": 6,
        "sequences": 2,
        "loss_sequences": 2,
        "clip_high": 1,
        "clip_low": 1,
        "clip_dual": 1,
    }


def test_seq_mean_token_sum_norm_gradient_by_hand() -> None:
    inputs = _example()
    out = compute_policy_loss(*inputs, PolicyLossConfig(aggregation="seq-mean-token-sum-norm", norm_length=4))
    out.loss.backward()
    # d/d logprob of -A * ratio / norm_length, mean over 2 sequences; row 1's tokens are clipped (low, dual).
    grad = inputs[0].grad
    assert grad is not None
    torch.testing.assert_close(grad, torch.tensor([[-1.1 / 8, 0.0, -0.5 / 8], [0.0, 0.0, 0.0]], dtype=F64))


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


@pytest.mark.parametrize("dual_clip_c", [3.0, None])
def test_gspo_negative_advantages_and_dual_clip_by_hand(dual_clip_c: float | None) -> None:
    # All A = -1. Sequence log-ratios (mean over the masked tokens): 1.3 (ratio 3.669 > c = 3: dual-clipped),
    # 0.7 (ratio 2.014, inside [0.8, 3]: kept), -0.7 (ratio 0.497 < 1 - 0.2: clipped low).
    logprobs = torch.tensor([[1.2, 1.4, 0.0], [0.6, 0.8, 9.0], [-0.9, -0.5, 0.0]], dtype=F64, requires_grad=True)
    mask = torch.tensor([[1, 1, 0], [1, 1, 0], [1, 1, 0]])
    config = PolicyLossConfig(aggregation="seq-mean-token-mean", ratio_level="sequence", dual_clip_c=dual_clip_c)
    out = compute_policy_loss(logprobs, torch.zeros(3, 3, dtype=F64), -torch.ones(3, dtype=F64), mask, mask, config)
    e07, e13 = 2.0137527074704766, 3.6692966676192444
    first = 3.0 if dual_clip_c is not None else e13
    assert out.loss.item() == pytest.approx((first + e07 + 0.8) / 3, rel=1e-12)
    out.loss.backward()
    g0 = 0.0 if dual_clip_c is not None else e13 / 2 / 3  # d(-A e^s)/d lp_t = e^s / n_tokens, mean over 3
    expected = [[g0, g0, 0.0], [e07 / 6, e07 / 6, 0.0], [0.0, 0.0, 0.0]]
    assert logprobs.grad is not None
    torch.testing.assert_close(logprobs.grad, torch.tensor(expected, dtype=F64))
    assert out.counts["clip_dual"] == (2 if dual_clip_c is not None else 0)
    assert out.counts["clip_low"] == 2 and out.counts["clip_high"] == 0


@pytest.mark.parametrize("estimator", ["k1", "k3"])
def test_kl_penalty_by_hand(estimator: str) -> None:
    logprobs = torch.tensor([[-1.0, -2.0]], dtype=F64, requires_grad=True)
    ref = torch.tensor([[-1.5, -1.0]], dtype=F64)
    config = PolicyLossConfig(kl_coef=0.1, kl_estimator=estimator)
    mask = torch.ones(1, 2)
    out = compute_policy_loss(
        logprobs, logprobs.detach(), torch.zeros(1, dtype=F64), mask, mask, config, ref_logprobs=ref
    )
    # x = log pi - log ref = 0.5, -1.0; k1 = x; k3 = e^-x - 1 + x = 0.1065306597, e - 2 = 0.7182818285
    kl = [0.5, -1.0] if estimator == "k1" else [0.10653065971263342, 0.7182818284590451]
    assert out.loss.item() == pytest.approx(0.1 * sum(kl) / 2, rel=1e-12)
    assert out.metrics["train/kl_ref"] == pytest.approx(sum(kl) / 2, rel=1e-12)


@pytest.mark.parametrize(
    ("estimator", "expected"),
    # d k1/d lp = 1 and d k3/d lp = 1 - e^-x (x = 0.5, -1.0), times kl_coef / tokens = 0.1 / 2
    [("k1", [0.05, 0.05]), ("k3", [0.01967346701436833, -0.08591409142295225])],
)
def test_kl_gradient_by_hand(estimator: str, expected: list[float]) -> None:
    logprobs = torch.tensor([[-1.0, -2.0]], dtype=F64, requires_grad=True)
    ref = torch.tensor([[-1.5, -1.0]], dtype=F64)
    config = PolicyLossConfig(kl_coef=0.1, kl_estimator=estimator)
    mask = torch.ones(1, 2)
    out = compute_policy_loss(
        logprobs, logprobs.detach(), torch.zeros(1, dtype=F64), mask, mask, config, ref_logprobs=ref
    )
    out.loss.backward()
    assert logprobs.grad is not None
    assert logprobs.grad[0].tolist() == pytest.approx(expected, rel=1e-12)


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
    assert loss_denominator(mask, "seq-mean-token-mean", seq_mean_denominator="all_sequences") == 3
    with pytest.raises(ValueError, match="token-mean, seq-mean-token-mean, seq-mean-token-sum-norm"):
        loss_denominator(mask, "sum")
    with pytest.raises(ValueError, match="masked_sequences, all_sequences"):
        loss_denominator(mask, "seq-mean-token-mean", seq_mean_denominator="rows")


def test_seq_mean_denominator_is_configurable() -> None:
    """masked_sequences (OpenRLHF, default) or all_sequences (verl): the row with no masked token counts or not."""
    values = torch.tensor([[1.0, 3.0, 0.0], [5.0, 5.0, 5.0], [4.0, 0.0, 0.0]], dtype=F64)
    mask = torch.tensor([[1, 1, 0], [0, 0, 0], [1, 0, 0]])
    per_seq = [2.0, 4.0]  # row 1 contributes 0 either way
    assert aggregate_loss(values, mask, "seq-mean-token-mean").item() == sum(per_seq) / 2
    got = aggregate_loss(values, mask, "seq-mean-token-mean", seq_mean_denominator="all_sequences")
    assert got.item() == sum(per_seq) / 3
    config = PolicyLossConfig(aggregation="seq-mean-token-mean", seq_mean_denominator="all_sequences")
    assert policy_loss_denominator(mask, config) == 3
    assert policy_loss_denominator(mask, PolicyLossConfig(aggregation="seq-mean-token-mean")) == 2
    assert policy_loss_denominator(mask, PolicyLossConfig()) == 3


def test_denominator_may_be_pre_compensated_but_must_be_positive_and_finite() -> None:
    values, mask = torch.tensor([[1.0, 2.0]], dtype=F64), torch.ones(1, 2)
    assert aggregate_loss(values, mask, "token-mean", denominator=0.5).item() == 6.0  # below the local count
    for bad in (0.0, -1.0, math.nan, math.inf):
        with pytest.raises(ValueError, match="denominator"):
            aggregate_loss(values, mask, "token-mean", denominator=bad)


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
        {"seq_mean_denominator": "rows"},
        {"seq_mean_denominator": "all_sequences"},  # only applies to seq-mean-token-mean
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
        compute_policy_loss(lp, lp.detach(), torch.ones(1), mask, mask, cfg, denominator=0)
    with pytest.raises(ValueError, match="loss_scale"):
        compute_policy_loss(lp, lp.detach(), torch.ones(1), mask, mask, cfg, loss_scale=math.nan)
    with pytest.raises(ValueError, match="only 0 and 1"):
        compute_policy_loss(lp, lp.detach(), torch.ones(1), mask * 0.5, mask, cfg)
    with pytest.raises(ValueError, match="norm_length"):
        aggregate_loss(torch.zeros(1, 2), mask, "seq-mean-token-sum-norm")

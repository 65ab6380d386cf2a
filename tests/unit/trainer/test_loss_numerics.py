"""SPEC §4 loss numerics: log-ratio and KL clamps, GSPO's per-sequence ratio bit for bit, float32 under bf16 inputs."""

from __future__ import annotations

import math

import pytest
import torch

import trainer.losses as losses
from services.core.config import PolicyLossConfig
from trainer.advantages import sequence_log_ratio
from trainer.losses import aggregate_loss, compute_policy_loss, kl_divergence

INF = math.inf
GSPO = PolicyLossConfig(aggregation="seq-mean-token-mean", ratio_level="sequence")
CONFIGS = [
    PolicyLossConfig(),
    PolicyLossConfig(dual_clip_c=None),
    PolicyLossConfig(aggregation="seq-mean-token-sum-norm", norm_length=4),
    GSPO,
    GSPO.model_copy(update={"dual_clip_c": None}),
]


def _extreme(dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Row 0 (A = +1): log-prob -1e4, an old log-prob of -inf on a masked-in token, a +100 log-ratio.
    Row 1 (A = 0): the same garbage. Row 2 (A = -1): +100 and -1e4 log-ratios (dual-clip territory)."""
    logprobs = torch.tensor([[-1e4, -0.5, -0.1, -1.0], [-1e4, -0.5, -0.1, -1.0], [-0.1, -1e4, -2.0, -1.0]])
    old = torch.tensor([[-1.0, -INF, -100.1, -1.0], [-1.0, -INF, -100.1, -1.0], [-100.1, -1.0, -2.0, -1.0]])
    ref = torch.tensor([[-0.5, -1e4, -INF, -1.0], [-0.5, -1e4, -INF, -1.0], [-1e4, -0.5, -2.0, -1.0]])
    return {
        "logprobs": logprobs.to(dtype).requires_grad_(True),
        "old": old.to(dtype),
        "ref": ref.to(dtype),
        "advantages": torch.tensor([1.0, 0.0, -1.0], dtype=dtype),
        "mask": torch.ones(3, 4, dtype=torch.bool),
    }


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("kl", [None, "k1", "k3"])
def test_extreme_log_ratios_give_finite_loss_gradient_and_metrics(
    dtype: torch.dtype, config: PolicyLossConfig, kl: str | None
) -> None:
    d = _extreme(dtype)
    if kl is not None:
        config = config.model_copy(update={"kl_coef": 0.1, "kl_estimator": kl})
    out = compute_policy_loss(
        d["logprobs"], d["old"], d["advantages"], d["mask"], d["mask"], config, ref_logprobs=d["ref"]
    )
    out.loss.backward()
    assert math.isfinite(out.loss.item())
    assert d["logprobs"].grad is not None and bool(torch.isfinite(d["logprobs"].grad).all())
    assert all(math.isfinite(value) for value in out.metrics.values()), out.metrics
    if kl is None:  # without a KL term, the zero-advantage row contributes exactly nothing
        assert not bool(d["logprobs"].grad[1].any())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("config", CONFIGS)
def test_zero_advantage_tokens_contribute_exactly_zero(dtype: torch.dtype, config: PolicyLossConfig) -> None:
    d = _extreme(dtype)
    lp = d["logprobs"].detach()[1:2].clone().requires_grad_(True)
    out = compute_policy_loss(lp, d["old"][1:2], torch.zeros(1, dtype=dtype), d["mask"][1:2], d["mask"][1:2], config)
    out.loss.backward()
    assert out.loss.item() == 0.0 and lp.grad is not None and not bool(lp.grad.any())


def test_log_ratio_is_clamped_before_exp() -> None:
    # A < 0 without dual-clip keeps the raw ratio: a log-ratio of 25 is used as LOG_RATIO_CLAMP = 20, no gradient.
    assert losses.LOG_RATIO_CLAMP == 20.0
    lp = torch.tensor([[25.0, 19.0]], dtype=torch.float64, requires_grad=True)
    config = PolicyLossConfig(dual_clip_c=None)
    mask = torch.tensor([[1, 0]])
    out = compute_policy_loss(lp, torch.zeros(1, 2, dtype=torch.float64), torch.tensor([-1.0]), mask, mask, config)
    assert out.loss.item() == pytest.approx(math.exp(20.0), rel=1e-15)
    out.loss.backward()
    assert lp.grad is not None and lp.grad.tolist() == [[0.0, 0.0]]


def test_kl_estimators_are_clamped() -> None:
    assert losses.KL_CLAMP == 10.0
    x = torch.tensor([-1e4, -30.0, 0.5, 1e4, INF, -INF], requires_grad=True)
    k3 = kl_divergence(x, "k3")
    # k3 = e^-x - 1 + x >= 0; clamped to KL_CLAMP (verl's [-10, 10]) after clamping x to +-LOG_RATIO_CLAMP.
    assert k3.tolist() == pytest.approx([10.0, 10.0, 0.10653065971263342, 10.0, 10.0, 10.0], rel=1e-6)
    k1 = kl_divergence(x, "k1")
    assert k1.tolist() == pytest.approx([-20.0, -20.0, 0.5, 20.0, 20.0, -20.0])
    (k1.sum() + k3.sum()).backward()
    assert x.grad is not None and bool(torch.isfinite(x.grad).all())


# ---------------------------------------------------------------- GSPO: one ratio per sequence, bit for bit


def _realistic_float32(seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    logprobs = -20.0 - 20.0 * torch.rand(4, 64, generator=g)  # ~ -30, across the float32 binade at 32
    old = logprobs + 0.02 * (torch.rand(4, 64, generator=g) - 0.5)
    mask = torch.arange(64).unsqueeze(0) < torch.tensor([[64], [63], [17], [1]])
    return logprobs, old, mask


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_gspo_every_token_of_a_sequence_sees_the_same_ratio(seed: int) -> None:
    logprobs, old, mask = _realistic_float32(seed)
    log_ratio, _ = losses._policy_log_ratio(logprobs.requires_grad_(True), old, mask, "sequence")
    for row in range(4):
        values = log_ratio[row][mask[row]]
        assert bool((values == values[0]).all()), f"row {row}: {values.unique().tolist()}"
    # Observable consequence: with one advantage per sequence and no clipping, every token gets the same gradient.
    lp = logprobs.detach().clone().requires_grad_(True)
    out = compute_policy_loss(lp, old, torch.tensor([1.0, -1.0, 0.5, -0.5]), mask, mask, GSPO)
    out.loss.backward()
    assert lp.grad is not None
    for row in range(4):
        grads = lp.grad[row][mask[row]]
        assert bool((grads == grads[0]).all()) and grads[0] != 0


# ---------------------------------------------------------------- precision: float32 at least


def _bf16_case() -> dict[str, torch.Tensor]:
    """257 masked tokens in row 0 (not representable in bf16: it rounds to 256), 3 in row 1."""
    g = torch.Generator().manual_seed(7)
    mask = torch.arange(260).unsqueeze(0) < torch.tensor([[257], [3]])
    logprobs = -3.0 * torch.rand(2, 260, generator=g)
    return {
        "logprobs": logprobs.to(torch.bfloat16),
        "old": (logprobs + 0.3 * torch.randn(2, 260, generator=g)).to(torch.bfloat16),
        "ref": (logprobs + 0.3 * torch.randn(2, 260, generator=g)).to(torch.bfloat16),
        "advantages": torch.tensor([0.7, -1.3], dtype=torch.bfloat16),
        "mask": mask,
    }


def test_sequence_log_ratio_counts_in_float32_for_bf16() -> None:
    d = _bf16_case()
    log_ratio = d["logprobs"] - d["old"]
    got = sequence_log_ratio(log_ratio, d["mask"])
    assert got.dtype == torch.float32
    assert torch.equal(got, sequence_log_ratio(log_ratio.float(), d["mask"]))


def test_aggregate_loss_in_float32_for_bf16() -> None:
    d = _bf16_case()
    values = d["logprobs"] * 1.5
    for aggregation in ("token-mean", "seq-mean-token-mean"):
        got = aggregate_loss(values, d["mask"], aggregation)
        assert got.dtype == torch.float32
        assert torch.equal(got, aggregate_loss(values.float(), d["mask"], aggregation))


@pytest.mark.parametrize("config", [PolicyLossConfig(kl_coef=0.1), GSPO.model_copy(update={"kl_coef": 0.1})])
def test_bf16_inputs_give_the_float32_loss_and_gradient(config: PolicyLossConfig) -> None:
    d = _bf16_case()
    results = []
    for dtype in (torch.bfloat16, torch.float32):
        lp = d["logprobs"].to(dtype).clone().requires_grad_(True)
        out = compute_policy_loss(
            lp,
            d["old"].to(dtype),
            d["advantages"].to(dtype),
            d["mask"],
            d["mask"],
            config,
            ref_logprobs=d["ref"].to(dtype),
        )
        out.loss.backward()
        assert lp.grad is not None
        results.append((out, lp.grad))
    (bf16, bf16_grad), (f32, f32_grad) = results
    assert bf16.loss.dtype == torch.float32
    assert torch.equal(bf16.loss, f32.loss) and bf16.metrics == f32.metrics
    assert torch.equal(bf16_grad, f32_grad.to(torch.bfloat16))

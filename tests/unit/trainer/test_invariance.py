"""Invariances the method relies on (SPEC §3.1, §4): micro-batching/sharding, sample order, r = 0, exact masking."""

from __future__ import annotations

import math
from itertools import pairwise

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from services.core.config import CreditConfig, PolicyLossConfig
from services.core.schedule import Phase
from trainer.advantages import compute_group_advantages
from trainer.credit import apply_credit_strategy, tp_loss_mask
from trainer.losses import compute_policy_loss, loss_denominator

F64 = torch.float64
FEW = settings(max_examples=15, deadline=None)
CONFIGS = [
    PolicyLossConfig(),
    PolicyLossConfig(aggregation="seq-mean-token-mean"),
    PolicyLossConfig(aggregation="seq-mean-token-mean", ratio_level="sequence"),
    PolicyLossConfig(aggregation="seq-mean-token-sum-norm", norm_length=7),
]


def _batch(seed: int, batch: int = 6, width: int = 7) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(0, width + 1, (batch,), generator=g)
    response_mask = torch.arange(width).unsqueeze(0) < lengths.unsqueeze(1)
    return {
        "theta": torch.randn(batch, width, generator=g, dtype=F64),
        "old_logprobs": -torch.rand(batch, width, generator=g, dtype=F64) * 3,
        "advantages": torch.randn(batch, generator=g, dtype=F64),
        "response_mask": response_mask,
        "loss_mask": tp_loss_mask(lengths, width, float(torch.rand(1, generator=g))),
    }


def _loss_and_grad(
    data: dict[str, torch.Tensor], config: PolicyLossConfig, pieces: list[slice]
) -> tuple[float, torch.Tensor]:
    """Sum of per-piece losses with the global denominator, and the accumulated gradient (grad accumulation / DP)."""
    theta = data["theta"].clone().requires_grad_(True)
    logprobs = torch.nn.functional.logsigmoid(theta)  # any differentiable map of the parameters
    denominator = sum(loss_denominator(data["loss_mask"][p], config.aggregation) for p in pieces)
    total = 0.0
    for p in pieces:
        out = compute_policy_loss(
            logprobs[p],
            data["old_logprobs"][p],
            data["advantages"][p],
            data["loss_mask"][p],
            data["response_mask"][p],
            config,
            denominator=max(denominator, 1),
        )
        out.loss.backward(retain_graph=True)
        total += out.loss.item()
    assert theta.grad is not None
    return total, theta.grad


@FEW
@given(seed=st.integers(0, 10_000), cuts=st.lists(st.integers(1, 5), max_size=3, unique=True))
def test_loss_and_gradient_invariant_to_micro_batching_and_sharding(seed: int, cuts: list[int]) -> None:
    data = _batch(seed)
    bounds = [0, *sorted(cuts), 6]
    pieces = [slice(a, b) for a, b in pairwise(bounds)]
    for config in CONFIGS:
        whole_loss, whole_grad = _loss_and_grad(data, config, [slice(0, 6)])
        split_loss, split_grad = _loss_and_grad(data, config, pieces)
        assert math.isclose(whole_loss, split_loss, rel_tol=1e-12, abs_tol=1e-12)
        torch.testing.assert_close(whole_grad, split_grad, rtol=1e-12, atol=1e-14)


def test_extra_padding_columns_change_nothing() -> None:
    data = _batch(3)
    padded = {k: torch.nn.functional.pad(v, (0, 3)) if v.dim() == 2 else v for k, v in data.items()}
    for config in CONFIGS[:3]:
        loss, grad = _loss_and_grad(data, config, [slice(0, 6)])
        padded_loss, padded_grad = _loss_and_grad(padded, config, [slice(0, 6)])
        assert loss == padded_loss
        assert torch.equal(grad, padded_grad[:, :7]) and not bool(padded_grad[:, 7:].any())


@FEW
@given(
    rewards=st.lists(st.sampled_from([0.0, 0.1, 0.5, 1.0, -0.3]), min_size=1, max_size=16),
    data=st.data(),
)
def test_group_advantages_invariant_to_sample_order(rewards: list[float], data: st.DataObject) -> None:
    groups = data.draw(st.lists(st.integers(0, 3), min_size=len(rewards), max_size=len(rewards)))
    perm = data.draw(st.permutations(range(len(rewards))))
    r = torch.tensor(rewards, dtype=torch.float32)
    out = compute_group_advantages(r, groups)
    out_perm = compute_group_advantages(r[list(perm)], [groups[i] for i in perm])
    assert torch.equal(out_perm, out[list(perm)])  # bit for bit


def _strategy_loss(strategy: str, ratio: float, data: dict[str, torch.Tensor]) -> tuple[float, torch.Tensor]:
    phase = Phase(step=1, progress=0.0, ratio=ratio, stage="general")
    credit = apply_credit_strategy(
        CreditConfig(strategy=strategy),
        phase,
        advantages=data["advantages"],
        response_mask=data["response_mask"],
        entropy=torch.rand(data["theta"].shape, dtype=F64),
    )
    step_data = {**data, "loss_mask": credit.loss_mask, "advantages": credit.advantages}
    return _loss_and_grad(step_data, PolicyLossConfig(), [slice(0, 6)])


@FEW
@given(seed=st.integers(0, 10_000))
def test_ratio_zero_is_plain_grpo_exactly(seed: int) -> None:
    data = _batch(seed)
    base_loss, base_grad = _strategy_loss("none", 0.0, data)
    for strategy in ("tp", "forking", "entropy_adv"):
        loss, grad = _strategy_loss(strategy, 0.0, data)
        assert loss == base_loss, strategy
        assert torch.equal(grad, base_grad), strategy


@FEW
@given(seed=st.integers(0, 10_000), config_index=st.integers(0, len(CONFIGS) - 1))
def test_masked_out_tokens_get_exactly_zero_gradient(seed: int, config_index: int) -> None:
    data = _batch(seed)
    off = ~data["loss_mask"]
    # Garbage where nothing is optimized must not leak into the loss or the gradient.
    old = data["old_logprobs"].masked_fill(off, -math.inf)
    advantages = data["advantages"].unsqueeze(1).expand(-1, 7).masked_fill(off, math.nan)
    ref = data["old_logprobs"].masked_fill(off, math.nan)
    entropy = torch.rand(6, 7, dtype=F64).masked_fill(off, math.inf).requires_grad_(True)
    logprobs = data["theta"].clone().requires_grad_(True)
    config = CONFIGS[config_index].model_copy(update={"kl_coef": 0.1, "entropy_coef": 0.01})
    out = compute_policy_loss(
        logprobs, old, advantages, data["loss_mask"], data["response_mask"], config, ref_logprobs=ref, entropy=entropy
    )
    out.loss.backward()
    assert logprobs.grad is not None and entropy.grad is not None
    assert math.isfinite(out.loss.item())
    assert bool((logprobs.grad[off] == 0).all()) and bool((entropy.grad[off] == 0).all())
    assert bool(torch.isfinite(logprobs.grad).all())

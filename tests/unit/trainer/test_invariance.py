"""Invariances the method relies on (SPEC §3.1, §4): DP averaging x grad accumulation, sample order, r = 0, masking."""

from __future__ import annotations

import math
from itertools import pairwise

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from services.core.config import CreditConfig, PolicyLossConfig
from services.core.schedule import Phase, Schedule, ScheduleConfig
from trainer.advantages import compute_group_advantages
from trainer.credit import apply_credit_strategy, tp_loss_mask
from trainer.losses import compute_policy_loss, engine_loss_scale, fractions_from_counts, policy_loss_denominator

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


def _pieces(bounds: list[int]) -> list[slice]:
    return [slice(a, b) for a, b in pairwise(bounds)]


def _engine_loss_and_grad(
    data: dict[str, torch.Tensor],
    config: PolicyLossConfig,
    pieces: list[slice],
    dp_size: int = 1,
    compensate: bool = True,
) -> tuple[float, torch.Tensor]:
    """Emulates DeepSpeed: `pieces` are split evenly over `dp_size` ranks (grad_accum micro-batches each); every
    rank holds its own replica of the parameters, each backward is divided by grad_accum, and the gradients are
    then AVERAGED over ranks. Returns the summed `train/loss` contributions and the all-reduced gradient."""
    grad_accum = len(pieces) // dp_size
    assert grad_accum * dp_size == len(pieces)
    denominator = sum(policy_loss_denominator(data["loss_mask"][p], config) for p in pieces)
    scale = engine_loss_scale(dp_size, grad_accum) if compensate else 1.0
    total, rank_grads = 0.0, []
    for rank in range(dp_size):
        theta = data["theta"].clone().requires_grad_(True)  # this rank's replica of the parameters
        logprobs = torch.nn.functional.logsigmoid(theta)  # any differentiable map of the parameters
        for p in pieces[rank * grad_accum : (rank + 1) * grad_accum]:
            out = compute_policy_loss(
                logprobs[p],
                data["old_logprobs"][p],
                data["advantages"][p],
                data["loss_mask"][p],
                data["response_mask"][p],
                config,
                denominator=max(denominator, 1),
                loss_scale=scale,
            )
            (out.loss / grad_accum).backward(retain_graph=True)  # DeepSpeed's engine.backward scales by 1/GAS
            total += out.metrics["train/loss"]
        assert theta.grad is not None
        rank_grads.append(theta.grad)
    return total, torch.stack(rank_grads).mean(dim=0)  # all-reduce AVG over data-parallel ranks


@FEW
@given(
    seed=st.integers(0, 10_000),
    layout=st.sampled_from([(1, 1), (1, 3), (2, 1), (2, 2), (3, 2), (4, 1)]),
    data=st.data(),
)
def test_averaging_engines_reproduce_the_full_batch_gradient(
    seed: int, layout: tuple[int, int], data: st.DataObject
) -> None:
    """dp_size ranks x grad_accum micro-batches (some may be empty) give exactly the one-batch loss and gradient."""
    dp_size, grad_accum = layout
    n_cuts = dp_size * grad_accum - 1
    cuts = data.draw(st.lists(st.integers(0, 6), min_size=n_cuts, max_size=n_cuts))
    batch = _batch(seed)
    pieces = _pieces([0, *sorted(cuts), 6])
    for config in CONFIGS:
        whole_loss, whole_grad = _engine_loss_and_grad(batch, config, [slice(0, 6)])
        split_loss, split_grad = _engine_loss_and_grad(batch, config, pieces, dp_size)
        assert math.isclose(whole_loss, split_loss, rel_tol=1e-12, abs_tol=1e-12)
        torch.testing.assert_close(whole_grad, split_grad, rtol=1e-12, atol=1e-14)


def test_without_the_engine_scale_an_averaging_engine_shrinks_the_gradient() -> None:
    """The failure engine_loss_scale exists for: 2 ranks x 2 micro-batches give the full gradient / 4."""
    batch = _batch(5)
    _, whole_grad = _engine_loss_and_grad(batch, CONFIGS[0], [slice(0, 6)])
    _, split_grad = _engine_loss_and_grad(batch, CONFIGS[0], _pieces([0, 1, 3, 4, 6]), 2, compensate=False)
    assert bool(whole_grad.any())
    torch.testing.assert_close(split_grad, whole_grad / 4, rtol=1e-12, atol=1e-14)


def test_engine_loss_scale() -> None:
    assert engine_loss_scale(1, 1) == 1.0
    assert engine_loss_scale(8, 4) == 32.0
    for bad in ((0, 1), (2, 0), (True, 1), (2.0, 1)):
        with pytest.raises(ValueError, match=r"dp_size|grad_accum_steps"):
            engine_loss_scale(*bad)


def _counts_of(data: dict[str, torch.Tensor], config: PolicyLossConfig, p: slice) -> dict[str, int]:
    lp = torch.nn.functional.logsigmoid(data["theta"][p])
    args = (data["old_logprobs"][p], data["advantages"][p], data["loss_mask"][p], data["response_mask"][p])
    return compute_policy_loss(lp, *args, config).counts


@FEW
@given(seed=st.integers(0, 10_000), cuts=st.lists(st.integers(0, 6), max_size=4), config_index=st.integers(0, 3))
def test_counts_sum_over_micro_batches_to_the_full_batch(seed: int, cuts: list[int], config_index: int) -> None:
    data, config = _batch(seed), CONFIGS[config_index]
    whole = _counts_of(data, config, slice(0, 6))
    parts = [_counts_of(data, config, p) for p in _pieces([0, *sorted(cuts), 6])]
    summed = {key: sum(part[key] for part in parts) for key in whole}
    assert summed == whole
    assert whole["sequences"] == 6 and whole["loss_tokens"] == int(data["loss_mask"].sum())
    assert whole["valid_tokens"] == int(data["response_mask"].sum())
    assert whole["loss_sequences"] == int(data["loss_mask"].any(dim=1).sum())
    lp = torch.nn.functional.logsigmoid(data["theta"])
    args = (data["old_logprobs"], data["advantages"], data["loss_mask"], data["response_mask"])
    full = compute_policy_loss(lp, *args, config)
    fractions = fractions_from_counts(summed)
    assert fractions == {key: full.metrics[key] for key in fractions}


def test_extra_padding_columns_change_nothing() -> None:
    data = _batch(3)
    padded = {k: torch.nn.functional.pad(v, (0, 3)) if v.dim() == 2 else v for k, v in data.items()}
    for config in CONFIGS[:3]:
        loss, grad = _engine_loss_and_grad(data, config, [slice(0, 6)])
        padded_loss, padded_grad = _engine_loss_and_grad(padded, config, [slice(0, 6)])
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
    assume(bool(out.any()))  # at least one group with signal, or both sides are trivially all zeros
    out_perm = compute_group_advantages(r[list(perm)], [groups[i] for i in perm])
    assert torch.equal(out_perm, out[list(perm)])  # bit for bit


def _strategy_loss(strategy: str, phase: Phase, data: dict[str, torch.Tensor]) -> tuple[float, torch.Tensor]:
    credit = apply_credit_strategy(
        CreditConfig(strategy=strategy),
        phase,
        advantages=data["advantages"],
        response_mask=data["response_mask"],
        entropy=torch.rand(data["theta"].shape, dtype=F64),
    )
    step_data = {**data, "loss_mask": credit.loss_mask, "advantages": credit.advantages}
    return _engine_loss_and_grad(step_data, PolicyLossConfig(), [slice(0, 6)])


@FEW
@given(seed=st.integers(0, 10_000))
def test_ratio_zero_is_plain_grpo_exactly(seed: int) -> None:
    data = _batch(seed)
    schedule = Schedule(ScheduleConfig(mode="linear", max_ratio=0.8), 10)
    phase = schedule.phase(schedule.max_step)  # the first step of plain GRPO (SPEC §2)
    assert (phase.ratio, phase.stage) == (0.0, "general")
    base_loss, base_grad = _strategy_loss("none", phase, data)
    for strategy in ("tp", "forking", "entropy_adv"):
        loss, grad = _strategy_loss(strategy, phase, data)
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

"""Parity of our policy loss (`trainer.losses.compute_policy_loss`) with OpenRLHF 0.11.2's own `PolicyLoss`.

Compared, on seeded random float32 batches (B=6, T=10, right-padded masks of lengths 10, 7, 3, 1, 0, 8; log-ratios
spread so that clipping above, below and dual-clipping all happen, which each test checks):
- token-level PPO, clip-higher (eps_low 0.2, eps_high 0.28), with and without dual-clip c=3, `token-mean`:
  OpenRLHF's `token_level_loss=True` computes masked sum / batch_num_tokens * dp_size, or the batch's masked mean
  when `batch_num_tokens=None`; batch_num_tokens = the batch's masked tokens with dp_size=1, and None, are both our
  default denominator (this batch's masked tokens).
- GSPO: OpenRLHF `policy_loss_type="gspo"` (sequence ratio exp(mean masked log-ratio), forced to
  `token_level_loss=False`: per-sequence token mean, then the mean over sequences with a masked token) against our
  `ratio_level="sequence"`, `seq-mean-token-mean`, `seq_mean_denominator="masked_sequences"`, one advantage per
  sequence; without dual-clip, and with it (OpenRLHF applies `dual_clip` to the sequence ratio too, as we do).
- token-level PPO with `seq-mean-token-mean` (OpenRLHF `token_level_loss=False`), the global denominators
  (`batch_num_tokens`/`global_batch_size` against our `denominator`), `dp_size` against our `loss_scale`, and
  OpenRLHF's clip_ratio metric against our clip counts.
Where the semantics agree, the loss AND its gradient w.r.t. the current log-probs agree to float32 round-off:
rtol 1e-6, atol 1e-7 (measured: bitwise equal on these batches; with other seeds the GSPO gradient
differs by ~2e-9, the order of summation being different). Importing OpenRLHF (DeepSpeed, transformers) takes
~10-15 s once per session, in the module fixture; the tests themselves take milliseconds.

Where they differ by design, the tests assert what each one does (all verified by running OpenRLHF 0.11.2):
- a masked-out token holding NaN: OpenRLHF multiplies by the mask (NaN * 0 = NaN), so its loss is NaN; we select
  before any arithmetic and give a finite loss. Under GSPO a masked-out NaN or +-inf old log-prob also turns
  OpenRLHF's loss and whole gradient NaN (the sequence mean sums log-ratio * mask).
- an all-empty batch: OpenRLHF divides 0 by 0 (NaN); we return 0 with zero gradient.
- the log-ratio clamp: both clamp token log-ratios to +-20 for PPO; OpenRLHF's GSPO does not clamp, so a sequence
  log-ratio of 30 gives e^30 there and e^20 here, and an old log-prob of -inf on a masked-in token gives inf (NaN
  with a zero advantage) there and a finite loss here.
- the dual-clip bound itself (ratio exactly c, A < 0): our gradient is the full unclipped one (clipped only strictly
  beyond a bound); OpenRLHF's torch.max tie gives half of it. At 1 + eps_high and 1 - eps_low both give the full one.
- GSPO with per-token advantages: the losses agree, but ours is the GSPO-token gradient (each token scaled by its
  own advantage) while OpenRLHF's spreads the sequence's mean evenly; the per-sequence gradient sums agree.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import pytest
import torch
from torch import Tensor

from services.core.config import PolicyLossConfig
from trainer.losses import PolicyLossOutput, compute_policy_loss, engine_loss_scale
from trainer.openrlhf_compat import import_openrlhf

RTOL, ATOL = 1e-6, 1e-7  # float32 round-off
EPS_LOW, EPS_HIGH, DUAL_C = 0.2, 0.28, 3.0
LENGTHS = (10, 7, 3, 1, 0, 8)  # right-padded response lengths; one row has no masked token
T = 10
SEEDS = {False: 0, True: 11}  # token level, sequence level: seeds whose batches clip high, low and dual
F32 = torch.float32


@dataclass(frozen=True)
class Batch:
    logprobs: Tensor  # (B, T) float32, current policy (a fresh leaf is made per loss)
    old_logprobs: Tensor  # (B, T) float32
    advantages: Tensor  # (B, T) float32, what OpenRLHF receives
    mask: Tensor  # (B, T) bool, loss mask = response mask


@dataclass(frozen=True)
class Result:
    loss: Tensor  # () detached
    grad: Tensor  # (B, T) d loss / d logprobs


@pytest.fixture(scope="module")
def openrlhf_policy_loss() -> Any:
    """OpenRLHF's PolicyLoss class, imported through our compatibility layer (no flash-attn / CUDA needed)."""
    return import_openrlhf().PolicyLoss


def _mask(lengths: tuple[int, ...] = LENGTHS, width: int = T) -> Tensor:
    return torch.arange(width)[None, :] < torch.tensor(lengths)[:, None]


def _random_batch(*, sequence_level: bool) -> Batch:
    """Old log-probs in (-3, 0); PPO: per-token log-ratios in (-1.5, 1.5) and per-token advantages; GSPO: a
    per-sequence log-ratio offset in (-1, 1.6) plus token noise, and one advantage per sequence."""
    gen = torch.Generator().manual_seed(SEEDS[sequence_level])
    mask = _mask()
    batch = len(LENGTHS)
    old = -3.0 * torch.rand(batch, T, generator=gen)
    if sequence_level:
        offset = 2.6 * torch.rand(batch, 1, generator=gen) - 1.0
        log_ratio = offset + 0.3 * torch.randn(batch, T, generator=gen)
        advantages = torch.randn(batch, 1, generator=gen).expand(batch, T).contiguous()
    else:
        log_ratio = 3.0 * torch.rand(batch, T, generator=gen) - 1.5
        advantages = torch.randn(batch, T, generator=gen)
    return Batch(logprobs=old + log_ratio, old_logprobs=old, advantages=advantages, mask=mask)


def _config(**overrides: Any) -> PolicyLossConfig:
    return PolicyLossConfig(clip_eps_low=EPS_LOW, clip_eps_high=EPS_HIGH, **overrides)


def _ours(
    batch: Batch, config: PolicyLossConfig, *, advantages: Tensor | None = None, **kwargs: Any
) -> tuple[Result, PolicyLossOutput]:
    logprobs = batch.logprobs.clone().requires_grad_(True)
    adv = batch.advantages if advantages is None else advantages
    out = compute_policy_loss(logprobs, batch.old_logprobs, adv, batch.mask, batch.mask, config, **kwargs)
    (grad,) = torch.autograd.grad(out.loss, logprobs)
    return Result(loss=out.loss.detach(), grad=grad), out


def _theirs(batch: Batch, policy_loss: Any, **kwargs: Any) -> tuple[Result, Tensor]:
    """OpenRLHF's loss and gradient, and its clip_ratio metric."""
    logprobs = batch.logprobs.clone().requires_grad_(True)
    loss, clip_ratio, *_ = policy_loss(logprobs, batch.old_logprobs, batch.advantages, batch.mask, **kwargs)
    (grad,) = torch.autograd.grad(loss, logprobs)
    return Result(loss=loss.detach(), grad=grad), clip_ratio


def _assert_clips_all_kinds(out: PolicyLossOutput, dual_clip: float | None) -> None:
    """Clipping above and below happened, dual-clip exactly when enabled, and some tokens kept their gradient."""
    counts = out.counts
    assert counts["clip_high"] > 0 and counts["clip_low"] > 0
    assert (counts["clip_dual"] > 0) == (dual_clip is not None)
    assert counts["clip_high"] + counts["clip_low"] + counts["clip_dual"] < counts["loss_tokens"]


def _assert_close(ours: Result, theirs: Result) -> None:
    assert ours.loss.dtype == theirs.loss.dtype == F32
    torch.testing.assert_close(ours.loss, theirs.loss, rtol=RTOL, atol=ATOL)
    torch.testing.assert_close(ours.grad, theirs.grad, rtol=RTOL, atol=ATOL)


def _ppo(policy_loss_cls: Any, dual_clip: float | None = DUAL_C, **kwargs: Any) -> Any:
    return policy_loss_cls(clip_eps_low=EPS_LOW, clip_eps_high=EPS_HIGH, dual_clip=dual_clip, **kwargs)


def _gspo(policy_loss_cls: Any, dual_clip: float | None = None) -> Any:
    return _ppo(policy_loss_cls, dual_clip, policy_loss_type="gspo")


def _gspo_config(dual_clip_c: float | None = None) -> PolicyLossConfig:
    return _config(
        dual_clip_c=dual_clip_c,
        ratio_level="sequence",
        aggregation="seq-mean-token-mean",
        seq_mean_denominator="masked_sequences",
    )


def _one_row(logprobs: list[float], old_logprobs: list[float], advantage: float, length: int) -> Batch:
    width = len(logprobs)
    return Batch(
        logprobs=torch.tensor([logprobs], dtype=F32),
        old_logprobs=torch.tensor([old_logprobs], dtype=F32),
        advantages=torch.full((1, width), advantage, dtype=F32),
        mask=_mask((length,), width),
    )


# ---- where the semantics agree: loss and gradient equal to float32 round-off


@pytest.mark.parametrize("dual_clip", [DUAL_C, None])
@pytest.mark.parametrize("their_denominator", ["batch_num_tokens", "local_masked_mean"])
def test_token_level_ppo_matches(openrlhf_policy_loss: Any, dual_clip: float | None, their_denominator: str) -> None:
    """token_level_loss=True divides by batch_num_tokens / dp_size: this batch's masked tokens with dp_size=1, or
    batch_num_tokens=None (masked_mean over this batch), is our default token-mean denominator."""
    batch = _random_batch(sequence_level=False)
    kwargs = (
        {"batch_num_tokens": float(batch.mask.sum()), "dp_size": 1} if their_denominator == "batch_num_tokens" else {}
    )
    ours, out = _ours(batch, _config(dual_clip_c=dual_clip, aggregation="token-mean"))
    theirs, _ = _theirs(batch, _ppo(openrlhf_policy_loss, dual_clip), **kwargs)
    _assert_close(ours, theirs)
    _assert_clips_all_kinds(out, dual_clip)
    assert out.counts["loss_tokens"] == sum(LENGTHS)


@pytest.mark.parametrize("dual_clip", [None, DUAL_C])
def test_gspo_matches(openrlhf_policy_loss: Any, dual_clip: float | None) -> None:
    """OpenRLHF's GSPO = our sequence ratio, seq-mean-token-mean over masked sequences; both dual-clip the sequence
    ratio when dual-clip is set (gspo forces token_level_loss=False, and global_batch_size=None there gives the
    mean over sequences with a masked token)."""
    batch = _random_batch(sequence_level=True)
    ours, out = _ours(batch, _gspo_config(dual_clip), advantages=batch.advantages[:, 0])
    theirs, _ = _theirs(batch, _gspo(openrlhf_policy_loss, dual_clip))
    _assert_close(ours, theirs)
    _assert_clips_all_kinds(out, dual_clip)


@pytest.mark.parametrize(
    ("seq_mean_denominator", "global_batch_size"), [("masked_sequences", None), ("all_sequences", len(LENGTHS))]
)
def test_token_ratio_seq_mean_token_mean_matches(
    openrlhf_policy_loss: Any, seq_mean_denominator: str, global_batch_size: int | None
) -> None:
    """token_level_loss=False: the mean over sequences with a masked token (global_batch_size=None), or the sum
    over sequences / global_batch_size (= B here, every sequence: our all_sequences)."""
    batch = _random_batch(sequence_level=False)
    config = _config(aggregation="seq-mean-token-mean", seq_mean_denominator=seq_mean_denominator)
    ours, _ = _ours(batch, config)
    theirs, _ = _theirs(
        batch, _ppo(openrlhf_policy_loss, token_level_loss=False), global_batch_size=global_batch_size, dp_size=1
    )
    _assert_close(ours, theirs)


@pytest.mark.parametrize("token_level", [True, False])
def test_global_denominator_and_dp_size_match(openrlhf_policy_loss: Any, token_level: bool) -> None:
    """A micro-batch of a larger data-parallel mini-batch: OpenRLHF's sum / global count * dp_size is our
    denominator = the global count with loss_scale = engine_loss_scale(dp_size, 1)."""
    batch, dp_size = _random_batch(sequence_level=False), 4
    local = int(batch.mask.sum()) if token_level else int(batch.mask.any(dim=1).sum())
    global_count = 3 * local + 5
    aggregation = "token-mean" if token_level else "seq-mean-token-mean"
    ours, _ = _ours(
        batch, _config(aggregation=aggregation), denominator=global_count, loss_scale=engine_loss_scale(dp_size, 1)
    )
    key = "batch_num_tokens" if token_level else "global_batch_size"
    policy_loss = _ppo(openrlhf_policy_loss, token_level_loss=token_level)
    theirs, _ = _theirs(batch, policy_loss, dp_size=dp_size, **{key: float(global_count)})
    _assert_close(ours, theirs)


def test_clip_ratio_metric_counts_high_and_low_not_dual(openrlhf_policy_loss: Any) -> None:
    """OpenRLHF's clip_ratio (masked mean of surr2 < surr1) = our (clip_high + clip_low) / loss_tokens; the
    dual-clipped tokens, which we count separately, are not in it."""
    batch = _random_batch(sequence_level=False)
    _, out = _ours(batch, _config(dual_clip_c=DUAL_C))
    _, clip_ratio = _theirs(batch, _ppo(openrlhf_policy_loss))
    counts = out.counts
    assert counts["clip_dual"] > 0
    expected = (counts["clip_high"] + counts["clip_low"]) / counts["loss_tokens"]
    assert clip_ratio.item() == pytest.approx(expected, rel=1e-6)


# ---- where they differ by design: what each one does


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_old_logprob_off_the_mask(openrlhf_policy_loss: Any, bad: float) -> None:
    """PPO: OpenRLHF clamps +-inf to +-20 (finite, equal to ours) but NaN survives and NaN * 0 makes its loss NaN
    (its gradient stays finite: clamp passes no gradient at NaN). GSPO: any of them makes OpenRLHF's loss and
    gradient NaN. Ours ignores the token: finite loss, zero gradient there."""
    batch = _one_row([-1.0, -0.5, -0.7], [-1.1, -0.4, bad], -1.0, length=2)
    ppo = replace(batch, advantages=torch.tensor([[1.0, -1.0, 1.0]]))
    ours, _ = _ours(ppo, _config(dual_clip_c=DUAL_C))
    theirs, _ = _theirs(ppo, _ppo(openrlhf_policy_loss))
    assert torch.isfinite(ours.loss) and ours.grad[0, 2] == 0
    torch.testing.assert_close(ours.grad, theirs.grad, rtol=RTOL, atol=ATOL)
    if math.isnan(bad):
        assert torch.isnan(theirs.loss)
    else:
        torch.testing.assert_close(ours.loss, theirs.loss, rtol=RTOL, atol=ATOL)

    ours, _ = _ours(batch, _gspo_config(), advantages=batch.advantages[:, 0])
    theirs, _ = _theirs(batch, _gspo(openrlhf_policy_loss))
    assert torch.isfinite(ours.loss) and bool(torch.isfinite(ours.grad).all()) and ours.grad[0, 2] == 0
    assert torch.isnan(theirs.loss) and bool(torch.isnan(theirs.grad).all())


def test_nan_current_logprob_off_the_mask(openrlhf_policy_loss: Any) -> None:
    """A NaN current log-prob on a padding token: OpenRLHF's PPO loss is NaN, ours is finite."""
    batch = _one_row([-1.0, -0.5, math.nan], [-1.1, -0.4, -0.2], 1.0, length=2)
    ours, _ = _ours(batch, _config())
    theirs, _ = _theirs(batch, _ppo(openrlhf_policy_loss))
    assert torch.isfinite(ours.loss) and bool(torch.isfinite(ours.grad).all())
    assert torch.isnan(theirs.loss)


@pytest.mark.parametrize("gspo", [False, True])
def test_all_empty_batch(openrlhf_policy_loss: Any, gspo: bool) -> None:
    """No masked token: OpenRLHF's masked mean is 0 / 0 = NaN; ours is 0 with zero gradient."""
    batch = _one_row([-1.0, -0.5, -0.7], [-1.1, -0.4, -0.2], 1.0, length=0)
    config, policy_loss = (
        (_gspo_config(), _gspo(openrlhf_policy_loss)) if gspo else (_config(), _ppo(openrlhf_policy_loss))
    )
    ours, _ = _ours(batch, config, advantages=batch.advantages[:, 0])
    theirs, _ = _theirs(batch, policy_loss)
    assert ours.loss.item() == 0.0 and not bool(ours.grad.any())
    assert torch.isnan(theirs.loss) and bool(torch.isnan(theirs.grad).all())


def test_log_ratio_clamp_ppo_both_clamp(openrlhf_policy_loss: Any) -> None:
    """PPO: a log-ratio of 30 is clamped to 20 by both (A < 0, no dual-clip: loss e^20, zero gradient), and an
    old log-prob of -inf on a masked-in token gives the same finite loss."""
    for old in (-30.5, -math.inf):
        batch = _one_row([-0.5, -0.5], [old, old], -1.0, length=2)
        ours, _ = _ours(batch, _config(dual_clip_c=None))
        theirs, _ = _theirs(batch, _ppo(openrlhf_policy_loss, None))
        _assert_close(ours, theirs)
        assert ours.loss.item() == pytest.approx(math.exp(20), rel=1e-6) and not bool(ours.grad.any())


def test_log_ratio_clamp_gspo_only_ours(openrlhf_policy_loss: Any) -> None:
    """GSPO: OpenRLHF does not clamp the log-ratio. A sequence log-ratio of 30 with A = -1 (no dual-clip) gives
    e^30 there and e^20 here."""
    batch = _one_row([-0.5, -0.5], [-30.5, -30.5], -1.0, length=2)
    ours, _ = _ours(batch, _gspo_config(), advantages=batch.advantages[:, 0])
    theirs, _ = _theirs(batch, _gspo(openrlhf_policy_loss))
    assert ours.loss.item() == pytest.approx(math.exp(20), rel=1e-6)
    assert theirs.loss.item() == pytest.approx(math.exp(30), rel=1e-6)
    # with dual-clip both cap the ratio at c: equal loss, zero gradient
    ours, _ = _ours(batch, _gspo_config(DUAL_C), advantages=batch.advantages[:, 0])
    theirs, _ = _theirs(batch, _gspo(openrlhf_policy_loss, DUAL_C))
    _assert_close(ours, theirs)
    assert ours.loss.item() == DUAL_C and not bool(ours.grad.any())


@pytest.mark.parametrize("advantage", [-1.0, 0.0])
def test_gspo_masked_in_minus_inf_old_logprob(openrlhf_policy_loss: Any, advantage: float) -> None:
    """GSPO with an old log-prob of -inf on a masked-in token: OpenRLHF's sequence ratio is inf, so its loss is inf
    (A < 0) or NaN (A = 0, inf * 0). Ours clamps the token log-ratio to 20 first: finite, and exactly 0 at A = 0."""
    batch = _one_row([-1.0, -1.0], [-math.inf, -1.0], advantage, length=2)
    ours, _ = _ours(batch, _gspo_config(), advantages=batch.advantages[:, 0])
    theirs, _ = _theirs(batch, _gspo(openrlhf_policy_loss))
    assert torch.isfinite(ours.loss) and bool(torch.isfinite(ours.grad).all())
    if advantage == 0.0:
        assert ours.loss.item() == 0.0 and not bool(ours.grad.any())
        assert torch.isnan(theirs.loss)
    else:
        assert ours.loss.item() == pytest.approx(math.exp(10.0), rel=1e-6)  # sequence log-ratio (20 + 0) / 2
        # GSPO-token form: the clamped token still gets its share -A * ratio / 2 of the gradient, as the other one
        torch.testing.assert_close(ours.grad, torch.full((1, 2), math.exp(10.0) / 2), rtol=1e-6, atol=0.0)
        assert theirs.loss.item() == math.inf and bool(torch.isinf(theirs.grad).all())


def test_ratio_exactly_at_a_bound(openrlhf_policy_loss: Any) -> None:
    """Ratios exactly 1 + eps_high (A > 0), 1 - eps_low and c (A < 0), in float32. Losses agree, and at the two
    clip bounds so do the (full, unclipped) gradients. At the dual-clip bound ours keeps the full gradient (a token
    is clipped only strictly beyond a bound); OpenRLHF's torch.max(clip1, c * A) tie passes half of it."""
    ratios = torch.tensor([1.0 + EPS_HIGH, 1.0 - EPS_LOW, DUAL_C], dtype=F32)
    logprobs = torch.log(ratios)
    assert torch.equal(logprobs.exp(), ratios)
    batch = Batch(
        logprobs=logprobs[None],
        old_logprobs=torch.zeros(1, 3),
        advantages=torch.tensor([[1.0, -1.0, -1.0]]),
        mask=_mask((3,), 3),
    )
    ours, out = _ours(batch, _config(dual_clip_c=DUAL_C))
    theirs, _ = _theirs(batch, _ppo(openrlhf_policy_loss))
    torch.testing.assert_close(ours.loss, theirs.loss, rtol=RTOL, atol=ATOL)
    full = -batch.advantages[0] * ratios / 3  # d/dlogprob of -A * ratio under token-mean over 3 tokens
    torch.testing.assert_close(ours.grad[0], full, rtol=RTOL, atol=ATOL)
    torch.testing.assert_close(theirs.grad[0, :2], full[:2], rtol=RTOL, atol=ATOL)
    torch.testing.assert_close(theirs.grad[0, 2], full[2] / 2, rtol=RTOL, atol=ATOL)
    assert out.counts["clip_high"] == out.counts["clip_low"] == out.counts["clip_dual"] == 0


def test_gspo_per_token_advantages(openrlhf_policy_loss: Any) -> None:
    """With advantages that vary within a sequence the losses still agree, but ours is the GSPO-token gradient
    (each token scaled by its own unclipped advantage) and OpenRLHF's is GSPO's (the sequence mean spread evenly
    over its tokens): the gradients differ per token and agree summed over each sequence."""
    batch = _random_batch(sequence_level=True)
    batch = replace(batch, advantages=torch.randn(batch.mask.shape, generator=torch.Generator().manual_seed(1)))
    ours, _ = _ours(batch, _gspo_config())
    theirs, _ = _theirs(batch, _gspo(openrlhf_policy_loss))
    torch.testing.assert_close(ours.loss, theirs.loss, rtol=RTOL, atol=ATOL)
    assert (ours.grad - theirs.grad).abs().max().item() > 1e-3
    torch.testing.assert_close(ours.grad.sum(dim=1), theirs.grad.sum(dim=1), rtol=RTOL, atol=ATOL)

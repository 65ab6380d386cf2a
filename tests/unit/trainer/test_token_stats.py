"""Chunked per-token log-probs and entropies (trainer/token_stats.py) equal the unchunked computation, and the loss
of a scheduled phase leaves every masked-out token's logit with exactly zero gradient."""

from __future__ import annotations

import pytest
import torch

from services.core.config import CreditConfig, PolicyLossConfig
from services.core.schedule import Phase
from trainer.credit import apply_credit_strategy
from trainer.losses import compute_policy_loss
from trainer.token_stats import build_policy_inputs, response_token_stats

VOCAB, HIDDEN = 50, 16


def _batch(seed: int = 0) -> tuple[list[list[int]], torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    lengths = [5, 1, 7, 3]
    prompts = [[int(t) for t in torch.randint(1, VOCAB, (n,), generator=g)] for n in (3, 1, 4, 2)]
    ids = torch.zeros(4, 7, dtype=torch.int64)
    mask = torch.zeros(4, 7, dtype=torch.bool)
    for i, n in enumerate(lengths):
        ids[i, :n] = torch.randint(1, VOCAB, (n,), generator=g)
        mask[i, :n] = True
    return prompts, ids, mask


def _reference(hidden: torch.Tensor, head: torch.nn.Linear, prompts: list[list[int]], ids: torch.Tensor,
               mask: torch.Tensor, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """Straightforward: full logits, log_softmax, gather; entropy -sum p log p."""
    logits = head(hidden).float() / temperature
    logp = torch.log_softmax(logits, dim=-1)
    out_lp, out_h = torch.zeros(ids.shape), torch.zeros(ids.shape)
    for i, prompt in enumerate(prompts):
        for j in range(int(mask[i].sum())):
            pos = len(prompt) - 1 + j
            out_lp[i, j] = logp[i, pos, ids[i, j]]
            out_h[i, j] = -(logp[i, pos].exp() * logp[i, pos]).sum()
    return out_lp, out_h


@pytest.mark.parametrize("chunk", [1, 3, 8, 1000])
@pytest.mark.parametrize("temperature", [1.0, 1.2])
def test_chunked_equals_unchunked(chunk: int, temperature: float) -> None:
    torch.manual_seed(0)
    prompts, ids, mask = _batch()
    inputs = build_policy_inputs(prompts, ids, mask)
    hidden = torch.randn(4, inputs.input_ids.shape[1], HIDDEN)
    head = torch.nn.Linear(HIDDEN, VOCAB, bias=False)
    logprobs, entropy = response_token_stats(
        hidden, head, inputs, ids, mask, temperature=temperature, chunk_tokens=chunk, with_entropy=True
    )
    want_lp, want_h = _reference(hidden, head, prompts, ids, mask, temperature)
    assert entropy is not None
    torch.testing.assert_close(logprobs, want_lp, rtol=0, atol=2e-6)
    torch.testing.assert_close(entropy, want_h, rtol=0, atol=2e-6)
    assert bool((logprobs[~mask] == 0).all()) and bool((entropy[~mask] == 0).all())


def test_recomputed_chunks_give_the_same_gradient() -> None:
    torch.manual_seed(1)
    prompts, ids, mask = _batch(1)
    inputs = build_policy_inputs(prompts, ids, mask)
    head = torch.nn.Linear(HIDDEN, VOCAB, bias=False)
    grads = []
    for recompute, chunk in ((False, 1000), (True, 2)):
        hidden = torch.randn(4, inputs.input_ids.shape[1], HIDDEN, generator=torch.Generator().manual_seed(5))
        hidden.requires_grad_(True)
        lp, h = response_token_stats(
            hidden, head, inputs, ids, mask, temperature=1.1, chunk_tokens=chunk, with_entropy=True,
            recompute=recompute,
        )  # fmt: skip
        assert h is not None
        (lp.sum() + 0.5 * h.sum()).backward()
        assert hidden.grad is not None
        grads.append(hidden.grad.clone())
    torch.testing.assert_close(grads[0], grads[1], rtol=0, atol=1e-6)


def test_layout_puts_each_response_after_its_prompt() -> None:
    prompts, ids, mask = _batch()
    inputs = build_policy_inputs(prompts, ids, mask)
    for i, prompt in enumerate(prompts):
        n = int(mask[i].sum())
        row = inputs.input_ids[i]
        assert row[: len(prompt)].tolist() == prompt
        assert row[len(prompt) : len(prompt) + n].tolist() == ids[i, :n].tolist()
        assert int(inputs.attention_mask[i].sum()) == len(prompt) + n
        assert inputs.predict_index[i, 0] == len(prompt) - 1


def test_bad_inputs_are_refused() -> None:
    prompts, ids, mask = _batch()
    with pytest.raises(ValueError, match="at least one token"):
        build_policy_inputs([[], *prompts[1:]], ids, mask)
    with pytest.raises(ValueError, match="must agree"):
        build_policy_inputs(prompts[:2], ids, mask)
    inputs = build_policy_inputs(prompts, ids, mask)
    hidden = torch.randn(4, inputs.input_ids.shape[1], VOCAB)
    with pytest.raises(ValueError, match="temperature"):
        response_token_stats(hidden, lambda h: h, inputs, ids, mask, temperature=0.0, chunk_tokens=4,
                             with_entropy=False)  # fmt: skip


@pytest.mark.parametrize("strategy", ["tp", "forking"])
def test_masked_out_tokens_get_exactly_zero_logit_gradient(strategy: str) -> None:
    """The logits are the leaf here (lm_head = identity): every logit row that predicts a token outside the phase's
    loss mask, and every padding row, has gradient exactly 0."""
    torch.manual_seed(2)
    prompts, ids, mask = _batch(2)
    inputs = build_policy_inputs(prompts, ids, mask)
    logits = torch.randn(4, inputs.input_ids.shape[1], VOCAB, requires_grad=True)
    old, entropy = response_token_stats(
        logits.detach(), lambda h: h, inputs, ids, mask, temperature=1.0, chunk_tokens=5, with_entropy=True
    )
    phase = Phase(step=3, progress=0.5, ratio=0.5, stage="anneal")
    credit = apply_credit_strategy(
        CreditConfig(strategy=strategy), phase, advantages=torch.tensor([1.0, -1.0, 0.5, -0.5]),
        response_mask=mask, entropy=entropy,
    )  # fmt: skip
    assert 0 < int(credit.loss_mask.sum()) < int(mask.sum())
    new, _ = response_token_stats(
        logits, lambda h: h, inputs, ids, mask, temperature=1.0, chunk_tokens=5, with_entropy=False, recompute=True
    )
    perturbed = new + 0.05 * torch.randn(new.shape)  # ratios away from 1, so clipping is exercised too
    compute_policy_loss(perturbed, old, credit.advantages, credit.loss_mask, mask, PolicyLossConfig()).loss.backward()
    assert logits.grad is not None
    trained_rows = set()
    for i, prompt in enumerate(prompts):
        for j in range(int(mask[i].sum())):
            if credit.loss_mask[i, j]:
                trained_rows.add((i, len(prompt) - 1 + j))
    for i in range(logits.shape[0]):
        for pos in range(logits.shape[1]):
            if (i, pos) not in trained_rows:
                assert bool((logits.grad[i, pos] == 0).all()), (i, pos)
    assert any(bool((logits.grad[i, p] != 0).any()) for i, p in trained_rows)

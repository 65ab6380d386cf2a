"""Per-token log-probabilities and full-vocabulary entropies of responses, computed in chunks (SPEC §3.2, §4).

The policy is run once over prompt + response; only the final hidden states (N, S, H) are kept, and the LM head
is applied to a chunk of response positions at a time. Logits are divided by the sampling temperature before both
the log-softmax and the entropy (the distribution the samples came from). With `recompute=True` (the training
pass) each chunk's logits are recomputed in backward instead of being stored, so neither pass ever holds more
than `chunk_tokens` positions' vocabulary logits: a long response never materialises an N x T x V float32 tensor.

Layout: sequence i is prompt_i + response_i, right-padded; the logit predicting response token j of row i sits at
position len(prompt_i) - 1 + j.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint


@dataclass(frozen=True)
class PolicyInputs:
    """What the policy's forward pass takes, and where each response token's predicting position is."""

    input_ids: Tensor  # (N, S) int64, 0 on padding
    attention_mask: Tensor  # (N, S) int64
    position_ids: Tensor  # (N, S) int64 (padding: 1, as OpenRLHF)
    predict_index: Tensor  # (N, T) int64: the position whose logits predict response token (i, j)


def build_policy_inputs(prompts: Sequence[Sequence[int]], response_ids: Tensor, response_mask: Tensor) -> PolicyInputs:
    """Concatenate each prompt with its (right-padded) response; prompts must be non-empty."""
    if len(prompts) != response_ids.shape[0] or response_ids.shape != response_mask.shape:
        raise ValueError(
            f"{len(prompts)} prompts, response_ids {tuple(response_ids.shape)} and response_mask "
            f"{tuple(response_mask.shape)} must agree on (N, T)"
        )
    if any(len(prompt) == 0 for prompt in prompts):
        raise ValueError("every prompt needs at least one token: the first response token is predicted from it")
    lengths = response_mask.sum(dim=1)
    width = max(len(p) + int(n) for p, n in zip(prompts, lengths, strict=True))
    n, t = response_ids.shape
    input_ids = torch.zeros(n, width, dtype=torch.int64)
    attention_mask = torch.zeros(n, width, dtype=torch.int64)
    predict_index = torch.zeros(n, t, dtype=torch.int64)
    for i, prompt in enumerate(prompts):
        p, length = len(prompt), int(lengths[i])
        input_ids[i, :p] = torch.tensor(list(prompt), dtype=torch.int64)
        input_ids[i, p : p + length] = response_ids[i, :length]
        attention_mask[i, : p + length] = 1
        predict_index[i] = (p - 1 + torch.arange(t)).clamp(max=width - 1)
    position_ids = (attention_mask.cumsum(dim=1) - 1).masked_fill(attention_mask == 0, 1)
    return PolicyInputs(input_ids, attention_mask, position_ids, predict_index)


def _chunk_stats(
    hidden: Tensor, targets: Tensor, lm_head: Callable[[Tensor], Tensor], temperature: float, with_entropy: bool
) -> tuple[Tensor, Tensor]:
    logits = lm_head(hidden).float()  # (N, c, V)
    if temperature != 1.0:
        logits = logits / temperature
    log_norm = torch.logsumexp(logits, dim=-1)
    logprobs = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - log_norm
    if not with_entropy:
        return logprobs, torch.zeros_like(logprobs)
    entropy = log_norm - (torch.softmax(logits, dim=-1) * logits).sum(dim=-1)
    return logprobs, entropy


def response_token_stats(
    hidden_states: Tensor,
    lm_head: Callable[[Tensor], Tensor],
    inputs: PolicyInputs,
    response_ids: Tensor,
    response_mask: Tensor,
    *,
    temperature: float,
    chunk_tokens: int,
    with_entropy: bool,
    recompute: bool = False,
) -> tuple[Tensor, Tensor | None]:
    """(N, T) float32 log-probs of the response tokens and (with_entropy) their entropies, 0 on padding.

    hidden_states (N, S, H): the policy's final (normed) hidden states; lm_head maps (.., H) -> (.., V).
    chunk_tokens: at most this many (row x position) logit vectors exist at once (at least one column).
    recompute: recompute each chunk's logits in backward (training); keep grad through both outputs.
    """
    if not (temperature > 0):
        raise ValueError(f"temperature={temperature!r} must be > 0")
    if chunk_tokens < 1:
        raise ValueError(f"chunk_tokens={chunk_tokens!r} must be >= 1")
    n, t = response_ids.shape
    columns = max(1, chunk_tokens // max(n, 1))
    logprob_parts, entropy_parts = [], []
    for start in range(0, t, columns):
        index = inputs.predict_index[:, start : start + columns].to(hidden_states.device)
        hidden = hidden_states.gather(1, index.unsqueeze(-1).expand(-1, -1, hidden_states.shape[-1]))
        targets = response_ids[:, start : start + columns].to(hidden_states.device)
        if recompute and torch.is_grad_enabled():
            logprobs, entropy = checkpoint(
                _chunk_stats, hidden, targets, lm_head, temperature, with_entropy, use_reentrant=False
            )
        else:
            logprobs, entropy = _chunk_stats(hidden, targets, lm_head, temperature, with_entropy)
        logprob_parts.append(logprobs)
        entropy_parts.append(entropy)
    mask = response_mask.to(hidden_states.device)
    logprobs = torch.cat(logprob_parts, dim=1) if logprob_parts else hidden_states.new_zeros(n, 0, dtype=torch.float32)
    logprobs = torch.where(mask, logprobs, torch.zeros_like(logprobs))
    if not with_entropy:
        return logprobs, None
    entropy = torch.cat(entropy_parts, dim=1) if entropy_parts else torch.zeros_like(logprobs)
    return logprobs, torch.where(mask, entropy, torch.zeros_like(entropy))

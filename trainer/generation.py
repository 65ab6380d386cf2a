"""Batched sampling from a transformers causal LM: the HF-transformers generation path on CPU.

`temperature == 0` is greedy decoding. Otherwise sampling draws from the temperature-scaled distribution with
nucleus `top_p` and no top-k cut (`top_k=0`: transformers' default of 50 would silently truncate the distribution
that vLLM and the trainer's log-probs describe). Prompts are left-padded, grouped by length, and each prompt's `n`
samples are generated together. A sampling call seeds torch's global generator (transformers samples from it), so
it is reproducible; a greedy call leaves it alone.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from services.core.wire import FinishReason


@dataclass(frozen=True)
class SamplingSettings:
    """How to sample: `n` answers per prompt, temperature (0 = greedy), nucleus top-p, a token limit, a seed, and
    stop strings (an answer ends with the token that completes one; the stop string stays in the answer)."""

    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 256
    seed: int = 0
    stop: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.n < 1:
            raise ValueError(f"n must be >= 1, got {self.n}")
        if not self.temperature >= 0.0:  # also refuses NaN
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature == 0.0 and self.n > 1:
            raise ValueError(f"greedy decoding (temperature 0) gives one answer per prompt; n={self.n} asks for more")
        if any(not stop for stop in self.stop):
            raise ValueError("a stop string must not be empty")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


@dataclass(frozen=True)
class Completion:
    """One sampled answer: its text, token ids, why it ended, and (when asked for) the sampling policy's
    log-probability of each of those tokens. The EOS that ended an answer is never in the text; it is in the token
    ids (with its log-prob) only when `generate(keep_eos=True)` asked for it, as RL rollouts do: the policy must be
    trained to stop."""

    text: str
    token_ids: tuple[int, ...]
    finish_reason: FinishReason
    logprobs: tuple[float, ...] | None = None


def generate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    settings: SamplingSettings,
    *,
    with_logprobs: bool = False,
    keep_eos: bool = False,
    batch_tokens: int = 16_384,
    progress: Callable[[int, int], None] | None = None,
) -> list[list[Completion]]:
    """`settings.n` completions for every prompt, in prompt order. `with_logprobs` adds each generated token's
    log-probability under the sampling policy, log_softmax(logits / T) (T = 1 when greedy; the nucleus cut is a
    sampling rule, not part of the policy), which is what the trainer recomputes for the ratio. `keep_eos` keeps the
    EOS that ended an answer in its token ids and log-probs (see `Completion`). `batch_tokens` bounds
    rows × (prompt + answer) tokens per forward batch; `progress(done, total)` is called after each batch."""
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError("the tokenizer has no eos token: generation could not stop")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    encoded = [tokenizer.encode(prompt, add_special_tokens=False) for prompt in prompts]
    order = sorted(range(len(prompts)), key=lambda i: len(encoded[i]))
    results: list[list[Completion]] = [[] for _ in prompts]
    if not settings.greedy:
        torch.manual_seed(settings.seed)  # transformers samples from torch's global generator
    was_training = model.training
    model.eval()
    done = 0
    try:
        for chunk in _chunks(order, encoded, settings, batch_tokens):
            rows = [encoded[i] for i in chunk for _ in range(settings.n)]
            ids, mask = _left_pad(rows, pad)
            with torch.no_grad():
                out = model.generate(  # type: ignore[operator]  # nn.Module.__getattr__ hides GenerationMixin
                    input_ids=ids,
                    attention_mask=mask,
                    max_new_tokens=settings.max_new_tokens,
                    do_sample=not settings.greedy,
                    temperature=settings.temperature if not settings.greedy else None,
                    top_p=settings.top_p if not settings.greedy else None,
                    top_k=0 if not settings.greedy else None,
                    eos_token_id=eos,
                    pad_token_id=pad,
                    stop_strings=list(settings.stop) or None,
                    tokenizer=tokenizer if settings.stop else None,
                    return_dict_in_generate=True,
                    output_logits=with_logprobs,
                )
            generated = out.sequences[:, ids.shape[1] :]
            logprobs = _token_logprobs(out.logits, generated, settings) if with_logprobs else None
            for row, tokens in enumerate(generated.tolist()):
                row_logprobs = logprobs[row] if logprobs is not None else None
                completion = _completion(tokenizer, tokens, eos, row_logprobs, settings.stop, keep_eos)
                results[chunk[row // settings.n]].append(completion)
            done += len(chunk)
            if progress is not None:
                progress(done, len(prompts))
    finally:
        model.train(was_training)
    return results


def _chunks(
    order: list[int], encoded: list[list[int]], settings: SamplingSettings, batch_tokens: int
) -> list[list[int]]:
    chunks: list[list[int]] = []
    current: list[int] = []
    for index in order:
        width = len(encoded[index]) + settings.max_new_tokens
        if current and (len(current) + 1) * settings.n * width > batch_tokens:
            chunks.append(current)
            current = []
        current.append(index)
    if current:
        chunks.append(current)
    return chunks


def _left_pad(rows: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(row) for row in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        if row:
            ids[i, width - len(row) :] = torch.tensor(row, dtype=torch.long)
            mask[i, width - len(row) :] = 1
    return ids, mask


def _token_logprobs(
    step_logits: tuple[torch.Tensor, ...], generated: torch.Tensor, settings: SamplingSettings
) -> list[list[float]]:
    """Per row, per generated position: log_softmax(raw logits / T) at the token that was generated (float32)."""
    temperature = 1.0 if settings.greedy else settings.temperature
    columns = []
    for position, logits in enumerate(step_logits):
        token = generated[:, position : position + 1]
        columns.append(torch.log_softmax(logits.float() / temperature, dim=-1).gather(-1, token).squeeze(-1))
    return torch.stack(columns, dim=1).tolist() if columns else [[] for _ in range(generated.shape[0])]


def _completion(
    tokenizer: PreTrainedTokenizerBase,
    tokens: list[int],
    eos: int,
    logprobs: list[float] | None,
    stop: tuple[str, ...],
    keep_eos: bool,
) -> Completion:
    end, reason = len(tokens), "length"
    if eos in tokens:
        end, reason = tokens.index(eos), "stop"
    stop_end = _stop_string_end(tokenizer, tokens[:end], stop) if stop else None
    kept_end = end
    if stop_end is not None:
        end = kept_end = stop_end
        reason = "stop"
    elif reason == "stop" and keep_eos:
        kept_end = end + 1
    text = tokenizer.decode(tokens[:end], skip_special_tokens=False)
    assert isinstance(text, str)
    return Completion(
        text=text,
        token_ids=tuple(tokens[:kept_end]),
        finish_reason=reason,  # type: ignore[arg-type]
        logprobs=tuple(logprobs[:kept_end]) if logprobs is not None else None,
    )


def _stop_string_end(tokenizer: PreTrainedTokenizerBase, tokens: list[int], stop: tuple[str, ...]) -> int | None:
    """Length of the shortest prefix of `tokens` whose text contains a stop string (None when none does)."""
    if not any(s in tokenizer.decode(tokens, skip_special_tokens=False) for s in stop):
        return None
    for end in range(1, len(tokens) + 1):
        text = tokenizer.decode(tokens[:end], skip_special_tokens=False)
        if any(s in text for s in stop):
            return end
    return None

"""Batched HF sampling: reproducible per seed, greedy equals argmax decoding, and the returned log-probs are the
sampling policy's, log_softmax(logits / T), exactly what a forward pass over prompt + response gives."""

from __future__ import annotations

import pytest
import torch

from services.core.config import WorldModelConfig
from trainer.generation import SamplingSettings, generate
from trainer.world.policy import build_policy
from trainer.world.tasks import Problem
from trainer.world.tokenizer import train_tokenizer

PROBLEMS = [Problem(728, (-9, -8, -6, 5), 1), Problem(101, (9, -2, 7, 1, -3, 4), 3), Problem(450, (3, 3, -1, 2), 1)]
TOKENIZER = train_tokenizer(p.prompt + p.solution for p in PROBLEMS)
MODEL = build_policy(WorldModelConfig(hidden_size=32, num_layers=2, num_heads=1, intermediate_size=64), 257, 0, 0)
PROMPTS = [p.prompt for p in PROBLEMS]


def _forward_logprobs(prompt: str, tokens: tuple[int, ...], temperature: float) -> torch.Tensor:
    prompt_ids = TOKENIZER.encode(prompt, add_special_tokens=False)
    ids = torch.tensor([[*prompt_ids, *tokens]])
    with torch.no_grad():
        logits = MODEL.eval()(ids).logits[0, len(prompt_ids) - 1 : -1].float() / temperature
    return torch.log_softmax(logits, dim=-1).gather(-1, torch.tensor(tokens).unsqueeze(-1)).squeeze(-1)


@pytest.mark.parametrize("temperature", [0.0, 0.7, 1.0])
def test_logprobs_are_the_sampling_policys(temperature: float) -> None:
    n = 1 if temperature == 0.0 else 3
    settings = SamplingSettings(n=n, temperature=temperature, max_new_tokens=12, seed=5)
    out = generate(MODEL, TOKENIZER, PROMPTS, settings, with_logprobs=True, batch_tokens=64)
    assert [len(samples) for samples in out] == [n] * len(PROMPTS)
    for prompt, samples in zip(PROMPTS, out, strict=True):
        for sample in samples:
            assert sample.logprobs is not None and len(sample.logprobs) == len(sample.token_ids)
            if sample.token_ids:  # left padding in the batch must not change a row's distribution
                want = _forward_logprobs(prompt, sample.token_ids, temperature or 1.0)
                assert torch.allclose(torch.tensor(sample.logprobs), want, atol=1e-5), (sample.logprobs, want)


def test_sampling_is_reproducible_per_seed_and_greedy_is_argmax() -> None:
    settings = SamplingSettings(n=2, temperature=1.0, max_new_tokens=10, seed=3)
    first = generate(MODEL, TOKENIZER, PROMPTS, settings)
    assert first == generate(MODEL, TOKENIZER, PROMPTS, settings)
    assert first[0][0].logprobs is None
    greedy = generate(MODEL, TOKENIZER, PROMPTS[:1], SamplingSettings(n=1, temperature=0.0, max_new_tokens=6))[0][0]
    ids = TOKENIZER.encode(PROMPTS[0], add_special_tokens=False)
    for token in greedy.token_ids:
        with torch.no_grad():
            assert token == int(MODEL(torch.tensor([ids])).logits[0, -1].argmax())
        ids.append(token)


def test_bad_sampling_settings_are_refused() -> None:
    for kwargs, message in [
        ({"n": 0}, "n must be"),
        ({"temperature": -1.0}, "temperature"),
        ({"temperature": float("nan")}, "temperature"),
        ({"top_p": 0.0}, "top_p"),
        ({"max_new_tokens": 0}, "max_new_tokens"),
        ({"temperature": 0.0, "n": 2}, "greedy"),
    ]:
        with pytest.raises(ValueError, match=message):
            SamplingSettings(**kwargs)  # type: ignore[arg-type]

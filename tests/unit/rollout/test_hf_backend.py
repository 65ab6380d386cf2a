"""The hf backend on a tiny model directory: n samples per group with token ids, the sampling policy's log-probs and
finish reasons, reproducible per group; weights replaced between generations, checked first, version bumped."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from services.core.config import WorldModelConfig
from services.core.wire import PromptGroup
from services.rollout.backends.hf import HFBackend, WeightMismatchError
from tests.tiny_models import perturbed_weights
from trainer.generation import SamplingSettings
from trainer.world.policy import build_policy
from trainer.world.tasks import Problem
from trainer.world.tokenizer import save_tokenizer, train_tokenizer

PROBLEM = Problem(728, (-9, -8, -6, 5), 1)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("hf-model")
    tokenizer = train_tokenizer([PROBLEM.prompt + PROBLEM.solution])
    model = build_policy(WorldModelConfig(hidden_size=32, num_layers=1, num_heads=1, intermediate_size=64), 257, 0, 0)
    model.save_pretrained(str(path), safe_serialization=True)
    save_tokenizer(tokenizer, path)
    return path


def _group(group_id: str = "s1-g0", n: int = 3) -> PromptGroup:
    return PromptGroup(group_id=group_id, step=1, prompt=PROBLEM.prompt, label="710", data_source="arith_chains", n=n)


def _backend(model_dir: Path) -> HFBackend:
    return HFBackend.from_dir(model_dir, SamplingSettings(temperature=1.0, max_new_tokens=16, seed=7))


def _forward_logprobs(backend: HFBackend, tokens: tuple[int, ...]) -> torch.Tensor:
    prompt = backend.token_ids(PROBLEM.prompt)
    with torch.no_grad():
        logits = backend._model(torch.tensor([[*prompt, *tokens]])).logits[0, len(prompt) - 1 : -1]
    return torch.log_softmax(logits.float(), -1).gather(-1, torch.tensor(tokens).unsqueeze(-1)).squeeze(-1)


def test_samples_carry_token_ids_logprobs_and_finish_reasons(model_dir: Path) -> None:
    backend = _backend(model_dir)
    batch = backend.generate([_group(), _group("s1-g1", n=2)])
    assert [len(samples) for samples in batch] == [3, 2]
    eos = backend._tokenizer.eos_token_id
    for sample in batch[0] + batch[1]:
        assert sample.logprobs is not None and len(sample.logprobs) == len(sample.token_ids)
        assert sample.finish_reason in ("stop", "length")
        # the EOS that ended a sample is trained (so it is in the token ids), never in the text
        text_ids = list(sample.token_ids[:-1] if sample.finish_reason == "stop" else sample.token_ids)
        assert (sample.token_ids[-1] == eos) == (sample.finish_reason == "stop")
        assert backend._tokenizer.decode(text_ids) == sample.text
        if sample.token_ids:
            want = _forward_logprobs(backend, sample.token_ids)
            assert torch.allclose(torch.tensor(sample.logprobs), want, atol=1e-5)
    assert batch == backend.generate([_group(), _group("s1-g1", n=2)])  # the same batch is generated again alike
    assert batch[0] != backend.generate([_group("s1-g2")])[0]


def test_stop_strings_end_samples_at_the_completing_token(model_dir: Path) -> None:
    free = _backend(model_dir).generate([_group(n=4)])[0]
    stop = next(s.text[2:4] for s in free if len(s.text) > 4 and s.finish_reason == "length")
    backend = HFBackend.from_dir(model_dir, SamplingSettings(temperature=1.0, max_new_tokens=16, seed=7, stop=(stop,)))
    stopped = [s for s in backend.generate([_group(n=4)])[0] if stop in s.text]
    assert stopped  # the same seed draws the same first sample, which holds the stop string
    for sample in stopped:
        assert sample.finish_reason == "stop"
        shorter = backend._tokenizer.decode(list(sample.token_ids[:-1]))
        assert stop not in shorter  # the answer ends with the token that completes the stop string
        assert sample.logprobs is not None and len(sample.logprobs) == len(sample.token_ids)


def test_new_weights_change_the_policy_and_its_version(model_dir: Path) -> None:
    backend = _backend(model_dir)
    sample = backend.generate([_group(n=1)])[0][0]
    before = _forward_logprobs(backend, sample.token_ids)
    weights = perturbed_weights(backend._model, seed=0)
    backend.load_weights(weights, policy_version=1)
    assert backend.policy_version == 1
    assert not torch.allclose(_forward_logprobs(backend, sample.token_ids), before)
    assert torch.equal(backend._model.state_dict()["model.norm.weight"], weights["model.norm.weight"])


def test_weights_that_do_not_fit_are_refused_and_change_nothing(model_dir: Path) -> None:
    backend = _backend(model_dir)
    own = {name: t.clone() for name, t in backend._model.state_dict().items()}
    shaped = {**own, "model.norm.weight": torch.zeros(7)}
    with pytest.raises(WeightMismatchError, match="other shapes"):
        backend.load_weights(shaped, policy_version=1)
    with pytest.raises(WeightMismatchError, match="missing"):
        backend.load_weights({k: v for k, v in own.items() if k != "model.norm.weight"}, policy_version=1)
    with pytest.raises(WeightMismatchError, match="tied weights differ"):  # the LM head is the embedding here
        backend.load_weights({**own, "lm_head.weight": own["lm_head.weight"] + 1.0}, policy_version=1)
    with pytest.raises(ValueError, match="not newer"):
        backend.load_weights(own, policy_version=0)
    assert all(torch.equal(t, own[n]) for n, t in backend._model.state_dict().items()) and backend.policy_version == 0


def test_a_directory_without_a_model_and_bad_sampling_are_refused(tmp_path: Path, model_dir: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no config"):
        HFBackend.from_dir(tmp_path, SamplingSettings())
    with pytest.raises(ValueError, match="temperature"):
        HFBackend.from_dir(model_dir, SamplingSettings(temperature=-1.0))

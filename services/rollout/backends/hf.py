"""The `hf` generation backend: transformers `generate` on any HF causal-LM directory (the light CPU default).

A batch of prompt groups is generated in one call; each group's `n` samples come with their token ids (the EOS that
ended a sample included: the policy is trained to stop), the sampling policy's per-token log-probs (log_softmax(
logits / T), what the trainer recomputes for the ratio; trainer/generation.py) and a finish reason. Sampling is
seeded by the backend seed and the batch's group ids, so the same batch is generated again identically by the same
weights. New weights are applied between generations by `load_weights`, which checks every name and shape before
touching the model and bumps the policy version the role stamps on what it publishes.
"""

from __future__ import annotations

import dataclasses
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from services.core.wire import PromptGroup
from trainer.generation import Completion, SamplingSettings, generate


class WeightMismatchError(ValueError):
    """Offered weights do not fit the model (a missing, unknown or differently shaped tensor)."""


def check_model_dir(model_dir: str | Path) -> Path:
    """The path of a Hugging Face model directory; FileNotFoundError when it holds no config.json."""
    path = Path(model_dir)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path} is not a Hugging Face model directory (no config.json)")
    return path


def check_weights(
    own: Mapping[str, torch.Tensor], weights: Mapping[str, torch.Tensor], tied: Sequence[tuple[str, str]] = ()
) -> None:
    """Refuse weights that do not fit a model's state dict: a missing, unknown or differently shaped tensor, or
    different values for two names the model ties to one tensor (`tied`, e.g. a tied LM head and the embedding:
    the model can hold only one of them, so which one wins would be an accident)."""
    missing = sorted(set(own) - set(weights))
    unknown = sorted(set(weights) - set(own))
    if missing or unknown:
        raise WeightMismatchError(f"weights do not match the model: missing {missing[:5]}, unknown {unknown[:5]}")
    wrong = [
        f"{n} {tuple(weights[n].shape)} != {tuple(t.shape)}" for n, t in own.items() if weights[n].shape != t.shape
    ]
    if wrong:
        raise WeightMismatchError(f"weights have other shapes: {wrong[:5]}")
    split = [f"{a} / {b}" for a, b in tied if not torch.equal(weights[a], weights[b])]
    if split:
        raise WeightMismatchError(f"tied weights differ: {split} (the model holds one tensor for both)")


def tied_names(state: Mapping[str, torch.Tensor]) -> list[tuple[str, str]]:
    """Pairs of state-dict names that share one tensor in the model (a tied LM head and its embedding)."""
    first: dict[int, str] = {}
    pairs = []
    for name, tensor in state.items():
        pointer = tensor.data_ptr()
        if pointer in first:
            pairs.append((first[pointer], name))
        else:
            first[pointer] = name
    return pairs


class HFBackend:
    """Samples prompt groups with a transformers model held in this process."""

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        sampling: SamplingSettings,
        policy_version: int = 0,
    ) -> None:
        """`sampling` is the run's temperature, top-p, token limit and base seed; each group sets its own `n`."""
        if tokenizer.eos_token_id is None:
            raise ValueError("the tokenizer has no EOS token: samples could not end")
        self._model, self._tokenizer, self._sampling = model, tokenizer, sampling
        self.policy_version = policy_version

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The weights generating now (a copy), e.g. to publish a starting point or to compare backends."""
        return {name: tensor.detach().clone() for name, tensor in self._model.state_dict().items()}

    @classmethod
    def from_dir(cls, model_dir: str | Path, sampling: SamplingSettings) -> HFBackend:
        """Load a model directory in float32 (bf16 is slower than fp32 on these CPUs; ../shared/DESIGN.md §4)."""
        path = check_model_dir(model_dir)
        model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)
        return cls(model, AutoTokenizer.from_pretrained(str(path)), sampling)

    def token_ids(self, text: str) -> list[int]:
        return list(self._tokenizer.encode(text, add_special_tokens=False))

    def generate(self, groups: Sequence[PromptGroup]) -> list[list[Completion]]:
        """`group.n` samples of each group's prompt (one list per group, in order), each with token ids, log-probs
        and a finish reason. Groups with the same `n` share forward batches."""
        out: dict[int, list[Completion]] = {}
        for n in sorted({group.n for group in groups}):
            indices = [i for i, group in enumerate(groups) if group.n == n]
            ids = "\n".join(groups[i].group_id for i in indices)
            seed = (self._sampling.seed * 1_000_003 + zlib.crc32(ids.encode())) % 2**31
            settings = dataclasses.replace(self._sampling, n=n, seed=seed)
            prompts = [groups[i].prompt for i in indices]
            done = generate(self._model, self._tokenizer, prompts, settings, with_logprobs=True, keep_eos=True)
            out.update(zip(indices, done, strict=True))
        return [out[i] for i in range(len(groups))]

    def load_weights(self, weights: Mapping[str, torch.Tensor], policy_version: int) -> None:
        """Replace every weight between generations; refuse, without changing anything, weights that do not fit."""
        own = self._model.state_dict()
        check_weights(own, weights, tied_names(own))
        if policy_version <= self.policy_version:
            raise ValueError(f"policy version {policy_version} is not newer than the current {self.policy_version}")
        with torch.no_grad():
            for name, tensor in own.items():
                tensor.copy_(weights[name].to(dtype=tensor.dtype))
        self.policy_version = policy_version

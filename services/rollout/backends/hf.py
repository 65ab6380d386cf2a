"""The `hf` generation backend: transformers `generate` on any HF causal-LM directory (the light CPU default).

Each prompt group's `n` samples come with their token ids, the sampling policy's per-token log-probs
(log_softmax(logits / T), what the trainer recomputes for the ratio; trainer/generation.py) and a finish reason.
Sampling is seeded per group (the backend seed and the group id), so a redelivered group is generated again
identically by the same weights. New weights are applied between generations by `load_weights`, which checks every
name and shape before touching the model and bumps the policy version the role stamps on what it publishes.
"""

from __future__ import annotations

import dataclasses
import zlib
from collections.abc import Mapping
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from services.core.wire import PromptGroup
from trainer.generation import Completion, SamplingSettings, generate


class WeightMismatchError(ValueError):
    """Offered weights do not fit the model (a missing, unknown or differently shaped tensor)."""


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

    @classmethod
    def from_dir(cls, model_dir: str | Path, sampling: SamplingSettings) -> HFBackend:
        """Load a model directory in float32 (bf16 is slower than fp32 on these CPUs; ../shared/DESIGN.md §4)."""
        path = Path(model_dir)
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"{path} is not a Hugging Face model directory (no config.json)")
        model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)
        return cls(model, AutoTokenizer.from_pretrained(str(path)), sampling)

    def token_ids(self, text: str) -> list[int]:
        return list(self._tokenizer.encode(text, add_special_tokens=False))

    def generate(self, group: PromptGroup) -> list[Completion]:
        """`group.n` samples of the group's prompt, each with token ids, log-probs and a finish reason."""
        seed = (self._sampling.seed * 1_000_003 + zlib.crc32(group.group_id.encode())) % 2**31
        settings = dataclasses.replace(self._sampling, n=group.n, seed=seed)
        return generate(self._model, self._tokenizer, [group.prompt], settings, with_logprobs=True)[0]

    def load_weights(self, weights: Mapping[str, torch.Tensor], policy_version: int) -> None:
        """Replace every weight between generations; refuse, without changing anything, weights that do not fit."""
        own = self._model.state_dict()
        missing = sorted(set(own) - set(weights))
        unknown = sorted(set(weights) - set(own))
        if missing or unknown:
            raise WeightMismatchError(f"weights do not match the model: missing {missing[:5]}, unknown {unknown[:5]}")
        wrong = [
            f"{n} {tuple(weights[n].shape)} != {tuple(t.shape)}" for n, t in own.items() if weights[n].shape != t.shape
        ]
        if wrong:
            raise WeightMismatchError(f"weights have other shapes: {wrong[:5]}")
        if policy_version <= self.policy_version:
            raise ValueError(f"policy version {policy_version} is not newer than the current {self.policy_version}")
        with torch.no_grad():
            for name, tensor in own.items():
                tensor.copy_(weights[name].to(dtype=tensor.dtype))
        self.policy_version = policy_version

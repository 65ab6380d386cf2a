"""Tiny, untrained policy directories and prompt files for rollout tests: built in seconds, no downloads."""

from __future__ import annotations

import json
import random
from pathlib import Path

import torch

from services.core.config import WorldModelConfig
from trainer.world.policy import build_policy
from trainer.world.tasks import DATA_SOURCE, generate_problem
from trainer.world.tokenizer import save_tokenizer, train_tokenizer

# heads of 64 (vLLM's CPU attention needs head_dim >= 64), two layers: ~0.6 M parameters
TINY_MODEL = WorldModelConfig(hidden_size=128, num_layers=2, num_heads=2, intermediate_size=256)


def write_tiny_model(path: Path, seed: int = 0, model: WorldModelConfig = TINY_MODEL) -> Path:
    """A randomly initialised Qwen2 with the world's tokenizer, saved as a Hugging Face model directory."""
    problems = [generate_problem(random.Random(i), 1 + i % 3) for i in range(50)]
    tokenizer = train_tokenizer([p.prompt + p.solution for p in problems])
    policy = build_policy(model, 257, tokenizer.eos_token_id, seed)  # 257: the byte-level vocabulary bound
    path.mkdir(parents=True, exist_ok=True)
    policy.save_pretrained(str(path), safe_serialization=True)
    save_tokenizer(tokenizer, path)
    return path


def write_prompts(path: Path, count: int, seed: int = 0) -> Path:
    """`count` arithmetic-chain prompt rows (prompt, label, data_source) as JSONL."""
    rng = random.Random(seed)
    rows = []
    for i in range(count):
        problem = generate_problem(rng, 1 + i % 3)
        rows.append({"prompt": problem.prompt, "label": str(problem.answer), "data_source": DATA_SOURCE})
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def perturbed_weights(model: torch.nn.Module, seed: int, scale: float = 0.05) -> dict[str, torch.Tensor]:
    """A copy of the model's state dict moved by Gaussian noise, parameter by parameter: names the model ties to one
    tensor (a tied LM head and its embedding) stay equal, as in a trainer's state dict."""
    generator = torch.Generator().manual_seed(seed)
    noise = {id(p): scale * torch.randn(p.shape, generator=generator) for p in model.parameters()}
    params = dict(model.named_parameters(remove_duplicate=False))
    return {
        name: tensor.detach() + noise[id(params[name])] if name in params else tensor.detach().clone()
        for name, tensor in model.state_dict().items()
    }

"""The tiny policy: a Qwen2-architecture causal LM built from a config (nothing downloaded).

Qwen2 because it is what the paper's models are and what vLLM, OpenRLHF and TRL load without custom code. The
default (hidden 128, 4 layers, 2 heads of 64, MLP 512, tied embeddings) has ~1.06 M parameters: small enough to
SFT in a few minutes on two CPU cores and to run GRPO steps in seconds, large enough to learn three-digit running
sums. Heads are 64 wide (hidden / heads) because vLLM's CPU attention needs head_dim >= 64 (../shared/DESIGN.md §4).
"""

from __future__ import annotations

import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from services.core.config.world import WorldModelConfig


def qwen2_config(model: WorldModelConfig, vocab_size: int, eos_token_id: int) -> Qwen2Config:
    return Qwen2Config(
        vocab_size=vocab_size,
        hidden_size=model.hidden_size,
        intermediate_size=model.intermediate_size,
        num_hidden_layers=model.num_layers,
        num_attention_heads=model.num_heads,
        num_key_value_heads=model.num_heads,
        max_position_embeddings=model.max_position_embeddings,
        tie_word_embeddings=True,
        bos_token_id=eos_token_id,
        eos_token_id=eos_token_id,
        pad_token_id=eos_token_id,
    )


def build_policy(model: WorldModelConfig, vocab_size: int, eos_token_id: int, seed: int) -> Qwen2ForCausalLM:
    """Freshly initialised weights, deterministic per seed."""
    torch.manual_seed(seed)
    policy = Qwen2ForCausalLM(qwen2_config(model, vocab_size, eos_token_id))
    policy.generation_config.eos_token_id = eos_token_id
    policy.generation_config.pad_token_id = eos_token_id
    return policy


def parameter_count(policy: torch.nn.Module) -> int:
    """Distinct parameters (tied embeddings counted once)."""
    return sum(p.numel() for p in policy.parameters())

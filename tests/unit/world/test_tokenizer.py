"""The tiny world's tokenizer survives the standard loaders: in a directory with a qwen2 `config.json`,
`AutoTokenizer` (what OpenRLHF, TRL and vLLM call) builds transformers' Qwen2Tokenizer, and it must give the ids the
training tokenizer gives and decode them back; `AutoModelForCausalLM` must load the same weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from services.core.config import WorldModelConfig
from trainer.world.policy import build_policy, parameter_count
from trainer.world.tasks import Problem
from trainer.world.tokenizer import TokenizerMismatchError, check_round_trip, save_tokenizer, train_tokenizer

TASK_TEXTS = [
    p.prompt + p.solution
    for p in (Problem(728, (-9, -8, -6, 5), 1), Problem(101, (9, -2, 7, 1, -3, 4), 3), Problem(999, (-1,) * 9, 6))
]
OTHER_TEXTS = [
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May.",
    "Find $\\frac{1}{2}+\\sqrt{x^2}$ when x = -3.\n\n  Tabs\there, ünïcödé, 数学, emoji 🙂, 'quotes' \"double\"",
    "   leading spaces and trailing   \n\n\n",
]


def _saved_world_dir(tmp_path: Path) -> tuple[Path, object, torch.nn.Module]:
    tokenizer = train_tokenizer(TASK_TEXTS * 50)
    model = build_policy(WorldModelConfig(hidden_size=64, num_layers=1, num_heads=1), len(tokenizer), 0, seed=0)
    model.save_pretrained(str(tmp_path), safe_serialization=True)
    save_tokenizer(tokenizer, tmp_path)
    return tmp_path, tokenizer, model


def test_auto_tokenizer_on_a_qwen2_directory_gives_the_training_ids(tmp_path: Path) -> None:
    directory, trained, _ = _saved_world_dir(tmp_path)
    loaded = AutoTokenizer.from_pretrained(str(directory))
    assert "Qwen2Tokenizer" in type(loaded).__name__  # the substitution the design warns about does happen
    assert check_round_trip(trained, loaded, TASK_TEXTS + OTHER_TEXTS) == len(TASK_TEXTS) + len(OTHER_TEXTS)
    assert loaded.eos_token == "<|endoftext|>" and loaded.eos_token_id == 0 and loaded.pad_token_id == 0
    # character level: one token per character of the worked lines, digits one by one
    assert len(loaded.encode("(1) 728-9=719", add_special_tokens=False)) == len("(1) 728-9=719")


def test_auto_model_loads_the_same_weights(tmp_path: Path) -> None:
    directory, _, model = _saved_world_dir(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(str(directory))
    assert loaded.config.model_type == "qwen2" and parameter_count(loaded) == parameter_count(model)
    ids = torch.tensor([[5, 17, 42, 99, 3]])
    with torch.no_grad():
        assert torch.equal(model.eval()(ids).logits, loaded.eval()(ids).logits)


def test_a_tokenizer_with_other_processing_is_caught(tmp_path: Path) -> None:
    directory, _, _ = _saved_world_dir(tmp_path)
    loaded = AutoTokenizer.from_pretrained(str(directory))
    other = train_tokenizer(TASK_TEXTS * 50, merges=40)  # merges change the ids of the same text
    with pytest.raises(TokenizerMismatchError, match="ids differ"):
        check_round_trip(other, loaded, TASK_TEXTS)


def test_the_default_policy_is_about_a_million_parameters() -> None:
    tokenizer = train_tokenizer(TASK_TEXTS)
    assert len(tokenizer) == 257  # EOS + the 256 byte symbols, no merges
    count = parameter_count(build_policy(WorldModelConfig(), len(tokenizer), 0, seed=0))
    assert 1_000_000 <= count <= 1_100_000

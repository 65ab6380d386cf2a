"""The tiny world's tokenizer: byte-level BPE trained from scratch with exactly Qwen2's text processing.

In a directory whose `config.json` says qwen2, `AutoTokenizer.from_pretrained` — what OpenRLHF, TRL and vLLM call —
always builds transformers' `Qwen2Tokenizer`: it keeps the vocabulary and merges of `tokenizer.json` but imposes
Qwen2's own processing (NFC, Qwen's split regex, byte-level pre-tokenisation and decoding, no unknown token;
../shared/DESIGN.md §4). A tokenizer trained with any other processing silently gets other ids there. This one is
trained with that processing, so the ids agree, and its alphabet holds all 256 byte symbols, so any text (a real
benchmark prompt included) encodes losslessly. With no merges (the default) it is character-level: digits are
single tokens anyway under Qwen's regex, and responses stay 80–200 tokens long.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Final

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

EOS_TOKEN: Final = "<|endoftext|>"
QWEN2_SPLIT_REGEX: Final = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
    r"""|\s*[\r\n]+|\s+(?!\S)|\s+"""
)
"""Qwen2's pre-tokenisation regex (transformers' `Qwen2Tokenizer`, Qwen's own `tokenization_qwen2.py`)."""


def train_tokenizer(texts: Iterable[str], merges: int = 0) -> PreTrainedTokenizerFast:
    """A byte-level BPE with `merges` merges over the 256 byte symbols (0: character-level), EOS = pad = id 0."""
    if merges < 0:
        raise ValueError(f"merges must be >= 0, got {merges}")
    core = Tokenizer(models.BPE())
    core.normalizer = normalizers.NFC()
    core.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_SPLIT_REGEX), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    core.decoder = decoders.ByteLevel()
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    trainer = trainers.BpeTrainer(
        vocab_size=1 + len(alphabet) + merges,
        special_tokens=[EOS_TOKEN],
        initial_alphabet=alphabet,
        show_progress=False,
    )
    core.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=core, eos_token=EOS_TOKEN, pad_token=EOS_TOKEN, unk_token=EOS_TOKEN, padding_side="left"
    )


def save_tokenizer(tokenizer: PreTrainedTokenizerBase, directory: Path) -> None:
    tokenizer.save_pretrained(str(directory))


class TokenizerMismatchError(RuntimeError):
    """The standard loader does not reproduce the training tokenizer's ids or text."""


def check_round_trip(trained: PreTrainedTokenizerBase, loaded: PreTrainedTokenizerBase, texts: Iterable[str]) -> int:
    """Raise unless `loaded` (e.g. `AutoTokenizer.from_pretrained(dir)`) gives the ids of `trained` on every text and
    decodes them back to the text; returns how many texts were checked."""
    checked = 0
    for text in texts:
        want, got = trained.encode(text, add_special_tokens=False), loaded.encode(text, add_special_tokens=False)
        if want != got:
            raise TokenizerMismatchError(f"ids differ on {text[:60]!r}: trained {want[:12]}…, loaded {got[:12]}…")
        if loaded.decode(got) != text:
            raise TokenizerMismatchError(f"decoding does not round-trip {text[:60]!r}: {loaded.decode(got)[:60]!r}")
        checked += 1
    if loaded.eos_token_id != trained.eos_token_id:
        raise TokenizerMismatchError(f"eos id differs: trained {trained.eos_token_id}, loaded {loaded.eos_token_id}")
    return checked

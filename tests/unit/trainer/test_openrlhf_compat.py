"""The OpenRLHF compatibility layer: active only where flash-attn (or CUDA) is missing, never replacing a present
module, and leaving transformers' own view of flash-attention untouched."""

from __future__ import annotations

import sys
import types

import pytest
import torch
from transformers.modeling_flash_attention_utils import _pad_input, _unpad_input

from trainer import openrlhf_compat
from trainer.openrlhf_compat import FLASH_ATTN_MODULES, import_openrlhf


def test_openrlhf_imports_and_the_shim_is_gone_after() -> None:
    openrlhf = import_openrlhf()
    assert openrlhf.Actor.__module__ == "openrlhf.models.actor"
    assert issubclass(openrlhf.Strategy, openrlhf.strategy_module.DeepspeedStrategy)
    from transformers.utils import is_flash_attn_2_available

    assert not is_flash_attn_2_available()
    assert not any(name in sys.modules for name in FLASH_ATTN_MODULES)
    with pytest.raises(ImportError):  # OpenRLHF's own lazy flash-attn import still falls back as when absent
        __import__("flash_attn.ops.triton.cross_entropy")


def test_a_present_flash_attn_is_never_replaced(monkeypatch: pytest.MonkeyPatch) -> None:
    real = types.ModuleType("flash_attn")  # stands for an installed flash-attn
    monkeypatch.setitem(sys.modules, "flash_attn", real)
    assert openrlhf_compat.flash_attn_installed()
    with openrlhf_compat._flash_attn_shim():
        assert sys.modules["flash_attn"] is real
        assert "flash_attn.bert_padding" not in sys.modules
    assert sys.modules["flash_attn"] is real


def test_with_cuda_the_strategy_defers_to_openrlhf(monkeypatch: pytest.MonkeyPatch) -> None:
    strategy_cls = import_openrlhf().Strategy
    calls = []
    base = strategy_cls.__mro__[1]
    monkeypatch.setattr(base, "all_reduce", lambda self, data, op="mean": calls.append(("reduce", op)) or data)
    monkeypatch.setattr(base, "all_gather", lambda self, data: calls.append(("gather", None)) or data)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    strategy = strategy_cls.__new__(strategy_cls)
    assert strategy.all_reduce(1.0, "sum") == 1.0 and strategy.all_gather(2.0) == 2.0
    assert calls == [("reduce", "sum"), ("gather", None)]


def test_padding_helpers_match_transformers() -> None:
    torch.manual_seed(0)
    hidden = torch.randn(3, 5, 4)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]])
    ours = openrlhf_compat.unpad_input(hidden, mask)
    theirs = _unpad_input(hidden, mask)
    for a, b in zip(ours[:4], theirs[:4], strict=True):
        if isinstance(a, torch.Tensor):
            assert torch.equal(a, b)
        else:
            assert a == b
    assert torch.equal(openrlhf_compat.pad_input(ours[0], ours[1], 3, 5), _pad_input(theirs[0], theirs[1], 3, 5))
    assert torch.equal(openrlhf_compat.index_first_axis(hidden.reshape(15, 4), ours[1]), ours[0])

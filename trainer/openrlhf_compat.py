"""OpenRLHF 0.11.2 on machines without flash-attn or CUDA: the one place that bridges the gap (README: "OpenRLHF
compatibility"). On a GPU machine with flash-attn installed every part of it is inactive.

What it replaces, and why (measured on OpenRLHF 0.11.2, DeepSpeed 0.19.6, torch 2.13 CPU):
1. `openrlhf.models` imports `flash_attn.bert_padding` and `flash_attn.utils.distributed` at module load
   (`models/ring_attn_utils.py`), although those symbols serve packed samples only (`Actor(packing_samples=True)`,
   which we never use). When flash-attn is absent, `import_openrlhf()` provides pure-torch equivalents for exactly
   that import and removes them from `sys.modules` again, so transformers still reports flash-attention as
   unavailable and OpenRLHF's own lazy `flash_attn.ops` imports still fall back. Upstream pull request #1302
   (pure-torch fallbacks inside OpenRLHF) would retire this part.
2. `DeepspeedStrategy` hard-codes CUDA in three places: the device mesh (`init_device_mesh("cuda", ...)`), the
   barrier after saving (`torch.cuda.synchronize()`), and `all_reduce`/`all_gather` (`torch.cuda.current_device()`).
   Without CUDA the first two are pointed at the CPU in OpenRLHF's module namespace, and `Strategy` (a subclass)
   reduces on the tensors' own device. With CUDA nothing is replaced and `Strategy` defers to OpenRLHF.
`torch.cuda.set_device` in `setup_distributed` is avoided by running with LOCAL_RANK=-1 on CPU (see trainer.engine).
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import sys
import types
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import cache
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

FLASH_ATTN_MODULES = ("flash_attn", "flash_attn.bert_padding", "flash_attn.utils", "flash_attn.utils.distributed")


def flash_attn_installed() -> bool:
    """True when a real flash-attn package can be imported (then no shim is ever installed)."""
    module = sys.modules.get("flash_attn")
    if module is not None:
        return not getattr(module, "__rlvr_shim__", False)
    return importlib.util.find_spec("flash_attn") is not None


# ---- pure-torch equivalents of the flash-attn padding helpers OpenRLHF imports (packed samples only)


def index_first_axis(values: Tensor, indices: Tensor) -> Tensor:
    """Rows `indices` of `values` along its first axis (flash_attn.bert_padding.index_first_axis)."""
    return values[indices]


def unpad_input(
    hidden_states: Tensor, attention_mask: Tensor, unused_mask: Tensor | None = None
) -> tuple[Tensor, Tensor, Tensor, int, Tensor]:
    """(B, S, ...) and a (B, S) mask -> the kept tokens (nnz, ...), their flat indices, cu_seqlens, the longest
    sequence and the per-row counts (flash_attn.bert_padding.unpad_input's contract)."""
    keep = attention_mask if unused_mask is None else attention_mask + unused_mask
    seqlens = keep.sum(dim=-1, dtype=torch.int32)
    used = attention_mask.sum(dim=-1, dtype=torch.int32)
    indices = torch.nonzero(keep.flatten(), as_tuple=False).flatten()
    cu_seqlens = F.pad(torch.cumsum(seqlens, dim=0, dtype=torch.int32), (1, 0))
    flat = hidden_states.reshape(-1, *hidden_states.shape[2:])
    return flat[indices], indices, cu_seqlens, int(seqlens.max()) if seqlens.numel() else 0, used


def pad_input(hidden_states: Tensor, indices: Tensor, batch: int, seqlen: int) -> Tensor:
    """Inverse of unpad_input: scatter (nnz, ...) rows back into a zero (B, S, ...) tensor."""
    out = torch.zeros(batch * seqlen, *hidden_states.shape[1:], dtype=hidden_states.dtype, device=hidden_states.device)
    out[indices] = hidden_states
    return out.reshape(batch, seqlen, *hidden_states.shape[1:])


def all_gather(input_: Tensor, process_group: Any) -> Tensor:
    """Concatenate every rank's `input_` along dim 0 (flash_attn.utils.distributed.all_gather)."""
    world = dist.get_world_size(process_group)
    out = torch.empty(world * input_.shape[0], *input_.shape[1:], dtype=input_.dtype, device=input_.device)
    dist.all_gather_into_tensor(out, input_.contiguous(), group=process_group)
    return out


def _module(name: str, *, package: bool = False) -> types.ModuleType:
    """A module with a spec (importlib.util.find_spec raises on a module without one while it is installed)."""
    module = types.ModuleType(name)
    module.__spec__ = importlib.machinery.ModuleSpec(name, loader=None, is_package=package)
    if package:
        module.__path__ = []
    return module


def _shim_modules() -> dict[str, types.ModuleType]:
    from einops import rearrange

    root = _module("flash_attn", package=True)  # a package: `flash_attn.ops...` still fails as when absent
    root.__rlvr_shim__ = True  # type: ignore[attr-defined]
    padding = _module("flash_attn.bert_padding")
    for name, value in (
        ("index_first_axis", index_first_axis),
        ("pad_input", pad_input),
        ("unpad_input", unpad_input),
        ("rearrange", rearrange),
    ):
        setattr(padding, name, value)
    utils = _module("flash_attn.utils", package=True)
    distributed = _module("flash_attn.utils.distributed")
    distributed.all_gather = all_gather  # type: ignore[attr-defined]
    return dict(zip(FLASH_ATTN_MODULES, (root, padding, utils, distributed), strict=True))


@contextmanager
def _flash_attn_shim() -> Iterator[None]:
    """Provide the shim modules for the duration of an import, then remove them (never a present module)."""
    if flash_attn_installed():
        yield
        return
    # transformers caches its flash-attention checks: settle them before the shim exists, so they hold the truth.
    from transformers.utils import import_utils

    import_utils.is_flash_attn_2_available()
    importlib.import_module("transformers.integrations.flash_attention")
    modules = _shim_modules()
    sys.modules.update(modules)
    try:
        yield
    finally:
        for name, module in modules.items():
            if sys.modules.get(name) is module:
                del sys.modules[name]


def _barrier_only() -> None:
    dist.barrier()


def _cpu_device_mesh(init_device_mesh: Callable[..., Any]) -> Callable[..., Any]:
    def init_on_cpu(device_type: str, *args: Any, **kwargs: Any) -> Any:
        return init_device_mesh("cpu" if device_type == "cuda" else device_type, *args, **kwargs)

    return init_on_cpu


@cache
def import_openrlhf() -> types.SimpleNamespace:
    """Import the OpenRLHF pieces the trainer uses (Actor, DeepspeedStrategy, PolicyLoss), made to work here."""
    with _flash_attn_shim():
        models = importlib.import_module("openrlhf.models")
        strategy_module = importlib.import_module("openrlhf.utils.deepspeed.deepspeed")
    if not torch.cuda.is_available():
        strategy_module.init_device_mesh = _cpu_device_mesh(strategy_module.init_device_mesh)  # type: ignore[attr-defined]
        strategy_module.torch_dist_barrier_and_cuda_sync = _barrier_only  # type: ignore[attr-defined]
    base = strategy_module.DeepspeedStrategy

    class Strategy(base):  # type: ignore[misc, valid-type]
        """OpenRLHF's DeepspeedStrategy whose reductions run on the tensors' device when CUDA is absent.

        `torch_adam = True` makes DeepSpeed use torch.optim.AdamW (its documented `torch_adam` optimizer parameter)
        instead of its fused op, which would be JIT-compiled on a CPU machine.
        """

        torch_adam = False

        def get_ds_train_config(self, optim_dict: dict[str, Any] | None = None, **kwargs: Any) -> dict[str, Any]:
            config: dict[str, Any] = super().get_ds_train_config(optim_dict, **kwargs)
            if self.torch_adam and "optimizer" in config:
                config["optimizer"] = {**config["optimizer"], "params": {**config["optimizer"]["params"]}}
                config["optimizer"]["params"]["torch_adam"] = True
            return config

        def all_reduce(self, data: Any, op: str = "mean") -> Any:
            if torch.cuda.is_available():
                return super().all_reduce(data, op)
            if isinstance(data, dict):
                return {key: self.all_reduce(value, op) for key, value in data.items()}
            if op not in ("mean", "max", "sum"):
                raise ValueError(f"all_reduce op {op!r}: expected mean, max or sum")
            tensor = data.clone() if isinstance(data, Tensor) else torch.tensor([float(data)], dtype=torch.float64)
            dist.all_reduce(tensor, op=dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.SUM)
            if op == "mean":
                tensor = tensor / dist.get_world_size()
            return tensor if isinstance(data, Tensor) else float(tensor.item())

        def all_gather(self, data: Any) -> Any:
            if torch.cuda.is_available():
                return super().all_gather(data)
            if isinstance(data, dict):
                return {key: self.all_gather(value) for key, value in data.items()}
            tensor = data if isinstance(data, Tensor) else torch.tensor([float(data)])
            parts = [torch.zeros_like(tensor) for _ in range(dist.get_world_size())]
            dist.all_gather(parts, tensor)
            return torch.cat(parts)

    return types.SimpleNamespace(
        Actor=models.Actor, PolicyLoss=models.PolicyLoss, Strategy=Strategy, strategy_module=strategy_module
    )

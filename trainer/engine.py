"""One data-parallel rank of the trainer: the policy in OpenRLHF's `Actor`, trained by a DeepSpeed engine from
OpenRLHF's `DeepspeedStrategy` (the only module that touches deepspeed or openrlhf; see trainer/openrlhf_compat.py).

The rank joins its process group from RANK / WORLD_SIZE / MASTER_ADDR / MASTER_PORT (gloo on CPU, NCCL on GPU).
What OpenRLHF decides stays OpenRLHF's: the ZeRO config, the optimizer and scheduler construction, gradient
accumulation and clipping, the checkpoint layout (`save_ckpt`/`load_ckpt`) and the Hugging Face export
(`save_model`). What is ours: the forward pass that yields per-token log-probs and entropies in chunks
(trainer/token_stats.py) and the loss (trainer/losses.py), scaled with `engine_loss_scale` so that DeepSpeed's
averaging over ranks and accumulation steps gives exactly the full-batch gradient.
"""

from __future__ import annotations

import os
import types
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from services.core.config import TrainerConfig
from trainer.openrlhf_compat import import_openrlhf
from trainer.token_stats import PolicyInputs, build_policy_inputs, response_token_stats

TORCH_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def set_distributed_env(rank: int, world_size: int, master_addr: str, master_port: int) -> None:
    """The environment torch.distributed (and DeepSpeed) read; LOCAL_RANK=-1 without CUDA keeps OpenRLHF from
    calling torch.cuda.set_device. Call before building a PolicyEngine in a process of its own."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank={rank} must be in [0, world_size={world_size})")
    os.environ.update(
        RANK=str(rank), WORLD_SIZE=str(world_size), MASTER_ADDR=master_addr, MASTER_PORT=str(master_port),
        LOCAL_RANK="0" if torch.cuda.is_available() else "-1",
    )  # fmt: skip


class PolicyEngine:
    """The trained policy of one rank (and the frozen reference when the KL coefficient is > 0)."""

    def __init__(self, model_dir: Path, trainer: TrainerConfig, *, total_steps: int, samples_per_step: int) -> None:
        if not (model_dir / "config.json").is_file():
            raise FileNotFoundError(f"{model_dir} is not a Hugging Face model folder (no config.json)")
        openrlhf = import_openrlhf()
        engine, optim = trainer.engine, trainer.optimizer
        self.model_dir, self.config = model_dir, trainer
        args = types.SimpleNamespace(
            local_rank=-1,
            ds=types.SimpleNamespace(
                param_dtype=engine.param_dtype, zero_stage=engine.zero_stage, tensor_parallel_size=1,
                ring_attn_size=1, adam_offload=False,
            ),
            train=types.SimpleNamespace(dynamic_batch_enable=False),
        )  # fmt: skip
        self.strategy = openrlhf.Strategy(
            seed=engine.seed, max_norm=optim.max_grad_norm, micro_train_batch_size=engine.micro_batch_size,
            train_batch_size=samples_per_step, zero_stage=engine.zero_stage, args=args,
        )  # fmt: skip
        self.strategy.torch_adam = optim.implementation == "torch"
        self.strategy.setup_distributed()
        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()
        per_rank = samples_per_step // self.world_size
        if samples_per_step % (self.world_size * engine.micro_batch_size):
            raise ValueError(
                f"{samples_per_step} samples per step do not split into micro-batches of {engine.micro_batch_size} "
                f"on {self.world_size} ranks"
            )
        self.samples_per_rank = per_rank
        self.grad_accum_steps = per_rank // engine.micro_batch_size
        self.device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else None
        actor = self._load_actor(openrlhf)
        if engine.gradient_checkpointing:
            actor.gradient_checkpointing_enable()
        prepare_config = {
            "optim": "adam",
            "adam": {"lr": optim.lr, "betas": optim.betas, "eps": optim.eps, "weight_decay": optim.weight_decay},
            "lr_scheduler": optim.lr_scheduler, "lr_warmup_ratio": optim.warmup_ratio,
            "min_lr_ratio": optim.min_lr_ratio, "max_norm": optim.max_grad_norm, "scheduler_steps": total_steps,
        }  # fmt: skip
        self.actor, self.optimizer, self.scheduler = self.strategy.prepare((actor, prepare_config))
        self.reference = self.strategy.prepare(self._load_actor(openrlhf)) if trainer.policy_loss.kl_coef > 0 else None
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(str(model_dir))

    def _load_actor(self, openrlhf: types.SimpleNamespace) -> Any:
        engine = self.config.engine
        if engine.param_dtype != "fp32":  # OpenRLHF's own loading path (ZeRO-3 partitioned init included)
            ds_config = self.strategy.get_ds_train_config()
            return openrlhf.Actor(
                str(self.model_dir), attn_implementation=engine.attn_implementation,
                param_dtype=engine.param_dtype, ds_config=ds_config,
            )  # fmt: skip
        # OpenRLHF loads bf16/fp16 only; an fp32 policy is loaded here and handed to its Actor as a module.
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(
            str(self.model_dir), dtype=torch.float32, attn_implementation=engine.attn_implementation
        )
        model.config.use_cache = False
        actor = openrlhf.Actor(model)
        actor.packing_samples = False  # set by Actor only on its path-loading branch
        return actor

    # ---- forward passes

    @property
    def module(self) -> torch.nn.Module:
        """The Hugging Face model inside the DeepSpeed engine."""
        module: torch.nn.Module = self.actor.model.module
        return module

    def inputs(self, prompts: Sequence[Sequence[int]], response_ids: Tensor, response_mask: Tensor) -> PolicyInputs:
        return build_policy_inputs(prompts, response_ids, response_mask)

    def token_stats(
        self, inputs: PolicyInputs, response_ids: Tensor, response_mask: Tensor, *, temperature: float,
        with_entropy: bool, reference: bool = False,
    ) -> tuple[Tensor, Tensor | None]:  # fmt: skip
        """Per-token log-probs (and entropies) of the responses under the policy (or the reference). Keeps the
        graph when grad is enabled (then each chunk's logits are recomputed in backward)."""
        actor = self.reference if reference else self.actor
        if actor is None:
            raise ValueError("no reference model: it exists only when trainer.policy_loss.kl_coef > 0")
        device = self._device()
        output = actor.model(
            input_ids=inputs.input_ids.to(device), attention_mask=inputs.attention_mask.to(device),
            position_ids=inputs.position_ids.to(device), output_hidden_states=True, logits_to_keep=1, use_cache=False,
        )  # fmt: skip
        return response_token_stats(
            output.hidden_states[-1], actor.model.module.lm_head, inputs, response_ids, response_mask,
            temperature=temperature, chunk_tokens=self.config.engine.logit_chunk_tokens,
            with_entropy=with_entropy, recompute=torch.is_grad_enabled(),
        )  # fmt: skip

    def _device(self) -> torch.device:
        return self.device if self.device is not None else torch.device("cpu")

    # ---- the update

    def backward(self, loss: Tensor) -> None:
        self.strategy.backward(loss, self.actor, self.optimizer)

    def optimizer_step(self) -> dict[str, float]:
        """DeepSpeed's step (it applies the update at the accumulation boundary); the pre-clip norm and the lr."""
        lr = float(self.scheduler.get_last_lr()[0])
        own_norm = None
        if self.config.engine.zero_stage == 0 and self.actor.model.is_gradient_accumulation_boundary():
            # DeepSpeed keeps no global norm without ZeRO; the gradients are already averaged over ranks here
            grads = [p.grad for p in self.module.parameters() if p.grad is not None]
            own_norm = float(torch.nn.utils.get_total_norm(grads)) if grads else 0.0
        self.strategy.optimizer_step(self.optimizer, self.actor, self.scheduler)
        norm = own_norm if own_norm is not None else self.strategy.get_grad_norm(self.actor)
        return {"train/grad_norm": norm, "train/lr": lr}

    # ---- collectives (every rank must call them in the same order)

    def all_reduce_sum(self, values: Sequence[float]) -> list[float]:
        """Element-wise float64 sums over ranks."""
        tensor = torch.tensor(list(values), dtype=torch.float64, device=self._device())
        if self.world_size > 1:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return [float(v) for v in tensor.cpu()]

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's object on every rank (pickled through a tensor broadcast)."""
        if self.world_size == 1:
            return obj
        payload = [obj if self.rank == 0 else None]
        dist.broadcast_object_list(payload, src=0, device=self._device())
        return payload[0]

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()

    # ---- weights and checkpoints

    def full_state_dict(self) -> dict[str, Tensor]:
        """Every parameter and buffer, full and on the CPU (ZeRO-3 gathers; every rank must call)."""
        module = self.module
        if self.config.engine.zero_stage == 3:
            import deepspeed

            params = list(module.parameters())
            with deepspeed.zero.GatheredParameters(params, modifier_rank=None):
                return {name: t.detach().to("cpu", copy=True) for name, t in module.state_dict().items()}
        return {name: t.detach().to("cpu", copy=True) for name, t in module.state_dict().items()}

    def save_checkpoint(self, directory: Path, tag: str, client_state: dict[str, Any], *, keep: int) -> None:
        """OpenRLHF's save_ckpt (DeepSpeed states under directory/tag, `latest`, the last `keep` kept)."""
        self.strategy.save_ckpt(
            self.actor.model, str(directory), tag=tag, max_num=keep, max_mem=1 << 20, client_state=client_state
        )

    def load_checkpoint(self, directory: Path, tag: str) -> dict[str, Any]:
        """Model, optimizer and scheduler states of `tag`; returns its client state."""
        path, states = self.strategy.load_ckpt(self.actor.model, str(directory), tag=tag)
        if path is None:
            raise FileNotFoundError(f"no DeepSpeed checkpoint {tag!r} under {directory}")
        return dict(states)

    def export_hf(self, directory: Path) -> None:
        """A Hugging Face model folder (safetensors, config, tokenizer) via OpenRLHF's save_model."""
        self.strategy.save_model(self.actor, self.tokenizer, str(directory))

    def close(self) -> None:
        if dist.is_initialized():
            dist.destroy_process_group()

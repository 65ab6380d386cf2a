"""TRL's GRPOTrainer update on a fixed batch: the TRL side of bench/trainer.py (runs in .venv-trl, never in .venv).

    .venv-trl/bin/python bench/trl_update.py BATCH.json     # bench/trainer.py writes BATCH.json and reads OUT

BATCH.json holds the model folder, the prompts, the pre-generated completions and their rewards, and the settings
bench/trainer.py used for its own update; the result (JSON) goes to the file BATCH.json names as `out`.

The real `GRPOTrainer.train()` loop runs for warm-up + repeats optimizer steps, with generation replaced by TRL's
`rollout_func` hook, which hands back the fixed completions (and a dummy reward function that returns their fixed
rewards). Each optimizer step is timed from the `on_step_begin` to the `on_step_end` callback: that covers
`_generate_and_score_completions` (the rollout hook, decoding, rewards, advantages, the old-log-prob pass), the
`gradient_accumulation_steps` micro-batches of forward + loss + backward, gradient clipping and the AdamW step.

Old log-probs. With num_iterations=1 and steps_per_generation == gradient_accumulation_steps TRL does NOT compute
them: `_generate_and_score_completions` leaves `old_per_token_logps` unset and `_compute_loss` uses
`per_token_logps.detach()` (ratio exactly 1). Our trainer always runs that pass (it also yields the entropies the
credit strategies need), so by default this script adds it (`force_old_pass`) with the call TRL itself makes when the
condition holds (num_iterations > 1, or vLLM importance sampling): `_get_per_token_logps_and_entropies(self.model,
..., batch_size=per_device_train_batch_size)` under no_grad. Its time is reported apart too, so TRL's default step
is `step - old_pass`.

Run without arguments (e.g. by `make bench` under .venv, where TRL is absent) it prints a JSON line saying it is a
helper and exits 0.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")  # rollout_func is marked experimental
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_DISABLED", "true")


def peak_rss_mib() -> float:
    """This process's peak resident set size so far (Linux reports ru_maxrss in KiB; bench/trainer.py starts this
    process through a forking shell so that the value is this process's own, not inherited over execve)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def vm_hwm_mib() -> float:
    """The same peak read another way: VmHWM of /proc/self/status (this address space's high-water mark)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class StepRecorder:
    """Per optimizer step: wall time and the time of each instrumented part (seconds), plus forward positions."""

    def __init__(self) -> None:
        self.steps: list[dict[str, float]] = []
        self.current: dict[str, float] | None = None
        self.started = 0.0

    def begin(self) -> None:
        self.current = {}
        self.started = time.perf_counter()

    def end(self) -> None:
        if self.current is None:
            return
        self.current["step"] = time.perf_counter() - self.started
        self.steps.append(self.current)
        self.current = None

    def add(self, key: str, value: float) -> None:
        if self.current is not None:
            self.current[key] = self.current.get(key, 0.0) + value


def grpo_config(
    settings: dict[str, Any], *, output_dir: str, micro: int, accum: int, samples: int, max_steps: int,
    max_completion_length: int,
) -> Any:  # fmt: skip
    """TRL's GRPOConfig set to our trainer's defaults (also used by bench/trl_learning.py): token-mean loss over the
    batch (`loss_type="dapo"`), group-normalised advantages, clip-higher, no KL, one optimizer step per generation
    batch of `micro` x `accum` samples, constant AdamW, fp32 on the CPU. `settings` holds lr, weight_decay, betas,
    eps, max_grad_norm, clip_eps_low, clip_eps_high, temperature and seed."""
    from trl import GRPOConfig

    return GRPOConfig(
        output_dir=output_dir,
        per_device_train_batch_size=micro,
        gradient_accumulation_steps=accum,
        steps_per_generation=accum,
        num_generations=samples,
        num_iterations=1,
        max_steps=max_steps,
        learning_rate=float(settings["lr"]),
        weight_decay=float(settings["weight_decay"]),
        adam_beta1=float(settings["betas"][0]),
        adam_beta2=float(settings["betas"][1]),
        adam_epsilon=float(settings["eps"]),
        max_grad_norm=float(settings["max_grad_norm"]),
        lr_scheduler_type="constant",
        optim="adamw_torch",
        beta=0.0,
        loss_type="dapo",
        epsilon=float(settings["clip_eps_low"]),
        epsilon_high=float(settings["clip_eps_high"]),
        scale_rewards="group",
        temperature=float(settings["temperature"]),
        top_p=1.0,
        top_k=0,
        max_completion_length=max_completion_length,
        mask_truncated_completions=False,
        use_cpu=True,
        bf16=False,
        fp16=False,
        seed=int(settings["seed"]),
        gradient_checkpointing=False,
        report_to="none",
        save_strategy="no",
        logging_steps=1,
        disable_tqdm=True,
        log_completions=False,
        dataloader_num_workers=0,
        remove_unused_columns=False,
    )


def run(spec: dict[str, Any]) -> dict[str, Any]:
    settings = spec["settings"]
    import torch

    torch.set_num_threads(int(settings["threads"]))
    rss_start = peak_rss_mib()
    import transformers
    import trl
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOTrainer

    rss_imports = peak_rss_mib()
    recorder = StepRecorder()
    prompts: list[list[int]] = spec["prompts"]
    responses: list[list[list[int]]] = spec["responses"]
    rewards: list[list[float]] = spec["rewards"]
    samples = len(responses[0])
    names = [f"prompt-{i}" for i in range(len(prompts))]
    served = dict.fromkeys(names, 0)
    reward_of = {
        (names[g], tuple(resp)): rewards[g][s] for g in range(len(prompts)) for s, resp in enumerate(responses[g])
    }

    def rollout(batch_prompts: list[str], trainer: Any) -> dict[str, Any]:
        """The fixed completions: the k-th time a prompt appears in a generation batch it gets sample k."""
        prompt_ids, completion_ids = [], []
        for name in batch_prompts:
            g, s = names.index(name), served[name] % samples
            served[name] += 1
            prompt_ids.append(list(prompts[g]))
            completion_ids.append(list(responses[g][s]))
        return {"prompt_ids": prompt_ids, "completion_ids": completion_ids, "logprobs": None}

    def fixed_reward(prompts: list[str], completion_ids: list[list[int]], **kwargs: Any) -> list[float]:
        return [reward_of[(p, tuple(ids))] for p, ids in zip(prompts, completion_ids, strict=True)]

    force_old_pass = bool(settings.get("force_old_pass", True))
    trl_old_pass: list[bool] = []  # per generation batch: did TRL compute old_per_token_logps itself?

    class BenchGRPOTrainer(GRPOTrainer):  # type: ignore[misc]
        """GRPOTrainer with timing around its parts and, when asked, the old-log-prob pass TRL skips here."""

        def _generate_and_score_completions(self, inputs: Any) -> dict[str, Any]:
            started = time.perf_counter()
            output: dict[str, Any] = super()._generate_and_score_completions(inputs)
            recorder.add("generate_and_score", time.perf_counter() - started)
            trl_old_pass.append("old_per_token_logps" in output)
            if force_old_pass and "old_per_token_logps" not in output:
                started = time.perf_counter()
                input_ids = torch.cat([output["prompt_ids"], output["completion_ids"]], dim=1)
                attention_mask = torch.cat([output["prompt_mask"], output["completion_mask"]], dim=1)
                with torch.no_grad():
                    old, _, _ = self._get_per_token_logps_and_entropies(
                        self.model,
                        input_ids,
                        attention_mask,
                        output["completion_ids"].size(1),
                        batch_size=self.args.per_device_train_batch_size,
                    )
                output["old_per_token_logps"] = old
                recorder.add("old_pass", time.perf_counter() - started)
            return output

        def _get_per_token_logps_and_entropies(self, model: Any, input_ids: Any, *args: Any, **kwargs: Any) -> Any:
            key = "train_positions" if torch.is_grad_enabled() else "no_grad_positions"
            recorder.add(key, float(input_ids.numel()))
            return super()._get_per_token_logps_and_entropies(model, input_ids, *args, **kwargs)

        def compute_loss(self, model: Any, inputs: Any, *args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            loss = super().compute_loss(model, inputs, *args, **kwargs)
            recorder.add("train_forward_and_loss", time.perf_counter() - started)
            return loss

        def training_step(self, *args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            loss = super().training_step(*args, **kwargs)
            recorder.add("training_steps", time.perf_counter() - started)
            return loss

    class Timer(TrainerCallback):
        optimizer_started = 0.0

        def on_step_begin(self, *args: Any, **kwargs: Any) -> None:
            recorder.begin()

        def on_pre_optimizer_step(self, *args: Any, **kwargs: Any) -> None:
            self.optimizer_started = time.perf_counter()

        def on_optimizer_step(self, *args: Any, **kwargs: Any) -> None:
            recorder.add("optimizer_step", time.perf_counter() - self.optimizer_started)

        def on_step_end(self, *args: Any, **kwargs: Any) -> None:
            recorder.end()

    model_dir = spec["model_dir"]
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="sdpa")
    model.config.use_cache = False
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    rss_model = peak_rss_mib()
    warmup, repeats = int(settings["warmup"]), int(settings["repeats"])
    micro, accum = int(settings["micro_batch_size"]), int(settings["grad_accum_steps"])
    config = grpo_config(
        settings, output_dir=str(Path(spec["out"]).parent / "trl-output"), micro=micro, accum=accum,
        samples=samples, max_steps=warmup + repeats, max_completion_length=int(settings["max_completion_length"]),
    )  # fmt: skip
    trainer = BenchGRPOTrainer(
        model=model,
        reward_funcs=fixed_reward,
        args=config,
        processing_class=tokenizer,
        train_dataset=Dataset.from_list([{"prompt": name} for name in names]),
        rollout_func=rollout,
        callbacks=[Timer()],
    )
    rss_trainer = peak_rss_mib()
    trainer.train()
    if len(recorder.steps) != warmup + repeats:
        raise RuntimeError(f"timed {len(recorder.steps)} optimizer steps, expected {warmup + repeats}")
    for step in recorder.steps:  # training_steps holds the micro-batches' prepare + forward/loss + backward
        step["backward"] = step.pop("training_steps") - sum(
            step.get(key, 0.0) for key in ("generate_and_score", "old_pass", "train_forward_and_loss")
        )
    return {
        "trl_version": trl.__version__,
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
        "threads": torch.get_num_threads(),
        "old_pass": (
            "forced: TRL skips it at num_iterations=1 (old = per_token_logps.detach()); added with TRL's own call"
            if force_old_pass
            else "skipped, as TRL does at num_iterations=1"
        ),
        "trl_computed_old_logprobs": any(trl_old_pass),
        "steps": recorder.steps[warmup:],
        "peak_rss_mib": peak_rss_mib(),
        "vm_hwm_mib": vm_hwm_mib(),
        "rss_mib": {
            "start": rss_start,
            "after_imports": rss_imports,
            "after_model": rss_model,
            "after_trainer": rss_trainer,
        },
        "log_history_last": {k: v for k, v in trainer.state.log_history[-1].items() if isinstance(v, int | float)},
    }


def main(argv: list[str]) -> None:
    if not argv:
        print(json.dumps({"bench": "trl_update", "skipped": "a helper of bench/trainer.py: run that instead"}))
        return
    spec = json.loads(Path(argv[0]).read_text(encoding="utf-8"))
    result = run(spec)
    Path(spec["out"]).write_text(json.dumps(result), encoding="utf-8")


if __name__ == "__main__":
    main(sys.argv[1:])

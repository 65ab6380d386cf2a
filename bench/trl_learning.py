"""TRL's GRPOTrainer on the tiny world: the reference point of bench/learning.py (runs in .venv-trl, never in .venv).

    .venv-trl/bin/python bench/trl_learning.py SPEC.json    # bench/learning.py --trainer trl writes SPEC.json

SPEC.json names the world's model and train split, the output folder, and the run's settings (steps, prompts per
step, samples per prompt, learning rate, AdamW settings, clip range, temperature, token limit, seed). TRL generates
with transformers, scores each completion with the world's rule (the last `\\boxed{...}` equals the label), and
updates with the GRPOConfig of bench/trl_update.py (`grpo_config`: our trainer's defaults, shared with
bench/trainer.py's TRL side). The trained model (and tokenizer) is saved to `<out>/model` for bench/learning.py to
evaluate exactly as it evaluates ours; the rewards TRL logged per step go to `<out>/trl_learning.json`.

Run without arguments (e.g. by `make bench` under .venv, where TRL is absent) it prints a JSON line saying it is a
helper and exits 0.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_DISABLED", "true")

BOXED = re.compile(r"\\boxed\{([^{}]*)\}")


def boxed_answer_reward(completions: list[str], label: list[str], **_: Any) -> list[float]:
    """1.0 when the completion's last \\boxed{...} holds exactly the label (the world's integer answers)."""
    rewards = []
    for text, answer in zip(completions, label, strict=True):
        found = BOXED.findall(text)
        rewards.append(float(bool(found) and found[-1].strip() == answer.strip()))
    return rewards


def train(spec: dict[str, Any]) -> dict[str, Any]:
    import torch
    import trl
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOTrainer
    from trl_update import grpo_config  # bench/ is this script's folder, first on sys.path

    torch.set_num_threads(int(spec.get("threads", 1)))
    out = Path(spec["out"])
    settings = spec["settings"]
    prompts, samples, micro = int(settings["prompts_per_step"]), int(settings["samples"]), int(settings["micro"])
    steps = int(settings["steps"])
    if (prompts * samples) % micro:
        raise SystemExit(f"{prompts * samples} samples do not split into micro-batches of {micro}")
    rows = [json.loads(line) for line in Path(spec["train"]).read_text(encoding="utf-8").splitlines() if line]
    rows = rows[: steps * prompts]
    model = AutoModelForCausalLM.from_pretrained(spec["model"], dtype=torch.float32, attn_implementation="sdpa")
    tokenizer = AutoTokenizer.from_pretrained(spec["model"])
    config = grpo_config(
        settings, output_dir=str(out / "trl-output"), micro=micro, accum=prompts * samples // micro,
        samples=samples, max_steps=steps, max_completion_length=int(settings["max_new_tokens"]),
    )  # fmt: skip
    logged: list[dict[str, float]] = []

    step_times: list[float] = []

    class Log(TrainerCallback):
        def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **_: Any) -> None:
            if logs:
                logged.append({k: float(v) for k, v in logs.items() if isinstance(v, (int, float))})
                print(json.dumps({"step": state.global_step, **logged[-1]}), file=sys.stderr, flush=True)

        def on_step_begin(self, args: Any, state: Any, control: Any, **_: Any) -> None:
            self.started = time.perf_counter()

        def on_step_end(self, args: Any, state: Any, control: Any, **_: Any) -> None:
            step_times.append(time.perf_counter() - self.started)  # generation + scoring + update of one step

    trainer = GRPOTrainer(
        model=model,
        reward_funcs=boxed_answer_reward,
        args=config,
        processing_class=tokenizer,
        train_dataset=Dataset.from_list([{"prompt": r["prompt"], "label": r["label"]} for r in rows]),
        callbacks=[Log()],
    )
    trainer.train()
    trainer.save_model(str(out / "model"))
    tokenizer.save_pretrained(str(out / "model"))
    rewards = [entry["reward"] for entry in logged if "reward" in entry]
    result = {
        "trl_version": trl.__version__, "steps": steps, "rewards": rewards, "model": str(out / "model"),
        "step_times_s": step_times,
    }  # fmt: skip
    (out / "trl_learning.json").write_text(json.dumps(result) + "\n", encoding="utf-8")
    return result


def main() -> None:
    if len(sys.argv) != 2:
        print(json.dumps({"helper": "bench/trl_learning.py", "run_by": "bench/learning.py --trainer trl"}))
        return
    print(json.dumps(train(json.loads(Path(sys.argv[1]).read_text(encoding="utf-8")))))


if __name__ == "__main__":
    main()

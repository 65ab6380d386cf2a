"""A short RL run through the real trainer (OpenRLHF Actor + DeepSpeed, one rank) on a verifiable toy reward, for
the learning test: `python -m tests.trainer_learning MODEL_DIR PROMPTS.jsonl` prints {"before": .., "after": ..}.

The reward is checkable from the tokens alone: 1 when the response contains the token of "7", else 0. An untrained
policy samples it in a few percent of short responses; GRPO with the TP-Schedule mask must raise that rate on
held-out prompts. Generation is transformers' sampler (trainer/generation.py), as the hf rollout backend's.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from services.core.config import CreditConfig, TrainerConfig
from services.core.schedule import Phase
from services.core.wire import ScoredGroup
from trainer.engine import PolicyEngine, set_distributed_env
from trainer.generation import SamplingSettings, generate
from trainer.update import train_step
from trainer.worker import free_port

STEPS, GROUPS, SAMPLES, TOKENS = 16, 8, 8, 8
EVAL_PROMPTS, EVAL_SAMPLES = 64, 16


def _rate(engine: PolicyEngine, prompts: list[str], target: int, seed: int) -> float:
    settings = SamplingSettings(n=EVAL_SAMPLES, temperature=1.0, max_new_tokens=TOKENS, seed=seed)
    completions = generate(engine.module, engine.tokenizer, prompts, settings)
    hits = [target in c.token_ids for answers in completions for c in answers]
    return sum(hits) / len(hits)


def main(model_dir: str, prompts_file: str) -> None:
    torch.set_num_threads(1)
    rows = [json.loads(line)["prompt"] for line in Path(prompts_file).read_text().splitlines()]
    train_prompts, held_out = rows[:-EVAL_PROMPTS], rows[-EVAL_PROMPTS:]
    set_distributed_env(0, 1, "127.0.0.1", free_port())
    trainer = TrainerConfig.model_validate({
        "optimizer": {"lr": 3e-3, "implementation": "torch", "weight_decay": 0.0},
        "engine": {"zero_stage": 0, "param_dtype": "fp32", "micro_batch_size": 16},
    })  # fmt: skip
    engine = PolicyEngine(Path(model_dir), trainer, total_steps=STEPS, samples_per_step=GROUPS * SAMPLES)
    target = engine.tokenizer.convert_tokens_to_ids("7")
    before = _rate(engine, held_out, target, seed=1)
    credit = CreditConfig(strategy="tp")
    for step in range(1, STEPS + 1):
        batch = [train_prompts[(step * GROUPS + g) % len(train_prompts)] for g in range(GROUPS)]
        settings = SamplingSettings(n=SAMPLES, temperature=1.0, max_new_tokens=TOKENS, seed=step)
        completions = generate(engine.module, engine.tokenizer, batch, settings, with_logprobs=True, keep_eos=True)
        engine.module.train()
        groups = [
            ScoredGroup(
                group_id=f"s{step}-g{g}", step=step, data_source="toy",
                prompt_token_ids=engine.tokenizer(prompt)["input_ids"],
                response_token_ids=[list(c.token_ids) for c in answers],
                logprobs=[list(c.logprobs or ()) for c in answers],
                rewards=[float(target in c.token_ids) for c in answers], reward_status=["ok"] * SAMPLES,
                policy_version=step - 1, phase=Phase(step=step, progress=0.0, ratio=0.0, stage="warmup"),
            )
            for g, (prompt, answers) in enumerate(zip(batch, completions, strict=True))
        ]  # fmt: skip
        ratio = 0.5 * (1 - step / STEPS)  # a TP prefix mask that shrinks to 0: when as well as where is exercised
        train_step(engine, groups, Phase(step=step, progress=step / STEPS, ratio=ratio, stage="anneal"), credit,
                   trainer, temperature=1.0)  # fmt: skip
    after = _rate(engine, held_out, target, seed=1)
    print(json.dumps({"before": before, "after": after, "eval_samples": EVAL_PROMPTS * EVAL_SAMPLES}))
    engine.close()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])

"""Does the pipeline learn? RL on the tiny world, held-out sampled accuracy before and after: one JSON line.

    .venv/bin/python bench/learning.py [--steps 40] [--prompts 200] [--k 4] [--seeds 0 1] [--workdir DIR]

1. The world of the tiny-cpu preset (built on first use, ~5-11 min on 2 cores; reused after).
2. The warm start's sampled accuracy (avg@k at the run's temperature and token limit) on the first `--prompts`
   problems of the held-out test split, once per sampling seed: the spread between seeds of the SAME model, and the
   binomial standard error of prompts x k samples, are the noise.
3. `rlvr run` on the preset for `--steps` steps (TP-Schedule over those steps, the preset's trainer); or, with
   `--trainer trl`, TRL's GRPOTrainer with the same settings (bench/trl_learning.py in .venv-trl, built by
   bench/trl_env.sh; plain GRPO only: pass --set credit.strategy=none) as the reference point.
4. The final policy (the run's last checkpoint, Hugging Face export) evaluated exactly as in 2.
Reports both accuracies per seed, their means, the gain, the noise, and the run's wall time.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from services.core.config import RunConfig, load_run_config

REPO_ROOT = Path(__file__).resolve().parent.parent
PRESET = REPO_ROOT / "deploy" / "presets" / "tiny-cpu.toml"


def rlvr(*args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "services.cli", *args], cwd=REPO_ROOT, capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"rlvr {args[0]} exited {done.returncode}: {done.stderr[-2000:]}")
    return done.stdout


def evaluate(model: Path, data: Path, *, prompts: int, k: int, seed: int, temperature: float, tokens: int) -> float:
    args = ["--model", str(model), "--data", str(data), "--k", str(k), "--temperature", str(temperature),
            "--max-new-tokens", str(tokens), "--limit", str(prompts), "--seed", str(seed)]  # fmt: skip
    report = json.loads(rlvr("eval", *args))
    return float(report["avg_at_k"])


def run_with_trl(config: RunConfig, world_dir: Path, out: Path) -> Path:
    """TRL's GRPOTrainer on the world's train split with the run's settings; the folder of the trained model."""
    python = REPO_ROOT / ".venv-trl" / "bin" / "python"
    if not python.exists():
        raise SystemExit("no .venv-trl: run `bash bench/trl_env.sh` first")
    if config.credit.strategy != "none":
        raise SystemExit("TRL has no credit strategy: compare with --set credit.strategy=none")
    optimizer, loss = config.trainer.optimizer, config.trainer.policy_loss
    settings = {
        "steps": config.total_steps, "prompts_per_step": config.rollout.prompts_per_step,
        "samples": config.rollout.samples_per_prompt, "micro": config.trainer.engine.micro_batch_size,
        "lr": optimizer.lr, "weight_decay": optimizer.weight_decay, "betas": list(optimizer.betas),
        "eps": optimizer.eps, "max_grad_norm": optimizer.max_grad_norm, "clip_eps_low": loss.clip_eps_low,
        "clip_eps_high": loss.clip_eps_high, "temperature": config.rollout.sampling.temperature,
        "max_new_tokens": config.rollout.sampling.max_new_tokens, "seed": config.trainer.engine.seed,
    }  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    spec = out / "spec.json"
    spec.write_text(json.dumps({
        "model": str(world_dir / "model"), "train": str(world_dir / "data" / "train.jsonl"), "out": str(out),
        "settings": settings,
    }))  # fmt: skip
    done = subprocess.run([str(python), str(REPO_ROOT / "bench" / "trl_learning.py"), str(spec)], cwd=REPO_ROOT,
                          capture_output=True, text=True, check=False)  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"bench/trl_learning.py exited {done.returncode}: {done.stderr[-3000:]}")
    return out / "model"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--prompts", type=int, default=200)
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="run config overrides")
    parser.add_argument(
        "--trainer", choices=("ours", "trl"), default="ours",
        help="ours: `rlvr run`; trl: TRL's GRPOTrainer with the same settings (bench/trl_learning.py in .venv-trl)",
    )  # fmt: skip
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="rlvr-learning-"))
    world = json.loads(rlvr("prepare", "--config", str(PRESET), *(a for o in args.set for a in ("--set", o))))
    world_dir = Path(world["world"])
    data = world_dir / "data" / "test.jsonl"
    run_sampling = load_run_config(PRESET, args.set).rollout.sampling  # evaluated as the run samples
    temperature, tokens = run_sampling.temperature, run_sampling.max_new_tokens
    sampling = {"temperature": temperature, "tokens": tokens}

    def accuracy(model: Path, seed: int) -> float:
        return evaluate(model, data, prompts=args.prompts, k=args.k, seed=seed, temperature=temperature, tokens=tokens)

    before = {s: accuracy(world_dir / "model", s) for s in args.seeds}
    started = time.monotonic()
    run_dir = workdir / "run"
    overrides = [f"total_steps={args.steps}", f"run_id=learning-{uuid.uuid4().hex[:8]}", *args.set]
    if args.trainer == "trl":
        final = run_with_trl(load_run_config(PRESET, overrides), world_dir, run_dir)
    else:
        rlvr("run", "--config", str(PRESET), "--out", str(run_dir), *(a for o in overrides for a in ("--set", o)))
        final = run_dir / "checkpoints" / "_actor" / f"global_step{args.steps}" / "hf"
    run_s = time.monotonic() - started
    after = {s: accuracy(final, s) for s in args.seeds}
    mean_before, mean_after = sum(before.values()) / len(before), sum(after.values()) / len(after)
    samples = args.prompts * args.k * len(args.seeds)
    result: dict[str, Any] = {
        "world": str(world_dir), "steps": args.steps, "eval_prompts": args.prompts, "k": args.k, "seeds": args.seeds,
        "split": "test", **sampling,
        "warm_start_avg_at_k": before, "final_avg_at_k": after,
        "warm_start_mean": mean_before, "final_mean": mean_after, "gain": mean_after - mean_before,
        "noise": {
            "seed_spread_warm_start": max(before.values()) - min(before.values()),
            "seed_spread_final": max(after.values()) - min(after.values()),
            "binomial_se_warm_start_lower_bound": math.sqrt(mean_before * (1 - mean_before) / samples),
        },
        "run_wall_s": round(run_s, 1), "run_dir": str(run_dir), "overrides": args.set, "trainer": args.trainer,
    }  # fmt: skip
    print(json.dumps(result))


if __name__ == "__main__":
    main()

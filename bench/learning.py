"""Does the pipeline learn? RL on the tiny world, held-out sampled accuracy before and after: one JSON line.

    .venv/bin/python bench/learning.py [--steps 40] [--prompts 200] [--k 4] [--seeds 0 1] [--workdir DIR]

1. The world of the tiny-cpu preset (built on first use, ~5-11 min on 2 cores; reused after).
2. The warm start's sampled accuracy (avg@k at the run's temperature and token limit) on the first `--prompts`
   problems of the held-out test split, once per sampling seed: the spread between seeds of the SAME model, and the
   binomial standard error of prompts x k samples, are the noise.
3. `rlvr run` on the preset for `--steps` steps (TP-Schedule over those steps, the preset's trainer).
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--prompts", type=int, default=200)
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="run config overrides")
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="rlvr-learning-"))
    world = json.loads(rlvr("prepare", "--config", str(PRESET)))
    world_dir = Path(world["world"])
    data = world_dir / "data" / "test.jsonl"
    sampling = {"temperature": 1.0, "tokens": 224}  # the preset's [rollout.sampling]
    scale = {"prompts": args.prompts, "k": args.k}
    before = {s: evaluate(world_dir / "model", data, seed=s, **scale, **sampling) for s in args.seeds}
    started = time.monotonic()
    run_dir = workdir / "run"
    overrides = [f"total_steps={args.steps}", f"run_id=learning-{uuid.uuid4().hex[:8]}", *args.set]
    rlvr("run", "--config", str(PRESET), "--out", str(run_dir), *(a for o in overrides for a in ("--set", o)))
    run_s = time.monotonic() - started
    final = run_dir / "checkpoints" / "_actor" / f"global_step{args.steps}" / "hf"
    after = {s: evaluate(final, data, seed=s, **scale, **sampling) for s in args.seeds}
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
        "run_wall_s": round(run_s, 1), "run_dir": str(run_dir), "overrides": args.set,
    }  # fmt: skip
    print(json.dumps(result))


if __name__ == "__main__":
    main()

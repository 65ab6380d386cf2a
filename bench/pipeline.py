"""The whole pipeline's step time and throughput, in-process and on Ray, synchronous and asynchronous, against TRL's
GRPOTrainer on the same work: one JSON line, never asserts.

    bash bench/trl_env.sh      # once, for the TRL side (skipped with --skip-trl)
    .venv/bin/python bench/pipeline.py [--steps 8] [--skip-trl] [--workdir DIR]

Same model, batch, lengths and work everywhere: the tiny-cpu preset's world policy, 16 prompts x 8 samples, <= 224
new tokens at T = 1, plain GRPO (TRL has no credit strategy), a checkpoint only at the end, no post-update KL pass
(`trainer.update_kl_every=0`: an analysis metric TRL does not compute; it costs ~20% of our step). Each contender is one
`rlvr run` (or one TRL run) of --steps steps; the first step is dropped (start-up, JIT, first weight sync), the
others give the median step time (`time/step_s` in metrics.jsonl; TRL: from step begin to step end).
  - `local_sync`: rollout and trainer in the run's process, one after the other (the default preset).
  - `ray_sync`: one RolloutWorker actor and one trainer rank on a local Ray (`ray.enabled`), max_staleness 0.
  - `ray_async`: the same with max_staleness 1: step s+1's rollout overlaps step s's update.
  - `trl`: TRL's GRPOTrainer (bench/trl_learning.py in .venv-trl): generation and update in one process.
Reported per contender: median step time, samples/s, the trainer's idle share (time waiting for rollouts / step
time), the rollout's idle share (1 - generation and scoring time / wall time, from the workers' metrics), and the
Redis hand-off share (driver-side queue operations / step time; the workers' publish is inside their batch time).
Targets (issue 11): ray_sync step <= 1.0x TRL's, ray_async samples/s >= 1.3x ray_sync's, hand-off < 3 % of a step.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from learning import PRESET, rlvr, run_with_trl  # bench/ is this script's folder, first on sys.path

from services.core.config import load_run_config

MODES: dict[str, list[str]] = {
    "local_sync": [],
    # synchronous: rollout and trainer take turns, each with both cores; asynchronous: they overlap, one core each
    "ray_sync": ["ray.enabled=true", "trainer.max_staleness=0", "rollout.backend.torch_threads=2"],
    "ray_async": ["ray.enabled=true", "trainer.max_staleness=1", "rollout.backend.torch_threads=1"],
}
COMMON = [
    "credit.strategy=none", "evaluation.enabled=false", "trainer.checkpoint.every=0", "trainer.update_kl_every=0",
    "rollout.workers=1", "rollout.worker_cpus=1", "ray.trainer_cpus=1", "ray.num_cpus=2",
]  # fmt: skip


def _shares(rows: list[dict[str, Any]], summary: dict[str, Any], samples: int) -> dict[str, Any]:
    timed = rows[1:] if len(rows) > 1 else rows
    step_s = [r["time/step_s"] for r in timed]
    wall = sum(step_s)
    rollout = summary.get("rollout", {})
    busy = rollout.get("rlvr_rollout_batch_seconds_sum", 0.0) + rollout.get("rlvr_rollout_reward_seconds_sum", 0.0)
    whole_wall = sum(r["time/step_s"] for r in rows)
    return {
        "step_s_median": statistics.median(step_s),
        "samples_per_s": samples / statistics.median(step_s),
        "trainer_idle_share": sum(r["time/wait_rollout_s"] for r in timed) / wall,
        "rollout_idle_share": max(0.0, 1.0 - busy / whole_wall) if whole_wall else None,
        "handoff_share": sum(r["time/queue_ops_s"] for r in timed) / wall,
        "train_s_median": statistics.median(r["time/train_s"] for r in timed),
        "steps_timed": len(timed),
    }


def run_ours(mode: str, steps: int, workdir: Path, samples: int, extra: list[str]) -> dict[str, Any]:
    out = workdir / mode
    sets = [f"total_steps={steps}", f"run_id=bench-{mode.replace('_', '-')}-{uuid.uuid4().hex[:6]}", *COMMON,
            *MODES[mode], *extra]  # fmt: skip
    started = time.monotonic()
    rlvr("run", "--config", str(PRESET), "--out", str(out), *(a for s in sets for a in ("--set", s)))
    wall = time.monotonic() - started
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line]
    summary = json.loads((out / "summary.json").read_text())
    return {**_shares(rows, summary, samples), "run_wall_s": round(wall, 1)}


def run_trl(steps: int, workdir: Path, samples: int) -> dict[str, Any]:
    config = load_run_config(PRESET, [f"total_steps={steps}", "run_id=bench-trl", *COMMON])
    world = json.loads(rlvr("prepare", "--config", str(PRESET)))
    started = time.monotonic()
    model = run_with_trl(config, Path(world["world"]), workdir / "trl")
    wall = time.monotonic() - started
    result = json.loads((model.parent / "trl_learning.json").read_text())
    times = result["step_times_s"][1:] or result["step_times_s"]
    median = statistics.median(times)
    return {"step_s_median": median, "samples_per_s": samples / median, "steps_timed": len(times),
            "run_wall_s": round(wall, 1), "trl_version": result["trl_version"]}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--skip-trl", action="store_true")
    parser.add_argument("--modes", nargs="+", choices=list(MODES), default=list(MODES), help="our contenders to run")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="more overrides of our runs")
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="rlvr-pipeline-"))
    config = load_run_config(PRESET, [])
    samples = config.rollout.prompts_per_step * config.rollout.samples_per_prompt
    load_before = os.getloadavg()
    results: dict[str, Any] = {mode: run_ours(mode, args.steps, workdir, samples, args.set) for mode in args.modes}
    if not args.skip_trl:
        results["trl"] = run_trl(args.steps, workdir, samples)
    ratios: dict[str, float] = {}
    if "ray_async" in results and "ray_sync" in results:
        ratios["ray_async_over_ray_sync_samples_per_s"] = (
            results["ray_async"]["samples_per_s"] / results["ray_sync"]["samples_per_s"]
        )
    if "trl" in results:
        for mode in args.modes:
            ratios[f"{mode}_step_over_trl"] = results[mode]["step_s_median"] / results["trl"]["step_s_median"]
    print(json.dumps({
        "bench": "pipeline", "steps": args.steps, "samples_per_step": samples, "contenders": results,
        "ratios": ratios, "overrides": args.set, "load_avg_before": load_before,
        "load_avg_after": os.getloadavg(), "workdir": str(workdir),
    }))  # fmt: skip


if __name__ == "__main__":
    main()

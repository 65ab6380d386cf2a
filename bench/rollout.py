"""Rollout generation throughput on the tiny model: one JSON line, never asserts a time.

For 16 prompts x 8 samples (the issue's shape), side by side in one run on the same model, settings and threads:
  - `plain`: a plain transformers `model.generate` call over the same 128 rows in this process (the reference);
  - `hf_actor`: the hf backend inside a Ray actor, timed inside the actor (and the round trip from the driver);
  - `vllm_actor`: the vllm backend inside a Ray actor; engine start-up and the first batch (which compiles or warms
    up) are reported apart from the steady state.
The contenders alternate batch by batch (plain, hf, vllm, plain, ...), so a change of load hits them alike. Each
reports generated tokens/s and samples/s (median over `--repeats` batches, all runs listed), and
`hf_vs_plain` is the ratio the issue targets (>= 0.9). `weight_sync` times a full update through the object store:
the driver's `publish_weights` and the actor's fetch + load (hf and vllm).

    .venv/bin/python bench/rollout.py [--model DIR] [--max-new-tokens 128] [--repeats 3] [--threads 2] [--no-vllm]

Without `--model` an untrained model of the tiny world's architecture is built (it never stops early, so every
sample is `--max-new-tokens` long and the token counts are equal across backends).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
# First on sys.path: the script's own folder holds bench/trainer.py, which would shadow the `trainer` package.
sys.path.insert(0, str(REPO_ROOT))

import ray  # noqa: E402
import torch  # noqa: E402

from services.core.config import WorldModelConfig  # noqa: E402
from services.core.wire import PromptGroup  # noqa: E402
from services.rollout.weights import fetch_newer, find_weight_store, publish_weights, weight_store  # noqa: E402
from tests.tiny_models import perturbed_weights, write_prompts, write_tiny_model  # noqa: E402
from trainer.generation import SamplingSettings  # noqa: E402

PROMPTS, SAMPLES = 16, 8
FIRST_BATCH: dict[str, dict[str, float]] = {}


class BenchActor:
    """A backend inside a Ray actor, as the RolloutWorker holds it, with timing around its calls."""

    def __init__(self, kind: str, model_dir: str, settings: SamplingSettings, threads: int) -> None:
        torch.set_num_threads(threads)
        started = time.perf_counter()
        if kind == "hf":
            from services.rollout.backends.hf import HFBackend

            self.backend: Any = HFBackend.from_dir(model_dir, settings)
        else:
            from services.rollout.backends.vllm import VLLMBackend

            self.backend = VLLMBackend(model_dir, settings)
        self.start_s = time.perf_counter() - started

    def start_seconds(self) -> float:
        return self.start_s

    def generate(self, groups: list[PromptGroup]) -> dict[str, float]:
        started = time.perf_counter()
        out = self.backend.generate(groups)
        seconds = time.perf_counter() - started
        return {
            "seconds": seconds,
            "tokens": sum(len(s.token_ids) for g in out for s in g),
            "samples": len(out[0]) * len(out),
        }

    def sync(self, run_id: str) -> dict[str, float]:
        started = time.perf_counter()
        newer = fetch_newer(find_weight_store(run_id), self.backend.policy_version)
        assert newer is not None, "no newer weights in the store"
        fetched = time.perf_counter()
        self.backend.load_weights(newer[1], newer[0])
        return {
            "fetch_s": fetched - started,
            "load_s": time.perf_counter() - fetched,
            "total_s": time.perf_counter() - started,
        }

    def close(self) -> None:
        close = getattr(self.backend, "close", None)
        if close is not None:
            close()


class PlainLoop:
    """The reference: transformers `generate` on the same rows in this process (left-padded, same sampling rule,
    top_k=0, all 128 rows in one call)."""

    def __init__(self, model_dir: Path, groups: list[PromptGroup], settings: SamplingSettings) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
        self.tokenizer.padding_side = "left"
        self.rows = [g.prompt for g in groups for _ in range(g.n)]
        self.batch = self.tokenizer(self.rows, return_tensors="pt", padding=True, add_special_tokens=False)
        self.settings = settings

    def generate(self, seed: int) -> dict[str, float]:
        torch.manual_seed(seed)
        eos, settings = self.tokenizer.eos_token_id, self.settings
        started = time.perf_counter()
        with torch.no_grad():
            out = self.model.generate(
                **self.batch, do_sample=True, temperature=settings.temperature, top_p=settings.top_p, top_k=0,
                max_new_tokens=settings.max_new_tokens, eos_token_id=eos, pad_token_id=eos,
            )  # fmt: skip
        seconds = time.perf_counter() - started
        new = out[:, self.batch["input_ids"].shape[1] :]
        ended = (new == eos).int()
        lengths = torch.where(ended.any(1), ended.argmax(1) + 1, torch.full_like(ended[:, 0], new.shape[1]))
        return {"seconds": seconds, "tokens": int(lengths.sum()), "samples": len(self.rows)}


def summary(runs: list[dict[str, float]]) -> dict[str, Any]:
    rates = [r["tokens"] / r["seconds"] for r in runs]
    return {
        "tokens_per_s": round(statistics.median(rates), 1),
        "samples_per_s": round(statistics.median(r["samples"] / r["seconds"] for r in runs), 2),
        "batch_s": [round(r["seconds"], 3) for r in runs],
        "tokens": [int(r["tokens"]) for r in runs],
    }


def start_actor(kind: str, model_dir: Path, groups: list[PromptGroup], settings: SamplingSettings, threads: int) -> Any:
    """A backend actor, started and past its first batch (reported apart: it compiles and warms up)."""
    actor = ray.remote(num_cpus=1)(BenchActor).remote(kind, str(model_dir), settings, threads)
    FIRST_BATCH[kind] = ray.get(actor.generate.remote(groups))
    return actor


def timed_round_trip(actor: Any, groups: list[PromptGroup]) -> dict[str, float]:
    started = time.perf_counter()
    run = dict(ray.get(actor.generate.remote(groups)))
    run["round_trip_s"] = time.perf_counter() - started
    return run


def weight_sync(actor: Any, model_dir: Path, run_id: str) -> dict[str, float]:
    """One update through the object store: the driver's publish, then the actor's fetch and load."""
    state = _perturbed_state(model_dir)
    store = weight_store(run_id)  # held until the actor has synced: a dropped handle ends the store
    ray.get(store.latest_version.remote())  # the store actor is up: its start-up is not part of a weight sync
    published = time.perf_counter()
    publish_weights(store, state, 1)
    publish_s = time.perf_counter() - published
    sync = ray.get(actor.sync.remote(run_id))
    ray.kill(store)
    return {"publish_s": round(publish_s, 4), **{k: round(v, 4) for k, v in sync.items()}}


def report(kind: str, actor: Any, runs: list[dict[str, float]], sync: dict[str, float]) -> dict[str, Any]:
    return {
        "start_s": round(ray.get(actor.start_seconds.remote()), 2),
        "first_batch_s": round(FIRST_BATCH[kind]["seconds"], 3),
        "steady": summary(runs),
        "round_trip_s": [round(r["round_trip_s"], 3) for r in runs],
        "weight_sync": sync,
    }


def _perturbed_state(model_dir: Path) -> dict[str, torch.Tensor]:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    return perturbed_weights(model, seed=0, scale=0.01)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="a Hugging Face model directory (default: an untrained tiny one)")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2, help="torch threads of every contender")
    parser.add_argument("--no-vllm", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="rlvr-bench-rollout-"))
    world_model = WorldModelConfig()  # the tiny world's architecture: hidden 128, 4 layers, 2 heads of 64
    model_dir = args.model or write_tiny_model(work / "model", model=world_model)
    from services.rollout.feeder import JsonlPrompts

    groups = JsonlPrompts.from_file(write_prompts(work / "prompts.jsonl", PROMPTS), 0).prompt_groups(
        1, PROMPTS, SAMPLES
    )
    settings = SamplingSettings(temperature=1.0, top_p=1.0, max_new_tokens=args.max_new_tokens, seed=0)
    plain = PlainLoop(model_dir, groups, settings)
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_worker_niceness", "0")  # as `rlvr run` starts its local Ray (ray_session.py)
    # every contender with the same OpenMP thread count from its start (Ray gives a 1-CPU actor OMP_NUM_THREADS=1)
    omp = {"env_vars": {"OMP_NUM_THREADS": str(args.threads)}}
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, namespace="rlvr-bench", runtime_env=omp)
    try:
        kinds = ["hf"] if args.no_vllm else ["hf", "vllm"]
        actors = {kind: start_actor(kind, model_dir, groups, settings, args.threads) for kind in kinds}
        plain.generate(seed=10_000)  # warm-up, like the actors' first batch
        runs: dict[str, list[dict[str, float]]] = {"plain": [], **{kind: [] for kind in kinds}}
        for repeat in range(args.repeats):  # contenders alternate, so load changes hit them alike
            runs["plain"].append(plain.generate(seed=repeat))
            for kind, actor in actors.items():
                runs[kind].append(timed_round_trip(actor, groups))
        reports = {
            kind: report(kind, actor, runs[kind], weight_sync(actor, model_dir, f"bench-{kind}"))
            for kind, actor in actors.items()
        }
        for actor in actors.values():
            ray.get(actor.close.remote())
            ray.kill(actor)
    finally:
        ray.shutdown()
    plain_summary = summary(runs["plain"])
    hf, vllm = reports["hf"], reports.get("vllm")
    result: dict[str, Any] = {
        "bench": "rollout",
        "shape": {
            "prompts": PROMPTS,
            "samples": SAMPLES,
            "max_new_tokens": args.max_new_tokens,
            "threads": args.threads,
        },
        "model": str(model_dir),
        "plain": plain_summary,
        "hf_actor": hf,
        "hf_vs_plain": round(hf["steady"]["tokens_per_s"] / plain_summary["tokens_per_s"], 3),
        "vllm_actor": vllm,
        "vllm_vs_plain": round(vllm["steady"]["tokens_per_s"] / plain_summary["tokens_per_s"], 3) if vllm else None,
        "torch": torch.__version__,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()

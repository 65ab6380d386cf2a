"""The trainer's update step against TRL's GRPOTrainer, and the chunked entropy's memory: one JSON line, never asserts.

    bash bench/trl_env.sh                 # once: TRL 1.16 in its own environment, .venv-trl (CPU torch pinned)
    .venv/bin/python bench/trainer.py [--rounds 2] [--repeats 5] [--warmup 1] [--zero-stage 2] [--micro-batch 8]
                                      [--threads 1] [--skip-trl] [--skip-entropy] [--entropy-backward]
                                      [--workdir DIR] [--indent 2]

Same model, batch and lengths on both sides: an untrained policy of the tiny world's shape (hidden 128, 4 layers,
2 heads of 64, MLP 512, tied embeddings, vocabulary 257) and the tiny-cpu preset's batch (prompts_per_step x
samples_per_prompt: 16 x 8 now, 4 x 8 when README's numbers were measured; prompts of 26-34 tokens, responses of
100-224 tokens, fixed 0/1 rewards), fp32, 1 torch thread per process.
  - `ours`: `trainer.update.train_step` on one rank (OpenRLHF Actor + DeepSpeed, ZeRO --zero-stage, micro-batches of
    --micro-batch, torch AdamW), timed over --repeats steps after --warmup, in --rounds processes that alternate
    with TRL's (the step times of all rounds are pooled). `train_step` also runs a no-grad pass
    with the UPDATED policy (the KL-by-percentile metrics of SPEC §5) that TRL has no counterpart for, so
    `comparable` = train_step minus that pass: old-log-prob pass (with entropies) + forward/loss/backward + step.
  - `trl`: TRL's GRPOTrainer (bench/trl_update.py, run with .venv-trl's python) on the same completions and
    rewards, its real train() loop with generation replaced by the fixed completions; see that file for what a step
    covers and why the old-log-prob pass is added (TRL skips it when num_iterations=1).
  - `chunked_entropy`: `trainer.token_stats.response_token_stats` on N x T response tokens with a random LM head of
    V outputs, chunk_tokens small vs >= N*T (one chunk: the unchunked computation), each in a fresh process: peak
    RSS (ru_maxrss) above the process's RSS before the call, and time; no-grad (the old-log-prob pass), and with
    --entropy-backward also forward + backward with recomputation (the training pass; ~10 GiB unchunked).
Every subprocess reports its own peak RSS (resource.getrusage ru_maxrss). Runs are sequential, so load from other
processes on the machine (reported as the load average before and after) can shift all numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from services.core.config import CreditConfig, TrainerConfig, WorldModelConfig, load_run_config  # noqa: E402
from services.core.schedule import Phase  # noqa: E402
from services.core.wire import ScoredGroup  # noqa: E402

PRESET = REPO_ROOT / "deploy" / "presets" / "tiny-cpu.toml"
TRL_PYTHON = REPO_ROOT / ".venv-trl" / "bin" / "python"
PROMPT_TOKENS = (26, 34)
RESPONSE_TOKENS = (100, 224)


def peak_rss_mib() -> float:
    """This process's peak resident set size so far (Linux reports ru_maxrss in KiB). Valid only in a process
    started through `child` (see there): Linux carries ru_maxrss over execve from the process that forked."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def vm_hwm_mib() -> float:
    """The same peak read another way: VmHWM of /proc/self/status (this address space's high-water mark)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def summary(values: list[float]) -> dict[str, float]:
    return {"median_s": statistics.median(values), "min_s": min(values), "max_s": max(values)}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# ---- the model and the batch (the parent process)


def write_model(path: Path, seed: int) -> dict[str, Any]:
    """An untrained policy of the default tiny-world shape, with the world's tokenizer (as write_tiny_model)."""
    from tests.tiny_models import write_tiny_model

    model = WorldModelConfig()
    write_tiny_model(path, seed=seed, model=model)
    return model.model_dump()


def make_batch(
    model_dir: Path, prompts: int, samples: int, max_new_tokens: int, seed: int
) -> tuple[list[list[int]], list[list[list[int]]], list[list[float]]]:
    """Random prompt and response token ids (never EOS/pad, always decodable), 0/1 rewards with signal per group."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    special = {tokenizer.eos_token_id, tokenizer.pad_token_id, tokenizer.unk_token_id}
    ids = [i for i in range(len(tokenizer)) if i not in special]
    rng = random.Random(seed)
    longest = min(RESPONSE_TOKENS[1], max_new_tokens)
    prompt_ids = [[rng.choice(ids) for _ in range(rng.randint(*PROMPT_TOKENS))] for _ in range(prompts)]
    responses = [
        [[rng.choice(ids) for _ in range(rng.randint(RESPONSE_TOKENS[0], longest))] for _ in range(samples)]
        for _ in range(prompts)
    ]
    rewards = []
    for _ in range(prompts):
        group = [float(rng.random() < 0.5) for _ in range(samples)]
        group[0], group[1] = 1.0, 0.0
        rewards.append(group)
    return prompt_ids, responses, rewards


def scored_groups(spec: dict[str, Any]) -> list[ScoredGroup]:
    phase = Phase(step=1, progress=0.0, ratio=0.0, stage="warmup")
    rng = random.Random(0)
    return [
        ScoredGroup(
            group_id=f"bench-g{g}",
            step=1,
            data_source="bench",
            prompt_token_ids=prompt,
            response_token_ids=spec["responses"][g],
            logprobs=[[-2.0 + 0.01 * rng.random() for _ in r] for r in spec["responses"][g]],
            rewards=spec["rewards"][g],
            reward_status=["ok"] * len(spec["rewards"][g]),
            policy_version=0,
            phase=phase,
        )
        for g, prompt in enumerate(spec["prompts"])
    ]


# ---- ours: train_step in a process of its own


def run_ours(spec: dict[str, Any]) -> dict[str, Any]:
    torch.set_num_threads(int(spec["settings"]["threads"]))
    rss_start = peak_rss_mib()
    from trainer.engine import PolicyEngine, set_distributed_env
    from trainer.update import train_step

    rss_imports = peak_rss_mib()
    set_distributed_env(0, 1, "127.0.0.1", free_port())
    trainer = TrainerConfig.model_validate(spec["trainer"])
    credit = CreditConfig.model_validate(spec["credit"])
    groups = scored_groups(spec)
    settings = spec["settings"]
    warmup, repeats = int(settings["warmup"]), int(settings["repeats"])
    samples = sum(len(r) for r in spec["responses"])
    engine = PolicyEngine(Path(spec["model_dir"]), trainer, total_steps=warmup + repeats, samples_per_step=samples)
    rss_engine = peak_rss_mib()
    calls: list[tuple[str, float, float]] = []  # (kind, seconds, forward positions)

    def timed(kind: Callable[..., str], method: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            out = method(*args, **kwargs)
            positions = float(args[0].input_ids.numel()) if kind is token_kind else 0.0
            calls.append((kind(*args, **kwargs), time.perf_counter() - started, positions))
            return out

        return wrapper

    def token_kind(*args: Any, **kwargs: Any) -> str:
        return "train_forward" if torch.is_grad_enabled() else "no_grad_pass"

    engine.token_stats = timed(token_kind, engine.token_stats)  # type: ignore[method-assign]
    engine.backward = timed(lambda *a, **k: "backward", engine.backward)  # type: ignore[method-assign]
    engine.optimizer_step = timed(lambda *a, **k: "optimizer_step", engine.optimizer_step)  # type: ignore[method-assign]
    phase = Phase(step=1, progress=0.0, ratio=float(settings["credit_ratio"]), stage="warmup")
    steps: list[dict[str, float]] = []
    metrics: dict[str, float | None] = {}
    for _ in range(warmup + repeats):
        calls.clear()
        started = time.perf_counter()
        metrics = train_step(engine, groups, phase, credit, trainer, temperature=float(settings["temperature"]))
        total = time.perf_counter() - started
        no_grad = [c for c in calls if c[0] == "no_grad_pass"]
        if len(no_grad) != 2:
            raise RuntimeError(f"expected the old and the post-update no-grad passes, got {len(no_grad)} no-grad calls")
        step = {
            "step": total,
            "old_pass": no_grad[0][1],
            "post_update_pass": no_grad[1][1],
            "train_forward": sum(c[1] for c in calls if c[0] == "train_forward"),
            "backward": sum(c[1] for c in calls if c[0] == "backward"),
            "optimizer_step": sum(c[1] for c in calls if c[0] == "optimizer_step"),
            "no_grad_positions": no_grad[0][2],
            "train_positions": sum(c[2] for c in calls if c[0] == "train_forward"),
        }
        step["other"] = total - sum(
            step[k] for k in ("old_pass", "post_update_pass", "train_forward", "backward", "optimizer_step")
        )
        steps.append(step)
    engine.close()
    return {
        "config": {
            "zero_stage": trainer.engine.zero_stage,
            "micro_batch_size": trainer.engine.micro_batch_size,
            "grad_accum_steps": engine.grad_accum_steps,
            "param_dtype": trainer.engine.param_dtype,
            "optimizer": trainer.optimizer.implementation,
            "logit_chunk_tokens": trainer.engine.logit_chunk_tokens,
            "credit": credit.strategy,
            "credit_ratio": phase.ratio,
        },
        "threads": torch.get_num_threads(),
        "steps": steps[warmup:],
        "optimized_token_fraction": metrics.get("train/optimized_token_fraction"),
        "peak_rss_mib": peak_rss_mib(),
        "vm_hwm_mib": vm_hwm_mib(),
        "rss_mib": {"start": rss_start, "after_imports": rss_imports, "after_engine": rss_engine},
    }


# ---- the chunked entropy: one variant per process


def run_entropy(spec: dict[str, Any]) -> dict[str, Any]:
    from trainer.token_stats import build_policy_inputs, response_token_stats

    torch.set_num_threads(int(spec["threads"]))
    n, t, v, h = (int(spec[k]) for k in ("n", "t", "vocab", "hidden"))
    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn(n, t + 1, h, generator=generator)  # a one-token prompt + the response
    lm_head = torch.nn.Linear(h, v, bias=False)
    torch.nn.init.normal_(lm_head.weight, std=h**-0.5, generator=generator)
    response_ids = torch.randint(0, v, (n, t), generator=generator)
    mask = torch.ones(n, t, dtype=torch.bool)
    inputs = build_policy_inputs([[1]] * n, response_ids, mask)
    backward = bool(spec["backward"])
    if backward:
        hidden.requires_grad_(True)
    rss_before = peak_rss_mib()
    times = []
    logprobs = entropy = None
    for _ in range(int(spec["repeats"])):
        started = time.perf_counter()
        with torch.set_grad_enabled(backward):
            logprobs, entropy = response_token_stats(
                hidden,
                lm_head,
                inputs,
                response_ids,
                mask,
                temperature=1.0,
                chunk_tokens=int(spec["chunk_tokens"]),
                with_entropy=True,
                recompute=backward,
            )
            assert entropy is not None
            if backward:
                torch.autograd.backward(logprobs.sum() + entropy.sum())
                hidden.grad = None
                lm_head.weight.grad = None
        times.append(time.perf_counter() - started)
    assert logprobs is not None and entropy is not None
    peak = peak_rss_mib()
    torch.save({"logprobs": logprobs.detach(), "entropy": entropy.detach()}, spec["tensors"])
    return {
        "chunk_tokens": int(spec["chunk_tokens"]),
        "positions_per_chunk": min(n * t, max(1, int(spec["chunk_tokens"]) // n) * n),
        "peak_rss_mib": peak,
        "vm_hwm_mib": vm_hwm_mib(),
        "rss_before_call_mib": rss_before,
        "peak_above_before_mib": peak - rss_before,
        **summary(times),
    }


# ---- the parent: set up, launch each side, gather


def pooled(runs: list[dict[str, Any]], totals: dict[str, Callable[[dict[str, float]], float]]) -> dict[str, Any]:
    """One side's rounds as one result: `totals` (each a function of a step's parts) summarised over every timed
    step of every round, each part's median, forward positions, and the peak RSS (the largest round's)."""
    steps = [step for run in runs for step in run["steps"]]
    first = {key: value for key, value in runs[0].items() if key not in ("steps", "peak_rss_mib", "vm_hwm_mib")}
    last_rss = list(runs[0]["rss_mib"].values())[-1]  # before the first step: the model, optimizer and libraries
    out: dict[str, Any] = {**first}
    for name, total in totals.items():
        values = [total(step) for step in steps]
        out[name] = {**summary(values), "all_s": values}
    out["parts_median_s"] = {
        key: statistics.median(step.get(key, 0.0) for step in steps)
        for key in steps[0]
        if not key.endswith("positions")
    }
    out["forward_positions_per_step"] = {
        key.removesuffix("_positions"): statistics.median(step[key] for step in steps)
        for key in steps[0]
        if key.endswith("positions")
    }
    out["peak_rss_mib"] = max(run["peak_rss_mib"] for run in runs)
    out["vm_hwm_mib"] = max(run["vm_hwm_mib"] for run in runs)
    out["peak_rss_mib_per_round"] = [run["peak_rss_mib"] for run in runs]
    out["rss_added_by_the_steps_mib"] = out["peak_rss_mib"] - last_rss
    out["timed_steps"] = len(steps)
    return out


def child(role: str, spec: dict[str, Any], workdir: Path, python: str = sys.executable) -> dict[str, Any]:
    """Run `role` (or bench/trl_update.py for "trl") on `spec` in a fresh process; its JSON result."""
    name = spec.get("name", role)
    spec_path, out = workdir / f"{name}.spec.json", workdir / f"{name}.result.json"
    spec_path.write_text(json.dumps({**spec, "out": str(out)}), encoding="utf-8")
    threads = str(spec.get("threads", spec.get("settings", {}).get("threads", 1)))
    env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, "PYTHONPATH": str(REPO_ROOT)}
    if role == "trl":
        command = [python, str(REPO_ROOT / "bench" / "trl_update.py"), str(spec_path)]
    else:
        command = [python, str(Path(__file__).resolve()), "--role", role, "--spec", str(spec_path)]
    # Through a shell that forks it (no exec of the last command, hence the `exit`): Linux carries ru_maxrss over
    # execve, so a child spawned straight from this process would start with this process's peak as its own.
    command = ["/bin/sh", "-c", '"$0" "$@"; exit $?', *command]
    log_path = workdir / f"{name}.log"
    with log_path.open("w") as log:
        code = subprocess.run(command, env=env, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT).returncode
    if code != 0:
        raise RuntimeError(f"{name} exited {code}:\n{log_path.read_text()[-4000:]}")
    result: dict[str, Any] = json.loads(out.read_text(encoding="utf-8"))
    return result


def machine() -> dict[str, Any]:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    mem_kib = next(
        int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines() if "MemTotal" in line
    )
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(mem_kib / 2**20, 1),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "load_average_start": os.getloadavg(),
    }


def entropy_section(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    n, t = args.entropy_n, args.entropy_t
    chunks = sorted({*args.entropy_chunks, n * t})
    base = {
        "n": n,
        "t": t,
        "vocab": args.entropy_vocab,
        "hidden": args.entropy_hidden,
        "threads": args.threads,
        "repeats": args.entropy_repeats,
    }
    section: dict[str, Any] = {
        "shape": {k: base[k] for k in ("n", "t", "vocab", "hidden")},
        "full_logits_mib": n * t * args.entropy_vocab * 4 / 2**20,
        "what": "peak_above_before: ru_maxrss after the calls minus ru_maxrss just before them (same process)",
    }
    modes = [("no_grad", False)] + ([("forward_backward", True)] if args.entropy_backward else [])
    for mode, backward in modes:
        variants, tensors = {}, {}
        for chunk in chunks:
            label = "unchunked" if chunk >= n * t else f"chunk_{chunk}"
            name = f"entropy-{mode}-{label}"
            tensor_path = workdir / f"{name}.pt"
            variants[label] = child(
                "entropy",
                {**base, "name": name, "chunk_tokens": chunk, "backward": backward, "tensors": str(tensor_path)},
                workdir,
            )
            tensors[label] = torch.load(tensor_path)
        reference = tensors["unchunked"]
        for label, variant in variants.items():
            variant["max_abs_diff_vs_unchunked"] = {
                key: float((tensors[label][key] - reference[key]).abs().max()) for key in ("logprobs", "entropy")
            }
        whole = variants["unchunked"]
        section[mode] = {
            "variants": variants,
            "ratios_unchunked_over_chunked": {
                label: {
                    "peak_above_before": whole["peak_above_before_mib"] / max(v["peak_above_before_mib"], 1e-9),
                    "peak_rss": whole["peak_rss_mib"] / v["peak_rss_mib"],
                    "median_time": whole["median_s"] / v["median_s"],
                }
                for label, v in variants.items()
                if label != "unchunked"
            },
        }
    return section


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5, help="timed optimizer steps per process")
    parser.add_argument("--warmup", type=int, default=1, help="untimed optimizer steps first (per process)")
    parser.add_argument("--rounds", type=int, default=2, help="processes per side, alternating ours / TRL")
    parser.add_argument("--zero-stage", type=int, default=2, choices=(0, 1, 2))
    parser.add_argument("--micro-batch", type=int, default=8, help="samples per forward/backward (both sides)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--trl-python", default=str(TRL_PYTHON), help="python of the TRL environment")
    parser.add_argument("--skip-trl", action="store_true")
    parser.add_argument("--skip-entropy", action="store_true")
    parser.add_argument("--entropy-n", type=int, default=4, help="responses")
    parser.add_argument("--entropy-t", type=int, default=4096, help="tokens per response")
    parser.add_argument("--entropy-vocab", type=int, default=32768, help="LM head outputs")
    parser.add_argument("--entropy-hidden", type=int, default=128, help="LM head inputs")
    parser.add_argument("--entropy-chunks", type=int, nargs="+", default=[1024, 4096], help="chunk_tokens values")
    parser.add_argument("--entropy-repeats", type=int, default=2, help="calls per variant (median time)")
    parser.add_argument(
        "--entropy-backward",
        action="store_true",
        help="also forward + backward with recomputation (unchunked: ~10 GiB and ~1.5 min at the default shape)",
    )
    parser.add_argument("--workdir", type=Path, default=None, help="keep the model, batch and logs here")
    parser.add_argument("--indent", type=int, default=None)
    parser.add_argument("--role", choices=("ours", "entropy"), default=None, help=argparse.SUPPRESS)
    parser.add_argument("--spec", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role is not None:
        spec = json.loads(args.spec.read_text(encoding="utf-8"))
        result = run_ours(spec) if args.role == "ours" else run_entropy(spec)
        Path(spec["out"]).write_text(json.dumps(result), encoding="utf-8")
        return
    # Only the report goes to stdout: whatever the libraries print meanwhile (DeepSpeed's accelerator notice, ...)
    # is sent to stderr at the file-descriptor level.
    sys.stdout.flush()
    stdout = os.dup(1)
    os.dup2(2, 1)
    try:
        if args.workdir is not None:
            args.workdir.mkdir(parents=True, exist_ok=True)
            report = bench(args, args.workdir)
        else:
            with tempfile.TemporaryDirectory(prefix="bench-trainer-") as tmp:
                report = bench(args, Path(tmp))
    finally:
        sys.stdout.flush()
        os.dup2(stdout, 1)
        os.close(stdout)
    print(json.dumps(report, indent=args.indent))


def bench(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    report: dict[str, Any] = {"bench": "trainer", "machine": machine()}
    run = load_run_config(PRESET)
    trainer_data = run.trainer.model_dump()
    trainer_data["engine"].update(param_dtype="fp32", zero_stage=args.zero_stage, micro_batch_size=args.micro_batch)
    trainer_data["optimizer"].update(implementation="torch")
    trainer = TrainerConfig.model_validate(trainer_data)
    prompts, samples = run.rollout.prompts_per_step, run.rollout.samples_per_prompt
    if (prompts * samples) % args.micro_batch:
        raise SystemExit(f"{prompts * samples} samples do not split into micro-batches of {args.micro_batch}")
    model_dir = workdir / "model"
    model = write_model(model_dir, args.seed)
    prompt_ids, responses, rewards = make_batch(
        model_dir, prompts, samples, run.rollout.sampling.max_new_tokens, args.seed
    )
    optim, loss = trainer.optimizer, trainer.policy_loss
    settings = {
        "warmup": args.warmup,
        "repeats": args.repeats,
        "threads": args.threads,
        "seed": args.seed,
        "micro_batch_size": args.micro_batch,
        "grad_accum_steps": prompts * samples // args.micro_batch,
        "temperature": run.rollout.sampling.temperature,
        "max_completion_length": run.rollout.sampling.max_new_tokens,
        "lr": optim.lr,
        "weight_decay": optim.weight_decay,
        "betas": list(optim.betas),
        "eps": optim.eps,
        "max_grad_norm": optim.max_grad_norm,
        "clip_eps_low": loss.clip_eps_low,
        "clip_eps_high": loss.clip_eps_high,
        "credit_ratio": 0.0,
        "force_old_pass": True,
    }
    spec = {
        "model_dir": str(model_dir),
        "prompts": prompt_ids,
        "responses": responses,
        "rewards": rewards,
        "settings": settings,
    }
    lengths = [len(r) for group in responses for r in group]
    report["batch"] = {
        "prompts": prompts,
        "samples_per_prompt": samples,
        "prompt_tokens": [len(p) for p in prompt_ids],
        "response_tokens": {"min": min(lengths), "max": max(lengths), "mean": statistics.fmean(lengths)},
        "model": {**model, "vocab_size": 257, "tie_word_embeddings": True},
        "dtype": "fp32",
        "loss": "token-mean PPO clip (eps 0.2 / 0.28), no KL, no entropy bonus; TRL: loss_type='dapo', beta=0",
    }
    trl_python = Path(args.trl_python)
    trl_skipped = (
        "--skip-trl"
        if args.skip_trl
        else None
        if trl_python.is_file()
        else f"{trl_python} does not exist: run `bash bench/trl_env.sh` first"
    )
    ours_runs, trl_runs = [], []
    ours_spec = {**spec, "trainer": trainer.model_dump(), "credit": run.credit.model_dump()}
    for round_ in range(args.rounds):  # alternate the sides, so that a change of load hits both
        ours_runs.append(child("ours", {**ours_spec, "name": f"ours-{round_}"}, workdir))
        if trl_skipped is None:
            trl_runs.append(child("trl", {**spec, "name": f"trl-{round_}"}, workdir, python=str(trl_python)))
    ours = pooled(
        ours_runs, {"train_step": lambda s: s["step"], "comparable": lambda s: s["step"] - s["post_update_pass"]}
    )
    report["ours"] = ours
    if trl_skipped is not None:
        report["trl"] = {"skipped": trl_skipped}
    else:
        trl = pooled(
            trl_runs,
            {
                "step": lambda s: s["step"],
                "step_without_old_pass": lambda s: s["step"] - s.get("old_pass", 0.0),
                "step_minus_generate_and_score": lambda s: s["step"] - s["generate_and_score"],
            },
        )
        report["trl"] = trl
        report["ratio_ours_over_trl"] = {
            "comparable_over_step_median": ours["comparable"]["median_s"] / trl["step"]["median_s"],
            "comparable_over_step_min": ours["comparable"]["min_s"] / trl["step"]["min_s"],
            "comparable_over_step_minus_generate_and_score_median": (
                ours["comparable"]["median_s"] / trl["step_minus_generate_and_score"]["median_s"]
            ),
            "train_step_over_step_median": ours["train_step"]["median_s"] / trl["step"]["median_s"],
            "peak_rss": ours["peak_rss_mib"] / trl["peak_rss_mib"],
            "rss_added_by_the_steps": ours["rss_added_by_the_steps_mib"] / trl["rss_added_by_the_steps_mib"],
            "forward_positions_train": (
                ours["forward_positions_per_step"]["train"] / trl["forward_positions_per_step"]["train"]
            ),
        }
    if not args.skip_entropy:
        report["chunked_entropy"] = entropy_section(args, workdir)
    report["machine"]["load_average_end"] = os.getloadavg()
    return report


if __name__ == "__main__":
    main()

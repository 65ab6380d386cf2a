"""Run the trainer's `train_step` on real ranks (one process each, gloo) for the equivalence tests.

`python -m tests.trainer_ranks SPEC.json` runs one rank (RANK from the environment); `run_ranks(spec, world)` starts
`world` of them and returns rank 0's result: the final weights (a safetensors file) and each step's metrics.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

from services.core.config import CreditConfig, TrainerConfig
from services.core.schedule import Phase
from services.core.wire import ScoredGroup
from trainer.worker import free_port

ROOT = Path(__file__).resolve().parent.parent


def scored_groups(count: int, samples: int, *, seed: int, vocab: int = 40, max_len: int = 12) -> list[ScoredGroup]:
    """Random prompts and responses (tokens 3..vocab-1), 0/1 rewards with signal, engine log-probs near -2."""
    rng = random.Random(seed)
    groups = []
    for g in range(count):
        rewards = [float(rng.random() < 0.5) for _ in range(samples)]
        rewards[0], rewards[1] = 1.0, 0.0  # every group has signal
        responses = [[rng.randrange(3, vocab) for _ in range(rng.randrange(1, max_len + 1))] for _ in range(samples)]
        groups.append(
            ScoredGroup(
                group_id=f"s1-g{g}", step=1, data_source="arith",
                prompt_token_ids=[rng.randrange(3, vocab) for _ in range(rng.randrange(2, 6))],
                response_token_ids=responses, logprobs=[[-2.0 + 0.01 * rng.random() for _ in r] for r in responses],
                rewards=rewards, reward_status=["ok"] * samples, policy_version=0,
                phase=Phase(step=1, progress=0.0, ratio=0.0, stage="warmup"),
            )
        )  # fmt: skip
    return groups


def run_ranks(spec: dict[str, Any], world: int, workdir: Path, timeout_s: float = 900) -> dict[str, Any]:
    """Start `world` rank processes on `spec` and wait for all; rank 0's result.json as a dict."""
    spec_path = workdir / "spec.json"
    spec_path.write_text(json.dumps({**spec, "out": str(workdir)}), encoding="utf-8")
    port = free_port()
    procs = []
    for rank in range(world):
        env = {**os.environ, "RANK": str(rank), "WORLD_SIZE": str(world), "PYTHONPATH": str(ROOT)}
        env.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1")
        log = open(workdir / f"rank{rank}.log", "w")  # noqa: SIM115 - closed below
        procs.append((subprocess.Popen([sys.executable, "-m", "tests.trainer_ranks", str(spec_path)], env=env,
                                       stdout=log, stderr=subprocess.STDOUT, cwd=ROOT), log))  # fmt: skip
    codes = []
    for proc, log in procs:
        try:
            codes.append(proc.wait(timeout=timeout_s))
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            log.close()
    if any(codes):
        logs = "\n".join((workdir / f"rank{r}.log").read_text()[-3000:] for r in range(world))
        raise RuntimeError(f"rank exit codes {codes}:\n{logs}")
    result: dict[str, Any] = json.loads((workdir / "result.json").read_text())
    return result


def _main(spec_path: str) -> None:
    from safetensors.torch import save_file

    from trainer.engine import PolicyEngine, set_distributed_env
    from trainer.update import train_step

    torch.set_num_threads(1)
    spec = json.loads(Path(spec_path).read_text())
    set_distributed_env(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), "127.0.0.1",
                        int(os.environ["MASTER_PORT"]))  # fmt: skip
    trainer = TrainerConfig.model_validate(spec["trainer"])
    credit = CreditConfig.model_validate(spec["credit"])
    steps = [scored_groups(spec["groups"], spec["samples"], seed=seed) for seed in spec["batch_seeds"]]
    engine = PolicyEngine(Path(spec["model"]), trainer, total_steps=len(steps),
                          samples_per_step=spec["groups"] * spec["samples"])  # fmt: skip
    metrics = []
    for i, groups in enumerate(steps):
        phase = Phase(step=i + 1, progress=0.0, ratio=spec["ratios"][i], stage="anneal")
        metrics.append(train_step(engine, groups, phase, credit, trainer, temperature=spec["temperature"]))
    state = engine.full_state_dict()
    if engine.rank == 0:
        save_file({k: v.contiguous() for k, v in state.items() if k != "lm_head.weight"},
                  str(Path(spec["out"]) / "weights.safetensors"))  # fmt: skip
        (Path(spec["out"]) / "result.json").write_text(json.dumps({"metrics": metrics}), encoding="utf-8")
    engine.close()


if __name__ == "__main__":
    _main(sys.argv[1])

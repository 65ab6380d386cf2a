"""The held-out accuracy at the end of a run: the last checkpoint against the warm start, sampled like the run and
graded by the run's reward server (the same code path as `rlvr eval`).

Reports go to `<run>/eval/warm_start.json` and `<run>/eval/final.json`; the warm start's is reused when a stored
report was made with the same model, data and sampling settings (a resumed or repeated run does not pay for it
twice).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from services.core.config import HFBackendConfig, RunConfig, VLLMBackendConfig
from services.core.result_stream import say
from services.run.evaluate import prepare_eval, run_eval

WARM_START, FINAL = "warm_start", "final"


def held_out_data(config: RunConfig, world_path: Path | None) -> Path | None:
    if config.evaluation.data is not None:
        return Path(config.evaluation.data)
    return world_path / "data" / "test.jsonl" if world_path is not None else None


def evaluate_run(
    config: RunConfig, *, warm_start: Path, final: Path, data: Path, reward_url: str, out_dir: Path
) -> dict[str, Any]:
    """Both models' avg@k on the held-out set; the summary's `held_out` entry."""
    out_dir.mkdir(parents=True, exist_ok=True)
    reports = {
        name: _evaluate(config, model, data, reward_url, out_dir / f"{name}.json")
        for name, model in ((WARM_START, warm_start), (FINAL, final))
    }
    evaluation, sampling = config.evaluation, config.rollout.sampling
    before, after = reports[WARM_START]["avg_at_k"], reports[FINAL]["avg_at_k"]
    return {
        "data": str(data), "prompts": reports[FINAL]["prompts"], "k": evaluation.k,
        "temperature": sampling.temperature, "max_new_tokens": sampling.max_new_tokens, "seed": evaluation.seed,
        "warm_start_avg_at_k": before, "final_avg_at_k": after, "gain": after - before,
        "final_model": str(final),
    }  # fmt: skip


def _evaluate(config: RunConfig, model: Path, data: Path, reward_url: str, out: Path) -> dict[str, Any]:
    args = _eval_args(config, model, data, reward_url)
    if out.is_file():
        stored: dict[str, Any] = json.loads(out.read_text(encoding="utf-8"))
        if _same_job(stored, model, data, args):
            say(f"held-out evaluation of {model}: reusing {out}")
            return stored
    say(f"held-out evaluation of {model} ({config.evaluation.prompts} prompts x {config.evaluation.k})")
    report = run_eval(prepare_eval(args), progress=lambda message: None)
    out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return report


def _eval_args(config: RunConfig, model: Path, data: Path, reward_url: str) -> argparse.Namespace:
    backend, sampling, evaluation = config.rollout.backend, config.rollout.sampling, config.evaluation
    assert isinstance(backend, HFBackendConfig | VLLMBackendConfig)
    return argparse.Namespace(
        model=model, data=data, k=evaluation.k, temperature=sampling.temperature, top_p=sampling.top_p,
        max_new_tokens=sampling.max_new_tokens, limit=evaluation.prompts, seed=evaluation.seed,
        input_key=backend.input_key, label_key=backend.label_key, data_source=None, reward_url=reward_url, out=None,
    )  # fmt: skip


def _same_job(stored: dict[str, Any], model: Path, data: Path, args: argparse.Namespace) -> bool:
    wanted = {
        "k": args.k, "temperature": args.temperature, "top_p": args.top_p, "max_new_tokens": args.max_new_tokens,
        "seed": args.seed,
    }  # fmt: skip
    return (
        stored.get("model_dir") == str(model.resolve())
        and stored.get("data_file") == str(data.resolve())
        and stored.get("limit") == args.limit
        and {key: stored.get("sampling", {}).get(key) for key in wanted} == wanted
    )

"""`rlvr prepare`: build the tiny world once — splits, tokenizer, warm-started policy, measured base accuracy.

Layout of a world folder (default `runs/worlds/world-<key>`, key = hash of the world config and WORLD_FORMAT):

    data/{train,validation,test,ood}.jsonl   the splits (OpenRLHF/verl prompt convention + level + solution)
    model/                                   HF model directory: config.json, model.safetensors, tokenizer files
    prepare.json                             seed, sizes, SFT curve and the kept step, wall times, base accuracy

Idempotent: a folder whose `prepare.json` carries the same key is reused as it is (and says so); one that carries
another key is refused, never overwritten. A world is built in a sibling `.partial` folder and renamed into place
only when complete, so an interrupted prepare leaves nothing that could be mistaken for a world.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import tokenizers
import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer

from services.core.config.run import canonical_json
from services.core.config.world import WorldConfig
from trainer.generation import SamplingSettings
from trainer.world.checkpoint_selection import CurvePoint
from trainer.world.grading import split_accuracy
from trainer.world.policy import build_policy, parameter_count
from trainer.world.sft import run_sft
from trainer.world.splits import SPLITS, build_splits, most_common_label_accuracy, write_split
from trainer.world.tasks import DATA_SOURCE
from trainer.world.tokenizer import check_round_trip, save_tokenizer, train_tokenizer

WORLD_FORMAT: Final = 1
"""Bump when the generator, the tokenizer or the warm start change what a world holds for the same config."""
DEFAULT_WORLDS_DIR: Final = Path("runs") / "worlds"
PREPARE_FILE: Final = "prepare.json"
TOKENIZER_SAMPLE: Final = 4000  # training texts the tokenizer is trained on (an alphabet, so a sample suffices)

Progress = Callable[[str], None]


class WorldConflictError(RuntimeError):
    """The folder holds a world built from other settings."""


@dataclass(frozen=True)
class PreparedWorld:
    path: Path
    info: dict[str, Any]
    reused: bool

    @property
    def model_dir(self) -> Path:
        return self.path / "model"

    def split_path(self, split: str) -> Path:
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; splits: {', '.join(SPLITS)}")
        return self.path / "data" / f"{split}.jsonl"


def world_key(config: WorldConfig) -> str:
    payload = canonical_json({"format": WORLD_FORMAT, "world": config.model_dump(mode="json")})
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def default_world_dir(config: WorldConfig, root: Path | None = None) -> Path:
    base = root if root is not None else Path(os.environ.get("RLVR_WORLDS_DIR", DEFAULT_WORLDS_DIR))
    return base / f"world-{world_key(config)}"


def load_world(path: Path, config: WorldConfig) -> PreparedWorld | None:
    """The world at `path` if it is complete and was built from `config`; None if there is none; refuses others."""
    info_file = path / PREPARE_FILE
    if not info_file.exists():
        if path.exists() and any(path.iterdir()):
            raise WorldConflictError(
                f"{path} exists and is not a prepared world (no {PREPARE_FILE}); pick another --out"
            )
        return None
    info = json.loads(info_file.read_text(encoding="utf-8"))
    if info.get("key") != world_key(config):
        raise WorldConflictError(
            f"{path} holds a world built from other settings (key {info.get('key')}, wanted {world_key(config)}); "
            "pick another --out or remove that folder"
        )
    return PreparedWorld(path=path, info=info, reused=True)


def prepare_world(config: WorldConfig, out: Path | None = None, progress: Progress = print) -> PreparedWorld:
    """The prepared world for `config` at `out` (default: the cache folder for its key), built if missing."""
    path = out if out is not None else default_world_dir(config)
    existing = load_world(path, config)
    if existing is not None:
        progress(f"prepare: reusing the world at {path} (key {existing.info['key']}, built {existing.info['built']})")
        return existing
    partial = path.with_name(path.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    info = _build(config, partial, progress)
    if path.exists():
        path.rmdir()  # empty (load_world refused a non-empty one)
    partial.rename(path)
    progress(f"prepare: world ready at {path} in {info['wall_s']['total']:.0f} s")
    return PreparedWorld(path=path, info=info, reused=False)


def _build(config: WorldConfig, folder: Path, progress: Progress) -> dict[str, Any]:
    started = time.monotonic()
    wall: dict[str, float] = {}

    splits = build_splits(config.task, config.seed)
    (folder / "data").mkdir()
    for name, problems in splits.items():
        write_split(problems, folder / "data" / f"{name}.jsonl")
    wall["splits"] = time.monotonic() - started
    progress(f"prepare: splits {', '.join(f'{n} {len(p)}' for n, p in splits.items())}")

    tokenizer = train_tokenizer(p.prompt + p.solution for p in splits["train"][:TOKENIZER_SAMPLE])
    eos = tokenizer.eos_token_id
    assert eos is not None
    model = build_policy(config.model, len(tokenizer), eos, config.seed)
    progress(f"prepare: tokenizer of {len(tokenizer)} symbols; policy of {parameter_count(model):,} parameters")

    mark = time.monotonic()

    def on_eval(point: CurvePoint, elapsed: float) -> None:
        progress(
            f"prepare: sft step {point.step:>5} loss {point.loss:.4f} validation {point.accuracy:.3f} ({elapsed:.0f} s)"
        )

    sft = run_sft(
        model,
        tokenizer,
        splits["train"],
        splits["validation"],
        config.sft,
        seed=config.seed,
        max_new_tokens=config.max_new_tokens,
        progress=on_eval,
    )
    wall["sft"] = time.monotonic() - mark
    model.load_state_dict(sft.state)
    progress(f"prepare: kept sft step {sft.kept.step} (validation {sft.kept.accuracy:.3f}): {sft.selection.reason}")

    model_dir = folder / "model"
    model.save_pretrained(str(model_dir), safe_serialization=True)
    save_tokenizer(tokenizer, model_dir)
    checked = _check_standard_loaders(model, tokenizer, model_dir, [p.prompt + p.solution for p in splits["test"][:64]])

    mark = time.monotonic()
    accuracy = _base_accuracy(model, tokenizer, splits, config, progress)
    wall["base_accuracy"] = time.monotonic() - mark
    wall["total"] = time.monotonic() - started

    info: dict[str, Any] = {
        "key": world_key(config),
        "format": WORLD_FORMAT,
        "built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "seed": config.seed,
        "config": config.model_dump(mode="json"),
        "data_source": DATA_SOURCE,
        "sizes": {
            "parameters": parameter_count(model),
            "vocab": len(tokenizer),
            "splits": {name: len(problems) for name, problems in splits.items()},
            "reference_response_tokens": _length_stats(tokenizer, splits),
        },
        "sft": {
            "steps_run": sft.steps_run,
            "cooldown_started_at": sft.cooled_at,
            "kept_step": sft.kept.step,
            "kept_validation_accuracy": sft.kept.accuracy,
            "selection": sft.selection.reason,
            "kept_in_band": sft.selection.in_band,
            "curve": [
                {"step": p.step, "loss": round(p.loss, 5), "accuracy": p.accuracy, "slope_per_100": round(s, 4)}
                for p, s in zip(sft.curve, sft.selection.slopes, strict=True)
            ],
            "screening": [
                {"step": p.step, "loss": round(p.loss, 5), "accuracy": p.accuracy, "problems": p.problems}
                for p in sft.screening
            ],
        },
        "tokenizer_round_trip_texts": checked,
        "base_accuracy": accuracy,
        "guess_most_common_label": {
            name: most_common_label_accuracy([str(p.answer) for p in problems]) for name, problems in splits.items()
        },
        "wall_s": {name: round(seconds, 2) for name, seconds in wall.items()},
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "tokenizers": tokenizers.__version__,
        },
    }
    (folder / PREPARE_FILE).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    return info


def _check_standard_loaders(model: torch.nn.Module, tokenizer: Any, model_dir: Path, texts: list[str]) -> int:
    """The saved directory must load through `AutoTokenizer` with the same ids and through `AutoModelForCausalLM`
    with the same logits — what OpenRLHF, TRL and vLLM will do with it."""
    loaded_tok = AutoTokenizer.from_pretrained(str(model_dir))
    checked = check_round_trip(tokenizer, loaded_tok, texts)
    loaded = AutoModelForCausalLM.from_pretrained(str(model_dir))
    ids = torch.tensor([loaded_tok.encode(texts[0], add_special_tokens=False)])
    model.eval()
    loaded.eval()
    with torch.no_grad():
        if not torch.equal(model(ids).logits, loaded(ids).logits):
            raise RuntimeError(f"the saved model at {model_dir} does not reproduce the trained model's logits")
    return checked


def _base_accuracy(
    model: Any, tokenizer: Any, splits: dict[str, list[Any]], config: WorldConfig, progress: Progress
) -> dict[str, Any]:
    """Greedy and sampled (at the run's temperature) accuracy on `eval_size` problems of each split."""
    out: dict[str, Any] = {}
    modes = {
        "greedy": SamplingSettings(n=1, temperature=0.0, max_new_tokens=config.max_new_tokens),
        "sampled": SamplingSettings(
            n=1, temperature=config.temperature, top_p=1.0, max_new_tokens=config.max_new_tokens, seed=config.seed
        ),
    }
    for name in ("train", "test", "ood"):
        problems = splits[name][: config.eval_size]
        out[name] = {}
        for mode, settings in modes.items():
            measured = split_accuracy(model, tokenizer, problems, settings).as_json()
            out[name][mode] = measured
            progress(
                f"prepare: base accuracy {name:<5} {mode:<7} {measured['accuracy']:.3f} ({len(problems)} problems)"
            )
    out["sampling"] = {"temperature": config.temperature, "top_p": 1.0, "top_k": 0}
    return out


def _length_stats(tokenizer: Any, splits: dict[str, list[Any]]) -> dict[str, dict[str, float]]:
    stats = {}
    for name in ("train", "ood"):
        lengths = [len(tokenizer.encode(p.solution, add_special_tokens=False)) for p in splits[name][:500]]
        stats[name] = {"min": min(lengths), "mean": round(sum(lengths) / len(lengths), 1), "max": max(lengths)}
    return stats

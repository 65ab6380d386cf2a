"""The tiny world as the launcher sees it: `rlvr prepare`, and `rlvr run` building the world on first use.

The world itself (splits, tokenizer, warm start) is trainer/world/prepare.py; this module picks the config and the
folder, reports progress on stderr, and turns a folder conflict into the CLI's one-line refusal.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from services.core.config import ConfigError, RunConfig, WorldConfig
from trainer.world.prepare import PreparedWorld, WorldConflictError, prepare_world


def _progress(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def ensure_world(world: WorldConfig, out: Path | None = None) -> PreparedWorld:
    """The prepared world for `world`, built now if its folder does not hold it yet."""
    try:
        return prepare_world(world, out, progress=_progress)
    except WorldConflictError as exc:
        raise ConfigError(str(exc)) from None


def world_summary(world: PreparedWorld) -> dict[str, Any]:
    """What a user wants to see of a world in one JSON line."""
    info = world.info
    return {
        "world": str(world.path),
        "model": str(world.model_dir),
        "key": info["key"],
        "reused": world.reused,
        "parameters": info["sizes"]["parameters"],
        "kept_sft_step": info["sft"]["kept_step"],
        "base_accuracy": {
            split: {mode: values["accuracy"] for mode, values in modes.items()}
            for split, modes in info["base_accuracy"].items()
            if split != "sampling"
        },
        "wall_s": info["wall_s"]["total"],
    }


def prepare_for_cli(config: RunConfig, out: Path | None) -> dict[str, Any]:
    """`rlvr prepare`: the config's world (the defaults when the config has no [world] section)."""
    return world_summary(ensure_world(config.world or WorldConfig(), out))

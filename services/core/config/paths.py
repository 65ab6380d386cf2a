"""File paths in the run config: made absolute once, so every process that loads the resolved config agrees.

A relative path written in a config file is relative to that file's folder (like Docker Compose or Helm values);
one given on the command line (`--set`) is relative to the working directory. `load_run_config` resolves the first
kind before overrides are applied; validation resolves whatever is still relative against the working directory.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

from pydantic import AfterValidator

PATH_FIELDS: tuple[tuple[str, ...], ...] = (
    ("rollout", "backend", "path"),
    ("rollout", "backend", "model"),
    ("rollout", "backend", "prompts"),
)
"""Every DataPath field of the run config, by its key path (a test checks the list against the schema)."""


def _absolute(value: str) -> str:
    if not value.strip():
        raise ValueError("a path must not be empty")
    return os.path.abspath(Path(value).expanduser())


DataPath = Annotated[str, AfterValidator(_absolute)]


def resolve_file_paths(data: dict[str, Any], base_dir: Path) -> dict[str, Any]:
    """A copy of a config file's data with its relative DataPath values made relative to `base_dir`."""
    out = _copy_tables(data)
    for key_path in PATH_FIELDS:
        node: Any = out
        for part in key_path[:-1]:
            node = node.get(part) if isinstance(node, dict) else None
        leaf = key_path[-1]
        if isinstance(node, dict) and isinstance(node.get(leaf), str) and node[leaf].strip():
            path = Path(node[leaf]).expanduser()
            node[leaf] = os.path.abspath(path if path.is_absolute() else base_dir / path)
    return out


def _copy_tables(data: dict[str, Any]) -> dict[str, Any]:
    return {key: _copy_tables(value) if isinstance(value, dict) else value for key, value in data.items()}

"""Reading a run config: a TOML preset or a resolved JSON file, then `--set` overrides, then validation.

Precedence: field defaults < the file < `--set key.path=value` overrides. Every failure is a `ConfigError` whose
message is one line per problem, naming the file and the field, without pydantic's documentation links.
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from services.core.config.paths import resolve_file_paths
from services.core.config.run import RunConfig


class ConfigError(ValueError):
    """The run config cannot be read or is invalid; the message says what and where."""


def parse_override(text: str) -> tuple[list[str], Any]:
    """`a.b=value` -> (["a", "b"], value); the value is read as a TOML literal, else kept as a bare string."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {text!r} must look like key.path=value (e.g. schedule.max_ratio=0.5)")
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return [part.strip() for part in key.split(".")], value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """A copy of `data` with each `key.path=value` override set (intermediate tables are created)."""
    merged: dict[str, Any] = {k: (dict(v) if isinstance(v, dict) else v) for k, v in data.items()}
    for text in overrides:
        path, value = parse_override(text)
        node = merged
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override {text!r}: {part!r} is a value, not a table")
            node[part] = child = dict(child)
            node = child
        node[path[-1]] = value
    return merged


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The data of a TOML preset or a resolved `config.json`, relative paths made relative to the file's folder."""
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise ConfigError(f"run config file {file} does not exist") from exc
    except (IsADirectoryError, PermissionError, UnicodeDecodeError) as exc:
        raise ConfigError(f"run config file {file} cannot be read: {exc}") from exc
    try:
        data = json.loads(text) if file.suffix == ".json" else tomllib.loads(text)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
        kind = "JSON" if file.suffix == ".json" else "TOML"
        raise ConfigError(f"run config file {file} is not valid {kind}: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"run config file {file} must hold a table of settings, not {type(data).__name__}")
    return resolve_file_paths(data, file.absolute().parent)


def load_run_config(path: str | Path | None, overrides: list[str] | None = None) -> RunConfig:
    """Read a file (or nothing), apply overrides, validate; ConfigError naming the file and each bad field."""
    data = read_config_file(path) if path is not None else {}
    try:
        return RunConfig.model_validate(apply_overrides(data, overrides or []))
    except ValidationError as exc:
        source = f"run config {path}" if path is not None else "run config"
        if overrides:
            source += " with --set " + " ".join(overrides)
        raise ConfigError(f"{source} is invalid: {format_validation_error(exc)}") from None


def format_validation_error(exc: ValidationError) -> str:
    """`field.path: message` per problem, joined by '; ' — no input dumps, no documentation URLs."""
    problems = []
    for error in exc.errors(include_url=False, include_input=False):
        where = ".".join(str(part) for part in error["loc"]) or "(root)"
        message = str(error["msg"]).removeprefix("Value error, ")
        problems.append(f"{where}: {message}")
    return "; ".join(problems)

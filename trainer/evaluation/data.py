"""Evaluation data: a jsonl prompt set read into `EvalRow`s, every row checked before any work starts.

Rows follow the OpenRLHF/verl prompt convention (`prompt`, `label`, `data_source`, optional `level`), but benchmark
files name their columns otherwise (`problem` or `question`, `answer`), so the input and label keys are parameters,
as OpenRLHF's `--data.input_key` / `--data.label_key`. A row without `data_source` takes the caller's default; a row
with neither, or with a data source the reward server maps to no scorer, is an error (every response would come back
`invalid`). Each error is one line that names the file and, for a bad row, the line number.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reward_server.scorers.sources import KINDS, lookup_data_source


class EvalDataError(ValueError):
    """The data file cannot be evaluated; the message says why, naming the file and the line."""


@dataclass(frozen=True)
class DataKeys:
    """Which columns hold the prompt and the gold answer, and the data source of rows that name none."""

    input_key: str = "prompt"
    label_key: str = "label"
    default_data_source: str | None = None


@dataclass(frozen=True)
class EvalRow:
    """One prompt to evaluate: its text, gold answer (as text), benchmark name, difficulty level if any, file line."""

    prompt: str
    label: str
    data_source: str
    level: str | None
    line: int


def load_eval_rows(path: Path, keys: DataKeys, limit: int | None = None) -> list[EvalRow]:
    """Every row of `path` checked, then the first `limit` of them (all when None). Blank lines are skipped."""
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")
    if keys.default_data_source is not None:
        _check_known_source(keys.default_data_source, f"default data source {keys.default_data_source!r}")
    text = _read_text(path)
    rows = [
        parse_row(line, number, keys, where=f"{path}:{number}")
        for number, line in enumerate(text.splitlines(), start=1)
        if line.strip()
    ]
    if not rows:
        raise EvalDataError(f"{path}: the data file holds no rows")
    return rows if limit is None else rows[:limit]


def _read_text(path: Path) -> str:
    if not path.exists():
        raise EvalDataError(f"{path}: data file not found")
    if not path.is_file():
        raise EvalDataError(f"{path}: not a file (expected a .jsonl data file)")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise EvalDataError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start}); expected jsonl") from exc


def parse_row(line: str, number: int, keys: DataKeys, *, where: str) -> EvalRow:
    """One jsonl line as an `EvalRow`; `where` (file:line) prefixes every error."""
    try:
        row = json.loads(line)
    except json.JSONDecodeError as exc:
        raise EvalDataError(f"{where}: not valid JSON ({exc.msg} at column {exc.colno}); expected jsonl") from exc
    if not isinstance(row, dict):
        raise EvalDataError(f"{where}: a JSON {type(row).__name__}, expected an object per line")
    if keys.input_key not in row:
        raise EvalDataError(f"{where}: no input key {keys.input_key!r} (row keys: {_keys(row)}); set --input-key")
    prompt = row[keys.input_key]
    if not isinstance(prompt, str) or not prompt.strip():
        raise EvalDataError(f"{where}: {keys.input_key!r} must be a non-empty string, got {_excerpt(prompt)}")
    if keys.label_key not in row:
        raise EvalDataError(f"{where}: no label key {keys.label_key!r} (row keys: {_keys(row)}); set --label-key")
    return EvalRow(
        prompt=prompt,
        label=_label(row[keys.label_key], keys.label_key, where),
        data_source=_data_source(row.get("data_source"), keys.default_data_source, where),
        level=_level(row.get("level"), where),
        line=number,
    )


def _label(value: Any, key: str, where: str) -> str:
    # Numbers are gold answers too (the reward server accepts them as text); anything else is a mistake.
    if isinstance(value, str) and value.strip():
        return value
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return str(value)
    raise EvalDataError(f"{where}: {key!r} must be a non-empty string or a number, got {_excerpt(value)}")


def _data_source(value: Any, default: str | None, where: str) -> str:
    if value is None:
        if default is None:
            raise EvalDataError(f"{where}: the row has no 'data_source'; set --data-source for such rows")
        return default
    if not isinstance(value, str) or not value.strip():
        raise EvalDataError(f"{where}: 'data_source' must be a non-empty string, got {_excerpt(value)}")
    _check_known_source(value, f"{where}: data_source {value!r}")
    return value


def _check_known_source(name: str, what: str) -> None:
    if lookup_data_source(name) is None:
        raise EvalDataError(
            f"{what} names no scorer of the reward server (reward_server/scorers/sources.py); "
            f"use a known benchmark name or a kind ({', '.join(KINDS)})"
        )


def _level(value: Any, where: str) -> str | None:
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, str) and value.strip():
        return value.strip()
    raise EvalDataError(f"{where}: 'level' must be an integer or a non-empty string, got {_excerpt(value)}")


def _keys(row: dict[str, Any]) -> str:
    return ", ".join(sorted(row)) or "none"


def _excerpt(value: Any, chars: int = 40) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= chars else text[: chars - 1] + "…"

"""Reading a JSONL file of objects with errors that name the file and line (prompt feeds, recorded replay data)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def read_jsonl_objects(path: str | Path, what: str, *, skip_blank: bool) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) for every line; a file that cannot be read, a line that is not JSON or not an object is
    a ValueError naming `what`, the file and the line. `skip_blank` passes over empty lines instead of refusing them."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"{what} {path} cannot be read: {exc}") from None
    for line_no, line in enumerate(lines, start=1):
        if skip_blank and not line.strip():
            continue
        try:
            data = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path} line {line_no}: not valid JSON ({exc})") from None
        if not isinstance(data, dict):
            raise ValueError(f"{path} line {line_no}: expected a JSON object, got {type(data).__name__}")
        yield line_no, data

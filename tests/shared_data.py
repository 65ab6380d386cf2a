"""Where ../shared/data is, and the rule for tests that need it: fail under CI, skip elsewhere."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


def require_shared_data(relative: str) -> Path:
    """The path of a shared data file; missing -> pytest.fail when CI is set, else skip."""
    path = SHARED_DATA / relative
    if not path.exists():
        message = f"{path} is missing: the tests need ../shared/data beside the project"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


def read_shared_jsonl(relative: str) -> list[dict[str, Any]]:
    """The rows of a shared JSONL file (under the same missing-file rule as `require_shared_data`)."""
    path = require_shared_data(relative)
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]

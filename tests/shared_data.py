"""Where ../shared/data is, and the rule for tests that need it: fail under CI, skip elsewhere."""

from __future__ import annotations

import os
from pathlib import Path

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

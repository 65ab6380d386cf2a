"""Property-based fuzzing of the HTTP API from its own OpenAPI schema (schemathesis CLI): no 5xx, responses match
the documented schemas, schema-violating requests are refused — with and without a bearer token configured."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.service_processes import run_reward_server

pytestmark = pytest.mark.integration

MAX_EXAMPLES = 150
TOKEN = "fuzz-token"
# `positive_data_acceptance` is left out: JSON Schema cannot say that query / prompts / labels of /get_reward must
# have equal lengths, so schema-valid bodies with unequal lists are rightly refused with 422.
CHECKS = ["--checks", "all", "--exclude-checks", "positive_data_acceptance"]


def _schemathesis(url: str, cwd: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    command = [
        sys.executable,
        "-m",
        "schemathesis.cli",
        "run",
        f"{url}/openapi.json",
        *CHECKS,
        "--max-examples",
        str(MAX_EXAMPLES),
        "--seed",
        "20240601",
        "--workers",
        "1",
        "--request-timeout",
        "15",
        "--generation-database",
        "none",
        "--no-color",
        *extra,
    ]
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=240, check=False)


@pytest.mark.parametrize("with_token", [False, True], ids=["open", "bearer"])
def test_openapi_fuzzing_finds_no_server_errors(tmp_path: Path, with_token: bool) -> None:
    env = {"RLVR_REWARD_API_TOKEN": TOKEN} if with_token else {}
    with run_reward_server(tmp_path, workers=2, item_timeout_s=2.0, env=env) as server:
        headers = ["--header", f"Authorization: Bearer {TOKEN}"] if with_token else []
        result = _schemathesis(server.url, tmp_path, *headers)
        log = server.log_tail()
    report = result.stdout[-6000:] + result.stderr[-2000:]
    assert result.returncode == 0, report
    generated = re.search(r"(\d+) generated", result.stdout)
    assert generated is not None and int(generated.group(1)) >= 100, report
    assert "Traceback" not in log, log

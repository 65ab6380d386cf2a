"""The `rlvr` command: schedule inspection, dry runs, loud config errors, forwarding to the services."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from services.cli import format_schedule_table, main
from services.core.config import load_run_config
from tests.shared_data import REPO_ROOT

PRESET = str(REPO_ROOT / "deploy" / "presets" / "tiny-cpu.toml")


def test_schedule_json_is_the_whole_resolved_curve(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["schedule", "--config", PRESET, "--json", "--set", "total_steps=10"]) == 0
    state = json.loads(capsys.readouterr().out)
    assert (state["total_steps"], state["min_step"], state["max_step"]) == (10, 0, 8)
    assert [p["step"] for p in state["curve"]] == list(range(1, 11))
    assert state["curve"][7] == {"step": 8, "progress": 1.0, "ratio": 0.0, "stage": "general"}


def test_schedule_table_and_plot(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["schedule", "--config", PRESET, "--plot", str(tmp_path / "r.png")]) == 0
    out = capsys.readouterr().out
    assert "min_step=0 max_step=32" in out and "general" in out
    assert (tmp_path / "r.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = format_schedule_table(load_run_config(PRESET), every=10)
    assert [line.split()[0] for line in table.splitlines()[2:]] == ["1", "10", "20", "30", "32", "40"]


def test_run_dry_run_prints_the_resolved_config(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "--config", PRESET, "--dry-run", "--set", "schedule.mode=sigmoid"]) == 0
    resolved = json.loads(capsys.readouterr().out)
    assert resolved["schedule"]["mode"] == "sigmoid" and resolved["run_id"] == "tiny-cpu"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["schedule.max_ratio=2"], "max_ratio=2.0 is invalid"),
        (["total_steps=1"], "max_step=0 <= min_step=0"),
        (["nonsense"], "key.path=value"),
    ],
)
def test_config_errors_exit_2_with_the_reason(
    overrides: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["schedule", "--config", PRESET]
    for item in overrides:
        argv += ["--set", item]
    assert main(argv) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("service", ["controller", "reward-server"])
def test_service_commands_are_forwarded(service: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([service, "--help"])
    assert exit_info.value.code == 0
    assert f"rlvr {service}" in capsys.readouterr().out

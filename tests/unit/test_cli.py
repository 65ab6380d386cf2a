"""The `rlvr` command: schedule inspection, dry runs, loud config errors, forwarding to the services."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from services.cli import EXIT_BAD_CONFIG, EXIT_BROKEN_PIPE, format_schedule_table, main
from services.core.config import load_run_config
from tests.shared_data import REPO_ROOT, require_shared_data

PRESET = str(REPO_ROOT / "deploy" / "presets" / "tiny-cpu.toml")
REPLAY_PRESET = str(REPO_ROOT / "deploy" / "presets" / "replay-cpu.toml")
PRESETS = REPO_ROOT / "deploy" / "presets"


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


# ---- closed pipes and one-line errors, as a user's shell sees them (subprocesses)

TIMEOUT_S = 120  # a hang guard only (each command takes about a second), never a speed assertion


def _child_env() -> dict[str, str]:
    """The user's usual environment: block-buffered stdout, no RLVR_REWARD_* settings of the test runner."""
    drop = ("PYTHONUNBUFFERED", "RLVR_REWARD_")
    return {k: v for k, v in os.environ.items() if not k.startswith(drop)}


def _rlvr(*args: str, stdout: int | None = subprocess.PIPE) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "services.cli", *args], cwd=REPO_ROOT, env=_child_env(), stdout=stdout,
        stderr=subprocess.PIPE, text=True, timeout=TIMEOUT_S, check=False,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("output", "reader"),
    [("", "head -1"), ("--json", "head -c 64")],  # the JSON curve is one 8 MB line: head -1 would read it all
    ids=["table", "json"],
)
def test_schedule_piped_into_head_exits_quietly(output: str, reader: str) -> None:
    argv = [sys.executable, "-m", "services.cli", "schedule", "--config", PRESET, "--set", "total_steps=100000"]
    script = f"{shlex.join(argv)} {output} | {reader} >/dev/null; echo ${{PIPESTATUS[0]}}"
    done = subprocess.run(
        ["bash", "-c", script], cwd=REPO_ROOT, env=_child_env(), capture_output=True, text=True, timeout=TIMEOUT_S
    )
    assert "Traceback" not in done.stderr and "BrokenPipeError" not in done.stderr, done.stderr
    assert done.stderr == "" and int(done.stdout.strip()) in (0, EXIT_BROKEN_PIPE)


@pytest.mark.parametrize("output", [[], ["--json"]], ids=["table", "json"])
def test_schedule_into_an_already_closed_pipe_exits_quietly(output: list[str]) -> None:
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before rlvr writes a byte (`rlvr schedule | true`)
    try:
        done = _rlvr("schedule", "--config", PRESET, "--set", "total_steps=100000", *output, stdout=write_end)
    finally:
        os.close(write_end)
    assert "Traceback" not in done.stderr and "BrokenPipeError" not in done.stderr, done.stderr
    assert done.stderr == "" and done.returncode == EXIT_BROKEN_PIPE


def _assert_one_line_error(code: int, out: str, err: str, *needles: str) -> None:
    assert code == EXIT_BAD_CONFIG, err
    assert out == ""
    assert len(err.splitlines()) == 1 and err.endswith("\n"), err
    assert err.startswith("rlvr ") and "errors.pydantic.dev" not in err and "Traceback" not in err
    for needle in needles:
        assert needle in err


@pytest.fixture
def no_reward_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The dry run checks RLVR_REWARD_* against the config: keep the runner's own out of it."""
    for name in [k for k in os.environ if k.startswith("RLVR_REWARD_")]:
        monkeypatch.delenv(name)


@pytest.mark.usefixtures("no_reward_env")
def test_the_gpu_preset_resolves_with_dry_run_on_local_inputs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.tiny_models import write_prompts, write_tiny_model

    model, prompts = write_tiny_model(tmp_path / "model"), write_prompts(tmp_path / "prompts.jsonl", 4)
    sets = ["--set", f"rollout.backend.model={model}", "--set", f"rollout.backend.prompts={prompts}"]
    capsys.readouterr()  # what building the tiny model printed
    assert main(["run", "--dry-run", "--config", str(PRESETS / "qwen3-4b-tp-schedule.toml"), *sets]) == 0
    resolved = json.loads(capsys.readouterr().out)
    assert resolved["ray"]["enabled"] is True and resolved["trainer"]["engine"]["zero_stage"] == 3
    assert resolved["rollout"]["backend"]["type"] == "vllm"


def test_ray_address_turns_ray_on(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "--config", PRESET, "--dry-run", "--ray-address", "ray://head:10001"]) == 0
    ray = json.loads(capsys.readouterr().out)["ray"]
    assert ray["enabled"] is True and ray["address"] == "ray://head:10001"


def test_controller_url_without_reward_url_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["run", "--config", PRESET, "--controller-url", "http://127.0.0.1:9"])
    assert code == EXIT_BAD_CONFIG
    assert "--controller-url and --reward-url go together" in capsys.readouterr().err


def test_dry_run_refuses_more_samples_than_the_replay_data_holds(capsys: pytest.CaptureFixture[str]) -> None:
    require_shared_data("bench/gsm8k_example_model_solutions.jsonl")
    code = main(["run", "--dry-run", "--config", REPLAY_PRESET, "--set", "rollout.samples_per_prompt=5"])
    _assert_one_line_error(code, *capsys.readouterr(), "samples_per_prompt=5")


@pytest.mark.usefixtures("no_reward_env")
def test_dry_run_refuses_a_missing_replay_file(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["run", "--dry-run", "--config", REPLAY_PRESET, "--set", "rollout.backend.path=/nonexistent.jsonl"])
    _assert_one_line_error(code, *capsys.readouterr(), "/nonexistent.jsonl")


@pytest.mark.parametrize("command", [["run", "--dry-run"], ["schedule"]], ids=["run", "schedule"])
def test_a_huge_total_steps_is_refused_at_once(command: list[str]) -> None:
    done = _rlvr(*command, "--config", PRESET, "--set", "total_steps=1e10")  # a subprocess: a hang fails, not stalls
    _assert_one_line_error(done.returncode, done.stdout, done.stderr, "total_steps")

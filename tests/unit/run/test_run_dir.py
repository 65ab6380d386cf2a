"""The run folder: staged and committed config, steps appended, torn lines ignored, rewrites in step order."""

from __future__ import annotations

import json
from pathlib import Path

from services.core.config import RunConfig
from services.run.run_dir import PENDING_CONFIG, RunDirectory
from tests.run_configs import run_config


def _config() -> RunConfig:
    return run_config("run-dir-test", 10)


def test_stage_config_writes_only_the_pending_file(tmp_path: Path) -> None:
    run = RunDirectory(tmp_path / "run")
    staged = run.stage_config(_config())
    assert staged == run.pending_config and staged.name == PENDING_CONFIG
    assert RunConfig.model_validate_json(staged.read_text()) == _config()
    assert not (run.path / "config.json").exists()
    run.discard_staged()
    assert not staged.exists()
    run.discard_staged()  # idempotent


def test_commit_config_writes_config_schedule_and_plot_and_drops_the_pending_file(tmp_path: Path) -> None:
    run = RunDirectory(tmp_path / "run")
    config = _config()
    run.stage_config(config)
    run.commit_config(config)
    assert not run.pending_config.exists()
    assert RunConfig.model_validate_json((run.path / "config.json").read_text()) == config
    schedule = json.loads((run.path / "schedule.json").read_text())
    assert (schedule["total_steps"], schedule["min_step"], schedule["max_step"]) == (10, 0, 8)
    assert [p["step"] for p in schedule["curve"]] == list(range(1, 11))
    assert (run.path / "schedule.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(run.path.glob("*.tmp"))


def test_append_step_keeps_earlier_lines_across_instances(tmp_path: Path) -> None:
    first = RunDirectory(tmp_path / "run")
    assert first.read_steps() == [] and first.line_count() == 0
    first.append_step({"step": 1, "loss": 0.5})
    second = RunDirectory(tmp_path / "run")
    second.append_step({"step": 2, "loss": 0.25})
    assert second.read_steps() == [{"step": 1, "loss": 0.5}, {"step": 2, "loss": 0.25}]
    assert first.recorded_steps() == {1, 2} and first.line_count() == 2


def test_read_steps_ignores_a_torn_last_line(tmp_path: Path) -> None:
    run = RunDirectory(tmp_path / "run")
    run.append_step({"step": 1})
    run.append_step({"step": 2})
    with run.steps_path.open("a", encoding="utf-8") as handle:
        handle.write('{"step": 3, "los')  # killed mid-write
    assert [row["step"] for row in run.read_steps()] == [1, 2]
    assert run.recorded_steps() == {1, 2}
    assert run.line_count() == 3


def test_read_steps_skips_rows_without_an_integer_step(tmp_path: Path) -> None:
    run = RunDirectory(tmp_path / "run")
    run.path.mkdir()
    run.steps_path.write_text('[1, 2]\n{"step": "3"}\n{"loss": 1}\n{"step": 4}\n\n', encoding="utf-8")
    assert run.read_steps() == [{"step": 4}]


def test_rewrite_steps_orders_by_step_and_keeps_one_row_per_step(tmp_path: Path) -> None:
    run = RunDirectory(tmp_path / "run")
    run.append_step({"step": 1, "v": "old"})
    with run.steps_path.open("a", encoding="utf-8") as handle:
        handle.write('{"step": 2, "v"')
    rows = [{"step": 3, "v": "c"}, {"step": 1, "v": "a"}, {"step": 2, "v": "b"}, {"step": 1, "v": "a2"}]
    run.rewrite_steps(rows)
    assert run.read_steps() == [{"step": 1, "v": "a2"}, {"step": 2, "v": "b"}, {"step": 3, "v": "c"}]
    assert run.line_count() == 3
    assert run.steps_path.read_text().endswith("\n")
    run.append_step({"step": 4})
    assert [row["step"] for row in run.read_steps()] == [1, 2, 3, 4]


def test_summary_and_redis_dir(tmp_path: Path) -> None:
    run = RunDirectory(tmp_path / "run")
    run.write_summary({"steps": 2})
    assert json.loads((run.path / "summary.json").read_text()) == {"steps": 2}
    assert run.redis_dir == run.path / "redis"

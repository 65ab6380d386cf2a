"""Run config: TOML preset < overrides, loud validation."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.core.config import apply_overrides, load_run_config, parse_override

PRESETS = Path(__file__).resolve().parents[3] / "deploy" / "presets"


@pytest.mark.parametrize("preset", sorted(PRESETS.glob("*.toml")), ids=lambda p: p.name)
def test_every_preset_loads(preset: Path) -> None:
    cfg = load_run_config(preset)
    assert cfg.build_schedule().total_steps == cfg.total_steps


def test_paper_preset_resolves_like_the_paper() -> None:
    sched = load_run_config(PRESETS / "qwen3-4b-tp-schedule.toml").build_schedule()
    assert (sched.min_step, sched.max_step) == (0, 94)
    assert sched.phase(1).ratio == pytest.approx(0.99 * (1 - 1 / 94))


def test_overrides_take_precedence_and_parse_toml_values() -> None:
    cfg = load_run_config(PRESETS / "tiny-cpu.toml", ["schedule.mode=gamma", "schedule.gamma=3", "total_steps=50"])
    assert (cfg.schedule.mode, cfg.schedule.gamma, cfg.total_steps) == ("gamma", 3.0, 50)


def test_override_parsing() -> None:
    assert parse_override("a.b=0.5") == (["a", "b"], 0.5)
    assert parse_override("a=linear") == (["a"], "linear")
    assert parse_override('a="x=y"') == (["a"], "x=y")
    with pytest.raises(ValueError, match=r"key\.path=value"):
        parse_override("novalue")
    with pytest.raises(ValueError, match="is a value, not a table"):
        apply_overrides({"a": 1}, ["a.b=2"])


def test_overrides_do_not_mutate_input() -> None:
    data = {"schedule": {"mode": "linear"}}
    apply_overrides(data, ["schedule.mode=gamma"])
    assert data == {"schedule": {"mode": "linear"}}


def test_bad_files_and_fields_are_loud(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="does not exist"):
        load_run_config(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("run_id = [")
    with pytest.raises(ValueError, match="not valid TOML"):
        load_run_config(bad)
    with pytest.raises(ValueError, match="Extra inputs"):
        load_run_config(PRESETS / "tiny-cpu.toml", ["schedule.warmup=3"])
    with pytest.raises(ValueError, match="run_id"):
        load_run_config(PRESETS / "tiny-cpu.toml", ["run_id=Bad Id!"])
    with pytest.raises(ValueError, match="max_step=0 <= min_step=0"):
        load_run_config(PRESETS / "tiny-cpu.toml", ["total_steps=1"])

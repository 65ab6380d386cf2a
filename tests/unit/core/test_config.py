"""Run config: TOML preset < overrides, loud validation."""

from __future__ import annotations

from pathlib import Path
from typing import Any, get_args

import pytest
from pydantic import BaseModel

from services.core.config import (
    ConfigError,
    RunConfig,
    apply_overrides,
    config_differences,
    load_run_config,
    parse_override,
)
from services.core.config.paths import PATH_FIELDS, DataPath

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


# ---- paths, round trips, fingerprints, bounds, messages

MINIMAL_TOML = """
run_id = "paths"
total_steps = 10
[schedule]
mode = "linear"
max_ratio = 0.8
[rollout.backend]
type = "replay"
path = "data/x.jsonl"
"""


def _write_minimal(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "run.toml"
    path.write_text(MINIMAL_TOML)
    return path


def test_a_relative_path_in_a_file_is_relative_to_the_files_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    toml = _write_minimal(tmp_path / "cfg")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    cfg = load_run_config(toml)
    assert cfg.rollout.backend.path == str(tmp_path / "cfg" / "data" / "x.jsonl")
    assert Path(cfg.rollout.backend.path).is_absolute()


def test_a_relative_path_on_the_command_line_is_relative_to_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    toml = _write_minimal(tmp_path / "cfg")
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    cfg = load_run_config(toml, ["rollout.backend.path=rel.jsonl"])
    assert cfg.rollout.backend.path == str(cwd / "rel.jsonl")
    absolute = load_run_config(toml, [f'rollout.backend.path="{tmp_path / "abs.jsonl"}"'])
    assert absolute.rollout.backend.path == str(tmp_path / "abs.jsonl")


def test_the_resolved_config_round_trips_through_json(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = load_run_config(_write_minimal(tmp_path / "cfg"), ["credit.strategy=none", "reward.workers=3"])
    resolved = tmp_path / "out" / "config.json"
    resolved.parent.mkdir()
    resolved.write_text(cfg.model_dump_json(indent=2))
    monkeypatch.chdir(tmp_path / "out")  # absolute paths do not move with the file or the working directory
    again = load_run_config(resolved)
    assert again == cfg and again.fingerprint() == cfg.fingerprint()


def test_fingerprint_ignores_operational_settings_only() -> None:
    base = load_run_config(PRESETS / "tiny-cpu.toml")
    for operational in ("reward.workers=7", "rollout.workers=3", "rollout.worker_cpus=0.5", "rollout.worker_gpus=1"):
        assert load_run_config(PRESETS / "tiny-cpu.toml", [operational]).fingerprint() == base.fingerprint()
    for override in ("credit.strategy=none", "rollout.prompts_per_step=8", "rollout.sampling.temperature=0.7"):
        assert load_run_config(PRESETS / "tiny-cpu.toml", [override]).fingerprint() != base.fingerprint(), override


def test_config_differences_name_the_changed_field() -> None:
    base = load_run_config(PRESETS / "tiny-cpu.toml")
    other = load_run_config(PRESETS / "tiny-cpu.toml", ["credit.strategy=none"])
    assert config_differences(base.fingerprinted(), other.fingerprinted()) == ["credit.strategy: 'tp' -> 'none'"]
    assert config_differences(base.fingerprinted(), base.fingerprinted()) == []
    assert config_differences({"a": {"b": 1}}, {"a": {}}) == ["a.b: 1 -> '(absent)'"]


def test_total_steps_bound() -> None:
    assert load_run_config(PRESETS / "tiny-cpu.toml", ["total_steps=100000"]).total_steps == 100_000
    with pytest.raises(ConfigError, match="total_steps: Input should be less than or equal to 100000"):
        load_run_config(PRESETS / "tiny-cpu.toml", ["total_steps=100001"])


@pytest.mark.parametrize("strategy", ["forking", "entropy_adv"])
def test_entropy_strategies_are_refused_with_replay(strategy: str) -> None:
    with pytest.raises(ConfigError, match=f"credit.strategy='{strategy}' needs per-token entropies"):
        load_run_config(PRESETS / "replay-cpu.toml", [f"credit.strategy={strategy}"])


@pytest.mark.parametrize(
    ("override", "where"),
    [
        ("rollout.prompts_per_step=0", "rollout.prompts_per_step: "),
        ("reward.workers=x", "reward.workers: "),
        ("schedule.mode=cosine", "schedule.mode: "),
        ("credit.entropy_kappa=0", "credit.entropy_kappa: "),
        ("trainer.policy_loss.clip_eps_low=1.5", "trainer.policy_loss: "),
        ("rollout.sampling.temperature=0", "rollout.sampling.temperature: "),
        ("rollout.sampling.top_p=1.5", "rollout.sampling.top_p: "),
        ('rollout.sampling.stop=["x", ""]', "rollout.sampling.stop: "),
        ("rollout.backend.type=sglang", "rollout.backend: "),
        ("rollout.worker_cpus=0", "rollout.worker_cpus: "),
    ],
)
def test_error_messages_name_the_field_without_pydantic_links(override: str, where: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_run_config(PRESETS / "tiny-cpu.toml", [override])
    message = str(err.value)
    assert where in message and "tiny-cpu.toml" in message and override in message
    assert "errors.pydantic.dev" not in message and "\n" not in message


_DATA_PATH_MARKS = get_args(DataPath)[1:]


def _data_path_fields(model: type[BaseModel], prefix: tuple[str, ...] = ()) -> set[tuple[str, ...]]:
    found: set[tuple[str, ...]] = set()
    for name, info in model.model_fields.items():
        key = (*prefix, name)
        if any(mark in _DATA_PATH_MARKS for mark in info.metadata) or DataPath in get_args(info.annotation):
            found.add(key)  # a DataPath field, or an optional one (DataPath | None)
        for sub in _models_in(info.annotation):
            found |= _data_path_fields(sub, key)
    return found


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [model for arg in get_args(annotation) for model in _models_in(arg)]


def test_path_fields_lists_every_data_path_of_the_schema() -> None:
    assert _DATA_PATH_MARKS  # DataPath carries its validator, which is how fields are recognised
    assert set(PATH_FIELDS) == _data_path_fields(RunConfig)
    assert len(PATH_FIELDS) == len(set(PATH_FIELDS))

"""The [world] section: validated loudly, part of the run fingerprint, and the key of the world's cache folder."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.core.config import ConfigError, WorldConfig, load_run_config
from trainer.world.prepare import WorldConflictError, default_world_dir, load_world, world_key

PRESETS = Path(__file__).resolve().parents[3] / "deploy" / "presets"


def test_the_main_preset_has_a_world_and_the_replay_preset_none() -> None:
    assert load_run_config(PRESETS / "tiny-cpu.toml").world == WorldConfig()
    assert load_run_config(PRESETS / "replay-cpu.toml").world is None


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("world.task.ood_levels=[2, 5]", "harder than the in-distribution levels"),
        ("world.task.levels=[1, 1]", "repeats a level"),
        ("world.task.levels=[]", "at least one level"),
        ("world.task.levels=[0, 1]", "outside 1..9"),
        ("world.model.num_heads=3", "not a multiple of num_heads"),
        ("world.sft.target_accuracy=1.5", "world.sft.target_accuracy"),
        ("world.task.digits=1", "world.task.digits"),
        ("world.sft.learning_rate=0", "world.sft.learning_rate"),
        ("world.nonsense=1", "world.nonsense"),
    ],
)
def test_bad_world_settings_are_one_line_errors(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as caught:
        load_run_config(PRESETS / "tiny-cpu.toml", [override])
    assert "\n" not in str(caught.value)


def test_world_settings_are_fingerprinted_and_keyed() -> None:
    base = load_run_config(PRESETS / "tiny-cpu.toml")
    other = load_run_config(PRESETS / "tiny-cpu.toml", ["world.seed=1"])
    assert base.fingerprint() != other.fingerprint()
    assert base.world is not None and other.world is not None
    assert world_key(base.world) != world_key(other.world) and world_key(base.world) == world_key(WorldConfig())


def test_the_cache_folder_follows_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("RLVR_WORLDS_DIR", str(tmp_path))
    assert default_world_dir(WorldConfig()) == tmp_path / f"world-{world_key(WorldConfig())}"
    monkeypatch.delenv("RLVR_WORLDS_DIR")
    assert default_world_dir(WorldConfig()) == Path("runs") / "worlds" / f"world-{world_key(WorldConfig())}"


def test_a_folder_that_is_not_this_world_is_refused(tmp_path: Path) -> None:
    assert load_world(tmp_path / "absent", WorldConfig()) is None
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(WorldConflictError, match="not a prepared world"):
        load_world(tmp_path / "other", WorldConfig())
    (tmp_path / "world").mkdir()
    (tmp_path / "world" / "prepare.json").write_text('{"key": "0123"}')
    with pytest.raises(WorldConflictError, match="other settings"):
        load_world(tmp_path / "world", WorldConfig())

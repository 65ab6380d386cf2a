"""Preflight: the environment must not contradict the config, the replay data must hold what the config asks, and a
policy backend's explicit model directory and prompt file must be what they claim."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from services.core.config import ConfigError, RunConfig
from services.rollout.backends.replay import RECORDED_MODELS
from services.run.preflight import check_environment, check_local_trainer, check_rollout_inputs
from tests.run_configs import run_config


def _row(answer: str = "A: 1,234") -> dict[str, object]:
    row: dict[str, object] = {"question": "q?", "ground_truth": f"work\n{answer}"}
    row.update({m: {"solution": f"{m} says 7", "is_correct": m.startswith("175b")} for m in RECORDED_MODELS})
    return row


def _replay_config(path: Path, samples_per_prompt: int = 4, **reward: Any) -> RunConfig:
    rollout = {"backend": {"type": "replay", "path": str(path)}, "samples_per_prompt": samples_per_prompt}
    return run_config("preflight-test", 10, rollout=rollout, reward=reward)


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_a_contradicting_reward_variable_is_refused_by_name(tmp_path: Path) -> None:
    config = _replay_config(tmp_path / "x.jsonl", workers=2)
    with pytest.raises(ConfigError, match="RLVR_REWARD_WORKERS=3") as err:
        check_environment(config, {"RLVR_REWARD_WORKERS": "3"})
    assert "the run config says 2" in str(err.value)


def test_a_non_number_is_a_contradiction(tmp_path: Path) -> None:
    config = _replay_config(tmp_path / "x.jsonl")
    with pytest.raises(ConfigError, match="RLVR_REWARD_ITEM_TIMEOUT_S"):
        check_environment(config, {"RLVR_REWARD_ITEM_TIMEOUT_S": "five"})


def test_equal_values_written_differently_are_accepted(tmp_path: Path) -> None:
    config = _replay_config(tmp_path / "x.jsonl", workers=2, item_timeout_s=5.0, request_timeout_s=120.0)
    check_environment(
        config,
        {"RLVR_REWARD_WORKERS": "2.0", "RLVR_REWARD_ITEM_TIMEOUT_S": "5", "RLVR_REWARD_REQUEST_TIMEOUT_S": "1.2e2"},
    )


def test_unrelated_variables_are_ignored(tmp_path: Path) -> None:
    config = _replay_config(tmp_path / "x.jsonl", workers=2)
    check_environment(config, {"RLVR_REWARD_TOKEN": "x", "RLVR_CONTROLLER_PORT": "1", "PATH": "/bin", "WORKERS": "9"})
    check_environment(config, {})


def test_load_backend_reads_the_data(tmp_path: Path) -> None:
    data = _write(tmp_path / "ok.jsonl", "".join(json.dumps(_row()) + "\n" for _ in range(3)))
    check_rollout_inputs(_replay_config(data, samples_per_prompt=len(RECORDED_MODELS)))


def test_load_backend_refuses_a_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "missing.jsonl"
    with pytest.raises(ConfigError, match="cannot be read") as err:
        check_rollout_inputs(_replay_config(missing))
    assert str(missing) in str(err.value) and "rollout.backend (replay)" in str(err.value)


def test_load_backend_refuses_invalid_json_naming_the_line(tmp_path: Path) -> None:
    data = _write(tmp_path / "bad.jsonl", json.dumps(_row()) + "\n" + '{"question": \n')
    with pytest.raises(ConfigError, match="line 2: not valid JSON"):
        check_rollout_inputs(_replay_config(data))


def test_load_backend_refuses_more_samples_than_recorded(tmp_path: Path) -> None:
    data = _write(tmp_path / "ok.jsonl", json.dumps(_row()) + "\n")
    with pytest.raises(ConfigError, match="samples_per_prompt=5") as err:
        check_rollout_inputs(_replay_config(data, samples_per_prompt=5))
    assert "holds only 4" in str(err.value)


def _policy_config(model: Path | None, prompts: Path | None, backend: str = "hf") -> RunConfig:
    fields = {k: str(v) for k, v in (("model", model), ("prompts", prompts)) if v is not None}
    return run_config("preflight-test", 10, rollout={"backend": {"type": backend, **fields}})


def _model_dir(tmp_path: Path) -> Path:
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}", encoding="utf-8")
    return model


def test_policy_inputs_are_opened(tmp_path: Path) -> None:
    row = {"prompt": "1+1", "label": "2", "data_source": "math"}
    prompts = _write(tmp_path / "p.jsonl", json.dumps(row) + "\n")
    check_rollout_inputs(_policy_config(_model_dir(tmp_path), prompts))
    check_rollout_inputs(_policy_config(_model_dir(tmp_path / ".."), prompts, "vllm"))


def test_a_model_dir_without_config_is_refused(tmp_path: Path) -> None:
    prompts = _write(tmp_path / "p.jsonl", json.dumps({"prompt": "q", "label": "1", "data_source": "math"}) + "\n")
    with pytest.raises(ConfigError, match=r"rollout.backend \(hf\): model .*\(no config\.json\)"):
        check_rollout_inputs(_policy_config(tmp_path, prompts))


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"prompt": "q", "label": 3, "data_source": "math"}, "line 1: 'label' must be a non-empty string"),
        ({"prompt": "", "label": "1", "data_source": "math"}, "line 1: 'prompt' must be a non-empty string"),
        ({"prompt": "q", "label": "1"}, "line 1: 'data_source' must be a non-empty string, got None"),
        ([1, 2], "line 1: expected a JSON object"),
    ],
)
def test_bad_prompt_rows_are_refused_naming_the_line(tmp_path: Path, row: object, message: str) -> None:
    prompts = _write(tmp_path / "p.jsonl", json.dumps(row) + "\n")
    with pytest.raises(ConfigError, match=message):
        check_rollout_inputs(_policy_config(_model_dir(tmp_path), prompts))


def test_a_policy_backend_without_a_world_needs_its_inputs_named() -> None:
    with pytest.raises(ValueError, match="has no model or prompts and the run has no \\[world\\]"):
        _policy_config(None, None)
    with pytest.raises(ValueError, match="has no prompts"):
        _policy_config(Path("/m"), None)


def test_the_local_run_trains_on_one_rank(tmp_path: Path) -> None:
    prompts = _write(tmp_path / "p.jsonl", json.dumps({"prompt": "q", "label": "1", "data_source": "math"}) + "\n")
    config = _policy_config(_model_dir(tmp_path), prompts)
    check_local_trainer(config)
    two_ranks = config.model_copy(
        update={"trainer": config.trainer.model_copy(
            update={"engine": config.trainer.engine.model_copy(update={"world_size": 2})})}
    )  # fmt: skip
    with pytest.raises(ConfigError, match=r"trainer.engine.world_size=2: without Ray, `rlvr run` trains on one rank"):
        check_local_trainer(two_ranks)


def test_a_step_that_does_not_split_into_micro_batches_is_refused() -> None:
    trainer = {"engine": {"world_size": 2, "micro_batch_size": 3}}
    rollout = {"backend": {"type": "replay", "path": "/x.jsonl"}, "prompts_per_step": 4, "samples_per_prompt": 4}
    with pytest.raises(ValueError, match=r"a step's 16 samples .* micro-batches of 3 on 2 rank"):
        run_config("split-test", 10, rollout=rollout, trainer=trainer)

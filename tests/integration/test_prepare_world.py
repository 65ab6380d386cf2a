"""`rlvr prepare` as a user runs it, on a world shrunk by settings (tests/world_fixtures.py; the session's learning
run built it on first use): the kept warm start lands in the target band and slips when sampled, the folder holds
what the standard loaders need, a second call reuses it, other settings are refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from tests.world_fixtures import LEARNING_RUN_TIMEOUT_S, SHRUNK, TARGET, TOLERANCE, LearningRun, rlvr

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.mark.timeout(LEARNING_RUN_TIMEOUT_S)
def test_prepare_builds_a_world_in_the_target_band_then_reuses_it(learning_run: LearningRun) -> None:
    built = learning_run.summary["world"]  # the session's run built it on first use (tests/world_fixtures.py)
    out = Path(built["world"])
    assert built["reused"] is False and out.parent == learning_run.worlds and out.name == f"world-{built['key']}"
    info = json.loads((out / "prepare.json").read_text())

    sft = info["sft"]
    assert sft["kept_in_band"], sft
    assert abs(sft["kept_validation_accuracy"] - TARGET) <= TOLERANCE
    assert [p["step"] for p in sft["curve"]] == sorted(p["step"] for p in sft["curve"])
    assert sft["kept_step"] in [p["step"] for p in sft["curve"]]
    base = info["base_accuracy"]
    # measured on 60 other problems: the band plus about one binomial standard deviation
    assert abs(base["test"]["greedy"]["accuracy"] - TARGET) <= TOLERANCE + 0.05, base
    for split in ("train", "test", "ood"):
        for mode in ("greedy", "sampled"):
            assert 0.0 <= base[split][mode]["accuracy"] <= 1.0 and base[split][mode]["samples"] > 0
    assert base["sampling"] == {"temperature": 1.0, "top_p": 1.0, "top_k": 0}
    assert set(info["guess_most_common_label"]) == {"train", "validation", "test", "ood"}
    assert info["seed"] == 0 and info["sizes"]["splits"]["test"] == 200 and info["wall_s"]["total"] > 0
    # slipped demonstrations: greedy the warm start computes, sampled it slips (the gap RL closes)
    assert info["config"]["sft"]["slip_rate"] == 0.25
    assert base["test"]["sampled"]["accuracy"] < base["test"]["greedy"]["accuracy"] - 0.2, base

    for split in ("train", "validation", "test", "ood"):
        rows = [json.loads(line) for line in (out / "data" / f"{split}.jsonl").read_text().splitlines()]
        assert rows and {"prompt", "label", "data_source", "level"} <= rows[0].keys()
    tokenizer = AutoTokenizer.from_pretrained(str(out / "model"))
    text = rows[0]["prompt"] + rows[0]["solution"]
    assert tokenizer.decode(tokenizer.encode(text, add_special_tokens=False)) == text
    assert AutoModelForCausalLM.from_pretrained(str(out / "model")).config.model_type == "qwen2"

    again = rlvr("prepare", worlds=learning_run.worlds)
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["reused"] is True and "reusing the world" in again.stderr
    assert json.loads((out / "prepare.json").read_text()) == info

    refused = rlvr("prepare", "--out", str(out), worlds=learning_run.worlds, settings=(*SHRUNK, "world.seed=7"))
    assert refused.returncode == 2
    assert refused.stderr.strip().count("\n") == 0 and "other settings" in refused.stderr
    assert json.loads((out / "prepare.json").read_text()) == info
    assert not list(learning_run.worlds.glob("*.partial"))


def test_prepare_refuses_bad_settings_before_any_work(tmp_path: Path) -> None:
    done = rlvr(
        "prepare", "--out", str(tmp_path / "world"), worlds=tmp_path, settings=("world.sft.target_accuracy=1.5",)
    )
    assert done.returncode == 2 and "world.sft.target_accuracy" in done.stderr
    assert not (tmp_path / "world").exists()

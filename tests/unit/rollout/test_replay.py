"""The replay backend over the recorded GSM8K model solutions."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from services.rollout.backends.replay import RECORDED_MODELS, ReplayBackend, byte_token_ids, load_recorded_gsm8k
from tests.shared_data import require_shared_data


def test_loads_the_real_file_with_gold_answers() -> None:
    problems = load_recorded_gsm8k(require_shared_data("bench/gsm8k_example_model_solutions.jsonl"))
    assert len(problems) == 1319
    assert problems[0].gold == "18" and len(problems[0].samples) == 4
    assert all(p.gold.lstrip("-").replace(".", "").isdigit() for p in problems)


def _write(tmp_path: Path, rows: list[dict[str, object]]) -> Path:
    path = tmp_path / "recorded.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _row(answer: str = "A: 1,234") -> dict[str, object]:
    row: dict[str, object] = {"question": "q?", "ground_truth": f"work\n{answer}"}
    row.update({m: {"solution": f"{m} says 7", "is_correct": m.startswith("175b")} for m in RECORDED_MODELS})
    return row


def test_groups_cycle_through_problems_and_replay_samples(tmp_path: Path) -> None:
    backend = ReplayBackend(load_recorded_gsm8k(_write(tmp_path, [_row(), _row("#### 5")])))
    groups = backend.prompt_groups(step=2, count=3, n=2)
    assert [g.group_id for g in groups] == ["s2-gsm8k-00002", "s2-gsm8k-00001", "s2-gsm8k-00002"]
    assert [g.label for g in groups] == ["5", "1234", "5"]
    assert groups[0].prompt_token_ids == byte_token_ids("q?")
    samples = backend.generate(groups[:1])[0]
    assert [s.text for s in samples] == ["6b_finetuning says 7", "6b_verification says 7"]
    with pytest.raises(ValueError, match="samples_per_prompt=5"):
        backend.prompt_groups(step=1, count=1, n=5)


def test_malformed_files_are_loud(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="line 1: missing fields"):
        load_recorded_gsm8k(_write(tmp_path, [{"question": "q"}]))
    with pytest.raises(ValueError, match="no final"):
        load_recorded_gsm8k(_write(tmp_path, [_row("no answer here")]))
    with pytest.raises(ValueError, match="no recorded problems"):
        load_recorded_gsm8k(_write(tmp_path, []))


def test_byte_tokens_round_trip() -> None:
    assert bytes(byte_token_ids("½ + x")).decode() == "½ + x"

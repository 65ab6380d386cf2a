"""The JSONL prompt feed: every row once per epoch, reproducible per step, unique group ids, bad rows refused."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from services.rollout.feeder import JsonlPrompts, PromptRow, load_prompt_rows


def _rows(count: int) -> list[PromptRow]:
    return [PromptRow(i, f"q{i}", str(i), "math") for i in range(count)]


def test_each_epoch_uses_every_row_once_in_a_seeded_shuffle() -> None:
    feed = JsonlPrompts(_rows(10), seed=3)
    first_epoch = [g.prompt for step in (1, 2) for g in feed.prompt_groups(step, 5, 4)]
    second_epoch = [g.prompt for step in (3, 4) for g in feed.prompt_groups(step, 5, 4)]
    assert sorted(first_epoch) == sorted(second_epoch) == sorted(f"q{i}" for i in range(10))
    assert first_epoch != second_epoch  # a fresh shuffle each epoch
    assert first_epoch != [f"q{i}" for i in range(10)]


def test_a_step_is_the_same_whenever_it_is_asked_for() -> None:
    feed, other = JsonlPrompts(_rows(7), seed=1), JsonlPrompts(_rows(7), seed=1)
    later = [g.group_id for g in feed.prompt_groups(9, 3, 2)]
    assert [g.group_id for g in feed.prompt_groups(2, 3, 2)] == [g.group_id for g in other.prompt_groups(2, 3, 2)]
    assert [g.group_id for g in other.prompt_groups(9, 3, 2)] == later  # order of requests does not matter
    assert [g.group_id for g in JsonlPrompts(_rows(7), seed=2).prompt_groups(9, 3, 2)] != later


def test_group_ids_are_unique_even_when_a_step_is_larger_than_the_file() -> None:
    groups = JsonlPrompts(_rows(3), seed=0).prompt_groups(1, 8, 2)
    assert len({g.group_id for g in groups}) == 8
    assert max(Counter(g.prompt for g in groups).values()) == 3  # 8 rows over 3 prompts: epochs 0, 1 and part of 2
    assert all(g.step == 1 and g.n == 2 and g.label == g.prompt[1:] for g in groups)


def test_rows_are_read_with_the_configured_keys(tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    lines = [
        json.dumps({"q": "1+1", "a": "2", "src": "math", "extra": 1}),
        "",
        json.dumps({"q": "x", "a": "y", "src": "s"}),
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    rows = load_prompt_rows(path, input_key="q", label_key="a", data_source_key="src")
    assert rows == [PromptRow(0, "1+1", "2", "math"), PromptRow(1, "x", "y", "s")]
    with pytest.raises(ValueError, match="line 1: 'prompt' must be a non-empty string, got None"):
        load_prompt_rows(path)


def test_empty_missing_and_broken_files_are_refused(tmp_path: Path) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n", encoding="utf-8")
    with pytest.raises(ValueError, match="holds no rows"):
        load_prompt_rows(empty)
    with pytest.raises(ValueError, match="cannot be read"):
        load_prompt_rows(tmp_path / "missing.jsonl")
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"prompt": "q", "label": "1", "data_source": "m"}\n{"prompt": \n', encoding="utf-8")
    with pytest.raises(ValueError, match="line 2: not valid JSON"):
        load_prompt_rows(broken)
    with pytest.raises(ValueError, match=">= 1"):
        JsonlPrompts(_rows(2), 0).prompt_groups(0, 1, 1)

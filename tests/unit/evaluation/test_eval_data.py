"""Reading an evaluation set: the synthetic convention, the real benchmark files' own keys, and each bad input as a
one-line error that names the file and the line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.shared_data import require_shared_data
from trainer.evaluation.data import DataKeys, EvalDataError, EvalRow, load_eval_rows

SYNTHETIC = {
    "prompt": "Compute 100 +1 from left to right.\n",
    "label": "101",
    "data_source": "arith_chains",
    "level": 1,
}


def write_lines(tmp_path: Path, lines: list[str]) -> Path:
    path = tmp_path / "data.jsonl"
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def test_synthetic_rows_are_read_as_they_are(tmp_path: Path) -> None:
    path = write_lines(tmp_path, [json.dumps(SYNTHETIC), "", json.dumps({**SYNTHETIC, "label": 7, "level": "hard"})])
    rows = load_eval_rows(path, DataKeys())
    assert rows == [
        EvalRow(SYNTHETIC["prompt"], "101", "arith_chains", "1", line=1),  # type: ignore[arg-type]
        EvalRow(SYNTHETIC["prompt"], "7", "arith_chains", "hard", line=3),  # type: ignore[arg-type]
    ]
    assert [row.line for row in load_eval_rows(path, DataKeys(), limit=1)] == [1]


def test_the_default_data_source_fills_only_rows_without_one(tmp_path: Path) -> None:
    bare = {"question": "q?", "answer": "#### 3"}
    path = write_lines(tmp_path, [json.dumps(bare), json.dumps({**bare, "data_source": "math"})])
    rows = load_eval_rows(path, DataKeys("question", "answer", "gsm8k"))
    assert [(row.prompt, row.label, row.data_source, row.level) for row in rows] == [
        ("q?", "#### 3", "gsm8k", None),
        ("q?", "#### 3", "math", None),
    ]


@pytest.mark.parametrize(
    ("relative", "keys", "count"),
    [
        ("bench/math500_test.jsonl", DataKeys("problem", "answer", "math500"), 500),
        ("bench/aime24_test.jsonl", DataKeys("problem", "answer", "aime24"), 30),
        ("bench/aime25.jsonl", DataKeys("problem", "answer", "aime25"), 30),
        ("bench/hmmt25.jsonl", DataKeys("problem", "answer", "hmmt25"), 30),
        ("bench/minerva_math_test.jsonl", DataKeys("problem", "solution", "minerva_math"), 272),
        ("bench/gsm8k_test.jsonl", DataKeys("question", "answer", "gsm8k"), 1319),
    ],
)
def test_the_real_benchmark_files_load_with_their_own_keys(relative: str, keys: DataKeys, count: int) -> None:
    rows = load_eval_rows(require_shared_data(relative), keys)
    assert len(rows) == count and all(row.prompt and row.label for row in rows)
    if relative.startswith("bench/math500"):
        assert {row.level for row in rows} == {"1", "2", "3", "4", "5"}


GOOD = json.dumps(SYNTHETIC)


@pytest.mark.parametrize(
    ("lines", "keys", "message"),
    [
        ([GOOD, "{not json"], DataKeys(), ":2: not valid JSON"),
        ([GOOD, "[1, 2]"], DataKeys(), ":2: a JSON list, expected an object per line"),
        ([GOOD, GOOD, json.dumps({"label": "1"})], DataKeys(), ":3: no input key 'prompt' (row keys: label)"),
        ([json.dumps({"prompt": "p"})], DataKeys(), ":1: no label key 'label' (row keys: prompt); set --label-key"),
        ([GOOD], DataKeys("question"), ":1: no input key 'question'"),
        ([GOOD], DataKeys(label_key="answer"), ":1: no label key 'answer'"),
        ([json.dumps({**SYNTHETIC, "prompt": "  "})], DataKeys(), ":1: 'prompt' must be a non-empty string"),
        ([json.dumps({**SYNTHETIC, "prompt": 3})], DataKeys(), ":1: 'prompt' must be a non-empty string, got 3"),
        ([json.dumps({**SYNTHETIC, "label": True})], DataKeys(), ":1: 'label' must be a non-empty string or a num"),
        ([json.dumps({**SYNTHETIC, "label": [1]})], DataKeys(), ":1: 'label' must be a non-empty string or a num"),
        ([json.dumps({**SYNTHETIC, "label": ""})], DataKeys(), ":1: 'label' must be a non-empty string or a num"),
        ([json.dumps({"prompt": "p", "label": "1"})], DataKeys(), ":1: the row has no 'data_source'; set --data-s"),
        ([json.dumps({**SYNTHETIC, "data_source": "nope"})], DataKeys(), ":1: data_source 'nope' names no scorer"),
        ([json.dumps({**SYNTHETIC, "level": [1]})], DataKeys(), ":1: 'level' must be an integer or a non-empty s"),
        ([GOOD], DataKeys(default_data_source="nope"), "default data source 'nope' names no scorer"),
        ([], DataKeys(), "the data file holds no rows"),
        (["", "   "], DataKeys(), "the data file holds no rows"),
    ],
)
def test_bad_rows_are_one_line_errors_naming_file_and_line(
    tmp_path: Path, lines: list[str], keys: DataKeys, message: str
) -> None:
    path = write_lines(tmp_path, lines)
    with pytest.raises(EvalDataError) as caught:
        load_eval_rows(path, keys)
    text = str(caught.value)
    assert message in text and "\n" not in text
    if message.startswith(":"):
        assert text.startswith(f"{path}{message.split(' ')[0]}")


def test_a_bad_row_after_the_limit_still_fails(tmp_path: Path) -> None:
    path = write_lines(tmp_path, [GOOD, "{"])
    with pytest.raises(EvalDataError, match=":2: not valid JSON"):
        load_eval_rows(path, DataKeys(), limit=1)


def test_missing_directory_and_binary_files_are_refused(tmp_path: Path) -> None:
    with pytest.raises(EvalDataError, match="data file not found"):
        load_eval_rows(tmp_path / "missing.jsonl", DataKeys())
    with pytest.raises(EvalDataError, match="not a file"):
        load_eval_rows(tmp_path, DataKeys())
    binary = tmp_path / "data.jsonl"
    binary.write_bytes(b"\xff\xfe\x00{")
    with pytest.raises(EvalDataError, match="not UTF-8 text"):
        load_eval_rows(binary, DataKeys())
    with pytest.raises(ValueError, match="limit must be >= 1"):
        load_eval_rows(binary, DataKeys(), limit=0)

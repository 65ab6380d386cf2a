"""`rlvr eval` as a user runs it: a tiny untrained Qwen2 directory, a 10-prompt jsonl set with known answers, real
reward servers; the grading path on hand-written answers; bad inputs refused with exit 2 before any work."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

import services.run.evaluate as evaluate
from reward_server.client import RewardClient
from services.cli import EXIT_BAD_CONFIG, main
from services.process import free_loopback_port
from tests.service_processes import RewardServerProcess, run_reward_server
from tests.shared_data import REPO_ROOT, require_shared_data
from trainer.evaluation.data import EvalRow
from trainer.evaluation.metrics import PromptOutcome, SampleOutcome, summarize
from trainer.world.tokenizer import train_tokenizer

pytestmark = pytest.mark.integration

K = 2
PROMPTS = 10
CLI_TIMEOUT_S = 300  # a hang guard, not a speed bound


def known_rows() -> list[dict[str, Any]]:
    """Ten arithmetic prompts over three levels, each with its correct answer as the label."""
    rows = []
    for i in range(PROMPTS):
        start, step = 100 + 7 * i, i % 9 + 1
        prompt = f"Compute {start} +{step} from left to right. Show each step.\n"
        rows.append({"prompt": prompt, "label": str(start + step), "data_source": "arith_chains", "level": i % 3 + 1})
    return rows


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained but valid Qwen2 causal-LM directory: 1 layer, hidden 64, 2 heads of 32, a byte-level tokenizer."""
    folder = tmp_path_factory.mktemp("tiny-qwen2")
    tokenizer = train_tokenizer(row["prompt"] for row in known_rows())
    eos = tokenizer.eos_token_id
    config = Qwen2Config(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=2, head_dim=32, max_position_embeddings=256,
        tie_word_embeddings=True, bos_token_id=eos, eos_token_id=eos, pad_token_id=eos,
    )  # fmt: skip
    torch.manual_seed(0)
    Qwen2ForCausalLM(config).save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="module")
def data_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("eval-data") / "arith.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in known_rows()), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def reward_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RewardServerProcess]:
    with run_reward_server(tmp_path_factory.mktemp("eval-reward"), workers=1) as server:
        yield server


def run_eval_cli(*args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "services.cli", "eval", *args]
    return subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=CLI_TIMEOUT_S)


def assert_report_is_sane(report: dict[str, Any], *, prompts: int, k: int) -> None:
    assert report["prompts"] == prompts and report["samples"] == prompts * k
    assert list(report["pass_at_k"]) == [str(j) for j in (1, 2, 4, 8, 16) if j < k] + [str(k)]
    assert all(0.0 <= value <= 1.0 for value in report["pass_at_k"].values())
    assert report["pass_at_k"]["1"] == pytest.approx(report["avg_at_k"])  # binary rewards: pass@1 = avg@k
    assert set(report["reward_status"]) == {"ok", "timeout", "error", "invalid"}
    assert sum(report["reward_status"].values()) == pytest.approx(1.0)
    assert 0.0 <= report["truncated_share"] <= 1.0 and report["mean_response_tokens"] >= 0.0
    assert report["wall_time_s"] >= max(report["generation_s"], report["grading_s"]) >= 0.0


def test_eval_samples_grades_and_reports(tiny_model: Path, data_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "report.json"
    done = run_eval_cli(
        "--model", str(tiny_model), "--data", str(data_file), "--k", str(K), "--temperature", "0.8",
        "--top-p", "0.9", "--max-new-tokens", "8", "--seed", "3", "--out", str(out),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert json.loads(out.read_text(encoding="utf-8")) == report
    assert_report_is_sane(report, prompts=PROMPTS, k=K)
    assert report["sampling"] == {
        "k": K, "temperature": 0.8, "top_p": 0.9, "top_k": 0, "max_new_tokens": 8, "seed": 3,
    }  # fmt: skip
    assert report["mean_response_tokens"] <= 8 and report["greedy_accuracy"] is None
    assert (report["model_dir"], report["data_file"]) == (str(tiny_model.resolve()), str(data_file.resolve()))
    assert report["reward_server_started"] is True
    assert list(report["by_level"]) == ["1", "2", "3"]
    assert [level["prompts"] for level in report["by_level"].values()] == [4, 3, 3]


def test_greedy_eval_against_a_given_reward_server(
    tiny_model: Path, data_file: Path, reward_server: RewardServerProcess
) -> None:
    args = ["--model", str(tiny_model), "--data", str(data_file), "--k", "1", "--temperature", "0"]
    done = run_eval_cli(*args, "--max-new-tokens", "8", "--limit", "4", "--reward-url", reward_server.url)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert_report_is_sane(report, prompts=4, k=1)
    assert report["greedy_accuracy"] == report["avg_at_k"] and report["limit"] == 4
    assert (report["reward_url"], report["reward_server_started"]) == (reward_server.url, False)


def test_eval_on_a_real_benchmark_file(tiny_model: Path, reward_server: RewardServerProcess) -> None:
    math500 = require_shared_data("bench/math500_test.jsonl")
    done = run_eval_cli(
        "--model", str(tiny_model), "--data", str(math500), "--input-key", "problem", "--label-key", "answer",
        "--data-source", "math500", "--limit", "3", "--k", "1", "--temperature", "0", "--max-new-tokens", "4",
        "--reward-url", reward_server.url,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert_report_is_sane(report, prompts=3, k=1)
    assert set(report["by_level"]) <= {"1", "2", "3", "4", "5"} and report["default_data_source"] == "math500"


def test_grading_known_answers_through_a_real_server(
    reward_server: RewardServerProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    rows = [EvalRow("p", "42", "arith_chains", "1", 1), EvalRow("q", "#### 18", "gsm8k", "2", 2)]
    responses = [
        ["So the total is \\boxed{42}.", "\\boxed{41}", "I do not know.", "First 40, then 42. \\boxed{42}"],
        ["18 - 1 = 17\n#### 17", "She pays 18 dollars.\n#### 18", "\\boxed{18}", "\\boxed{19}"],
    ]
    monkeypatch.setattr(evaluate, "GRADE_BATCH_ITEMS", 3)  # batches that cut across prompts keep their order
    with RewardClient(reward_server.url) as client:
        graded = evaluate.grade_responses(client, rows, responses)
    assert [[result.reward for result in results] for results in graded] == [[1, 0, 0, 1], [0, 1, 1, 0]]
    assert {result.status for results in graded for result in results} == {"ok"}
    assert [result.id for result in graded[1]] == ["1:0", "1:1", "1:2", "1:3"]
    outcomes = [
        PromptOutcome(tuple(SampleOutcome(r.reward, r.status, 5, False) for r in results), row.level)
        for row, results in zip(rows, graded, strict=True)
    ]
    metrics = summarize(outcomes, greedy=False)
    assert metrics.pass_at_k == {1: 0.5, 2: pytest.approx(5 / 6), 4: 1.0}


def bad_model_dir(tiny_model: Path, tmp_path: Path, what: str) -> Path:
    """A copy of the tiny model directory with one thing wrong."""
    folder = tmp_path / f"model-{what}"
    shutil.copytree(tiny_model, folder)
    if what == "no-config":
        (folder / "config.json").unlink()
    elif what == "not-json":
        (folder / "config.json").write_text("{", encoding="utf-8")
    elif what == "not-causal":
        (folder / "config.json").write_text(json.dumps({"model_type": "t5"}), encoding="utf-8")
    elif what == "no-weights":
        (folder / "model.safetensors").unlink()
    elif what == "no-tokenizer":
        (folder / "tokenizer.json").unlink()
        (folder / "tokenizer_config.json").unlink()
    return folder


BAD_INPUTS: dict[str, tuple[list[str], str]] = {
    "k": (["--k", "0"], "--k must be >= 1, got 0"),
    "temperature": (["--temperature", "-0.5"], "--temperature must be a finite number >= 0"),
    "top-p-zero": (["--top-p", "0"], "--top-p must be in (0, 1]"),
    "top-p-above-one": (["--top-p", "1.5"], "--top-p must be in (0, 1]"),
    "max-new-tokens": (["--max-new-tokens", "0"], "--max-new-tokens must be >= 1"),
    "limit": (["--limit", "0"], "--limit must be >= 1"),
    "greedy-with-k": (["--temperature", "0", "--k", "4"], "--temperature 0 is greedy decoding"),
    "missing-data": (["--data", "{tmp}/missing.jsonl"], "missing.jsonl: data file not found"),
    "not-jsonl": (["--data", "{tmp}/not.jsonl"], "not.jsonl:2: not valid JSON"),
    "row-without-input": (["--data", "{tmp}/keys.jsonl"], "keys.jsonl:3: no input key 'prompt'"),
    "row-without-label": (["--data", "{tmp}/keys.jsonl", "--label-key", "answer"], "keys.jsonl:1: no label key"),
    "empty-data": (["--data", "{tmp}/empty.jsonl"], "empty.jsonl: the data file holds no rows"),
    "missing-model": (["--model", "{tmp}/nowhere"], "nowhere: no such directory"),
    "no-config": (["--model", "{model:no-config}"], "no config.json"),
    "config-not-json": (["--model", "{model:not-json}"], "config.json is not valid JSON"),
    "not-causal-lm": (["--model", "{model:not-causal}"], "model_type 't5', not a causal LM"),
    "no-weights": (["--model", "{model:no-weights}"], "no weights"),
    "no-tokenizer": (["--model", "{model:no-tokenizer}"], "no tokenizer files"),
    "out-folder": (["--out", "{tmp}/absent/report.json"], "its folder"),
    "reward-url": (["--reward-url", "http://127.0.0.1:{port}"], "unreachable"),
}


def resolve_bad_args(args: list[str], tiny_model: Path, tmp_path: Path) -> list[str]:
    good = known_rows()[0]
    (tmp_path / "not.jsonl").write_text(json.dumps(good) + "\n{oops\n", encoding="utf-8")
    keyed = [{"question": "q", **good}, good, {"label": "1", "data_source": "math"}]
    (tmp_path / "keys.jsonl").write_text("".join(json.dumps(row) + "\n" for row in keyed), encoding="utf-8")
    (tmp_path / "empty.jsonl").write_text("", encoding="utf-8")
    resolved = []
    for arg in args:
        if arg.startswith("{model:"):
            arg = str(bad_model_dir(tiny_model, tmp_path, arg[len("{model:") : -1]))
        resolved.append(arg.format(tmp=tmp_path, port=free_loopback_port()))
    return resolved


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_inputs_exit_2_with_one_line_before_any_work(
    case: str,
    tiny_model: Path,
    data_file: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    def no_work(*args: object, **kwargs: object) -> None:
        raise AssertionError("work started before the inputs were checked")

    monkeypatch.setattr(evaluate, "load_model", no_work)
    monkeypatch.setattr(evaluate, "run_service", no_work)
    extra, message = BAD_INPUTS[case]
    base = {"--model": str(tiny_model), "--data": str(data_file), "--max-new-tokens": "8"}
    overrides = resolve_bad_args(extra, tiny_model, tmp_path)
    argv = ["eval"] + [item for flag, value in base.items() for item in (flag, value)] + overrides
    assert main(argv) == EXIT_BAD_CONFIG
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("rlvr eval: error: ") and captured.err.count("\n") == 1, captured.err
    assert message in captured.err


def test_the_command_line_refuses_bad_input_in_one_line(tiny_model: Path, tmp_path: Path) -> None:
    done = run_eval_cli("--model", str(tiny_model), "--data", str(tmp_path / "absent.jsonl"))
    assert done.returncode == EXIT_BAD_CONFIG and done.stdout == ""
    assert done.stderr == f"rlvr eval: error: {tmp_path / 'absent.jsonl'}: data file not found\n"

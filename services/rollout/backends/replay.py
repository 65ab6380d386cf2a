"""The replay generation backend: recorded model outputs stand in for sampling a policy.

It replays the GSM8K model solutions of ../shared/data/bench/gsm8k_example_model_solutions.jsonl (four recorded
solutions per problem, each with a human correctness label), so the rest of the pipeline — queues, controller,
reward server, credit assignment — runs on real model text before a policy exists, and the reward server's
verdicts can be checked against human labels. Token ids are UTF-8 bytes (a 256-symbol vocabulary).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from services.core.jsonl import read_jsonl_objects
from services.core.wire import PromptGroup

RECORDED_MODELS = ("6b_finetuning", "6b_verification", "175b_finetuning", "175b_verification")
DATA_SOURCE = "gsm8k"
_FINAL_ANSWER = re.compile(r"(?:####|^A:)\s*(.+?)\s*$", re.MULTILINE)


@dataclass(frozen=True)
class RecordedSample:
    text: str
    human_correct: bool

    @property
    def token_ids(self) -> list[int]:
        return byte_token_ids(self.text)

    @property
    def logprobs(self) -> None:
        """Recorded text has no sampling policy, so no log-probs."""
        return None

    @property
    def finish_reason(self) -> None:
        """Recorded text does not say how its generation ended."""
        return None


@dataclass(frozen=True)
class RecordedProblem:
    problem_id: str
    question: str
    gold: str
    samples: tuple[RecordedSample, ...]


def byte_token_ids(text: str) -> list[int]:
    """The replay backend's tokenization: UTF-8 bytes."""
    return list(text.encode("utf-8"))


def _gold_answer(solution: str, line_no: int) -> str:
    matches = _FINAL_ANSWER.findall(solution)
    if not matches:
        raise ValueError(f"line {line_no}: the reference solution has no final 'A: n' or '#### n' answer")
    return str(matches[-1]).replace(",", "")


def load_recorded_gsm8k(path: str | Path) -> list[RecordedProblem]:
    """Parse the recorded-solutions file; every malformed line is an error naming the line."""
    problems = []
    for line_no, row in read_jsonl_objects(path, "replay data", skip_blank=False):
        missing = [key for key in ("question", "ground_truth", *RECORDED_MODELS) if key not in row]
        if missing:
            raise ValueError(f"{path} line {line_no}: missing fields {missing}")
        samples = tuple(
            RecordedSample(text=row[m]["solution"], human_correct=bool(row[m]["is_correct"])) for m in RECORDED_MODELS
        )
        gold = _gold_answer(row["ground_truth"], line_no)
        problems.append(RecordedProblem(f"gsm8k-{line_no:05d}", row["question"], gold, samples))
    if not problems:
        raise ValueError(f"{path} holds no recorded problems")
    return problems


class ReplayBackend:
    """Prompt groups from recorded problems, and their recorded samples in place of generation."""

    def __init__(self, problems: list[RecordedProblem]) -> None:
        self._problems = problems
        self._by_id = {p.problem_id: p for p in problems}

    @property
    def max_samples(self) -> int:
        return min(len(p.samples) for p in self._problems)

    def check_samples(self, n: int) -> None:
        """Refuse a group size the recorded data cannot supply."""
        if n > self.max_samples:
            raise ValueError(
                f"rollout.samples_per_prompt={n} but the replay data holds only {self.max_samples} recorded "
                "solutions per problem: lower samples_per_prompt"
            )

    def prompt_groups(self, step: int, count: int, n: int) -> list[PromptGroup]:
        """The `count` prompt groups of a 1-based step, cycling through the problems in file order."""
        self.check_samples(n)
        first = (step - 1) * count
        chosen = [self._problems[(first + i) % len(self._problems)] for i in range(count)]
        return [
            PromptGroup(
                group_id=f"s{step}-{p.problem_id}",
                step=step,
                prompt=p.question,
                label=p.gold,
                data_source=DATA_SOURCE,
                n=n,
                prompt_token_ids=byte_token_ids(p.question),
            )
            for p in chosen
        ]

    def token_ids(self, text: str) -> list[int]:
        return byte_token_ids(text)

    @property
    def policy_version(self) -> int:
        """Recorded text comes from no policy of this run: always version 0."""
        return 0

    def generate(self, groups: Sequence[PromptGroup]) -> list[list[RecordedSample]]:
        return [list(self._problem(group.group_id).samples[: group.n]) for group in groups]

    def human_labels(self, group_id: str, n: int) -> list[bool]:
        """The human correctness labels of a group's first `n` recorded samples (to audit the reward server)."""
        return [sample.human_correct for sample in self._problem(group_id).samples[:n]]

    def _problem(self, group_id: str) -> RecordedProblem:
        problem_id = group_id.split("-", 1)[-1]
        if problem_id not in self._by_id:
            raise ValueError(f"prompt group {group_id!r} is not from this replay data")
        return self._by_id[problem_id]

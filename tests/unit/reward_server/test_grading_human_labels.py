"""The gsm8k scorer against human judgement: 5,276 real model solutions with human correctness labels."""

from __future__ import annotations

import pytest

from reward_server.scorers import score
from services.rollout.backends.replay import load_recorded_gsm8k
from tests.shared_data import require_shared_data

pytestmark = pytest.mark.slow  # a sweep over all 5,276 labelled solutions


def test_verdicts_agree_with_every_human_label() -> None:
    problems = load_recorded_gsm8k(require_shared_data("bench/gsm8k_example_model_solutions.jsonl"))
    disagreements = [
        (p.problem_id, i, s.human_correct)
        for p in problems
        for i, s in enumerate(p.samples)
        if (score("gsm8k", s.text, p.gold).reward == 1.0) != s.human_correct
    ]
    assert sum(len(p.samples) for p in problems) == 5276
    assert not disagreements, disagreements[:20]

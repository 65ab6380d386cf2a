"""Accuracy of the scorers on 557 grading cases collected from other projects' tests (../shared/data/grading).

Acceptance: at least 97% overall and at least 95% per kind. Every miss is printed, so a regression shows what
changed, not just a number.
"""

from __future__ import annotations

from collections import Counter

import pytest

from reward_server.scorers import score
from tests.shared_data import read_shared_jsonl

pytestmark = pytest.mark.slow  # a sweep over all 557 cases, seconds of scoring

MIN_OVERALL = 0.97
MIN_PER_KIND = 0.95


def test_accuracy_on_grading_cases() -> None:
    cases = read_shared_jsonl("grading/cases.jsonl")
    total: Counter[str] = Counter()
    right: Counter[str] = Counter()
    misses: list[str] = []
    for case in cases:
        outcome = score(case["kind"], case["response"], case["ground_truth"])
        total[case["kind"]] += 1
        if (outcome.reward == 1.0) == case["expected"]:
            right[case["kind"]] += 1
        else:
            misses.append(
                f"{case['id']} [{case['kind']}] response={case['response'][-160:]!r} gold={case['ground_truth'][:80]!r}"
                f" expected={case['expected']} got={outcome.reward} extracted={outcome.extracted!r} ({outcome.detail})"
            )
    print(f"\n{len(misses)} misses of {len(cases)}:")
    for miss in misses:
        print("  " + miss)
    rates = {kind: right[kind] / total[kind] for kind in total}
    overall = sum(right.values()) / len(cases)
    print(f"overall {overall:.1%}; " + ", ".join(f"{kind} {rate:.1%}" for kind, rate in sorted(rates.items())))
    assert set(rates) == {"math", "gsm8k", "mcq"}
    assert overall >= MIN_OVERALL, f"overall accuracy {overall:.1%} < {MIN_OVERALL:.0%}"
    for kind, rate in rates.items():
        assert rate >= MIN_PER_KIND, f"{kind} accuracy {rate:.1%} < {MIN_PER_KIND:.0%}"

"""pass@k against brute force over k-subsets, its edge cases and stability, and the aggregation of graded samples."""

from __future__ import annotations

import itertools
import json
import math
from fractions import Fraction

import pytest

from trainer.evaluation.metrics import PromptOutcome, SampleOutcome, pass_at_k, pass_k_ladder, summarize


def brute_force_pass_at_k(n: int, c: int, k: int) -> float:
    """The share of k-subsets of n samples (the first c correct) that hold at least one correct sample."""
    subsets = list(itertools.combinations(range(n), k))
    return sum(any(i < c for i in subset) for subset in subsets) / len(subsets)


@pytest.mark.parametrize("n", range(1, 8))
def test_pass_at_k_equals_the_enumeration_of_k_subsets(n: int) -> None:
    for c in range(n + 1):
        for k in range(1, n + 1):
            assert pass_at_k(n, c, k) == pytest.approx(brute_force_pass_at_k(n, c, k), abs=1e-12), (n, c, k)


@pytest.mark.parametrize("n", [1, 4, 16])
def test_pass_at_k_edge_cases(n: int) -> None:
    for k in range(1, n + 1):
        assert pass_at_k(n, 0, k) == 0.0  # nothing correct
        assert pass_at_k(n, n, k) == 1.0  # everything correct
    assert pass_at_k(n, 1, n) == 1.0  # k = n draws every sample: one correct one suffices
    assert pass_at_k(n, 1, 1) == pytest.approx(1 / n)


def test_pass_at_k_is_stable_where_binomials_are_huge() -> None:
    n, c, k = 1000, 3, 200
    exact = 1 - Fraction(math.comb(n - c, k), math.comb(n, k))
    assert pass_at_k(n, c, k) == pytest.approx(float(exact), rel=1e-12)


@pytest.mark.parametrize(("n", "c", "k"), [(4, 5, 1), (4, -1, 1), (4, 2, 0), (4, 2, 5)])
def test_pass_at_k_refuses_impossible_counts(n: int, c: int, k: int) -> None:
    with pytest.raises(ValueError):
        pass_at_k(n, c, k)


@pytest.mark.parametrize(
    ("k", "ladder"), [(1, [1]), (2, [1, 2]), (3, [1, 2, 3]), (4, [1, 2, 4]), (6, [1, 2, 4, 6]), (16, [1, 2, 4, 8, 16])]
)
def test_pass_k_ladder_is_powers_of_two_then_k(k: int, ladder: list[int]) -> None:
    assert pass_k_ladder(k) == ladder


def sample(reward: float, status: str = "ok", tokens: int = 10, truncated: bool = False) -> SampleOutcome:
    return SampleOutcome(reward, status, tokens, truncated)  # type: ignore[arg-type]


def test_summarize_aggregates_rewards_statuses_lengths_and_levels() -> None:
    outcomes = [
        PromptOutcome((sample(1.0), sample(0.0), sample(0.0), sample(1.0)), level="10"),
        PromptOutcome((sample(0.0, "timeout"), sample(0.0), sample(0.0, "invalid"), sample(0.0)), level="2"),
        PromptOutcome((sample(1.0, tokens=30, truncated=True),) * 4, level="2"),
    ]
    metrics = summarize(outcomes, greedy=False)
    assert (metrics.prompts, metrics.samples_per_prompt, metrics.samples) == (3, 4, 12)
    assert metrics.avg_at_k == pytest.approx(6 / 12)
    assert metrics.pass_at_k[1] == pytest.approx((0.5 + 0 + 1) / 3)
    assert metrics.pass_at_k[2] == pytest.approx((1 - 1 / 6 + 0 + 1) / 3)
    assert metrics.pass_at_k[4] == pytest.approx(2 / 3)
    assert metrics.greedy_accuracy is None
    assert metrics.status_shares == {"ok": 10 / 12, "timeout": 1 / 12, "error": 0.0, "invalid": 1 / 12}
    assert metrics.mean_response_tokens == pytest.approx((8 * 10 + 4 * 30) / 12)
    assert metrics.truncated_share == pytest.approx(4 / 12)
    assert list(metrics.by_level) == ["2", "10"]  # numeric order
    assert metrics.by_level["2"].prompts == 2 and metrics.by_level["2"].avg_at_k == pytest.approx(4 / 8)
    assert metrics.by_level["10"].pass_at_k == 1.0
    report = json.loads(json.dumps(metrics.as_json()))
    assert report["pass_at_k"] == {"1": metrics.pass_at_k[1], "2": metrics.pass_at_k[2], "4": metrics.pass_at_k[4]}
    assert sum(report["reward_status"].values()) == pytest.approx(1.0)


def test_only_ok_verdicts_count_as_correct() -> None:
    assert not sample(1.0, "timeout").correct and sample(1.0).correct and not sample(0.0).correct
    metrics = summarize([PromptOutcome((sample(1.0, "error"),))], greedy=False)
    assert metrics.pass_at_k == {1: 0.0}


def test_greedy_accuracy_is_avg_at_1_and_levels_are_optional() -> None:
    metrics = summarize([PromptOutcome((sample(1.0),)), PromptOutcome((sample(0.0),))], greedy=True)
    assert metrics.greedy_accuracy == metrics.avg_at_k == 0.5 and metrics.by_level == {}


def test_summarize_refuses_ragged_or_empty_input() -> None:
    with pytest.raises(ValueError, match="same number"):
        summarize([PromptOutcome((sample(1.0),)), PromptOutcome((sample(1.0), sample(0.0)))], greedy=False)
    with pytest.raises(ValueError, match="no prompts"):
        summarize([], greedy=False)
    with pytest.raises(ValueError, match="greedy"):
        summarize([PromptOutcome((sample(1.0), sample(0.0)))], greedy=True)

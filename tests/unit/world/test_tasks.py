"""The task family: deterministic per seed, disjoint splits, every reference solution graded correct by the reward
server's own scorer, corrupted answers graded wrong, and guessing worth ~nothing."""

from __future__ import annotations

import random
import re

import pytest

from reward_server.scorers import resolve_kind, score
from services.core.config import WorldTaskConfig
from trainer.world.splits import SPLITS, build_splits, most_common_label_accuracy
from trainer.world.tasks import DATA_SOURCE, Problem, generate_problem, ops_for_level, slipped_total, total_range

SMALL = WorldTaskConfig(train_size=600, validation_size=60, test_size=90, ood_size=90)


def _records(seed: int) -> dict[str, list[dict[str, object]]]:
    return {name: [p.record() for p in problems] for name, problems in build_splits(SMALL, seed).items()}


def test_splits_are_deterministic_per_seed_and_differ_across_seeds() -> None:
    assert _records(3) == _records(3)
    assert _records(3)["test"] != _records(4)["test"]


def test_splits_are_disjoint_sized_and_levelled() -> None:
    splits = build_splits(SMALL, 0)
    keys = {name: {p.key for p in problems} for name, problems in splits.items()}
    for i, a in enumerate(SPLITS):
        assert len(keys[a]) == len(splits[a]), f"{a} repeats a problem"
        for b in SPLITS[i + 1 :]:
            assert not keys[a] & keys[b], f"{a} and {b} share problems"
    assert len(splits["validation"]) == 60 and len(splits["test"]) == 90 and len(splits["ood"]) == 90
    assert {p.level for p in splits["test"]} == set(SMALL.levels)
    assert {p.level for p in splits["ood"]} == set(SMALL.ood_levels)
    for name in ("validation", "test", "ood"):  # levels interleave: a prefix (an evaluation's limit) holds them all
        levels = SMALL.ood_levels if name == "ood" else SMALL.levels
        assert [p.level for p in splits[name][: len(levels)]] == list(levels)
    tail = [p for p in splits["train"] if p.level not in SMALL.levels]
    assert len(splits["train"]) == 600 and len(tail) == round(600 * SMALL.train_tail_share)
    assert {p.level for p in tail} == {min(SMALL.ood_levels)}


def test_every_reference_solution_is_graded_correct_and_corruptions_wrong() -> None:
    kind = resolve_kind(None, DATA_SOURCE)
    assert kind == "math"
    for name, problems in build_splits(SMALL, 1).items():
        for problem in problems:
            record = problem.record()
            assert score(kind, str(record["solution"]), str(record["label"])).reward == 1.0, (name, record)
        for problem in problems[:40]:
            wrong = problem.solution.replace(f"\\boxed{{{problem.answer}}}", f"\\boxed{{{problem.answer + 1}}}")
            assert score(kind, wrong, str(problem.answer)).reward == 0.0
            unboxed = problem.solution.replace("\\boxed", "")
            assert score(kind, unboxed, str(problem.answer + 3)).reward == 0.0


@pytest.mark.parametrize(("level", "digits"), [(1, 3), (3, 3), (6, 3), (9, 3), (2, 2), (4, 5)])
def test_a_problem_is_a_correct_chain_within_range(level: int, digits: int) -> None:
    rng = random.Random(level)
    low, high = total_range(digits)
    assert (low, high) == (10 ** (digits - 1), 10**digits - 1)
    for _ in range(200):
        problem = generate_problem(rng, level, digits)
        assert len(problem.operands) == ops_for_level(level) == 3 + level
        assert all(low <= total <= high for total in (problem.start, *problem.totals))
        assert eval(problem.expression) == problem.answer  # the prompt states the answer
        lines = problem.solution.splitlines()
        assert lines[1] == problem.expression and lines[-1] == f"Answer: \\boxed{{{problem.answer}}}"
        rewrites = lines[2:-1]
        assert len(rewrites) == len(problem.operands) and rewrites[-1] == f"={problem.answer}"
        for k, line in enumerate(rewrites, start=1):  # each line is the running total + the operations still to do
            assert eval(line[1:]) == problem.answer
            assert line.startswith(f"={problem.totals[k - 1]}")


def test_the_prompt_states_the_whole_problem() -> None:
    problem = Problem(start=728, operands=(-9, -8, -6, 5), level=1)
    assert problem.prompt == "Compute 728-9-8-6+5 from left to right.\n"
    assert problem.answer == 710
    assert problem.solution == (
        "Plan: 4 steps, evaluate left to right.\n728-9-8-6+5\n=719-8-6+5\n=711-6+5\n=705+5\n=710\nAnswer: \\boxed{710}"
    )
    assert problem.record()["label"] == "710" and problem.record()["data_source"] == DATA_SOURCE


def test_levels_outside_the_family_are_refused() -> None:
    with pytest.raises(ValueError, match="level must be in"):
        ops_for_level(0)
    with pytest.raises(ValueError, match="digits must be in"):
        total_range(1)
    with pytest.raises(ValueError, match="harder than"):
        WorldTaskConfig(levels=(1, 2, 4), ood_levels=(3, 5))


def test_guessing_the_most_common_label_scores_about_nothing() -> None:
    splits = build_splits(WorldTaskConfig(train_size=2000, test_size=500, ood_size=500), 0)
    for name in ("test", "ood"):
        assert most_common_label_accuracy([str(p.answer) for p in splits[name]]) <= 0.02, name
    with pytest.raises(ValueError):
        most_common_label_accuracy([])


def test_a_slip_forgets_the_carry_or_borrow_and_nothing_else() -> None:
    assert slipped_total(728, 719) == 729  # 728-9 without the borrow
    assert slipped_total(195, 202) == 192  # 195+7 without the carry
    assert slipped_total(711, 705) == 715
    assert slipped_total(714, 719) == 719 and slipped_total(719, 711) == 711  # no tens boundary: no slip possible
    problem = Problem(start=728, operands=(-9, -8, -6, 5), level=1)
    assert problem.demonstration([False] * 4) == problem.solution
    slipped = problem.demonstration([True, False, False, False])
    assert slipped.splitlines()[2:] == ["=729-8-6+5", "=721-6+5", "=715+5", "=720", "Answer: \\boxed{720}"]
    kind = resolve_kind(None, DATA_SOURCE)
    assert score(kind, slipped, str(problem.answer)).reward == 0.0  # a slip carries on to a wrong answer
    no_crossing = problem.demonstration([False, True, False, False])  # 719-8 = 711 crosses no tens boundary
    assert no_crossing == problem.solution
    with pytest.raises(ValueError, match="slip flags"):
        problem.demonstration([True])


def test_sampled_demonstrations_slip_at_the_stated_rate() -> None:
    problems = build_splits(SMALL, 2)["train"]
    rng = random.Random(0)
    assert all(p.sampled_demonstration(rng, 0.0) == p.solution for p in problems[:50])
    crossings = slips = 0
    for problem in problems:  # read the written totals back and count where a carry or borrow was forgotten
        lines = problem.sampled_demonstration(rng, 0.25).splitlines()
        written = [problem.start] + [int(re.match(r"=(\d+)", line).group(1)) for line in lines[2:-1]]  # type: ignore[union-attr]
        for k, op in enumerate(problem.operands):
            if written[k] // 10 != (written[k] + op) // 10:
                crossings += 1
                slips += written[k + 1] != written[k] + op
            else:
                assert written[k + 1] == written[k] + op
    assert crossings > 1000 and abs(slips / crossings - 0.25) < 0.04  # binomial sd ~0.013 at this count
    with pytest.raises(ValueError, match="slip_rate"):
        problems[0].sampled_demonstration(rng, 1.0)

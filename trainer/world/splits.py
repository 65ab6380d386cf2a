"""The world's splits: train, validation, test (in-distribution, disjoint) and ood (harder levels), as jsonl.

Every split is drawn level by level from its own seeded stream (trainer/world/tasks.py), so a split depends only on
the seed, its name and its size. Problems are unique within and across splits: the evaluation splits are drawn
first and every problem they hold is excluded from the ones drawn after them, train last.
"""

from __future__ import annotations

import itertools
import json
import random
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Final

from services.core.config.world import WorldTaskConfig
from trainer.world.tasks import Problem, generate_problem, level_stream

SPLITS: Final = ("train", "validation", "test", "ood")
MAX_DRAWS_PER_PROBLEM: Final = 50  # a level too small for the requested size fails loudly instead of looping


def build_splits(task: WorldTaskConfig, seed: int) -> dict[str, list[Problem]]:
    """All four splits, disjoint, in a fixed order per seed."""
    seen: set[str] = set()
    splits: dict[str, list[Problem]] = {}
    digits = task.digits
    splits["test"] = _draw(seed, "test", task.levels, task.test_size, digits, seen)
    splits["validation"] = _draw(seed, "validation", task.levels, task.validation_size, digits, seen)
    splits["ood"] = _draw(seed, "ood", task.ood_levels, task.ood_size, digits, seen)
    tail = round(task.train_size * task.train_tail_share)
    train = _draw(seed, "train", task.levels, task.train_size - tail, digits, seen)
    if tail:
        train += _draw(seed, "train-tail", (min(task.ood_levels),), tail, digits, seen)
    splits["train"] = _interleave(train, seed)
    return {name: splits[name] for name in SPLITS}


def _draw(seed: int, name: str, levels: Sequence[int], size: int, digits: int, seen: set[str]) -> list[Problem]:
    """`size` new problems spread evenly over `levels` (the first levels get the remainder), the levels interleaved
    so that every prefix of a split (an evaluation's `--limit`) holds all of its levels."""
    per_level: list[list[Problem]] = []
    for index, level in enumerate(levels):
        out: list[Problem] = []
        want = size // len(levels) + (1 if index < size % len(levels) else 0)
        rng = level_stream(seed, name, level)
        got, draws = 0, 0
        while got < want:
            draws += 1
            if draws > MAX_DRAWS_PER_PROBLEM * max(want, 1):
                raise ValueError(f"split {name!r}: level {level} cannot supply {want} distinct problems")
            problem = generate_problem(rng, level, digits)
            if problem.key in seen:
                continue
            seen.add(problem.key)
            out.append(problem)
            got += 1
        per_level.append(out)
    return [problem for row in itertools.zip_longest(*per_level) for problem in row if problem is not None]


def _interleave(problems: list[Problem], seed: int) -> list[Problem]:
    """A seeded shuffle, so training batches mix levels."""
    shuffled = list(problems)
    random.Random(f"{seed}:train-order").shuffle(shuffled)
    return shuffled


def write_split(problems: Iterable[Problem], path: Path) -> int:
    """Write one split as jsonl (`prompt`, `label`, `data_source`, `level`, `solution`); returns the row count."""
    rows = 0
    with path.open("w", encoding="utf-8") as handle:
        for problem in problems:
            handle.write(json.dumps(problem.record(), ensure_ascii=False) + "\n")
            rows += 1
    return rows


def most_common_label_accuracy(labels: Sequence[str]) -> float:
    """What a guesser that always answers the split's most common label scores on it."""
    if not labels:
        raise ValueError("no labels")
    counts: dict[str, int] = {}
    for label in labels:
        counts[label] = counts.get(label, 0) + 1
    return max(counts.values()) / len(labels)

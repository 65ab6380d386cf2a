"""Self-consistency on real benchmark sets: every gold answer, graded against its own reference solution, is correct.

A miss here means our extraction or equivalence fails on the way the benchmark's authors themselves write answers,
which would silently cap the reward on that benchmark. Sets without solutions (AIME25, HMMT25) are graded against
"The answer is \\boxed{answer}".
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from reward_server.scorers import Kind, score
from reward_server.scorers.extract import last_boxed_answer
from tests.shared_data import read_shared_jsonl

pytestmark = pytest.mark.slow  # sweeps over whole benchmark files

# Problems whose gold cannot be graded against its own solution. None today; list any with the reason.
KNOWN_EXCEPTIONS: dict[str, set[int]] = {}


def _boxed_minerva(row: dict[str, Any]) -> tuple[str, str]:
    gold = last_boxed_answer(row["solution"])
    assert gold is not None, "every Minerva solution has a \\boxed answer"
    return row["solution"], gold


def _stated(row: dict[str, Any]) -> tuple[str, str]:
    return f"The answer is \\boxed{{{row['answer']}}}", str(row["answer"])


# set name -> (file, kind, row -> (response, gold))
SETS: dict[str, tuple[str, Kind, Callable[[dict[str, Any]], tuple[str, str]]]] = {
    "math500": ("math500_test.jsonl", "math", lambda r: (r["solution"], r["answer"])),
    "minerva": ("minerva_math_test.jsonl", "math", _boxed_minerva),
    "aime24": ("aime24_test.jsonl", "math", lambda r: (r["solution"], str(r["answer"]))),
    "aime25": ("aime25.jsonl", "math", _stated),
    "hmmt25": ("hmmt25.jsonl", "math", _stated),
    "gsm8k": ("gsm8k_test.jsonl", "gsm8k", lambda r: (r["answer"], r["answer"].rsplit("####", 1)[1].strip())),
}


def _rows(file: str) -> list[dict[str, Any]]:
    return read_shared_jsonl(f"bench/{file}")


@pytest.mark.parametrize("name", list(SETS))
def test_gold_answer_matches_its_own_solution(name: str) -> None:
    file, kind, to_pair = SETS[name]
    rows = _rows(file)
    misses: list[str] = []
    for index, row in enumerate(rows):
        response, gold = to_pair(row)
        outcome = score(kind, response, gold)
        if outcome.reward != 1.0 and index not in KNOWN_EXCEPTIONS.get(name, set()):
            misses.append(f"{name}[{index}] gold={gold!r} extracted={outcome.extracted!r} ({outcome.detail})")
    rate = 1 - len(misses) / len(rows)
    print(f"\n{name}: {rate:.2%} of {len(rows)} self-consistent")
    for miss in misses:
        print("  " + miss)
    assert not misses, f"{len(misses)} gold answers not matched by their own solutions"

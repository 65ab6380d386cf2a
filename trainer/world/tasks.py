"""The synthetic verifiable task family: left-to-right arithmetic chains with a worked scratchpad.

A problem starts at a three-digit number and applies `n` single-digit additions or subtractions in order; the
running total stays within 100..999 (`digits`, 3 by default), so every intermediate and the answer have three digits
and the answers spread over ~900 values (a guesser that always gives the split's most common answer scores ~0).
The reference solution has a planning part (how many steps, in which order), the chain rewritten once per operation
(the running total followed by the operations still to do), and the final answer in ``\\boxed{}`` — graded by the
reward server's `math` scorer, no grading code of its own.

Difficulty is the chain length: level L has ``LEVEL_BASE_OPS + L`` operations. Levels 1..3 (4–6 operations) are the
in-distribution levels; levels 4..6 (7–9 operations) are out of distribution. Responses run ~100–200 tokens with the
tiny world's character-level tokenizer, so trajectory percentiles (SPEC §6) have something to bin.

Pure Python, deterministic per seed: `Random(f"{seed}:{split}:{level}")` streams, no global state.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

DATA_SOURCE: Final = "arith_chains"
"""`data_source` of every problem; the reward server maps it to the `math` scorer (reward_server/scorers/sources)."""

LEVEL_BASE_OPS: Final = 3
MIN_LEVEL, MAX_LEVEL = 1, 9
MIN_DIGITS, MAX_DIGITS = 2, 6
DEFAULT_DIGITS: Final = 3
MIN_OPERAND, MAX_OPERAND = 1, 9


def total_range(digits: int) -> tuple[int, int]:
    """The running total stays within these bounds: every total has exactly `digits` digits."""
    if not MIN_DIGITS <= digits <= MAX_DIGITS:
        raise ValueError(f"digits must be in {MIN_DIGITS}..{MAX_DIGITS}, got {digits}")
    return 10 ** (digits - 1), 10**digits - 1


def ops_for_level(level: int) -> int:
    """Operations in a problem of `level` (level 1 = 4 operations)."""
    if not MIN_LEVEL <= level <= MAX_LEVEL:
        raise ValueError(f"level must be in {MIN_LEVEL}..{MAX_LEVEL}, got {level}")
    return LEVEL_BASE_OPS + level


@dataclass(frozen=True)
class Problem:
    """One problem: the start, its signed operands, and everything derived from them."""

    start: int
    operands: tuple[int, ...]  # signed: +7 adds 7, -4 subtracts 4
    level: int

    @property
    def totals(self) -> tuple[int, ...]:
        """The running total after each operation."""
        out, total = [], self.start
        for op in self.operands:
            total += op
            out.append(total)
        return tuple(out)

    @property
    def answer(self) -> int:
        return self.totals[-1]

    @property
    def expression(self) -> str:
        return str(self.start) + "".join(_signed(op) for op in self.operands)

    @property
    def prompt(self) -> str:
        return f"Compute {self.expression} from left to right.\n"

    @property
    def solution(self) -> str:
        """The reference response: a plan, the chain rewritten after each operation, the boxed answer.

        Each rewrite line evaluates the first operation of the line above and copies the rest, so every step is a
        local computation (the two numbers at the start of the previous line) plus a contiguous copy."""
        return self.demonstration([False] * len(self.operands))

    def demonstration(self, slips: Sequence[bool]) -> str:
        """The solution as a fallible demonstrator writes it: where `slips[k]` is set and operation k crosses a tens
        boundary, the carry or borrow is forgotten (`slipped_total`) and the chain goes on from the written total,
        so the boxed answer is wrong. No slips: the reference solution."""
        if len(slips) != len(self.operands):
            raise ValueError(f"{len(slips)} slip flags for {len(self.operands)} operations")
        lines = [f"Plan: {len(self.operands)} steps, evaluate left to right.", self.expression]
        total = self.start
        for k, (op, slip) in enumerate(zip(self.operands, slips, strict=True), start=1):
            total = slipped_total(total, total + op) if slip else total + op
            lines.append("=" + str(total) + "".join(_signed(o) for o in self.operands[k:]))
        lines.append(f"Answer: \\boxed{{{total}}}")
        return "\n".join(lines)

    def sampled_demonstration(self, rng: random.Random, slip_rate: float) -> str:
        """A demonstration whose every operation slips with probability `slip_rate` (0: the reference solution)."""
        if not 0.0 <= slip_rate < 1.0:
            raise ValueError(f"slip_rate must be in [0, 1), got {slip_rate}")
        if slip_rate == 0.0:
            return self.solution
        return self.demonstration([rng.random() < slip_rate for _ in self.operands])

    @property
    def key(self) -> str:
        """Identity of the problem, for split disjointness."""
        return self.expression

    def record(self) -> dict[str, object]:
        """The problem as a jsonl row in the OpenRLHF/verl prompt convention (plus `level` and the reference)."""
        return {
            "prompt": self.prompt,
            "label": str(self.answer),
            "data_source": DATA_SOURCE,
            "level": self.level,
            "solution": self.solution,
        }


def slipped_total(before: int, after: int) -> int:
    """The total a demonstrator writes when it forgets the carry or borrow of `before` -> `after`: the new units digit
    under the old total's higher digits (728-9: 729 instead of 719; 195+7: 192 instead of 202). Equal to `after` when
    the operation crosses no tens boundary."""
    return before - before % 10 + after % 10


def _signed(op: int) -> str:
    return f"+{op}" if op > 0 else f"-{-op}"


def generate_problem(rng: random.Random, level: int, digits: int = DEFAULT_DIGITS) -> Problem:
    """A random problem of `level` whose totals have `digits` digits: each operation's sign is drawn among those that
    keep the total in range."""
    n_ops = ops_for_level(level)
    low, high = total_range(digits)
    start = rng.randint(low, high)
    total, operands = start, []
    for _ in range(n_ops):
        size = rng.randint(MIN_OPERAND, MAX_OPERAND)
        signs = [s for s in (1, -1) if low <= total + s * size <= high]
        op = rng.choice(signs) * size
        operands.append(op)
        total += op
    return Problem(start=start, operands=tuple(operands), level=level)


def level_stream(seed: int, name: str, level: int) -> random.Random:
    """The independent random stream of one (seed, split, level)."""
    return random.Random(f"{seed}:{name}:{level}")

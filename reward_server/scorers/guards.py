"""Refusing input that would make sympy compute for minutes (10^{10^{10}}, 99999!, deep nesting).

Math-Verify's own timeouts stop such work in a worker's main thread, and the service kills stuck workers; these
checks make most hostile answers cheap everywhere, including threads where no alarm can fire.
"""

from __future__ import annotations

import re
from typing import Final

MAX_EXPONENT_DIGITS: Final = 4  # 2^{2024} is a real answer; 10^{99999999} is not
MAX_FACTORIAL_DIGITS: Final = 4
MAX_NESTING: Final = 40
MAX_SYMPY_CHARS: Final = 20_000

# The lookbehind anchors the run at its first digit: without it a million-digit run is rescanned from every
# position (quadratic, seconds per item).
_BIG_FACTORIAL: Final = re.compile(rf"(?<!\d)\d{{{MAX_FACTORIAL_DIGITS + 1},}}\s*!")
_GROUP_FACTORIAL: Final = re.compile(r"[({]([^(){}]*)[)}]\s*!")
_BIG_BINOMIAL: Final = re.compile(r"\\(?:binom|dbinom|tbinom|choose)\s*\{?[^}]*\d{5,}")
_STACKED_POWER: Final = re.compile(r"\^\s*(?:\{[^{}]*\}|\w+)\s*\^")


def _exponents(text: str) -> list[str]:
    """The exponent after each ``^``: a braced group (balanced), a parenthesised group, or a single token."""
    found: list[str] = []
    for m in re.finditer(r"\^|\*\*", text):
        rest = text[m.end() :].lstrip()
        if rest[:1] in ("{", "("):
            close = {"{": "}", "(": ")"}[rest[0]]
            depth = 0
            for i, ch in enumerate(rest):
                depth += ch == rest[0]
                depth -= ch == close
                if depth == 0:
                    found.append(rest[1:i])
                    break
            else:
                found.append(rest)
        else:
            token = re.match(r"-?[\w.]+", rest)
            found.append(token.group(0) if token else "")
    return found


def _max_nesting(text: str) -> int:
    depth = deepest = 0
    for ch in text:
        if ch in "({[":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in ")}]":
            depth = max(0, depth - 1)
    return deepest


def is_safe_for_sympy(text: str) -> bool:
    """Whether `text` may be handed to the LaTeX parser and sympy without risking a huge computation."""
    if len(text) > MAX_SYMPY_CHARS or _max_nesting(text) > MAX_NESTING:
        return False
    if _BIG_FACTORIAL.search(text) or _BIG_BINOMIAL.search(text) or _STACKED_POWER.search(text):
        return False
    for group in _GROUP_FACTORIAL.findall(text):
        if "^" in group or re.search(r"\d{3,}", group):
            return False
    for exponent in _exponents(text):
        if "^" in exponent or "!" in exponent or "**" in exponent:
            return False
        if re.search(rf"\d{{{MAX_EXPONENT_DIGITS + 1},}}", exponent):
            return False
    return True

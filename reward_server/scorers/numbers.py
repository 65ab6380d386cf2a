"""Reading numbers as people write them: ``1,000.5``, ``1 000``, ``1000,99`` (decimal comma), ``.4``, ``-5``.

Values are exact `Fraction`s, so ``0.1 + 0.2``-style float noise never decides a verdict.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from fractions import Fraction
from typing import Final

MAX_DIGITS: Final = 60  # longer digit runs are not answers; refusing them keeps Fraction arithmetic cheap

# Grouped thousands ("1,234,567", "1 234"), plain digits with an optional decimal part (point or comma), or ".5".
_NUMBER: Final = re.compile(r"-?(?:\d{1,3}(?:(?:,| (?=\d{3}\b))\d{3})+(?:\.\d+)?|\d+(?:[.,]\d+)?|\.\d+)")


@dataclass(frozen=True)
class FoundNumber:
    text: str
    value: Fraction
    start: int


def parse_number(token: str) -> Fraction | None:
    """The value of one number token, or None when it is not a well-formed number.

    A comma is a thousands separator when every group after it has three digits and the first group does not
    start with 0 ("7,425,000"); otherwise a single comma is a decimal comma ("1000,99", "0,111", "1,22").
    """
    if ", " in token:  # "32, 349" is a list of two numbers; thousands separators are never followed by a space
        return None
    text = token.strip().replace(" ", "")
    negative = text.startswith("-")
    text = text.lstrip("-+")
    if not text or sum(ch.isdigit() for ch in text) > MAX_DIGITS:
        return None
    if "," in text:
        head, *groups = text.split(".")[0].split(",")
        thousands = all(len(g) == 3 for g in groups) and 1 <= len(head) <= 3 and not head.startswith("0")
        if "." in text or thousands:
            text = text.replace(",", "")
        elif len(groups) == 1:
            text = text.replace(",", ".")
        else:
            return None
    if not re.fullmatch(r"\d*\.?\d+|\d+\.", text):
        return None
    value = Fraction(text)
    return -value if negative else value


def find_numbers(text: str) -> list[FoundNumber]:
    """Every number in `text`, in order; digits glued to a preceding letter ("H2O", "AZ2K") are not numbers.

    A leading "-" is a sign only when it does not follow a digit or letter ("10-5" is a subtraction).
    """
    found: list[FoundNumber] = []
    for m in _NUMBER.finditer(text):
        token, start = m.group(0), m.start()
        if token.startswith("-") and start > 0 and (text[start - 1].isalnum() or text[start - 1] in ")]}"):
            token, start = token[1:], start + 1
        before = text[start - 1] if start > 0 else " "
        if (before.isascii() and before.isalpha()) or before in "_^\\" or (before == "." and token[0] != "."):
            continue
        token = token.rstrip(",")
        value = parse_number(token)
        if value is not None:
            found.append(FoundNumber(token, value, start))
    return found


def last_number(text: str) -> FoundNumber | None:
    """The last number in `text`, or None."""
    numbers = find_numbers(text)
    return numbers[-1] if numbers else None


def first_number(text: str) -> FoundNumber | None:
    """The first number in `text`, or None."""
    numbers = find_numbers(text)
    return numbers[0] if numbers else None

"""GSM8K answers: one number, compared exactly against the ``#### n`` gold.

Where the number comes from, first match wins: the last ``#### n``; the last ``\\boxed``; the last anchored phrase
("The answer is 42", "A: 42", "réponse est (35 + 70 = 105)" → the number after its last "="); the last number in
the text. Calculator annotations (``<<6*7=42>>``) are removed first. Numbers are read with thousands separators,
decimal commas and signs (see `numbers.py`); units, currency and percent signs around them are ignored.
"""

from __future__ import annotations

import re
from fractions import Fraction
from typing import Final

from reward_server.scorers.extract import anchored_segment, last_boxed_answer, prepare_response
from reward_server.scorers.numbers import FoundNumber, find_numbers, parse_number
from reward_server.scorers.verdict import Verdict

_CALCULATOR: Final = re.compile(r"<<[^<>]{0,200}>>")
_HASHES: Final = re.compile(r"####\s*")
_LATEX_FRACTION: Final = re.compile(r"^\s*(-?)\\[dt]?frac\s*\{\s*(-?[\d.,]+)\s*\}\s*\{\s*([\d.,]+)\s*\}\s*$")
_PLAIN_FRACTION: Final = re.compile(r"^\s*(-?[\d.,]+)\s*/\s*([\d.,]+)\s*$")


def _fraction_value(answer: str) -> Fraction | None:
    """``\\frac{3}{4}`` or ``3/4`` as a number, for the rare GSM8K response that answers with a fraction."""
    cleaned = re.sub(r"\\[,!; ]|\\\$|\$|\\text\{[^{}]*\}", "", answer)
    latex = _LATEX_FRACTION.match(cleaned)
    parts = (latex.group(1) + latex.group(2), latex.group(3)) if latex else None
    plain = _PLAIN_FRACTION.match(cleaned) if parts is None else None
    if plain is not None:
        parts = (plain.group(1), plain.group(2))
    if parts is None:
        return None
    num, den = parse_number(parts[0]), parse_number(parts[1])
    return num / den if num is not None and den else None


def _number_in(answer: str) -> tuple[str, Fraction] | None:
    """The number an answer fragment states: a fraction as a whole, else the number after its last "=", else its
    first number."""
    fraction = _fraction_value(answer)
    if fraction is not None:
        return answer.strip(), fraction
    after_eq = find_numbers(answer.rsplit("=", 1)[1]) if "=" in answer else []
    found: list[FoundNumber] = after_eq or find_numbers(answer)
    if not found:
        return None
    return found[0].text, found[0].value


def read_gold_number(ground_truth: str) -> Fraction | None:
    """The gold number: after the last ``####`` when there is one, else the last number of the text."""
    text = _CALCULATOR.sub("", ground_truth)
    if "####" in text:
        found = _number_in(text.rsplit("####", 1)[1])
        return found[1] if found else None
    boxed = last_boxed_answer(text)
    if boxed is not None:
        found = _number_in(boxed)
        return found[1] if found else None
    numbers = find_numbers(text)
    return numbers[-1].value if numbers else None


def extract_gsm8k_answer(text: str) -> tuple[str, Fraction] | None:
    """The number a GSM8K response commits to (see the module docstring for the order), or None."""
    text = _CALCULATOR.sub("", text)
    if "####" in text:
        return _number_in(_HASHES.split(text)[-1].split("\n", 1)[0])
    boxed = last_boxed_answer(text)
    if boxed is not None:
        return _number_in(boxed)
    segment = anchored_segment(text)
    if segment is not None:
        found = _number_in(segment)
        if found is not None:
            return found
    numbers = find_numbers(text)
    return (numbers[-1].text, numbers[-1].value) if numbers else None


def score_gsm8k(response: str, ground_truth: str) -> Verdict:
    """Grade a GSM8K response: its final number equals the gold number exactly."""
    prepared = prepare_response(response)
    if prepared.text is None:
        return Verdict(False, None, prepared.problem)
    gold = read_gold_number(ground_truth)
    if gold is None:
        return Verdict(False, None, "no number in ground truth")
    found = extract_gsm8k_answer(prepared.text)
    if found is None:
        return Verdict(False, None, "no answer found")
    text, value = found
    ok = value == gold
    return Verdict(ok, text, None if ok else "wrong number")

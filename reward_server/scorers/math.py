"""Math answers: our extraction first, Math-Verify for equivalence, string and number fallbacks after.

Only Math-Verify's LaTeX extraction is used: its plain-expression extraction runs `sympy.parse_expr`, which
`eval`s the text, and client text is never evaluated. Plain numbers are read by `numbers.py` instead.
"""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Final

from math_verify import LatexExtractionConfig, parse, verify
from math_verify.errors import TimeoutException

from reward_server.scorers.extract import (
    MATH_ENV,
    MAX_ANSWER_CHARS,
    anchored_segment,
    clean_answer,
    final_line,
    fold_unicode,
    last_boxed_answer,
    math_envs,
    prepare_response,
)
from reward_server.scorers.guards import is_safe_for_sympy
from reward_server.scorers.normalize import normalize_tex, normalize_text_answer, strip_text_macros
from reward_server.scorers.numbers import find_numbers, parse_number
from reward_server.scorers.verdict import Verdict

MATH_VERIFY_TIMEOUT_S: Final = 3
SYMPY_BUDGET_S: Final = 4.0
_LATEX_ONLY: Final = [LatexExtractionConfig()]
_CHOICE: Final = re.compile(r"\(?([A-J])\)?(?![A-Za-z])")
_PLAIN_FRACTION: Final = re.compile(r"^\s*(-?\d+(?:\.\d+)?)\s*/\s*(\d+(?:\.\d+)?)\s*$")
_NUMBER_OR_FRACTION: Final = re.compile(r"(?<![A-Za-z\d.])-?\d+(?:\.\d+)?\s*/\s*\d+(?:\.\d+)?(?!\d|\.\d)")
_MATH_ENV_OR_BOX: Final = re.compile(
    r"\$\$.*?\$\$|\\\[.*?\\\]|\\\(.*?\\\)|\$[^$\n]*\$|\\(?:boxed|fbox)\{[^{}]*\}", re.DOTALL
)


def _timeout_s() -> int | None:
    # math-verify's timeouts use signal.alarm, which only the main thread may set. Elsewhere (tests, threads) we
    # run without it; the service's worker processes call us on their main thread and also kill stuck workers.
    return MATH_VERIFY_TIMEOUT_S if threading.current_thread() is threading.main_thread() else None


class _SympyBudget:
    """Wall-clock allowance for parser/sympy work on one response; once spent, only string checks remain.

    Each Math-Verify call has its own timeout, but one response can need several calls; the budget keeps a
    response whose every comparison times out from costing several timeouts in a row.
    """

    def __init__(self, seconds: float) -> None:
        self._deadline = time.monotonic() + seconds

    def parse(self, latex: str) -> list[Any]:
        if time.monotonic() > self._deadline or not is_safe_for_sympy(latex):
            return []
        try:
            return list(parse(latex, extraction_config=_LATEX_ONLY, parsing_timeout=_timeout_s()))
        except (Exception, TimeoutException):  # a timeout or a parser bug on odd input: nothing parsed
            return []

    def verify(self, gold: list[Any], pred: list[Any]) -> bool:
        if not gold or not pred or time.monotonic() > self._deadline:
            return False
        try:
            return bool(verify(gold, pred, timeout_seconds=_timeout_s()))
        except (Exception, TimeoutException):
            return False


def _wrap(answer: str) -> str:
    """A bare answer as inline LaTeX, so Math-Verify reads all of it (not just its last number)."""
    if "\\boxed" in answer or "\\fbox" in answer:
        return answer
    inner = answer.replace("\\$", " ").replace("$", " ")
    return "$" + " ".join(inner.split()) + "$"  # inline math may not span lines


def _is_bare(text: str) -> bool:
    return not any(marker in text for marker in ("$", "\\boxed", "\\fbox", "\\(", "\\["))


# ---------------------------------------------------------------------------------------------------------------------
# The gold answer


@dataclass(frozen=True)
class Gold:
    raw: str
    answer: str  # the gold's answer as text: its boxed content, or the whole gold when short
    parsed: list[Any]


def read_gold(ground_truth: str, budget: _SympyBudget) -> Gold | None:
    """The gold answer, or None when it is empty (an empty gold matches nothing)."""
    raw = fold_unicode(ground_truth.strip()[-4 * MAX_ANSWER_CHARS :])
    raw = re.sub(r"\\\\(?=[A-Za-z])", lambda _: "\\", raw) if "\\\\boxed" in raw else raw
    boxed = last_boxed_answer(raw) if ("\\boxed" in raw or "\\fbox" in raw) else None
    if boxed is not None:
        answer = boxed
    elif len(raw) <= MAX_ANSWER_CHARS:
        envs = math_envs(raw) if raw.startswith(("$", "\\(", "\\[")) else []
        answer = ", ".join(envs) if envs and _is_bare(_strip_envs(raw)) else raw
    else:
        answer = clean_answer(anchored_segment(raw) or final_line(raw))
    if not answer.strip() or not _has_content(answer):
        return None
    # The answer we read (boxes merged by our rule) first; the raw gold only when that does not parse.
    parsed = budget.parse(_wrap(answer)) if boxed is not None or _is_bare(raw) else budget.parse(raw)
    if not parsed:
        parsed = budget.parse(raw) if boxed is not None or _is_bare(raw) else budget.parse(_wrap(answer))
    return Gold(raw, answer, parsed)


def _strip_envs(text: str) -> str:
    """What is left of `text` outside its ``$..$`` blocks, minus list glue ("$1$ and $2$" leaves nothing)."""
    return re.sub(r"\$+[^$]*\$+|\b(?:and|or)\b|[\s,;]", "", text)


def _has_content(answer: str) -> bool:
    return bool(re.sub(r"\\boxed|\\fbox|[{}\s$.,;:!?]", "", answer))


# ---------------------------------------------------------------------------------------------------------------------
# The response's answer


def _math_prefix(segment: str) -> str:
    """The leading part of an anchored segment that is math, dropping the prose after it ("220 $ à payer")."""
    kept: list[str] = []
    for token in segment.split():
        word = re.sub(r"\\[A-Za-z]+|\{[^{}]*\}", "", token)
        letters = re.findall(r"[^\W\d_]+", word)
        if letters and not (token in ("and", "or") or all(len(run) == 1 and run.isascii() for run in letters)):
            break
        kept.append(token)
    return " ".join(kept).replace("\\$", "").strip(" $,")


def extract_math_answer(text: str) -> str | None:
    """Our reading of the final answer: last boxed group, else the anchored answer, else a bare final line."""
    boxed = last_boxed_answer(text)
    if boxed is not None:
        return boxed
    segment = anchored_segment(text)
    if segment is not None:
        envs = math_envs(segment)
        if envs:
            return envs[0]
        cleaned = clean_answer(segment)
        prefix = _math_prefix(cleaned)
        if prefix and re.search(r"[\d\\]|^[A-Za-z]$", prefix):
            return prefix
        numbers = find_numbers(cleaned)
        if numbers:
            after_eq = find_numbers(cleaned.rsplit("=", 1)[1]) if "=" in cleaned else []
            return (after_eq or numbers)[0 if not after_eq else -1].text
        return cleaned or None
    trailing = _trailing_math(text)
    if trailing is not None:
        return trailing
    whole = clean_answer(text)
    if len(whole) <= 600 and _is_math_only(whole) and _has_content(whole):
        return whole
    line = clean_answer(final_line(text))
    if len(line) <= 120 and _is_math_only(line) and _has_content(line):
        return line
    return None


def _trailing_math(text: str) -> str | None:
    """The content of a math block that ends the response (``... is\n\\[\n 9 \n\\]``), lines and all."""
    stripped = text.rstrip(" \t\n.,;:!")
    if not stripped.endswith(("$", "\\)", "\\]")):
        return None
    for env in reversed(list(MATH_ENV.finditer(stripped[-MAX_ANSWER_CHARS:]))):
        if env.end() == len(stripped[-MAX_ANSWER_CHARS:]):
            content = next(g for g in env.groups() if g is not None).strip()
            return content if _has_content(content) else None
    return None


def _is_math_only(text: str) -> bool:
    return _math_prefix(text) == " ".join(text.split()).replace("\\$", "").strip(" $,")


def _last_plain_number(text: str) -> str | None:
    """The last number or ``a/b`` in the prose of `text` (numbers inside LaTeX are parts of expressions)."""
    text = _MATH_ENV_OR_BOX.sub(" ", text)
    fractions = list(_NUMBER_OR_FRACTION.finditer(text))
    numbers = find_numbers(text)
    best_fraction = fractions[-1] if fractions else None
    best_number = numbers[-1] if numbers else None
    if best_fraction is not None and (best_number is None or best_fraction.end() >= best_number.start):
        start, end, found = best_fraction.start(), best_fraction.end(), best_fraction.group(0)
    elif best_number is not None:
        start, end, found = best_number.start, best_number.start + len(best_number.text), best_number.text
    else:
        return None
    # A number glued to LaTeX ("2\sqrt{3}", "\sqrt{3}", "x^{2}") is part of an expression, not an answer.
    if text[end : end + 1] in ("\\", "^", "{", "}", "_") or text[max(0, start - 1) : start] in ("{", "^", "_"):
        return None
    return found


# ---------------------------------------------------------------------------------------------------------------------
# Comparison


def _number_value(answer: str) -> Fraction | None:
    text = re.sub(r"\\[,!; ]|\\\$|\$|\{,\}|\\%|%", "", strip_text_macros(answer)).strip()
    text = re.sub(r"^\((-?[\d.,]+)\)$", r"\1", text)  # "\textbf{(073)}"
    fraction = _PLAIN_FRACTION.match(text)
    if fraction is not None:
        num, den = parse_number(fraction.group(1)), parse_number(fraction.group(2))
        return num / den if num is not None and den else None
    return parse_number(text) if re.fullmatch(r"[-\d.,\s]+", text) else None


def _same_without_sympy(gold: Gold, answer: str) -> bool:
    """Equality that needs no parser: exact numbers, normalised LaTeX strings, normalised words."""
    gold_number, answer_number = _number_value(gold.answer), _number_value(answer)
    if gold_number is not None and answer_number is not None:
        return gold_number == answer_number
    if normalize_tex(gold.answer) == normalize_tex(answer) != "":
        return True
    gold_choice = _CHOICE.fullmatch(strip_text_macros(gold.answer).strip())
    if gold_choice is not None:  # AMC-style gold "(C)": "\text{(C) } 12" names option C
        answer_choice = _CHOICE.match(strip_text_macros(answer).strip())
        return answer_choice is not None and answer_choice.group(1) == gold_choice.group(1)
    gold_words = strip_text_macros(gold.answer)
    if re.fullmatch(r"[A-Za-z][A-Za-z' \-]*", gold_words.strip()):
        return normalize_text_answer(gold_words) == normalize_text_answer(strip_text_macros(answer))
    return False


def score_math(response: str, ground_truth: str) -> Verdict:
    """Grade a math response: our reading of its final answer, else Math-Verify's, equivalent to the gold."""
    prepared = prepare_response(response)
    if prepared.text is None:
        return Verdict(False, None, prepared.problem)
    budget = _SympyBudget(SYMPY_BUDGET_S)
    gold = read_gold(ground_truth, budget)
    if gold is None:
        return Verdict(False, None, "empty ground truth")
    text = prepared.text
    answer = extract_math_answer(text)
    ours: list[Any] = []
    if answer is not None:
        if _same_without_sympy(gold, answer):
            return Verdict(True, answer)
        ours = budget.parse(_wrap(answer))
        if budget.verify(gold.parsed, ours):
            return Verdict(True, answer)
    whole = budget.parse(text)
    already_tried = bool(whole and ours and str(whole[-1]) == str(ours[-1]))
    if whole and not already_tried and budget.verify(gold.parsed, whole):
        return Verdict(True, answer or str(whole[-1]))
    number = _last_plain_number(final_line(text)) if answer is None or not _has_box(text) else None
    if number is not None and (
        _same_without_sympy(gold, number) or budget.verify(gold.parsed, budget.parse(_wrap(number)))
    ):
        return Verdict(True, answer or number)
    extracted = answer or (str(whole[-1]) if whole else number)
    return Verdict(False, extracted, "not equivalent" if extracted is not None else "no answer found")


def _has_box(text: str) -> bool:
    return "\\boxed" in text or "\\fbox" in text

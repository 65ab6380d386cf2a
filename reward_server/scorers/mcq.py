"""Multiple-choice answers: one option letter A–J, read the way models actually write it.

Where the letter comes from, first match wins: the last ``\\boxed``; the last anchored phrase ("Answer: C", "the
answer is (C)", "정답: C", "réponse est C", ...); a final line that is only a letter; a letter opening the
response ("D. it can't be A or B"); the last capital letter standing alone. Lowercase letters count only in the
first three places, where they cannot be the English article. The ground truth may be a letter or an option
("(C) Cecile"); when the response names no letter, the option's text is compared instead.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from reward_server.scorers.extract import final_line, find_boxes, prepare_response
from reward_server.scorers.normalize import normalize_text_answer, strip_text_macros
from reward_server.scorers.verdict import Verdict

LETTERS: Final = "ABCDEFGHIJ"

# A letter as an answer: maybe in brackets/quotes/bold, and not the start of a longer word.
_LETTER_TOKEN: Final = r"[\(\[\"'“*]*\s*(?:\\text\{\s*\(?)?([A-Ja-j])(?![A-Za-z\d])"
_ANCHORS: Final = (
    r"answer\s*(?:is|:|=|-)|answer\s*\*\*\s*:?|answer\s+would\s+be|(?:correct|right|best)\s+(?:option|choice)\s+is"
    r"|(?:option|choice)\s*:|^\s*\**A\s*:(?=\s*\**\s*\(?[A-J]\b)"
    r"|r[ée]ponse\s*(?:est|:)|respuesta\s*(?:es|:)|antwort\s*(?:ist|:)|resposta\s*(?:é|:)"
    r"|答案\s*(?:是|为|:)?|选\s*(?=[A-J])|정답\s*(?:은|는)?\s*:?|ответ\s*:|उत्तर\s*:"
)
# Up to three filler words between anchor and letter ("the answer is for sure D"), never a negation.
_ANCHORED: Final = re.compile(
    rf"(?:{_ANCHORS})\s*\**\s*:?\s*(?:(?!not\b|never\b)[a-z]+\s+){{0,3}}?(?:option\s+|choice\s+)?{_LETTER_TOKEN}",
    re.IGNORECASE | re.MULTILINE,
)
_ONLY_LETTER: Final = re.compile(rf"^\W*(?:option\s+|choice\s+)?{_LETTER_TOKEN}[\W]*$", re.IGNORECASE)
_LEADING: Final = re.compile(r"^\W*([A-J])(?:[.:)\]]|$|(?=[^\x00-\x7f])|\s+(?![a-z]))")
_STANDALONE: Final = re.compile(r"(?<![A-Za-z\d'’\\_])([A-J])(?![A-Za-z\d'’_])")
_BOX_LETTER: Final = re.compile(rf"^\s*{_LETTER_TOKEN}")


@dataclass(frozen=True)
class Choice:
    letter: str | None
    option_text: str | None = None


def _is_article(text: str, match: re.Match[str]) -> bool:
    """'A'/'I' followed by a lowercase word is the English article or pronoun, not an option."""
    return match.group(1) in "AI" and re.match(r"\s+[a-z]", text[match.end() :]) is not None


def _lowercase_ok(letter: str, after: str) -> bool:
    # "answer is c." names option C; "answer is a bit" does not.
    return letter.isupper() or re.match(r"\s*(?:[.,;:!)\]\"'*]|$)", after) is not None


def read_choice(text: str) -> str | None:
    """The option letter a text commits to, or None."""
    boxes = find_boxes(text)
    if boxes:
        m = _BOX_LETTER.match(strip_text_macros(boxes[-1].content))
        if m is not None:
            return m.group(1).upper()
    anchored = [m for m in _ANCHORED.finditer(text) if _lowercase_ok(m.group(1), text[m.end() :])]
    if anchored:
        return anchored[-1].group(1).upper()
    m = _ONLY_LETTER.match(final_line(text))
    if m is not None:
        return m.group(1).upper()
    m = _LEADING.match(text)
    if m is not None and not _is_article(text, m):
        return m.group(1)
    standalone = [m for m in _STANDALONE.finditer(text) if not _is_article(text, m)]
    return standalone[-1].group(1) if standalone else None


def read_gold_choice(ground_truth: str) -> Choice:
    """The gold letter, and the option text when the gold spells the option out ("(C) Cecile")."""
    gold = ground_truth.strip()
    if len(gold) == 1 and gold.upper() in LETTERS:
        return Choice(gold.upper())
    letter = read_choice(gold)
    option = re.match(r"^\W*[A-J]\W+(.+)$", gold.splitlines()[-1]) if gold else None
    return Choice(letter, option.group(1).strip() if option else None)


def score_mcq(response: str, ground_truth: str) -> Verdict:
    """Grade a multiple-choice response against a gold letter (or a gold option)."""
    prepared = prepare_response(response)
    if prepared.text is None:
        return Verdict(False, None, prepared.problem)
    gold = read_gold_choice(ground_truth)
    if gold.letter is None:
        return Verdict(False, None, "no option letter in ground truth")
    letter = read_choice(prepared.text[-4000:])
    if letter is None:
        if gold.option_text and normalize_text_answer(final_line(prepared.text)).endswith(
            normalize_text_answer(gold.option_text)
        ):
            return Verdict(True, gold.option_text)
        return Verdict(False, None, "no answer found")
    ok = letter == gold.letter
    return Verdict(ok, letter, None if ok else f"chose {letter}, expected {gold.letter}")

"""Finding the model's final answer in free text: the parts every kind shares.

All functions are pure string functions; none of them evaluates anything. Work is bounded: responses are cut to
their last `MAX_RESPONSE_CHARS` characters (final answers come last) and at most `MAX_BOXES` boxes are scanned.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

MAX_RESPONSE_CHARS: Final = 12_000
MAX_BOXES: Final = 32
MAX_ANSWER_CHARS: Final = 1_000

# Characters models and tokenizers emit that mean the same as plain ASCII for grading purposes.
_UNICODE_FOLD: Final = str.maketrans(
    {
        "\u2212": "-",  # minus sign
        "\u00a0": " ",  # no-break space
        "\u2009": " ",  # thin space
        "\u202f": " ",  # narrow no-break space
        "\u3000": " ",  # ideographic space
        "\uff0c": ", ",  # fullwidth comma
        "\uff1a": ": ",  # fullwidth colon
        "\u3002": ". ",  # ideographic full stop
        "\uff08": "(",
        "\uff09": ")",
        **{chr(0xFF10 + d): str(d) for d in range(10)},  # fullwidth digits
    }
)

# A new chat turn after the answer (a model that kept generating) is not part of the response.
_NEW_TURN: Final = re.compile(r"<\|im_start\|>\s*(?:user|system)|<\|start_header_id\|>\s*user|<\|user\|>")
# GLM-style answer boxes become \boxed so that one code path handles both.
_BOX_TOKENS: Final = re.compile(r"<\|begin_of_box\|>(.*?)<\|end_of_box\|>", re.DOTALL)
# Chat-template control tokens, also their truncated forms ("im_end|>", "|eot_id|>").
_CONTROL_TOKEN: Final = re.compile(
    r"<?\|?\b(?:im_start|im_end|eot_id|end_of_text|endoftext|eos|end|assistant|start_header_id|end_header_id)\|>"
    r"|<\|[A-Za-z_]{1,30}\|?>?"
)


@dataclass(frozen=True)
class PreparedResponse:
    """The part of a response we grade, or why there is none."""

    text: str | None
    problem: str | None = None


def fold_unicode(text: str) -> str:
    """Map look-alike characters (unicode minus, fullwidth digits, odd spaces) to ASCII."""
    return text.translate(_UNICODE_FOLD)


def prepare_response(response: str) -> PreparedResponse:
    """Cut a raw model response down to the part that carries its final answer.

    Policy (docs/grading-policy.md): only text after the last ``</think>`` counts; an opened but never closed
    ``<think>`` is an unfinished response and gets no answer; chat control tokens and a hallucinated next turn are
    dropped; only the last `MAX_RESPONSE_CHARS` characters are kept.
    """
    text = response.replace("\r\n", "\n")
    if "</think>" in text:
        text = text.rsplit("</think>", 1)[1]
    elif "<think>" in text:
        return PreparedResponse(None, "unterminated <think> block")
    text = text[-4 * MAX_RESPONSE_CHARS :]
    turn = _NEW_TURN.search(text)
    if turn is not None and text[: turn.start()].strip():
        text = text[: turn.start()]
    text = _BOX_TOKENS.sub(lambda m: "\\boxed{" + m.group(1) + "}", text)
    text = _CONTROL_TOKEN.sub(" ", text)
    text = fold_unicode(text)[-MAX_RESPONSE_CHARS:]
    if not text.strip():
        return PreparedResponse(None, "empty response")
    return PreparedResponse(text)


# ---------------------------------------------------------------------------------------------------------------------
# \boxed{...} and \fbox{...}

_BOX_COMMAND: Final = re.compile(r"\\(?:boxed|fbox)\s*")
_BOX_SEPARATOR: Final = re.compile(r"\b(?:and|or)\b|[,;]")


@dataclass(frozen=True)
class Box:
    start: int  # index of the backslash
    end: int  # index one past the closing brace
    content: str


def _closing_brace(text: str, open_index: int) -> int | None:
    """Index of the brace closing the one at `open_index`, honouring nesting and escaped braces."""
    depth = 0
    i = open_index
    while i < len(text):
        ch = text[i]
        if ch == "\\":
            i += 2
            continue
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    return None


def find_boxes(text: str, max_boxes: int = MAX_BOXES) -> list[Box]:
    """The last `max_boxes` ``\\boxed{..}``/``\\fbox{..}`` in `text`, in reading order.

    An unclosed last box runs to the end of the text (a truncated response); ``\\boxed 5`` (no braces) takes the
    next token.
    """
    starts = [m for m in _BOX_COMMAND.finditer(text)][-max_boxes:]
    boxes: list[Box] = []
    for m in starts:
        after = m.end()
        if after < len(text) and text[after] == "{":
            close = _closing_brace(text, after)
            if close is None:
                if m is starts[-1]:
                    boxes.append(Box(m.start(), len(text), text[after + 1 :][:MAX_ANSWER_CHARS].strip()))
                continue
            boxes.append(Box(m.start(), close + 1, text[after + 1 : close].strip()))
        elif m.group(0).endswith(" "):
            token = re.match(r"[^\s$]+", text[after:])
            if token is not None:
                boxes.append(Box(m.start(), after + token.end(), token.group(0)))
    # Boxes nested inside an earlier box (\boxed{\boxed{1}}) are inner parts of it, not answers of their own.
    return [b for b in boxes if not any(o.start < b.start and b.end <= o.end for o in boxes)]


def _joins_boxes(between: str, left: str, right: str) -> bool:
    """Whether two boxes separated by `between` are parts of one answer.

    Math-Verify's rule, made stricter for short gaps: a short run of punctuation and spacing (``, ``, ``\\quad``,
    ``$ $``) or a short text with a separator ("and", "or", a comma or semicolon) joins boxes; "then" does not.
    """
    if len(between) < 20 and not re.search(r"[A-Za-z0-9]", re.sub(r"\\q?quad|\\[,;:! ]", "", between)):
        return True
    return left != right and len(between) < 70 and _BOX_SEPARATOR.search(between) is not None


def last_boxed_answer(text: str) -> str | None:
    """The content of the last box, joined with the boxes right before it when they list parts of one answer.

    ``\\boxed{1}, \\boxed{2}`` and ``\\boxed{(2,2)} \\quad\\text{and}\\quad \\boxed{(6,2)}`` are one answer of
    several parts; boxes far apart or separated by prose are not.
    """
    boxes = find_boxes(text)
    if not boxes:
        return None
    parts = [boxes[-1].content]
    for left, right in zip(reversed(boxes[:-1]), reversed(boxes[1:]), strict=True):
        if not _joins_boxes(text[left.end : right.start], left.content, right.content):
            break
        if left.content != right.content:
            parts.append(left.content)
    return ", ".join(reversed(parts))[:MAX_ANSWER_CHARS]


# ---------------------------------------------------------------------------------------------------------------------
# "The answer is ...", "Answer: ...", final lines

_ANCHOR: Final = re.compile(
    r"answer\s+is\s*:?|answer\s*[:=]|answer\s*\*\*\s*:?|^\s*(?:\*\*)?A\s*:"
    r"|r[ée]ponse\s*(?:est|:)|respuesta\s*(?:es|:)|antwort\s*(?:ist|:)|resposta\s*(?:é|:)"
    r"|答案\s*(?:是|为|:)?|정답\s*(?:은|는)?\s*:?|ответ\s*:|उत्तर\s*:",
    re.IGNORECASE | re.MULTILINE,
)
MATH_ENV: Final = re.compile(r"\$\$(.+?)\$\$|\\\[(.+?)\\\]|\\\((.+?)\\\)|\$(.+?)\$", re.DOTALL)
_COPULA: Final = re.compile(r"\s(?:is|are|equals|was)\s*:?\s")
_SENTENCE_END: Final = re.compile(r"(?<![\d\\])\.(?=\s|$)|\.\s+(?=[A-Z])|\s+I hope\b")


def _last_match(pattern: re.Pattern[str], text: str) -> re.Match[str] | None:
    last = None
    for last in pattern.finditer(text):  # noqa: B007 - we want the final match
        pass
    return last


def math_envs(text: str) -> list[str]:
    """Contents of ``$..$``, ``$$..$$``, ``\\(..\\)`` and ``\\[..\\]`` in `text`, in order."""
    return [next(g for g in m.groups() if g is not None).strip() for m in MATH_ENV.finditer(text)]


def anchored_segment(text: str) -> str | None:
    """The text following the last "answer is"/"Answer:" (or a translation), up to the end of its sentence."""
    anchor = _last_match(_ANCHOR, text)
    if anchor is None:
        return None
    rest = text[anchor.end() : anchor.end() + MAX_ANSWER_CHARS].lstrip(" \t*:\n")
    env = MATH_ENV.match(rest)
    if env is not None:
        return env.group(0)
    line = rest.split("\n", 1)[0]
    end = _SENTENCE_END.search(line)
    segment = line[: end.start()] if end is not None else line
    # "Final Answer: The volume of $ABCD$ is 120" — the answer is what the sentence says the thing "is".
    copula = _last_match(_COPULA, segment)
    if copula is not None and segment[copula.end() :].strip():
        segment = segment[copula.end() :]
    return segment.strip() or None


def final_line(text: str) -> str:
    """The last non-empty line of `text`."""
    for line in reversed(text.strip().splitlines()):
        if line.strip():
            return line.strip()
    return ""


def clean_answer(answer: str) -> str:
    """Strip the decoration around an answer: markdown bold, quotes, brackets of a single item, end punctuation."""
    out = answer.strip()
    for _ in range(3):
        before = out
        out = out.strip().strip("*").strip()
        out = out.rstrip(".,;:!?。").strip()
        for left, right in (('"', '"'), ("'", "'"), ("`", "`"), ("“", "”"), ("[", "]")):
            inner = out[1:-1]
            enclosed = len(out) >= 2 and out.startswith(left) and out.endswith(right) and left not in inner
            # "[yes]" is a bracketed word; "[0, 1]" is an interval and keeps its brackets.
            if enclosed and (left != "[" or "," not in inner):
                out = inner.strip()
        if out == before:
            break
    return out

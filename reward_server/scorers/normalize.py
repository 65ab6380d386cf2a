"""String normalisation for answers sympy cannot settle: LaTeX spelling variants and word answers.

Used only as a fallback after Math-Verify; it can say "same" for ``\\dfrac12`` vs ``\\frac{1}{2}`` or ``can't``
vs ``cant``, never evaluate anything.
"""

from __future__ import annotations

import re
from typing import Final

_TEXT_MACRO: Final = re.compile(
    r"\\(?:text|textbf|textit|textrm|textnormal|mathrm|mathbf|mbox|operatorname)\s*\{([^{}]*)\}"
)
_SPACING: Final = re.compile(r"\\[,!;: ]|\\q?quad\b|~|\\left\b|\\right\b|\\displaystyle\b|\s+")
_FRAC_SHORT: Final = re.compile(r"\\frac(\d)(\d)")
_FRAC_HALF_SHORT: Final = re.compile(r"\\frac\{([^{}]*)\}(\d)|\\frac(\d)\{([^{}]*)\}")
_SQRT_SHORT: Final = re.compile(r"\\sqrt(\d)")
_DEGREES: Final = re.compile(r"\^\s*\{?\\circ\}?|°")
_LEADING_VARIABLE: Final = re.compile(r"^[A-Za-z](?:_\{?\w+\}?)?=(?!=)")


def strip_text_macros(text: str) -> str:
    """``\\text{Evelyn}`` → ``Evelyn``; dollar signs dropped."""
    out = text
    for _ in range(3):
        out = _TEXT_MACRO.sub(r"\1", out)
    return out.replace("$", "").strip()


def normalize_tex(answer: str) -> str:
    """A canonical spelling of a LaTeX answer for exact string comparison (Hendrycks-MATH style)."""
    out = answer.strip()
    out = re.sub(r"\\\\(?=[A-Za-z])", r"\\", out)  # "\\frac" written with a doubled backslash
    out = re.sub(r"\\[dtc]frac", r"\\frac", out)
    out = out.replace("\\$", "").replace("$", "").replace("\\%", "").replace("%", "")
    out = _DEGREES.sub("", out)
    out = re.sub(r"\\text\s*\{\s*(?:and|or)\s*\}|\band\b|\bor\b|;", ",", out)
    out = _TEXT_MACRO.sub(r"\1", out)
    out = _SPACING.sub("", out)
    out = _FRAC_SHORT.sub(r"\\frac{\1}{\2}", out)
    out = _FRAC_HALF_SHORT.sub(
        lambda m: (
            f"\\frac{{{m.group(1)}}}{{{m.group(2)}}}"
            if m.group(1) is not None
            else f"\\frac{{{m.group(3)}}}{{{m.group(4)}}}"
        ),
        out,
    )
    out = _SQRT_SHORT.sub(r"\\sqrt{\1}", out)
    out = re.sub(r",+", ",", out).strip(",.")
    out = _LEADING_VARIABLE.sub("", out)
    if out.startswith("0.") is False and re.match(r"^\.\d", out):
        out = "0" + out
    return out


def normalize_text_answer(text: str) -> str:
    """Lowercase letters and digits only: ``"Can't"`` → ``cant``, ``"[yes]"`` → ``yes``."""
    return re.sub(r"[\W_]+", "", text.lower())

"""Benchmark name (`data_source`) → scorer kind.

Names are matched after folding: lowercased, an ``org/`` prefix dropped and every character other than a letter or
digit removed, so ``openai/gsm8k``, ``HuggingFaceH4/MATH-500``, ``aime-25`` and ``Minerva Math`` all resolve.
"""

from __future__ import annotations

import re
from typing import Final, Literal

Kind = Literal["math", "gsm8k", "mcq"]
KINDS: Final[tuple[Kind, ...]] = ("math", "gsm8k", "mcq")

_MATH: Final = (
    "math",
    "math500",
    "math_500",
    "hendrycks_math",
    "competition_math",
    "aime",
    "aime24",
    "aime_2024",
    "aime25",
    "aime_2025",
    "hmmt",
    "hmmt25",
    "hmmt_feb_2025",
    "minerva",
    "minerva_math",
    "amc",
    "amc23",
    "olympiadbench",
    "deepscaler",
    "dapo_math",
    "dapo_math_17k",
    "numina_math",
    "omni_math",
    "arith_chains",  # the tiny world's synthetic task (trainer/world/tasks.py)
)
_GSM8K: Final = ("gsm8k", "gsm_8k", "grade_school_math")
_MCQ: Final = (
    "mcq",
    "gpqa",
    "gpqa_diamond",
    "mmlu",
    "mmlu_pro",
    "mmlu_redux",
    "winogrande",
    "musr",
    "arc",
    "arc_challenge",
    "arc_easy",
    "hellaswag",
    "commonsenseqa",
    "truthfulqa",
    "agieval",
    "supergpqa",
)

KNOWN_DATA_SOURCES: Final[dict[str, Kind]] = {
    **{name: "math" for name in _MATH},
    **{name: "gsm8k" for name in _GSM8K},
    **{name: "mcq" for name in _MCQ},
}


def normalize_source_name(name: str) -> str:
    """Fold case, an ``org/`` prefix and separators: ``openai/GSM8K``, ``gsm_8k`` and ``gsm-8k`` all give ``gsm8k``."""
    folded = name.strip().lower()
    if "/" in folded:
        folded = folded.rsplit("/", 1)[1]
    return re.sub(r"[^a-z0-9]", "", folded)


_FOLDED: Final[dict[str, Kind]] = {normalize_source_name(name): kind for name, kind in KNOWN_DATA_SOURCES.items()}


def lookup_data_source(data_source: str) -> Kind | None:
    """Kind for a benchmark name, or None when the name is not known."""
    return _FOLDED.get(normalize_source_name(data_source))

"""Answer-grading scorers for the verifiable reward server.

`score(kind, response, ground_truth)` is the one entry point: pure, synchronous, module-level (picklable by
reference for process pools) and total — any string in gives a `ScoreOutcome` back. Client text is only ever
parsed, never evaluated as code. The contested cases and the rules we chose are in docs/grading-policy.md.
"""

from __future__ import annotations

from dataclasses import dataclass

from reward_server.scorers.sources import KINDS, KNOWN_DATA_SOURCES, Kind, lookup_data_source

__all__ = [
    "KINDS",
    "KNOWN_DATA_SOURCES",
    "Kind",
    "ScoreOutcome",
    "UnknownKindError",
    "resolve_kind",
    "score",
]


@dataclass(frozen=True)
class ScoreOutcome:
    """The verdict on one response."""

    reward: float
    """1.0 correct, 0.0 incorrect."""
    extracted: str | None
    """What we took as the model's final answer (None if none was found)."""
    detail: str | None
    """Short reason when reward is 0 (e.g. "no answer found"), else None."""


class UnknownKindError(ValueError):
    """Neither `kind` nor `data_source` names a scorer we have."""


def resolve_kind(kind: str | None, data_source: str | None) -> Kind:
    """The scorer kind for a request: `kind` wins when given, else `data_source` is looked up."""
    if kind is not None and kind.strip():
        folded = kind.strip().lower()
        for known in KINDS:
            if folded == known:
                return known
        raise UnknownKindError(f"unknown kind {kind!r}; accepted kinds: {', '.join(KINDS)}")
    if data_source is not None and data_source.strip():
        found = lookup_data_source(data_source)
        if found is not None:
            return found
        raise UnknownKindError(
            f"unknown data_source {data_source!r}; pass kind (one of {', '.join(KINDS)}) "
            f"or a known data_source: {', '.join(sorted(KNOWN_DATA_SOURCES))}"
        )
    raise UnknownKindError(f"neither kind nor data_source given; accepted kinds: {', '.join(KINDS)}")


def score(kind: Kind, response: str, ground_truth: str) -> ScoreOutcome:
    """Grade `response` against `ground_truth` with the scorer for `kind`."""
    # Imported here so importing the package (e.g. in the service's main process) stays cheap.
    from reward_server.scorers.gsm8k import score_gsm8k
    from reward_server.scorers.math import score_math
    from reward_server.scorers.mcq import score_mcq

    if kind == "math":
        verdict = score_math(response, ground_truth)
    elif kind == "gsm8k":
        verdict = score_gsm8k(response, ground_truth)
    elif kind == "mcq":
        verdict = score_mcq(response, ground_truth)
    else:
        raise UnknownKindError(f"unknown kind {kind!r}; accepted kinds: {', '.join(KINDS)}")
    return ScoreOutcome(reward=1.0 if verdict.correct else 0.0, extracted=verdict.extracted, detail=verdict.detail)

"""The result each kind's scorer returns; `score` turns it into the public `ScoreOutcome`."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Verdict:
    correct: bool
    extracted: str | None
    detail: str | None = None

"""Accuracy of the tiny policy on world problems, graded in process by the reward server's own `math` scorer.

`rlvr prepare` grades thousands of its own generations while it trains; it calls `reward_server.scorers.score`
directly (the code the server runs in its workers) rather than a server, so there is one grader and no copy of it.
`rlvr eval` grades through the server itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from reward_server.scorers import resolve_kind, score
from trainer.generation import SamplingSettings, generate
from trainer.world.tasks import DATA_SOURCE, Problem

WORLD_KIND = resolve_kind(None, DATA_SOURCE)


def grade(response: str, label: str) -> float:
    return score(WORLD_KIND, response, label).reward


@dataclass(frozen=True)
class SplitAccuracy:
    """Mean reward over all samples, per level, mean response length in tokens, and the share cut by the limit."""

    accuracy: float
    by_level: dict[int, float]
    mean_response_tokens: float
    truncated_share: float
    samples: int

    def as_json(self) -> dict[str, object]:
        return {
            "accuracy": round(self.accuracy, 4),
            "by_level": {str(level): round(acc, 4) for level, acc in sorted(self.by_level.items())},
            "mean_response_tokens": round(self.mean_response_tokens, 1),
            "truncated_share": round(self.truncated_share, 4),
            "samples": self.samples,
        }


def split_accuracy(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    problems: Sequence[Problem],
    settings: SamplingSettings,
) -> SplitAccuracy:
    """Sample `settings.n` answers per problem and grade every one."""
    completions = generate(model, tokenizer, [p.prompt for p in problems], settings)
    rewards: dict[int, list[float]] = {}
    lengths, truncated, total = 0, 0, 0
    for problem, answers in zip(problems, completions, strict=True):
        for answer in answers:
            rewards.setdefault(problem.level, []).append(grade(answer.text, str(problem.answer)))
            lengths += len(answer.token_ids)
            truncated += answer.finish_reason == "length"
            total += 1
    flat = [r for level in rewards.values() for r in level]
    return SplitAccuracy(
        accuracy=sum(flat) / len(flat),
        by_level={level: sum(v) / len(v) for level, v in rewards.items()},
        mean_response_tokens=lengths / total,
        truncated_share=truncated / total,
        samples=total,
    )


def greedy_accuracy(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, problems: Sequence[Problem], *, max_new_tokens: int
) -> float:
    settings = SamplingSettings(n=1, temperature=0.0, max_new_tokens=max_new_tokens)
    return split_accuracy(model, tokenizer, problems, settings).accuracy

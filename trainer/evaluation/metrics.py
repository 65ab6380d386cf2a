"""Evaluation metrics over graded samples: avg@k, pass@k, reward-status shares, response lengths, per-level scores.

pass@k is the unbiased estimator of Chen et al. 2021 ("Evaluating Large Language Models Trained on Code", §2.1):
with n samples of which c are correct, pass@k = 1 - C(n-c, k) / C(n, k), averaged over prompts. It is computed in
the paper's product form, 1 - prod_{i=n-c+1}^{n} (1 - k/i), which never forms the huge binomials. A sample counts
as correct only when the reward server graded it (`status == "ok"`) with reward 1.0; avg@k is the mean reward over
all samples, so timeouts, errors and invalid items count as 0 in both. Pure Python: no torch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import get_args

from services.core.wire import RewardStatus

REWARD_STATUSES: tuple[RewardStatus, ...] = get_args(RewardStatus)


@dataclass(frozen=True)
class SampleOutcome:
    """One graded sample: the server's reward and status, its length in tokens, whether the token limit cut it."""

    reward: float
    status: RewardStatus
    response_tokens: int
    truncated: bool

    @property
    def correct(self) -> bool:
        return self.status == "ok" and self.reward == 1.0


@dataclass(frozen=True)
class PromptOutcome:
    """All samples of one prompt, and the prompt's difficulty level when the data gives one."""

    samples: tuple[SampleOutcome, ...]
    level: str | None = None

    @property
    def correct(self) -> int:
        return sum(sample.correct for sample in self.samples)


def pass_at_k(n: int, c: int, k: int) -> float:
    """Probability that at least one of `k` samples drawn without replacement from `n`, `c` of them correct, is
    correct: 1 - C(n-c, k) / C(n, k) in the numerically stable product form (Chen et al. 2021)."""
    if not 0 <= c <= n:
        raise ValueError(f"need 0 <= c <= n, got n={n}, c={c}")
    if not 1 <= k <= n:
        raise ValueError(f"need 1 <= k <= n, got n={n}, k={k}")
    if n - c < k:  # every k-subset holds a correct sample
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


def pass_k_ladder(k: int) -> list[int]:
    """The k values reported for `k` samples per prompt: 1, 2, 4, ... below `k`, then `k` itself."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    ladder = [2**e for e in range(k.bit_length()) if 2**e < k]
    return [*ladder, k]


@dataclass(frozen=True)
class LevelMetrics:
    """Scores of the prompts of one difficulty level."""

    prompts: int
    avg_at_k: float
    pass_at_k: float  # at the full k


@dataclass(frozen=True)
class EvalMetrics:
    """Everything the evaluation measures, over `prompts` prompts of `samples_per_prompt` samples each."""

    prompts: int
    samples_per_prompt: int
    avg_at_k: float
    pass_at_k: dict[int, float]
    greedy_accuracy: float | None  # avg@1 of greedy decoding; None when sampling
    status_shares: dict[RewardStatus, float]
    mean_response_tokens: float
    truncated_share: float
    by_level: dict[str, LevelMetrics]  # empty when no prompt has a level

    @property
    def samples(self) -> int:
        return self.prompts * self.samples_per_prompt

    def as_json(self) -> dict[str, object]:
        return {
            "prompts": self.prompts,
            "samples": self.samples,
            "avg_at_k": self.avg_at_k,
            "pass_at_k": {str(k): value for k, value in self.pass_at_k.items()},
            "greedy_accuracy": self.greedy_accuracy,
            "reward_status": dict(self.status_shares),
            "mean_response_tokens": self.mean_response_tokens,
            "truncated_share": self.truncated_share,
            "by_level": {
                level: {"prompts": m.prompts, "avg_at_k": m.avg_at_k, "pass_at_k": m.pass_at_k}
                for level, m in self.by_level.items()
            },
        }


def summarize(outcomes: Sequence[PromptOutcome], *, greedy: bool) -> EvalMetrics:
    """Aggregate graded prompts, each with the same number k of samples. `greedy` (k = 1 at temperature 0) also
    reports avg@1 as the greedy accuracy. Prompts without a level are left out of `by_level`."""
    k = _samples_per_prompt(outcomes)
    if greedy and k != 1:
        raise ValueError(f"greedy decoding gives one sample per prompt, got {k}")
    samples = [sample for outcome in outcomes for sample in outcome.samples]
    avg = _mean([sample.reward for sample in samples])
    return EvalMetrics(
        prompts=len(outcomes),
        samples_per_prompt=k,
        avg_at_k=avg,
        pass_at_k={j: _mean_pass_at(outcomes, j) for j in pass_k_ladder(k)},
        greedy_accuracy=avg if greedy else None,
        status_shares={status: _mean([s.status == status for s in samples]) for status in REWARD_STATUSES},
        mean_response_tokens=_mean([sample.response_tokens for sample in samples]),
        truncated_share=_mean([sample.truncated for sample in samples]),
        by_level=_by_level(outcomes, k),
    )


def _samples_per_prompt(outcomes: Sequence[PromptOutcome]) -> int:
    if not outcomes:
        raise ValueError("no prompts to summarize")
    counts = {len(outcome.samples) for outcome in outcomes}
    if len(counts) != 1 or 0 in counts:
        raise ValueError(f"every prompt needs the same number (>= 1) of samples, got {sorted(counts)}")
    return counts.pop()


def _mean_pass_at(outcomes: Sequence[PromptOutcome], k: int) -> float:
    return _mean([pass_at_k(len(outcome.samples), outcome.correct, k) for outcome in outcomes])


def _by_level(outcomes: Sequence[PromptOutcome], k: int) -> dict[str, LevelMetrics]:
    groups: dict[str, list[PromptOutcome]] = {}
    for outcome in outcomes:
        if outcome.level is not None:
            groups.setdefault(outcome.level, []).append(outcome)
    return {
        level: LevelMetrics(
            prompts=len(group),
            avg_at_k=_mean([sample.reward for outcome in group for sample in outcome.samples]),
            pass_at_k=_mean_pass_at(group, k),
        )
        for level, group in sorted(groups.items(), key=lambda item: _level_order(item[0]))
    }


def _level_order(level: str) -> tuple[int, int, str]:
    """Numeric levels in numeric order ("2" before "10"), then the others alphabetically."""
    return (0, int(level), "") if level.isdigit() else (1, 0, level)


def _mean(values: Sequence[float]) -> float:
    return math.fsum(values) / len(values)

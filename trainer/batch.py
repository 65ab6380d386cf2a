"""From scored groups (the `rollouts` stream) to the padded tensors the trainer's math works on."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from services.core.wire import ScoredGroup


@dataclass(frozen=True)
class RolloutBatch:
    """N = total samples of the groups, T = longest response. Responses are right-padded."""

    group_ids: list[str]  # (N,) the prompt group of each sample
    rewards: Tensor  # (N,) float64
    response_ids: Tensor  # (N, T) int64, 0 on padding
    response_mask: Tensor  # (N, T) bool
    old_logprobs: Tensor | None  # (N, T) float64, 0 on padding; None when the engine returned none


def collate_groups(groups: list[ScoredGroup]) -> RolloutBatch:
    """Stack the samples of `groups` in order; a mix of groups with and without logprobs is an error."""
    if not groups:
        raise ValueError("collate_groups needs at least one scored group")
    with_logprobs = {g.logprobs is not None for g in groups}
    if len(with_logprobs) != 1:
        raise ValueError("some scored groups carry engine logprobs and some do not: they cannot share a batch")
    responses = [ids for g in groups for ids in g.response_token_ids]
    width = max(1, max(len(ids) for ids in responses))
    n = len(responses)
    response_ids = torch.zeros(n, width, dtype=torch.int64)
    response_mask = torch.zeros(n, width, dtype=torch.bool)
    old_logprobs = torch.zeros(n, width, dtype=torch.float64) if with_logprobs == {True} else None
    row = 0
    for group in groups:
        for i, ids in enumerate(group.response_token_ids):
            response_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.int64)
            response_mask[row, : len(ids)] = True
            if old_logprobs is not None and group.logprobs is not None:
                old_logprobs[row, : len(ids)] = torch.tensor(group.logprobs[i], dtype=torch.float64)
            row += 1
    return RolloutBatch(
        group_ids=[g.group_id for g in groups for _ in g.response_token_ids],
        rewards=torch.tensor([r for g in groups for r in g.rewards], dtype=torch.float64),
        response_ids=response_ids,
        response_mask=response_mask,
        old_logprobs=old_logprobs,
    )

"""Collation of scored groups into padded tensors."""

from __future__ import annotations

import pytest
import torch

from services.core.schedule import Phase
from services.core.wire import ScoredGroup
from trainer.batch import collate_groups

PHASE = Phase(step=1, progress=0.0, ratio=0.5, stage="anneal")


def _group(gid: str, responses: list[list[int]], rewards: list[float], logprobs: bool = False) -> ScoredGroup:
    return ScoredGroup(
        group_id=gid, step=1, data_source="gsm8k", prompt_token_ids=[1, 2], response_token_ids=responses,
        logprobs=[[-0.5] * len(r) for r in responses] if logprobs else None, rewards=rewards,
        reward_status=["ok"] * len(responses), policy_version=0, phase=PHASE,
    )  # fmt: skip


def test_collate_pads_right_and_keeps_order() -> None:
    batch = collate_groups([_group("a", [[5, 6, 7], [8]], [1.0, 0.0]), _group("b", [[], [9, 9]], [0.0, 1.0])])
    assert batch.group_ids == ["a", "a", "b", "b"]
    assert batch.rewards.tolist() == [1.0, 0.0, 0.0, 1.0]
    assert batch.response_ids.tolist() == [[5, 6, 7], [8, 0, 0], [0, 0, 0], [9, 9, 0]]
    assert batch.response_mask.int().tolist() == [[1, 1, 1], [1, 0, 0], [0, 0, 0], [1, 1, 0]]
    assert batch.old_logprobs is None


def test_collate_carries_logprobs_and_refuses_a_mix() -> None:
    batch = collate_groups([_group("a", [[5, 6], [7]], [1.0, 0.0], logprobs=True)])
    assert batch.old_logprobs is not None
    assert torch.equal(batch.old_logprobs, torch.tensor([[-0.5, -0.5], [-0.5, 0.0]], dtype=torch.float64))
    with pytest.raises(ValueError, match="cannot share a batch"):
        collate_groups([_group("a", [[1]], [1.0], logprobs=True), _group("b", [[1]], [1.0])])
    with pytest.raises(ValueError, match="at least one"):
        collate_groups([])

"""The SFT loop's contract on a micro model: the loss sees only the response (and its EOS), evaluations follow the
cadence, the kept weights are the selected checkpoint's, and a bad learning rate fails loudly."""

from __future__ import annotations

import random

import pytest
import torch

from services.core.config import WorldModelConfig, WorldSFTConfig
from trainer.world.policy import build_policy
from trainer.world.sft import WeightAverage, run_sft, sft_batch
from trainer.world.tasks import generate_problem
from trainer.world.tokenizer import train_tokenizer

PROBLEMS = [generate_problem(random.Random(i), 1) for i in range(24)]
TOKENIZER = train_tokenizer(p.prompt + p.solution for p in PROBLEMS)
MICRO = WorldModelConfig(hidden_size=32, num_layers=1, num_heads=1, intermediate_size=64)


def test_labels_cover_the_response_and_eos_only() -> None:
    ids, mask, labels = sft_batch(TOKENIZER, PROBLEMS[:3])
    for row, problem in enumerate(PROBLEMS[:3]):
        prompt = TOKENIZER.encode(problem.prompt, add_special_tokens=False)
        answer = TOKENIZER.encode(problem.solution, add_special_tokens=False)
        length = len(prompt) + len(answer) + 1
        assert mask[row].sum() == length and (labels[row, : len(prompt)] == -100).all()
        assert labels[row, len(prompt) : length].tolist() == [*answer, TOKENIZER.eos_token_id]
        assert (labels[row, length:] == -100).all()
        assert TOKENIZER.decode(ids[row, len(prompt) : length - 1].tolist()) == problem.solution


def test_the_labels_are_the_demonstrations_given() -> None:
    demonstrations = [p.demonstration([True] * len(p.operands)) for p in PROBLEMS[:3]]
    _, mask, labels = sft_batch(TOKENIZER, PROBLEMS[:3], demonstrations)
    for row, (problem, text) in enumerate(zip(PROBLEMS[:3], demonstrations, strict=True)):
        start, length = len(TOKENIZER.encode(problem.prompt, add_special_tokens=False)), int(mask[row].sum())
        assert TOKENIZER.decode(labels[row, start : length - 1].tolist()) == text
    with pytest.raises(ValueError, match="2 responses for 3 problems"):
        sft_batch(TOKENIZER, PROBLEMS[:3], demonstrations[:2])


def test_cadence_stop_and_kept_weights() -> None:
    config = WorldSFTConfig(
        batch_size=4, max_steps=7, eval_every=3, screen_size=2, target_accuracy=0.3, ema_decay=0.0
    )  # fmt: skip
    model = build_policy(MICRO, len(TOKENIZER), 0, seed=0)
    snapshots: list[dict[str, torch.Tensor]] = []

    def snapshot(point: object, elapsed: float) -> None:
        snapshots.append({k: v.clone() for k, v in model.state_dict().items()})

    result = run_sft(
        model, TOKENIZER, PROBLEMS, PROBLEMS[:4], config, seed=0, max_new_tokens=4, progress=snapshot
    )  # fmt: skip
    # a micro model solves nothing: the screens of steps 3 and 6 (2 problems) stay below a quarter of the target,
    # so the only evaluation on the whole validation split is the last step's
    assert [(p.step, p.problems) for p in result.screening] == [(3, 2), (6, 2)]
    assert [(p.step, p.problems) for p in result.curve] == [(7, 4)] and result.steps_run == 7
    assert not result.selection.in_band and result.kept.step == 7
    assert result.state.keys() == snapshots[-1].keys() and len(snapshots) == 3
    assert all(torch.equal(result.state[k], snapshots[-1][k]) for k in snapshots[-1])
    assert not all(torch.equal(snapshots[0][k], snapshots[-1][k]) for k in snapshots[0])


def test_a_non_finite_loss_is_an_error_naming_the_knob() -> None:
    model = build_policy(MICRO, len(TOKENIZER), 0, seed=0)
    with torch.no_grad():
        model.model.norm.weight[0] = float("nan")
    config = WorldSFTConfig(batch_size=4, max_steps=3)
    with pytest.raises(FloatingPointError, match="learning_rate"):
        run_sft(model, TOKENIZER, PROBLEMS, PROBLEMS[:4], config, seed=0, max_new_tokens=4)


def test_sft_needs_data() -> None:
    model = build_policy(MICRO, len(TOKENIZER), 0, seed=0)
    with pytest.raises(ValueError, match="needs training and validation"):
        run_sft(model, TOKENIZER, [], PROBLEMS[:4], WorldSFTConfig(), seed=0, max_new_tokens=4)


def test_the_weight_average_is_exponential_and_swaps_back() -> None:
    model = torch.nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(1.0)
    average = WeightAverage(model, decay=0.5)
    for value in (3.0, 5.0):
        with torch.no_grad():
            model.weight.fill_(value)
        average.update(model)
    assert torch.equal(average.shadow["weight"], torch.full((1, 2), 0.5 * (0.5 * 1 + 0.5 * 3) + 0.5 * 5))
    with average.swapped_in(model):
        assert torch.equal(model.weight, torch.full((1, 2), 3.5))
    assert torch.equal(model.weight, torch.full((1, 2), 5.0))
    with pytest.raises(ValueError, match="decay"):
        WeightAverage(model, 1.0)


def test_reaching_the_cool_down_point_restarts_from_the_average_and_stops_in_time() -> None:
    one = PROBLEMS[0]
    config = WorldSFTConfig(
        batch_size=4, max_steps=400, learning_rate=1e-2, warmup_steps=0, eval_every=10, screen_size=1,
        target_accuracy=0.3, cooldown_at=0.5, cooldown_steps=20, stop_after_above=1000, ema_decay=0.5,
    )  # fmt: skip
    model = build_policy(MICRO, len(TOKENIZER), 0, seed=0)
    result = run_sft(model, TOKENIZER, [one] * 8, [one], config, seed=0, max_new_tokens=200)
    # memorising one problem: the first full evaluation that solves it starts the cool-down, 20 steps later SFT ends
    assert result.cooled_at is not None, [p.accuracy for p in result.screening]
    first_solved = next(p.step for p in result.curve if p.accuracy >= 0.15)
    assert result.cooled_at == first_solved and result.steps_run == first_solved + 20

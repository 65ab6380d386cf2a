"""Supervised warm start of the tiny policy on demonstrations, checkpointed at every evaluation.

The demonstrations are the reference solutions, or with `slip_rate` > 0 a fallible demonstrator's: each operation
that crosses a tens boundary forgets its carry or borrow with that probability, drawn afresh every time a problem
is shown (trainer/world/tasks.py), so the warm start learns when a slip is possible and how often to make one.

Loss: mean token cross-entropy over the response tokens and the EOS that ends them (the prompt is context only).
AdamW with a linear warm-up to a constant rate, gradient norm clipped at 1. What is evaluated and kept is an
exponential moving average of the weights (`ema_decay`): at a constant rate the raw model's greedy accuracy swings by
20 points within 25 steps (measured), so a checkpoint of the raw weights could be a lucky spike.

Every `eval_every` steps the greedy accuracy is measured (graded by the reward server's own scorer, in process): on
the first `screen_size` validation problems while far from the target, on the whole validation split once a screen
reaches a quarter of the target and for as long as the whole split confirms it (SFT accuracy sits near 0 for hundreds
of steps, then jumps within ~50). Once an evaluation
reaches `cooldown_at` of the target, training goes on from the averaged weights at `cooldown_factor` of the rate for
at most `cooldown_steps`: the jump then crosses the band slowly, so a checkpoint where the curve has flattened near
the target exists (at full rate the averaged accuracy went 0.19 → 0.45 within 25 steps). Weights are kept in
memory when they could be chosen; SFT stops once `stop_after_above` evaluations in a row are above the band or
`max_steps` is reached. The kept checkpoint is chosen by trainer/world/checkpoint_selection.py.
"""

from __future__ import annotations

import contextlib
import random
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from services.core.config.world import WorldSFTConfig
from trainer.world.checkpoint_selection import CurvePoint, Selection, select_checkpoint
from trainer.world.grading import greedy_accuracy
from trainer.world.tasks import Problem

StateDict = dict[str, torch.Tensor]


@dataclass(frozen=True)
class SFTResult:
    curve: tuple[CurvePoint, ...]
    screening: tuple[CurvePoint, ...]
    selection: Selection
    state: StateDict
    steps_run: int
    cooled_at: int | None
    wall_s: float

    @property
    def kept(self) -> CurvePoint:
        return self.curve[self.selection.index]


def sft_batch(
    tokenizer: PreTrainedTokenizerBase, problems: Sequence[Problem], responses: Sequence[str] | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask, labels) right-padded; labels are -100 on the prompt and the padding.
    `responses`: the demonstrations to imitate (default: the reference solutions)."""
    eos = tokenizer.eos_token_id
    assert eos is not None
    texts = [p.solution for p in problems] if responses is None else list(responses)
    if len(texts) != len(problems):
        raise ValueError(f"{len(texts)} responses for {len(problems)} problems")
    pairs = [
        (tokenizer.encode(p.prompt, add_special_tokens=False), tokenizer.encode(text, add_special_tokens=False))
        for p, text in zip(problems, texts, strict=True)
    ]
    width = max(len(prompt) + len(answer) + 1 for prompt, answer in pairs)
    ids = torch.full((len(pairs), width), eos, dtype=torch.long)
    mask = torch.zeros((len(pairs), width), dtype=torch.long)
    labels = torch.full((len(pairs), width), -100, dtype=torch.long)
    for row, (prompt, answer) in enumerate(pairs):
        full = [*prompt, *answer, eos]
        ids[row, : len(full)] = torch.tensor(full)
        mask[row, : len(full)] = 1
        labels[row, len(prompt) : len(full)] = torch.tensor([*answer, eos])
    return ids, mask, labels


def run_sft(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    train: Sequence[Problem],
    validation: Sequence[Problem],
    config: WorldSFTConfig,
    *,
    seed: int,
    max_new_tokens: int,
    progress: Callable[[CurvePoint, float], None] | None = None,
) -> SFTResult:
    """Train, evaluate, keep candidate weights, select; `progress(point, elapsed_s)` after every evaluation."""
    if not train or not validation:
        raise ValueError("SFT needs training and validation problems")
    started = time.monotonic()
    torch.manual_seed(seed)
    order = list(range(len(train)))
    rng = random.Random(f"{seed}:sft-order")
    rng.shuffle(order)
    slips = random.Random(f"{seed}:sft-slips")
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, betas=(0.9, 0.95), weight_decay=0.0)
    average = WeightAverage(model, config.ema_decay)
    low, high = config.target_accuracy - config.tolerance, config.target_accuracy + config.tolerance
    curve: list[CurvePoint] = []  # evaluations on the whole validation split: the selection's candidates
    screening: list[CurvePoint] = []  # quick evaluations on a slice, until one nears the target
    kept: dict[int, StateDict] = {}
    above_in_a_row, cursor, step = 0, 0, 0
    cooled_at: int | None = None
    model.train()
    for step in range(1, config.max_steps + 1):
        if cursor + config.batch_size > len(order):
            rng.shuffle(order)
            cursor = 0
        batch = [train[i] for i in order[cursor : cursor + config.batch_size]]
        cursor += config.batch_size
        rate = config.learning_rate * min(1.0, step / max(config.warmup_steps, 1))
        for group in optimizer.param_groups:
            group["lr"] = rate if cooled_at is None else config.learning_rate * config.cooldown_factor
        demonstrations = [p.sampled_demonstration(slips, config.slip_rate) for p in batch]
        ids, mask, labels = sft_batch(tokenizer, batch, demonstrations)
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        if not torch.isfinite(loss):
            raise FloatingPointError(f"SFT loss is {loss.item()} at step {step}: lower world.sft.learning_rate")
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        average.update(model)
        if step % config.eval_every and step != config.max_steps:
            continue
        with average.swapped_in(model):
            near = bool(curve) and curve[-1].accuracy >= config.target_accuracy / 4
            if not near and step != config.max_steps and config.screen_size < len(validation):
                screen = validation[: config.screen_size]
                quick = greedy_accuracy(model, tokenizer, screen, max_new_tokens=max_new_tokens)
                screening.append(CurvePoint(step=step, accuracy=quick, loss=float(loss.item()), problems=len(screen)))
                if progress is not None:
                    progress(screening[-1], time.monotonic() - started)
                if quick < config.target_accuracy / 4:
                    continue
            accuracy = greedy_accuracy(model, tokenizer, validation, max_new_tokens=max_new_tokens)
            point = CurvePoint(step=step, accuracy=accuracy, loss=float(loss.item()), problems=len(validation))
            curve.append(point)
            if low <= accuracy <= high or not kept or _nearer(point, curve, kept, config.target_accuracy):
                kept[step] = {name: t.detach().clone() for name, t in model.state_dict().items()}
        if progress is not None:
            progress(point, time.monotonic() - started)
        if cooled_at is None and accuracy >= config.target_accuracy * config.cooldown_at:
            cooled_at = step  # go on from the averaged weights, slowly: the curve flattens through the band
            average.copy_to(model)
        above_in_a_row = above_in_a_row + 1 if accuracy > high else 0
        if above_in_a_row >= config.stop_after_above:
            break
        if cooled_at is not None and step - cooled_at >= config.cooldown_steps:
            break
    selection = select_checkpoint(curve, config.target_accuracy, config.tolerance)
    chosen = curve[selection.index].step
    return SFTResult(
        curve=tuple(curve),
        screening=tuple(screening),
        selection=selection,
        state=kept[chosen],
        steps_run=step,
        cooled_at=cooled_at,
        wall_s=time.monotonic() - started,
    )


class WeightAverage:
    """An exponential moving average of the floating-point weights (decay 0: a copy of the latest weights)."""

    def __init__(self, model: torch.nn.Module, decay: float) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.shadow = {name: t.detach().clone() for name, t in model.state_dict().items() if t.is_floating_point()}

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        for name, tensor in model.state_dict().items():
            if name in self.shadow:
                self.shadow[name].mul_(self.decay).add_(tensor.detach(), alpha=1.0 - self.decay)

    @torch.no_grad()
    def copy_to(self, model: torch.nn.Module) -> None:
        """Overwrite the model's weights with the average (training goes on from there)."""
        model.load_state_dict(self.shadow, strict=False)

    @contextlib.contextmanager
    def swapped_in(self, model: torch.nn.Module) -> Iterator[None]:
        """The model holds the averaged weights inside the block and its own weights again after it."""
        own = {name: t.detach().clone() for name, t in model.state_dict().items() if name in self.shadow}
        model.load_state_dict(self.shadow, strict=False)
        try:
            yield
        finally:
            model.load_state_dict(own, strict=False)


def _nearer(point: CurvePoint, curve: list[CurvePoint], kept: dict[int, StateDict], target: float) -> bool:
    """True when `point` is nearer the target than every kept checkpoint (the fallback when none lands in band)."""
    by_step = {p.step: p for p in curve}
    return all(abs(point.accuracy - target) < abs(by_step[s].accuracy - target) for s in kept)

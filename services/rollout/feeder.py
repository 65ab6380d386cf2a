"""Prompt feeding: each training step's prompt groups, from a JSONL prompt file (the tiny world's train split or a
user's data), in a reproducible order.

Step s takes rows (s-1)·count … s·count-1 of an endless sequence of epochs, each epoch a fresh shuffle of the file
seeded by (seed, epoch): every row is used once per epoch, and a resumed run feeds exactly the groups it would have.
A group's id is `s<step>-g<index in the step>-r<row>`, the pipeline's idempotency key (unique even when a step
is larger than the file). Rows are checked when the file is loaded; a bad
row is an error naming its line, never a silently skipped prompt.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from services.core.jsonl import read_jsonl_objects
from services.core.wire import PromptGroup


class PromptSource(Protocol):
    """What the driver feeds each step from."""

    def prompt_groups(self, step: int, count: int, n: int) -> list[PromptGroup]: ...


@dataclass(frozen=True)
class PromptRow:
    row: int  # 0-based line number among the file's rows
    prompt: str
    label: str
    data_source: str


def load_prompt_rows(
    path: str | Path, *, input_key: str = "prompt", label_key: str = "label", data_source_key: str = "data_source"
) -> list[PromptRow]:
    """Every row of a JSONL prompt file; a malformed row is a ValueError naming the file and line."""
    rows: list[PromptRow] = []
    for line_no, data in read_jsonl_objects(path, "prompt file", skip_blank=True):
        values = []
        for key in (input_key, label_key, data_source_key):
            value = data.get(key)
            if not isinstance(value, str) or not value.strip():
                raise ValueError(f"{path} line {line_no}: {key!r} must be a non-empty string, got {value!r}")
            values.append(value)
        rows.append(PromptRow(len(rows), *values))
    if not rows:
        raise ValueError(f"prompt file {path} holds no rows")
    return rows


class JsonlPrompts:
    """Prompt groups from JSONL rows, in seeded per-epoch shuffles (see the module docstring)."""

    def __init__(self, rows: list[PromptRow], seed: int) -> None:
        if not rows:
            raise ValueError("no prompt rows")
        self._rows, self._seed = rows, seed
        self._orders: dict[int, list[int]] = {}

    @classmethod
    def from_file(
        cls, path: str | Path, seed: int, *, input_key: str = "prompt", label_key: str = "label",
        data_source_key: str = "data_source",
    ) -> JsonlPrompts:  # fmt: skip
        return cls(
            load_prompt_rows(path, input_key=input_key, label_key=label_key, data_source_key=data_source_key), seed
        )

    def __len__(self) -> int:
        return len(self._rows)

    def prompt_groups(self, step: int, count: int, n: int) -> list[PromptGroup]:
        if step < 1 or count < 1 or n < 1:
            raise ValueError(f"step, count and n must be >= 1, got {step}, {count}, {n}")
        first = (step - 1) * count
        groups = []
        for index in range(count):
            position = first + index
            row = self._rows[self._epoch_order(position // len(self._rows))[position % len(self._rows)]]
            groups.append(
                PromptGroup(
                    group_id=f"s{step}-g{index}-r{row.row}",
                    step=step,
                    prompt=row.prompt,
                    label=row.label,
                    data_source=row.data_source,
                    n=n,
                )
            )
        return groups

    def _epoch_order(self, epoch: int) -> list[int]:
        if epoch not in self._orders:
            order = list(range(len(self._rows)))
            random.Random(f"{self._seed}:{epoch}").shuffle(order)
            self._orders = {epoch: order}  # steps move forward: one epoch's order is all that is needed at a time
        return self._orders[epoch]

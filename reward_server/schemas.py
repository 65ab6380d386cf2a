"""Wire models of the reward API.

Schema violations (a wrong type, a missing field, an unknown field) make the whole request a 422. The limits that
depend on deployment settings (batch size, string length, body size) are checked by the route and answer 413.
Problems of one well-formed item (unknown kind, empty ground truth, a scorer crash, a timeout) only mark that item.
"""

from __future__ import annotations

import math
from typing import Annotated

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainValidator,
    WithJsonSchema,
)

from services.core.wire import RewardStatus


def _require_valid_unicode(text: str) -> str:
    # json.loads accepts "\ud800" escapes; such a string cannot be encoded back into a UTF-8 response.
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(f"contains a lone surrogate at index {exc.start}; send valid Unicode") from None
    return text


def _number_as_text(value: object) -> object:
    # Data sets often store answers as JSON numbers (gsm8k: 42); they are graded as their text.
    if isinstance(value, int | float) and not isinstance(value, bool):
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError("must be a string or a finite number")
        return str(value)
    return value


def _check_item_id(value: object) -> str | int:
    # One plain validator instead of a str | int union, so a bad id gives one error that names the field.
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise ValueError("must be a string (at most 256 characters) or an integer")
    if isinstance(value, str):
        if len(value) > MAX_ID_CHARS:
            raise ValueError(f"is {len(value)} characters long; at most {MAX_ID_CHARS}")
        _require_valid_unicode(value)
    return value


MAX_ID_CHARS = 256
ItemId = Annotated[
    str | int,
    PlainValidator(_check_item_id),
    WithJsonSchema({"anyOf": [{"type": "string", "maxLength": MAX_ID_CHARS}, {"type": "integer"}]}),
]
Text = Annotated[str, AfterValidator(_require_valid_unicode)]
Answer = Annotated[
    Text,
    BeforeValidator(_number_as_text),
    WithJsonSchema({"anyOf": [{"type": "string"}, {"type": "number"}]}),
]

_TEXT_LIMIT_NOTE = "At most `max_text_chars` characters (settings; default 262144), else the request answers 413."


class ScoreItem(BaseModel):
    """One response to grade against its ground truth."""

    model_config = ConfigDict(extra="forbid")

    id: ItemId = Field(
        description="Caller's identifier, echoed back unchanged (string of at most 256 characters, or integer).",
        examples=["q17-s3"],
    )
    response: Text = Field(description=f"The model's output text. {_TEXT_LIMIT_NOTE}")
    ground_truth: Answer = Field(description=f"The reference answer (numbers are accepted as text). {_TEXT_LIMIT_NOTE}")
    kind: str | None = Field(
        default=None,
        max_length=64,
        description="Scorer: math | gsm8k | mcq. Takes precedence over data_source; unknown values mark the item "
        "`invalid`.",
        examples=["math"],
    )
    data_source: str | None = Field(
        default=None,
        max_length=256,
        description="Benchmark name (e.g. math500, openai/gsm8k, gpqa_diamond) mapped to a kind when kind is absent.",
        examples=["math500"],
    )
    prompt: Text | None = Field(
        default=None, description=f"The prompt, for the record; not used in scoring. {_TEXT_LIMIT_NOTE}"
    )


class ScoreRequest(BaseModel):
    """A batch of items; results come back in the same order."""

    model_config = ConfigDict(extra="forbid")

    items: list[ScoreItem] = Field(description="At most `max_items` items (settings; default 1024), else 413.")


class ScoreResult(BaseModel):
    """The verdict on one item."""

    id: ItemId = Field(description="The item's id.")
    reward: float = Field(description="1.0 correct, 0.0 otherwise (also 0.0 for timeout / error / invalid).")
    status: RewardStatus = Field(
        description="ok: graded; timeout: killed at the hard time limit; error: the scorer failed; "
        "invalid: the item cannot be graded (e.g. unknown kind, empty ground truth)."
    )
    detail: str | None = Field(default=None, description="Why the reward is 0 or the item was not graded.")
    extracted: str | None = Field(default=None, description="The final answer found in the response, if any.")


class ScoreResponse(BaseModel):
    results: list[ScoreResult] = Field(description="One result per request item, in request order.")


class OpenRLHFRewardRequest(BaseModel):
    """OpenRLHF's remote reward request (`--reward.remote_url`); unknown keys are ignored for compatibility."""

    model_config = ConfigDict(extra="ignore")

    query: list[Text] = Field(description="Prompt + response text of each sample, as decoded by OpenRLHF.")
    prompts: list[Text] | None = Field(
        default=None, description="The prompt of each sample; stripped from the front of its query when it matches."
    )
    labels: list[Answer] = Field(description="Ground-truth answer of each sample (OpenRLHF's `--label_key` column).")


class OpenRLHFRewardResponse(BaseModel):
    """What OpenRLHF reads: `rewards` (advantages), `scores` (dynamic filtering), `extra_logs` (logged per sample)."""

    rewards: list[float] = Field(description="Reward of each sample (0.0 for timeout / error / invalid).")
    scores: list[float] = Field(description="Same as rewards (already in [0, 1]).")
    extra_logs: dict[str, list[float]] = Field(
        description="Per-sample indicators: `reward_timeout` and `reward_failed` (error or invalid), 1.0 or 0.0."
    )


class ErrorResponse(BaseModel):
    """Body of every 4xx/5xx the service itself produces."""

    detail: str | list[dict[str, object]] = Field(description="What was wrong (validation errors are a list).")
    message: str | None = Field(default=None, description="Validation errors summarised in one line.")


class HealthResponse(BaseModel):
    status: str = Field(description="ok (healthz), ready or not_ready (readyz).")
    workers: int | None = Field(default=None, description="Scorer workers alive (readyz only).")
    reason: str | None = Field(default=None, description="Why the server is not ready (readyz 503 only).")

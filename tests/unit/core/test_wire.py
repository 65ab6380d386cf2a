"""Wire types: lossless round trips (JSON and the stream encoding), loud validation, poison detection."""

from __future__ import annotations

import json
import math
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from services.core.schedule import Phase
from services.core.wire import TOKEN_ID_LIMIT, PromptGroup, ScoredGroup, StepReport, WireModel
from services.core.wire_codec import PoisonMessageError, decode_entry, encode_entry

PHASE = Phase(step=3, progress=0.25, ratio=0.7425, stage="anneal")


def scored(**overrides: object) -> ScoredGroup:
    data: dict[str, object] = {
        "group_id": "g-1",
        "step": 3,
        "data_source": "gsm8k",
        "prompt_token_ids": [1, 2, 3],
        "response_token_ids": [[4, 5], [6], []],
        "logprobs": [[-0.5, -1.25], [-0.0], []],
        "rewards": [1.0, 0.0, -0.5],
        "reward_status": ["ok", "timeout", "invalid"],
        "policy_version": 7,
        "phase": PHASE,
        "timings": {"generate_s": 1.5, "score_s": 0.25},
    }
    data.update(overrides)
    return ScoredGroup.model_validate(data)


def float_bits(values: list[float]) -> bytes:
    return struct.pack(f"<{len(values)}d", *values)


def assert_lossless(message: WireModel) -> None:
    """Equal after JSON and after the stream encoding, and the re-encoding is byte-identical (catches -0.0 etc.)."""
    via_json = type(message).model_validate_json(message.model_dump_json())
    assert via_json == message
    assert via_json.model_dump_json() == message.model_dump_json()
    fields = encode_entry(message)
    decoded = decode_entry(fields, type(message))
    assert decoded == message
    assert encode_entry(decoded) == fields


MESSAGES = [
    PromptGroup(group_id="p-1", step=1, prompt="What is 2+2? ∑ 🙂", label="4", data_source="gsm8k", n=8),
    PromptGroup(
        group_id="p-2", step=2, prompt="", label="", data_source="math", n=1, prompt_token_ids=[0, TOKEN_ID_LIMIT - 1]
    ),
    PromptGroup(group_id="p-3", step=3, prompt="x", label="y", data_source="math", n=2, prompt_token_ids=[]),
    scored(),
    scored(logprobs=None),
    scored(response_token_ids=[[]], logprobs=[[]], rewards=[0.0], reward_status=["error"], timings={}),
    StepReport(run_id="run-1", step=1, policy_version=1, phase=PHASE, metrics={"train/loss": 0.5, "train/x": None}),
]


@pytest.mark.parametrize("message", MESSAGES, ids=lambda m: f"{type(m).__name__}")
def test_every_wire_type_round_trips_losslessly(message: WireModel) -> None:
    assert_lossless(message)


tokens = st.lists(st.integers(0, TOKEN_ID_LIMIT - 1), max_size=40)
finite = st.floats(allow_nan=False, allow_infinity=False)


@st.composite
def scored_groups(draw: st.DrawFn) -> ScoredGroup:
    responses = draw(st.lists(tokens, min_size=1, max_size=5))
    with_logprobs = draw(st.booleans())
    logprobs = [draw(st.lists(finite, min_size=len(r), max_size=len(r))) for r in responses] if with_logprobs else None
    return ScoredGroup(
        group_id=draw(st.text(st.characters(blacklist_categories=["Cs", "Zs", "Cc", "Zl", "Zp"]), min_size=1)),
        step=draw(st.integers(1, 10**6)),
        data_source=draw(st.text(min_size=1)),
        prompt_token_ids=draw(tokens),
        response_token_ids=responses,
        logprobs=logprobs,
        rewards=[draw(finite) for _ in responses],
        reward_status=[draw(st.sampled_from(["ok", "timeout", "error", "invalid"])) for _ in responses],
        policy_version=draw(st.integers(0, 2**62)),
        phase=Phase(step=draw(st.integers(1, 10**6)), progress=draw(finite), ratio=draw(finite), stage="general"),
        timings=draw(st.dictionaries(st.text(), st.floats(0, 1e9))),
        created_at=draw(finite),
    )


@settings(max_examples=150, deadline=None)
@given(scored_groups())
def test_scored_group_round_trip_property(message: ScoredGroup) -> None:
    assert_lossless(message)
    if message.logprobs is not None:  # bit-exact floats, not merely ==
        decoded = decode_entry(encode_entry(message), ScoredGroup)
        assert decoded.logprobs is not None
        for original, back in zip(message.logprobs, decoded.logprobs, strict=True):
            assert float_bits(original) == float_bits(back)


def test_negative_zero_and_extreme_floats_survive_bit_exactly() -> None:
    values = [-0.0, 5e-324, -1.7976931348623157e308, 0.1, -(2.0**-1074)]
    message = scored(response_token_ids=[[1] * 5], logprobs=[values], rewards=[-0.0], reward_status=["ok"])
    decoded = decode_entry(encode_entry(message), ScoredGroup)
    assert decoded.logprobs is not None
    assert float_bits(decoded.logprobs[0]) == float_bits(values)
    assert math.copysign(1.0, decoded.rewards[0]) == -1.0


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"rewards": [1.0, 0.0]}, r"needs 3 entries .*'rewards': 2"),
        ({"reward_status": ["ok"]}, r"'reward_status': 1"),
        ({"logprobs": [[-0.5, -1.0], [-0.1]]}, r"'logprobs': 2"),
        ({"logprobs": [[-0.5], [-0.1], []]}, r"sample 0: 1 logprobs for 2 tokens"),
        ({"response_token_ids": [], "logprobs": [], "rewards": [], "reward_status": []}, "no samples"),
        ({"rewards": [1.0, float("nan"), 0.0]}, "finite number"),
        ({"rewards": [1.0, float("inf"), 0.0]}, "finite number"),
        ({"logprobs": [[-0.5, float("-inf")], [-0.1], []]}, "finite number"),
        ({"response_token_ids": [[-1, 5], [6], []]}, "greater than or equal to 0"),
        ({"response_token_ids": [[TOKEN_ID_LIMIT, 5], [6], []]}, "less than 2147483648"),
        ({"reward_status": ["ok", "fine", "ok"]}, "'ok', 'timeout', 'error' or 'invalid'"),
        ({"timings": {"generate_s": -1.0}}, "greater than or equal to 0"),
        ({"group_id": "has space"}, "should match pattern"),
        ({"policy_version": -1}, "greater than or equal to 0"),
        ({"schema_version": 2}, "Input should be 1"),
        ({"surprise": 1}, "Extra inputs are not permitted"),
    ],
)
def test_scored_group_validation_errors_are_clear(overrides: dict[str, object], match: str) -> None:
    with pytest.raises(ValidationError, match=match):
        scored(**overrides)


def test_wire_types_are_frozen() -> None:
    message = scored()
    with pytest.raises(ValidationError, match="frozen"):
        message.policy_version = 8  # type: ignore[misc]


def test_prompt_group_needs_at_least_one_sample() -> None:
    with pytest.raises(ValidationError, match="greater than or equal to 1"):
        PromptGroup(group_id="p", step=1, prompt="q", label="a", data_source="math", n=0)


def test_message_ids() -> None:
    assert scored().message_id == "g-1"
    assert MESSAGES[0].message_id == "p-1"
    assert MESSAGES[-1].message_id == "run-1:1"
    with pytest.raises(NotImplementedError):
        _ = WireModel().message_id


def test_token_arrays_travel_packed_not_as_json() -> None:
    fields = encode_entry(scored())
    meta = json.loads(fields["meta"])
    assert "response_token_ids" not in meta and "logprobs" not in meta and "prompt_token_ids" not in meta
    assert fields["p:response_token_ids"] == struct.pack("<3i", 4, 5, 6)
    assert fields["l:response_token_ids"] == struct.pack("<3i", 2, 1, 0)
    assert fields["p:logprobs"] == struct.pack("<3d", -0.5, -1.25, -0.0)
    assert "p:logprobs" not in encode_entry(scored(logprobs=None))


def poison_cases() -> list[tuple[str, dict[str, bytes], str]]:
    good = encode_entry(scored())
    bad_version = good["meta"].replace(b'"policy_version":7', b'"policy_version":-7')
    inner_v2 = good["meta"].replace(b'"schema_version":1', b'"schema_version":2')
    return [
        ("no version", {k: v for k, v in good.items() if k != "v"}, "missing schema version"),
        ("version 2", {**good, "v": b"2"}, "unsupported schema_version=b'2'"),
        ("wrong type", {**good, "type": b"PromptGroup"}, "message type b'PromptGroup' on a stream of ScoredGroup"),
        ("garbage meta", {**good, "meta": b"\xff{not json"}, "undecodable 'meta' JSON"),
        ("meta not object", {**good, "meta": b"[1, 2]"}, "must be a JSON object"),
        ("truncated array", {**good, "p:logprobs": good["p:logprobs"][:-3]}, "not a multiple of 8"),
        ("bad lengths", {**good, "l:response_token_ids": struct.pack("<3i", 2, 2, 0)}, "row lengths sum to 4"),
        ("no lengths", {k: v for k, v in good.items() if k != "l:logprobs"}, "no 'l:logprobs' row lengths"),
        ("unknown packed", {**good, "p:rewards": b""}, "not packed fields of ScoredGroup"),
        ("id mismatch", {**good, "id": b"other"}, "!= message_id 'g-1'"),
        ("invalid model", {**good, "meta": bad_version}, "invalid ScoredGroup"),
        ("inner schema 2", {**good, "meta": inner_v2}, "invalid ScoredGroup"),
    ]  # fmt: skip


@pytest.mark.parametrize(("fields", "match"), [c[1:] for c in poison_cases()], ids=[c[0] for c in poison_cases()])
def test_poison_entries_raise_with_a_reason(fields: dict[str, bytes], match: str) -> None:
    with pytest.raises(PoisonMessageError, match=match) as info:
        decode_entry(fields, ScoredGroup)
    assert info.value.reason

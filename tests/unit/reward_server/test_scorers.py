"""Focused tests of the scorers: extraction, each kind's answer forms, dispatch, hostile input."""

from __future__ import annotations

import pickle
import threading
import time
from collections.abc import Callable
from fractions import Fraction
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reward_server.scorers import (
    KNOWN_DATA_SOURCES,
    ScoreOutcome,
    UnknownKindError,
    resolve_kind,
    score,
)
from reward_server.scorers import math as math_scorer
from reward_server.scorers.extract import anchored_segment, find_boxes, last_boxed_answer, prepare_response
from reward_server.scorers.guards import is_safe_for_sympy
from reward_server.scorers.numbers import find_numbers, parse_number


def correct(kind: str, response: str, gold: str) -> bool:
    return score(kind, response, gold).reward == 1.0  # type: ignore[arg-type]


# --- extraction --------------------------------------------------------------------------------------------------


def test_last_box_wins_and_nested_braces_balance() -> None:
    text = r"first \boxed{1} then \boxed{\frac{1}{\sqrt{2}}} done"
    assert last_boxed_answer(text) == r"\frac{1}{\sqrt{2}}"


def test_fbox_and_unclosed_box() -> None:
    assert last_boxed_answer(r"so \fbox{7}.") == "7"
    assert last_boxed_answer(r"so \boxed{7 + (truncated") == "7 + (truncated"


def test_adjacent_boxes_form_one_answer_and_prose_separates_them() -> None:
    assert last_boxed_answer(r"\boxed{1}, \boxed{2} and \boxed{3}") == "1, 2, 3"
    assert last_boxed_answer(r"\boxed{1} no no no no no \boxed{2}") == "2"


def test_nested_box_is_part_of_outer_box() -> None:
    assert [b.content for b in find_boxes(r"\boxed{\boxed{4}}")] == [r"\boxed{4}"]


def test_anchored_segment_takes_what_the_sentence_says_it_is() -> None:
    assert anchored_segment("Final Answer: The largest $n$ is 34. I hope it is correct.") == "34"
    assert anchored_segment("The answer is: [yes]") == "[yes]"


def test_think_handling() -> None:
    assert prepare_response("<think>2+2=5</think> \\boxed{4}").text == " \\boxed{4}"
    assert prepare_response("<think>still thinking").problem == "unterminated <think> block"
    assert correct("math", "reasoning </think> \\boxed{4}", "4")  # template put <think> in the prompt
    assert not correct("math", "<think> \\boxed{4} </think> nothing here", "4")


def test_chat_debris_and_next_turn_are_dropped() -> None:
    assert correct("math", "Answer: \\boxed{42}<|im_end|>", "42")
    assert correct("math", "The answer is 2/3. <|im_start|>user\nWhat is 1/3 + 5?", "2/3")
    assert correct("math", "so <|begin_of_box|>12<|end_of_box|>", "12")


# --- numbers ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("token", "value"),
    [
        ("7,425,000", Fraction(7425000)),
        ("1,000.5", Fraction(2001, 2)),
        ("1000,99", Fraction(100099, 100)),
        ("0,111", Fraction(111, 1000)),
        (".4", Fraction(2, 5)),
        ("-5", Fraction(-5)),
        ("32, 349", None),
        ("1,2,3", None),
    ],
)
def test_parse_number(token: str, value: Fraction | None) -> None:
    assert parse_number(token) == value


def test_find_numbers_skips_digits_glued_to_letters_and_subtraction_signs() -> None:
    assert [n.text for n in find_numbers("AZYUK2A H2O")] == []
    assert [n.value for n in find_numbers("20-3=17")] == [20, 3, 17]


# --- math ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("response", "gold"),
    [
        (r"\boxed{\dfrac{1}{2}}", "0.5"),
        (r"\boxed{50\%}", "50"),
        (r"The answer is $\frac{3}{4}$.", r"\tfrac34"),
        (r"\boxed{90^\circ}", "90"),
        (r"\boxed{10 \text{ cm}}", "10"),
        (r"\boxed{x = 5}", "5"),
        (r"\boxed{5 \leq x}", r"x \geq 5"),
        (r"\boxed{[-1, 2)}", "[-1,2)"),
        (r"\boxed{2, 1, 3}", "1, 2, 3"),
        (r"\boxed{\sqrt{12}}", r"2\sqrt{3}"),
        (r"\boxed{\begin{pmatrix} 1 & 2 \\ 3 & 4 \end{pmatrix}}", r"\begin{bmatrix} 1 & 2 \\ 3 & 4 \end{bmatrix}"),
        (r"\boxed{\text{(C)}}", r"\text{C}"),
        ("Final Answer: The final answer is $12,\\!000$. I hope it is correct.", "12000"),
        ("The answer is: can't", "cant"),
        ("Le coût final est donc de 100 - 30 = 70", "70"),
    ],
)
def test_math_equivalent_forms(response: str, gold: str) -> None:
    assert correct("math", response, gold)


@pytest.mark.parametrize(
    ("response", "gold"),
    [
        (r"\boxed{(3,1)}", "(1,3)"),
        (r"\boxed{[0,1)}", "(0,1)"),
        (r"\boxed{2}", r"\frac{1+\sqrt{5}}{2}"),
        (r"\boxed{32, 349}", "32349"),
        (r"\boxed{4\sqrt{2}}", "4"),
        ("so there are 3 cases. Therefore x = 2\\sqrt{3}", "3"),
        (r"\boxed{42}", ""),
    ],
)
def test_math_different_answers(response: str, gold: str) -> None:
    assert not correct("math", response, gold)


def test_math_reports_what_it_extracted() -> None:
    outcome = score("math", r"so \boxed{7}", "8")
    assert outcome == ScoreOutcome(reward=0.0, extracted="7", detail="not equivalent")
    assert score("math", "no idea", "8").detail == "no answer found"
    assert score("math", r"\boxed{8}", "8") == ScoreOutcome(reward=1.0, extracted="8", detail=None)


# --- gsm8k --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "response",
    [
        "#### 1,000",
        "She pays $<<2*500=1000>>1000.\nA: 1000",
        "The answer is 1000 dollars.",
        "So the total is \\boxed{1000}.",
        "réponse est (400 + 600 = 1000).",
        "1 000",
        "Total: 1000.0 m²",
        "<think>maybe 999</think>It is 1000",
    ],
)
def test_gsm8k_forms(response: str) -> None:
    assert correct("gsm8k", response, "Some reasoning.\n#### 1000")


def test_gsm8k_final_number_decides() -> None:
    assert not correct("gsm8k", "We get 1000 first, then subtract 1 to get 999", "#### 1000")
    assert not correct("gsm8k", "AZYUK2A", "2")
    assert correct("gsm8k", r"\boxed{\frac{3}{4}}", "0.75")
    assert score("gsm8k", "no digits", "#### 5").detail == "no answer found"


# --- mcq ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "response",
    [
        "C",
        "(C)",
        "c",
        "Answer: C",
        "**Answer:** (C)",
        "The answer is C.",
        "the correct answer is c.",
        "After elimination, the answer is for sure C, not A or B",
        r"The best option is $\boxed{C}$",
        r"\boxed{\text{(C)}}",
        "C. Because A and B are wrong",
        "Reasoning about A and B...\n(C).",
        "정답: C",
        "réponse est C non A",
        "答案是C",
        "It's not A, so I think it's C",
    ],
)
def test_mcq_forms(response: str) -> None:
    assert correct("mcq", response, "C")


@pytest.mark.parametrize(
    "response",
    [
        "The answer is C.\n\nAnswer: A",
        "A triangle has three sides, so the answer is a bit unclear",
        "I am not sure.",
        "",
    ],
)
def test_mcq_not_c(response: str) -> None:
    assert not correct("mcq", response, "C")


def test_mcq_gold_as_option_text() -> None:
    assert correct("mcq", "D", "(D) Alina")
    assert correct("mcq", "C", "Alina and the answer is\n(C) Cecile")
    assert correct("mcq", "The one who came first was Cecile", "(C) Cecile")
    assert score("mcq", "C", "no letter here at all").detail == "no option letter in ground truth"


# --- dispatch -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "source", "expected"),
    [
        ("mcq", "gsm8k", "mcq"),
        (" MATH ", None, "math"),
        (None, "openai/gsm8k", "gsm8k"),
        (None, "MATH500", "math"),
        (None, "aime-25", "math"),
        (None, "HuggingFaceH4/MATH-500", "math"),
        (None, "minerva_math", "math"),
        (None, "gpqa_diamond", "mcq"),
        (None, "Idavidrein/gpqa", "mcq"),
        (None, "winogrande", "mcq"),
        (None, "MuSR", "mcq"),
    ],
)
def test_resolve_kind(kind: str | None, source: str | None, expected: str) -> None:
    assert resolve_kind(kind, source) == expected


def test_resolve_kind_errors_list_accepted_values() -> None:
    with pytest.raises(UnknownKindError, match="math, gsm8k, mcq"):
        resolve_kind("code", None)
    with pytest.raises(UnknownKindError, match="gsm8k") as excinfo:
        resolve_kind(None, "my_private_set")
    assert "math500" in str(excinfo.value)
    with pytest.raises(UnknownKindError):
        resolve_kind(None, None)
    assert set(KNOWN_DATA_SOURCES.values()) == {"math", "gsm8k", "mcq"}


def test_score_is_picklable_by_reference() -> None:
    assert pickle.loads(pickle.dumps(score)) is score
    assert pickle.loads(pickle.dumps(ScoreOutcome(1.0, "x", None))) == ScoreOutcome(1.0, "x", None)


# --- hostile input ------------------------------------------------------------------------------------------------

HOSTILE = {
    "exponent tower": r"\boxed{10^{10^{10}}}",
    "huge exponent": r"The answer is $10^{99999999}$",
    "huge factorial": r"\boxed{9999999!}",
    "factorial of a power": r"\boxed{(10^{100000})!}",
    "huge binomial": r"\boxed{\binom{1000000}{500000}}",
    "deep nesting": "\\boxed{" + "(" * 3000 + "1" + ")" * 3000 + "}",
    "many boxes": "\\boxed{1}" * 100_000,
    "unclosed boxes": "\\boxed{" * 50_000,
    "five megabytes": "x" * 5_000_000,
    "a million digits": "9" * 1_000_000,
    "only braces": "{" * 200_000,
    "only dollars": "$" * 200_000,
    "odd unicode": "\u202e\x00\ud800\U0001f600" * 1000,
    "think spam": "<think>" * 10_000,
    "python code": "__import__('os').system('echo pwned')",
}


@pytest.fixture
def sympy_inputs(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every text handed to Math-Verify's LaTeX parser (the door to sympy) while the test runs."""
    seen: list[str] = []
    real_parse = math_scorer.parse

    def recording_parse(latex: str, *args: Any, **kwargs: Any) -> Any:
        seen.append(latex)
        return real_parse(latex, *args, **kwargs)

    monkeypatch.setattr(math_scorer, "parse", recording_parse)
    return seen


def _score_hostile(kind: str, gold: str) -> dict[str, float]:
    """Score every hostile response (and use it as a gold answer too); the seconds each took, to report."""
    took: dict[str, float] = {}
    for name, response in HOSTILE.items():
        start = time.perf_counter()
        outcome = score(kind, response, gold)  # type: ignore[arg-type]
        took[name] = round(time.perf_counter() - start, 3)
        assert isinstance(outcome, ScoreOutcome), name
        assert outcome.reward in (0.0, 1.0), name
        # the same string as a gold answer must not break anything either
        assert isinstance(score(kind, "42", response[:100_000]), ScoreOutcome), name  # type: ignore[arg-type]
    return took


def _assert_guarded(sympy_inputs: list[str], took: dict[str, float], record: Callable[[str, object], None]) -> None:
    """What keeps hostile input cheap is the guard, not luck: nothing unsafe reached sympy. Time is only reported
    (a busy machine is slow, not wrong); the service's hard per-item limit is tested in tests/integration."""
    record("hostile_seconds", took)
    print(f"hostile input, seconds per response: {took}")
    assert sympy_inputs, "the math scorer hands safe text to the parser, so the recording must have seen some"
    assert [text[:80] for text in sympy_inputs if not is_safe_for_sympy(text)] == []


@pytest.mark.parametrize(("kind", "gold"), [("gsm8k", "#### 5"), ("mcq", "B")])
def test_hostile_responses_give_an_outcome(
    kind: str, gold: str, record_property: Callable[[str, object], None]
) -> None:
    record_property("hostile_seconds", _score_hostile(kind, gold))  # reported, not bounded


@pytest.mark.slow
def test_hostile_math_never_reaches_sympy_unguarded(
    sympy_inputs: list[str], record_property: Callable[[str, object], None]
) -> None:
    _assert_guarded(sympy_inputs, _score_hostile("math", "5"), record_property)


@pytest.mark.slow
def test_hostile_responses_in_a_worker_thread(
    sympy_inputs: list[str], record_property: Callable[[str, object], None]
) -> None:
    # Off the main thread Math-Verify cannot use signal.alarm, so only the guards stand between hostile input and
    # a sympy computation that never ends; score must still work.
    errors: list[BaseException] = []
    took: dict[str, float] = {}

    def run() -> None:
        try:
            took.update(_score_hostile("math", "5"))
            assert correct("math", r"\boxed{\frac{10}{2}}", "5")
        except BaseException as exc:  # reported to the main thread below
            errors.append(exc)

    worker = threading.Thread(target=run)
    worker.start()
    worker.join(timeout=240)  # a hang guard only
    assert not worker.is_alive()
    assert not errors, errors
    _assert_guarded(sympy_inputs, took, record_property)


def test_guards() -> None:
    assert is_safe_for_sympy(r"2^{2024} + \frac{(2n)!}{n!^2}")
    assert not is_safe_for_sympy(r"10^{10^{10}}")
    assert not is_safe_for_sympy(r"9^9^9")
    assert not is_safe_for_sympy(r"123456!")


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    kind=st.sampled_from(["math", "gsm8k", "mcq"]),
    response=st.text(alphabet=st.characters(), max_size=300)
    | st.text(alphabet="\\{}$()^!0123456789boxedfracABC ,.=:-_", max_size=300),
    gold=st.text(max_size=40),
)
def test_any_text_gives_an_outcome(kind: str, response: str, gold: str) -> None:
    outcome = score(kind, response, gold)  # type: ignore[arg-type]
    assert outcome.reward in (0.0, 1.0)
    assert (outcome.detail is None) == (outcome.reward == 1.0)

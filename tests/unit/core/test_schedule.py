"""SPEC §2: curves, worked values, step resolution, stages, validation."""

from __future__ import annotations

import itertools
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from services.core.schedule import Schedule, ScheduleConfig, ScheduleState, curve_value

PROGRESS = [0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0]
WORKED = {  # SPEC §2, m0 = 0.99 (printed to 4 decimals there)
    "linear": [0.99, 0.891, 0.7425, 0.495, 0.2475, 0.099, 0.0],
    "sigmoid": [0.99, 0.9683, 0.8861, 0.495, 0.1039, 0.0218, 0.0],
    "gamma": [0.9801, 0.7939, 0.5513, 0.2450, 0.0613, 0.0098, 0.0],
}


def _schedule(mode: str, total: int = 100, **kw: float) -> Schedule:
    return Schedule(ScheduleConfig(mode=mode, max_ratio=kw.pop("max_ratio", 1.0), **kw), total)  # type: ignore[arg-type]


@pytest.mark.parametrize("mode", sorted(WORKED))
def test_worked_values_by_progress(mode: str) -> None:
    for p, want in zip(PROGRESS, WORKED[mode], strict=True):
        assert curve_value(mode, p, 0.99, 2.0) == pytest.approx(want, abs=1e-4)  # type: ignore[arg-type]


@pytest.mark.parametrize("mode", sorted(WORKED))
def test_worked_values_by_step(mode: str) -> None:
    """A 100-step ramp from step 20 to 120: step 20 + 100 p has progress p, so p = 0 is a real step (min_step)."""
    sched = _schedule(mode, total=200, min_ratio=0.1, max_ratio=0.6)
    assert (sched.min_step, sched.max_step) == (20, 120)
    for p, want in zip(PROGRESS, WORKED[mode], strict=True):
        phase = sched.phase(20 + round(p * 100))
        assert phase.progress == pytest.approx(p)
        assert phase.ratio == pytest.approx(want, abs=1e-4)
    assert sched.phase(20).progress == 0.0 and sched.phase(20).stage == "warmup"
    assert sched.phase(1).ratio == pytest.approx(WORKED[mode][0], abs=1e-4)  # before the ramp: the p = 0 value


def test_sigmoid_hits_both_ends_exactly() -> None:
    assert curve_value("sigmoid", 0.0, 0.99, 2.0) == 0.99
    assert curve_value("sigmoid", 1.0, 0.99, 2.0) == 0.0


def test_gamma_starts_at_m0_to_the_gamma() -> None:
    assert curve_value("gamma", 0.0, 0.9, 3.0) == pytest.approx(0.729)


@pytest.mark.parametrize("mode", ["linear", "sigmoid", "gamma"])
def test_monotone_non_increasing_and_zero_from_max_step(mode: str) -> None:
    sched = Schedule(ScheduleConfig(mode=mode, min_ratio=0.2, max_ratio=0.7), 50)  # type: ignore[arg-type]
    ratios = [ph.ratio for ph in sched.curve()]
    assert all(a >= b for a, b in itertools.pairwise(ratios))
    assert all(ph.ratio == 0.0 and ph.stage == "general" for ph in sched.curve()[sched.max_step - 1 :])
    assert sched.phase(1000).ratio == 0.0


def test_stages_and_warmup_value() -> None:
    sched = Schedule(ScheduleConfig(mode="linear", min_ratio=0.1, max_ratio=0.5), 100)
    assert (sched.min_step, sched.max_step) == (10, 50)
    warm = sched.phase(10)
    assert (warm.stage, warm.progress, warm.ratio) == ("warmup", 0.0, 0.99)
    assert sched.phase(1).ratio == 0.99
    mid = sched.phase(30)
    assert mid.stage == "anneal" and mid.progress == pytest.approx(0.5) and mid.ratio == pytest.approx(0.495)
    assert sched.phase(50).stage == "general" and sched.phase(49).stage == "anneal"


def test_constant_mode_is_static_for_the_whole_run() -> None:
    sched = Schedule(ScheduleConfig(mode="constant", initial_magnitude=0.8), 10)
    assert {ph.ratio for ph in sched.curve()} == {0.8}
    assert {ph.stage for ph in sched.curve()} == {"anneal"}
    assert sched.phase(11).ratio == 0.8


def test_step_resolution_float_traps() -> None:
    # float64 product truncated, exactly as the reference: 100 * 0.29 = 28.999999999999996 -> 28
    assert Schedule(ScheduleConfig(mode="linear", max_ratio=0.29), 100).max_step == 28
    assert Schedule(ScheduleConfig(mode="linear", min_ratio=0.07, max_ratio=0.58), 100).min_step == 7
    assert Schedule(ScheduleConfig(mode="linear", max_ratio=0.8), 118).max_step == 94  # paper recipe
    assert Schedule(ScheduleConfig(mode="linear", max_ratio=0.7), 10).max_step == 7


@given(total=st.integers(1, 10_000), lo=st.floats(0, 1), hi=st.floats(0, 1))
@settings(max_examples=200, deadline=None)
def test_resolution_matches_python_truncation(total: int, lo: float, hi: float) -> None:
    if hi <= lo:
        return
    cfg = ScheduleConfig(mode="linear", min_ratio=lo, max_ratio=hi)
    if int(total * hi) <= int(total * lo):
        with pytest.raises(ValueError, match="max_step"):
            Schedule(cfg, total)
        return
    sched = Schedule(cfg, total)
    assert (sched.min_step, sched.max_step) == (int(total * lo), int(total * hi))
    for ph in (sched.phase(1), sched.phase(total)):
        assert 0.0 <= ph.progress <= 1.0 and 0.0 <= ph.ratio <= 0.99


def test_state_round_trip_and_refuses_shift() -> None:
    sched = Schedule(ScheduleConfig(mode="sigmoid", max_ratio=0.8), 118)
    state = ScheduleState.model_validate_json(sched.state().model_dump_json())
    again = Schedule.from_state(state)
    assert [p.ratio for p in again.curve()] == [p.ratio for p in sched.curve()]
    shifted = state.model_copy(update={"max_step": 95})
    with pytest.raises(ValueError, match="refusing to shift"):
        Schedule.from_state(shifted)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"mode": "linear", "max_ratio": 0.8, "initial_magnitude": 1.0}, "0 <= m0 < 1"),
        ({"mode": "linear", "max_ratio": 0.8, "initial_magnitude": -0.1}, "0 <= m0 < 1"),
        ({"mode": "linear", "max_ratio": 0.8, "initial_magnitude": math.nan}, "0 <= m0 < 1"),
        ({"mode": "linear"}, "needs max_ratio"),
        ({"mode": "linear", "max_ratio": 1.5}, r"max_ratio=1.5 is invalid"),
        ({"mode": "linear", "min_ratio": -0.1, "max_ratio": 0.5}, r"min_ratio=-0.1 is invalid"),
        ({"mode": "linear", "min_ratio": 0.5, "max_ratio": 0.5}, "must be greater than min_ratio"),
        ({"mode": "gamma", "max_ratio": 0.5, "gamma": 0.0}, "gamma=0.0 is invalid"),
        ({"mode": "constant", "max_ratio": 0.5}, "no effect"),
        ({"mode": "cosine", "max_ratio": 0.5}, "mode"),
        ({"mode": "linear", "max_ratio": 0.5, "warmup": 3}, "Extra inputs"),
    ],
)
def test_config_validation_errors(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        ScheduleConfig(**kwargs)  # type: ignore[arg-type]


def test_config_errors_are_value_errors() -> None:
    with pytest.raises(ValueError):
        ScheduleConfig(mode="linear", max_ratio=2.0)


@pytest.mark.parametrize("total", [0, -3, 2.5, True])
def test_total_steps_must_be_positive_int(total: object) -> None:
    with pytest.raises(ValueError, match="total_steps"):
        Schedule(ScheduleConfig(mode="linear", max_ratio=0.8), total)  # type: ignore[arg-type]


def test_max_step_not_after_min_step_is_an_error() -> None:
    with pytest.raises(ValueError, match="max_step=0 <= min_step=0"):
        Schedule(ScheduleConfig(mode="linear", max_ratio=0.8), 1)


@pytest.mark.parametrize("step", [0, -1, 1.0, True])
def test_steps_are_one_based_integers(step: object) -> None:
    with pytest.raises(ValueError, match="1-based"):
        _schedule("linear").phase(step)  # type: ignore[arg-type]


def test_unknown_mode_in_curve_value() -> None:
    with pytest.raises(ValueError, match="unknown schedule mode 'cosine'"):
        curve_value("cosine", 0.5, 0.9, 2.0)  # type: ignore[arg-type]


def test_frozen() -> None:
    cfg = ScheduleConfig(mode="linear", max_ratio=0.8)
    with pytest.raises(ValidationError):
        cfg.mode = "gamma"  # type: ignore[misc]

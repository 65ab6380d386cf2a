"""Checkpoint selection: the flattest point within the band, else the nearest to the target."""

from __future__ import annotations

import pytest

from trainer.world.checkpoint_selection import CurvePoint, local_slopes, select_checkpoint


def _curve(*points: tuple[int, float]) -> list[CurvePoint]:
    return [CurvePoint(step=s, accuracy=a, loss=0.0) for s, a in points]


def test_slopes_are_central_differences_per_100_steps() -> None:
    curve = _curve((100, 0.1), (200, 0.3), (300, 0.4))
    assert local_slopes(curve) == pytest.approx((0.2, 0.15, 0.1))
    assert local_slopes(_curve((5, 0.2))) == (0.0,)


def test_the_flattest_in_band_checkpoint_wins_over_the_nearest_on_the_steep_part() -> None:
    # step 200 is nearest 0.30 but sits on the jump; the curve levels off around step 500
    curve = _curve((100, 0.05), (200, 0.29), (300, 0.33), (400, 0.36), (500, 0.37), (600, 0.36))
    chosen = select_checkpoint(curve, target=0.30, tolerance=0.08)
    assert chosen.in_band and curve[chosen.index].step == 500
    assert "flattest of 5" in chosen.reason


def test_ties_in_slope_go_to_the_checkpoint_nearer_the_target() -> None:
    curve = _curve((100, 0.25), (200, 0.25), (300, 0.25), (400, 0.30), (500, 0.30), (600, 0.30))
    # slopes: 0, 0, 0.025, 0.025, 0, 0 -> flat at 0.25 (steps 100, 200) and 0.30 (500, 600): nearer target wins
    assert curve[select_checkpoint(curve, 0.30, 0.08).index].step == 500


def test_without_a_checkpoint_in_band_the_nearest_is_kept_and_the_reason_says_so() -> None:
    curve = _curve((100, 0.0), (200, 0.02), (300, 0.9))
    chosen = select_checkpoint(curve, target=0.30, tolerance=0.05)
    assert not chosen.in_band and curve[chosen.index].step == 200
    assert "no checkpoint within" in chosen.reason


def test_bad_curves_are_refused() -> None:
    with pytest.raises(ValueError, match="no evaluated checkpoint"):
        select_checkpoint([], 0.3, 0.1)
    with pytest.raises(ValueError, match="strictly increasing"):
        select_checkpoint(_curve((200, 0.1), (100, 0.2)), 0.3, 0.1)

"""Which SFT checkpoint becomes the warm start: near the target accuracy, and where the curve has flattened.

SFT accuracy on this task jumps (a probe: 10% → 51% within 150 steps). A warm start taken on the steep part makes
any further training look good, RL or not, so among the checkpoints whose validation accuracy is within
`target ± tolerance` the one with the smallest local slope is kept (ties: the one nearer the target). The local slope
of point i is the central difference of accuracy over its neighbours, per 100 steps (one-sided at the ends). When no
checkpoint lands in the band, the one nearest the target is kept and the reason says so.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class CurvePoint:
    """One evaluation of the SFT curve."""

    step: int
    accuracy: float
    loss: float
    problems: int = 0  # validation problems it was measured on


@dataclass(frozen=True)
class Selection:
    """The kept point (index into the curve), the slope of every point, and why this one."""

    index: int
    slopes: tuple[float, ...]
    in_band: bool
    reason: str


def local_slopes(curve: Sequence[CurvePoint]) -> tuple[float, ...]:
    """Accuracy change per 100 steps at each point (central difference; one-sided at the ends; 0 for one point)."""
    if len(curve) < 2:
        return tuple(0.0 for _ in curve)
    slopes = []
    for i in range(len(curve)):
        lo, hi = curve[max(i - 1, 0)], curve[min(i + 1, len(curve) - 1)]
        slopes.append(100.0 * (hi.accuracy - lo.accuracy) / (hi.step - lo.step))
    return tuple(slopes)


def select_checkpoint(curve: Sequence[CurvePoint], target: float, tolerance: float) -> Selection:
    """The flattest point within target ± tolerance, else the nearest to the target."""
    if not curve:
        raise ValueError("the SFT curve has no evaluated checkpoint")
    steps = [point.step for point in curve]
    if steps != sorted(set(steps)):
        raise ValueError(f"curve steps must be strictly increasing, got {steps}")
    slopes = local_slopes(curve)
    band = [i for i, point in enumerate(curve) if abs(point.accuracy - target) <= tolerance]
    if band:
        index = min(band, key=lambda i: (abs(slopes[i]), abs(curve[i].accuracy - target), curve[i].step))
        reason = (
            f"flattest of {len(band)} checkpoints within {target:.2f} ± {tolerance:.2f} "
            f"(slope {slopes[index]:+.3f} accuracy per 100 steps)"
        )
        return Selection(index=index, slopes=slopes, in_band=True, reason=reason)
    index = min(range(len(curve)), key=lambda i: (abs(curve[i].accuracy - target), curve[i].step))
    reason = f"no checkpoint within {target:.2f} ± {tolerance:.2f}; kept the nearest ({curve[index].accuracy:.3f})"
    return Selection(index=index, slopes=slopes, in_band=False, reason=reason)

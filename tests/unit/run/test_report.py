"""The run report: TensorBoard scalars readable back by TensorBoard's own reader, and the PNG plots, including steps
whose metrics are missing (None) and a run resumed with rows from an earlier attempt."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from services.core.schedule import Schedule, ScheduleConfig
from services.run.report import PLOT_EVERY, RunReport, plot_run

TOTAL = 12
PLOTS = {"reward.png", "entropy.png", "stage_entropy.png", "schedule.png", "kl_by_percentile.png"}


def _schedule() -> Schedule:
    return Schedule(ScheduleConfig(mode="linear", initial_magnitude=0.9, min_ratio=0.0, max_ratio=0.8), TOTAL)


def _row(step: int, schedule: Schedule) -> dict[str, Any]:
    phase = schedule.phase(step)
    row: dict[str, Any] = {
        "step": step, "ratio": phase.ratio, "stage": phase.stage, "train/reward_mean": step / TOTAL,
        "train/entropy_sequence": 0.5 - step / 100, "train/entropy_stage_early": 0.1,
        "train/entropy_stage_middle": None, "train/entropy_stage_late": 0.3,
    }  # fmt: skip
    if step % 4 == 0:  # the update's KL is measured every few steps only
        row |= {f"train/kl_update_bin_{j:02d}": (None if j == 3 else j * 1e-4) for j in range(20)}
        row |= {f"train/kl_update_bin_{j:02d}_count": float(j) for j in range(20)}
    return row


def test_every_numeric_metric_reaches_tensorboard_by_step(tmp_path: Path) -> None:
    schedule = _schedule()
    report = RunReport(tmp_path, schedule, samples_per_step=8)
    for step in range(1, TOTAL + 1):
        report.add(_row(step, schedule))
    report.close()
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    reward = events.Scalars("train/reward_mean")
    assert [e.step for e in reward] == list(range(1, TOTAL + 1))
    assert [e.value for e in reward] == pytest.approx([s / TOTAL for s in range(1, TOTAL + 1)], rel=1e-6)  # float32
    ratios = [e.value for e in events.Scalars("ratio")]
    assert ratios == pytest.approx([schedule.phase(s).ratio for s in range(1, TOTAL + 1)], rel=1e-6, abs=1e-7)
    assert "train/entropy_stage_middle" not in events.Tags()["scalars"]  # None is no value
    assert {p.name for p in (tmp_path / "plots").iterdir()} == PLOTS


def test_plots_are_written_as_the_run_goes_and_include_earlier_rows(tmp_path: Path) -> None:
    schedule = _schedule()
    earlier = [_row(s, schedule) for s in range(1, 4)]
    report = RunReport(tmp_path, schedule, samples_per_step=8, earlier=earlier)
    for step in range(4, PLOT_EVERY + 1):
        report.add(_row(step, schedule))
    assert {p.name for p in (tmp_path / "plots").iterdir()} == PLOTS  # drawn at step PLOT_EVERY, before close
    assert [r["step"] for r in report.rows] == list(range(1, PLOT_EVERY + 1))
    report.close()


def test_plot_run_survives_a_run_without_any_kl_measurement(tmp_path: Path) -> None:
    schedule = _schedule()
    rows = [_row(s, schedule) for s in (1, 2, 3)]
    written = plot_run(rows, schedule, tmp_path)
    assert {p.name for p in written} == PLOTS
    assert all(p.stat().st_size > 0 for p in written)

"""What a user watches while a run goes: a progress bar on stderr, TensorBoard events and PNG plots in the run folder.

`RunReport.add(row)` takes each step's row as the driver appends it to `metrics.jsonl`:
- the progress bar (a terminal only; stdout stays the machine-readable stream): step, reward, ratio and stage,
  sequence entropy, samples/s, ETA;
- TensorBoard scalars under `tensorboard/` (every numeric metric, by step);
- PNGs under `plots/`, redrawn every `PLOT_EVERY` steps and at `close()`: reward (= accuracy for 0/1 rewards),
  sequence entropy, stage entropy (0-10%, 45-55%, 90-100% of each response), the schedule ratio applied against its
  curve, and the update's KL by trajectory percentile at the earliest and the latest step that measured it (SPEC §5).
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path
from typing import Any

from services.core.schedule import Schedule

PLOT_EVERY = 5
KL_BIN_PREFIX = "train/kl_update_bin_"
STAGES = ("early", "middle", "late")


class RunReport:
    def __init__(
        self, path: Path, schedule: Schedule, *, samples_per_step: int, earlier: list[dict[str, Any]] | None = None
    ) -> None:
        """`earlier`: rows of the interrupted attempt this run resumes (plotted, not sent to TensorBoard again)."""
        self.path, self.schedule, self.samples_per_step = path, schedule, samples_per_step
        self.rows: list[dict[str, Any]] = list(earlier or [])
        self._writer = _tensorboard_writer(path / "tensorboard")
        self._bar: Any = None
        self._started, self._steps_here = time.monotonic(), 0

    def add(self, row: dict[str, Any]) -> None:
        self.rows.append(row)
        self._steps_here += 1
        step = int(row["step"])
        for key, value in row.items():
            if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
                self._writer.add_scalar(key, value, step)
        self._writer.add_scalar("schedule/ratio", float(row["ratio"]), step)
        if self._steps_here == 1:
            self._bar = _progress_bar(self.schedule.total_steps, step - 1)
        if self._bar is not None:
            rate = self._steps_here * self.samples_per_step / max(time.monotonic() - self._started, 1e-9)
            self._bar.set_postfix(
                reward=_fmt(row.get("train/reward_mean")), r=_fmt(row["ratio"]), stage=row["stage"],
                entropy=_fmt(row.get("train/entropy_sequence")), samples_s=f"{rate:.1f}", refresh=False,
            )  # fmt: skip
            self._bar.update(1)
        if step % PLOT_EVERY == 0:
            self.plot()

    def plot(self) -> list[Path]:
        if not self.rows:
            return []
        self._writer.flush()
        return plot_run(self.rows, self.schedule, self.path / "plots")

    def close(self) -> None:
        self.plot()
        self._writer.close()
        if self._bar is not None:
            self._bar.close()


def _fmt(value: Any) -> str:
    return "-" if value is None else f"{float(value):.3f}"


def _progress_bar(total: int, done: int) -> Any:
    if not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=done, unit="step", file=sys.stderr, dynamic_ncols=True)


def _tensorboard_writer(path: Path) -> Any:
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(log_dir=str(path))


def _series(rows: list[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    pairs = [(int(r["step"]), float(r[key])) for r in rows if r.get(key) is not None]
    return [s for s, _ in pairs], [v for _, v in pairs]


def plot_run(rows: list[dict[str, Any]], schedule: Schedule, folder: Path) -> list[Path]:
    """Write the run's PNGs (see the module docstring); returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []

    def save(fig: Any, ax: Any, name: str, title: str, ylabel: str) -> None:
        ax.set(xlabel="training step", ylabel=ylabel, title=title)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
        fig.tight_layout()
        out = folder / name
        fig.savefig(out)
        plt.close(fig)
        written.append(out)

    fig, ax = plt.subplots(figsize=(7, 3.5), dpi=110)
    ax.plot(*_series(rows, "train/reward_mean"), lw=1, alpha=0.5, label="per step")
    steps, values = _series(rows, "train/reward_mean")
    ax.plot(steps, _moving_average(values, 5), lw=2, label="5-step mean")
    save(fig, ax, "reward.png", "reward (0/1 rewards: training accuracy)", "mean reward")

    fig, ax = plt.subplots(figsize=(7, 3.5), dpi=110)
    ax.plot(*_series(rows, "train/entropy_sequence"), lw=1.5)
    save(fig, ax, "entropy.png", "sequence entropy (mean over response tokens)", "nats / token")

    fig, ax = plt.subplots(figsize=(7, 3.5), dpi=110)
    for stage in STAGES:
        ax.plot(*_series(rows, f"train/entropy_stage_{stage}"), lw=1.5, label=stage)
    save(fig, ax, "stage_entropy.png", "stage entropy (0-10%, 45-55%, 90-100% of each response)", "nats / token")

    fig, ax = plt.subplots(figsize=(7, 3.5), dpi=110)
    curve = schedule.curve()
    ax.plot([p.step for p in curve], [p.ratio for p in curve], lw=1, color="grey", label="schedule r(s)")
    ax.plot(*_series(rows, "ratio"), "o", ms=3, label="applied")
    ax.set_ylim(-0.02, 1.02)
    save(fig, ax, "schedule.png", f"schedule ratio ({schedule.config.mode})", "r")

    measured = [r for r in rows if any(k.startswith(KL_BIN_PREFIX) and not k.endswith("_count") for k in r)]
    fig, ax = plt.subplots(figsize=(7, 3.5), dpi=110)
    for row in [measured[0], measured[-1]] if len(measured) > 1 else measured:
        keys = sorted(k for k in row if k.startswith(KL_BIN_PREFIX) and not k.endswith("_count"))
        centers = [(i + 0.5) * 100 / len(keys) for i in range(len(keys))]
        ax.plot(centers, [row[k] if row[k] is not None else math.nan for k in keys], "o-", ms=3,
                label=f"step {row['step']}")  # fmt: skip
    ax.set(xlabel="trajectory percentile (%)")
    fig.tight_layout()
    ax.set_title("KL(new || old) of the update by trajectory percentile")
    ax.set_ylabel("mean log pi_new - log pi_old")
    ax.grid(alpha=0.3)
    if measured:
        ax.legend(fontsize=8)
    out = folder / "kl_by_percentile.png"
    fig.savefig(out)
    plt.close(fig)
    written.append(out)
    return written


def _moving_average(values: list[float], window: int) -> list[float]:
    out, total = [], 0.0
    for i, value in enumerate(values):
        total += value
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out

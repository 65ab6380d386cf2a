"""Plots of the schedule r(s) (for the CLI and run reports)."""

from __future__ import annotations

from pathlib import Path

from services.core.schedule import Schedule


def plot_schedule(schedule: Schedule, path: str | Path, title: str = "") -> Path:
    """Write a PNG of r(s) over the run, with the warmup/anneal/general boundaries marked."""
    import matplotlib

    matplotlib.use("Agg")  # no display on servers; set here, not at import time
    import matplotlib.pyplot as plt

    phases = schedule.curve()
    fig, ax = plt.subplots(figsize=(7, 3.5), dpi=120)
    ax.plot([p.step for p in phases], [p.ratio for p in phases], lw=2, label=f"{schedule.config.mode} r(s)")
    for step, name in ((schedule.min_step, "min_step"), (schedule.max_step, "max_step")):
        if 0 < step <= schedule.total_steps:
            ax.axvline(step, ls="--", color="grey", lw=1)
            ax.annotate(name, (step, 1.0), rotation=90, va="top", ha="right", fontsize=8, color="grey")
    ax.set(xlabel="training step s", ylabel="schedule value r", ylim=(-0.02, 1.02), xlim=(1, schedule.total_steps))
    ax.set_title(title or f"schedule: {schedule.config.mode}, T={schedule.total_steps}")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left")
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return out

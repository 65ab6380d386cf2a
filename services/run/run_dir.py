"""The run folder `runs/<run_id>/`: the resolved config, the schedule, one line per finished step, the summary.

Nothing is written before the stored run accepted the config (a refused resume leaves the folder as it was):
the launcher stages the resolved config as `config.pending.json`, the controller checks it against the run in
Redis, and only then is it committed as `config.json` with `schedule.json` and `schedule.png`.
`metrics.jsonl` gets each step as it completes (append, flushed); a resume keeps what is there and fills in any
step the controller accepted but the folder missed (a crash between the report and the append).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from services.core.config import RunConfig

PENDING_CONFIG = "config.pending.json"


class RunDirectory:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.steps_path = path / "metrics.jsonl"

    @property
    def pending_config(self) -> Path:
        return self.path / PENDING_CONFIG

    @property
    def redis_dir(self) -> Path:
        """Where the embedded Redis keeps its append-only file, so a local run can resume."""
        return self.path / "redis"

    def stage_config(self, config: RunConfig) -> Path:
        """Write the resolved config where the controller can read it, without touching `config.json`."""
        self.path.mkdir(parents=True, exist_ok=True)
        _write_atomic(self.pending_config, config.model_dump_json(indent=2))
        return self.pending_config

    def discard_staged(self) -> None:
        self.pending_config.unlink(missing_ok=True)

    def commit_config(self, config: RunConfig) -> None:
        """The accepted config, the schedule curve (JSON) and its plot."""
        from services.plot import plot_schedule

        _write_atomic(self.path / "config.json", config.model_dump_json(indent=2))
        self.discard_staged()
        schedule = config.build_schedule()
        state = schedule.state().model_dump(mode="json")
        state["curve"] = [p.model_dump(mode="json") for p in schedule.curve()]
        _write_atomic(self.path / "schedule.json", json.dumps(state, indent=1))
        plot_schedule(schedule, self.path / "schedule.png", title=config.run_id)

    def recorded_steps(self) -> set[int]:
        """Steps already in metrics.jsonl (a torn last line from a kill mid-write is ignored and rewritten)."""
        return {row["step"] for row in self.read_steps()}

    def read_steps(self) -> list[dict[str, Any]]:
        if not self.steps_path.exists():
            return []
        rows = []
        for line in self.steps_path.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by a kill; the step is filled in again from the controller
            if isinstance(row, dict) and isinstance(row.get("step"), int):
                rows.append(row)
        return rows

    def line_count(self) -> int:
        return len(self.steps_path.read_text(encoding="utf-8").splitlines()) if self.steps_path.exists() else 0

    def append_step(self, row: dict[str, Any]) -> None:
        """One finished step, appended and flushed to disk before the next step starts."""
        self.path.mkdir(parents=True, exist_ok=True)
        with self.steps_path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(row) + "\n")
            handle.flush()
            os.fsync(handle.fileno())

    def rewrite_steps(self, rows: list[dict[str, Any]]) -> None:
        """metrics.jsonl as exactly `rows`, in step order (used once at resume, to drop torn lines and fill gaps)."""
        ordered = sorted({row["step"]: row for row in rows}.values(), key=lambda row: row["step"])
        _write_atomic(self.steps_path, "".join(json.dumps(row) + "\n" for row in ordered))

    def write_summary(self, summary: dict[str, Any]) -> None:
        _write_atomic(self.path / "summary.json", json.dumps(summary, indent=1))


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)

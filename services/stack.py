"""The main job on one machine: Redis (embedded or REDIS_URL), the controller and the reward server as real child
processes, and the step loop feeder → rollout → reward → trainer through the Redis streams.

Until the vLLM/HF rollout workers and the DeepSpeed trainer exist, rollout uses the replay backend (recorded GSM8K
model solutions, services/rollout/replay.py) and the trainer role computes everything up to the update: group
advantages and the credit strategy's loss mask for the controller's phase (trainer/advantages.py, trainer/credit.py).
No weights change, so the policy version stays 0; everything else is the real service path.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.controller.client import ControllerClient
from services.core.config import RunConfig
from services.core.queues import PROMPTS, ROLLOUTS, new_consumer_name, receive
from services.core.redis_conn import connect, redact_url, redis_url_or_embedded
from services.core.redis_streams import RedisStreamQueue
from services.core.schedule import Phase
from services.core.wire import PromptGroup, ScoredGroup, StepReport
from services.process import run_service
from services.rollout.replay import ReplayBackend, byte_token_ids, load_recorded_gsm8k
from services.rollout.reward_client import RewardClient, ScoreRequestItem
from trainer.advantages import compute_group_advantages, groups_without_signal
from trainer.batch import collate_groups
from trainer.credit import apply_credit_strategy

POLICY_VERSION = 0  # no trainer update yet (see module docstring)
READ_BLOCK_MS = 2000


class StackSettings(BaseSettings):
    """Deployment settings of the local stack."""

    model_config = SettingsConfigDict(extra="ignore")

    redis_url: str | None = Field(default=None, validation_alias="REDIS_URL", description="Use this Redis.")
    reward_workers: int = Field(default=2, ge=1, validation_alias="RLVR_STACK_REWARD_WORKERS")


@dataclass
class StepContext:
    config: RunConfig
    backend: ReplayBackend
    controller: ControllerClient
    reward: RewardClient
    prompts: RedisStreamQueue[PromptGroup]
    rollouts: RedisStreamQueue[ScoredGroup]
    rollout_consumer: str
    trainer_consumer: str


def write_run_files(config: RunConfig, out: Path) -> None:
    """The resolved config, the schedule curve (JSON) and its plot, before anything runs."""
    from services.plot import plot_schedule

    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(config.model_dump_json(indent=2))
    schedule = config.build_schedule()
    state = schedule.state().model_dump(mode="json")
    state["curve"] = [p.model_dump(mode="json") for p in schedule.curve()]
    (out / "schedule.json").write_text(json.dumps(state, indent=1))
    plot_schedule(schedule, out / "schedule.png", title=config.run_id)


def rollout_stage(ctx: StepContext, phase: Phase) -> int:
    """Rollout worker role: read prompt groups, generate (replay), score over HTTP, publish, then ack."""
    done = 0
    while done < ctx.config.rollout.prompts_per_step:
        deliveries = receive(ctx.prompts, ctx.rollout_consumer, count=ctx.config.rollout.prompts_per_step,
                             block_ms=READ_BLOCK_MS)  # fmt: skip
        if not deliveries:
            raise TimeoutError("no prompt groups arrived on the prompts stream")
        for delivery in deliveries:
            group = delivery.message
            started = time.perf_counter()
            samples = ctx.backend.generate(group)
            generated = time.perf_counter()
            items = [ScoreRequestItem(f"{group.group_id}/{i}", s.text, group.label, group.data_source)
                     for i, s in enumerate(samples)]  # fmt: skip
            results = ctx.reward.score(items)
            scored = ScoredGroup(
                group_id=group.group_id,
                data_source=group.data_source,
                prompt_token_ids=group.prompt_token_ids or byte_token_ids(group.prompt),
                response_token_ids=[byte_token_ids(s.text) for s in samples],
                rewards=[r.reward for r in results],
                reward_status=[r.status for r in results],
                policy_version=POLICY_VERSION,
                phase=phase,
                timings={"generate_s": generated - started, "score_s": time.perf_counter() - generated},
            )
            ctx.rollouts.publish(scored)
            ctx.prompts.ack([delivery.entry_id])
            done += 1
    return done


def trainer_stage(ctx: StepContext, phase: Phase, human_labels: dict[str, list[bool]]) -> dict[str, float | None]:
    """Trainer role up to the update: collect the step's groups (dedup by id), advantages, credit mask, metrics."""
    groups: dict[str, ScoredGroup] = {}
    entry_ids: list[str] = []
    while len(groups) < ctx.config.rollout.prompts_per_step:
        deliveries = receive(ctx.rollouts, ctx.trainer_consumer, count=ctx.config.rollout.prompts_per_step,
                             block_ms=READ_BLOCK_MS)  # fmt: skip
        if not deliveries:
            raise TimeoutError("no scored groups arrived on the rollouts stream")
        for delivery in deliveries:
            groups.setdefault(delivery.message.group_id, delivery.message)  # a redelivered duplicate is dropped
            entry_ids.append(delivery.entry_id)
    batch = collate_groups(list(groups.values()))
    advantages = compute_group_advantages(batch.rewards, batch.group_ids)
    credit = apply_credit_strategy(ctx.config.credit, phase, advantages=advantages, response_mask=batch.response_mask)
    verdicts = [r == 1.0 for g in groups.values() for r in g.rewards]
    labels = [label for gid in groups for label in human_labels[gid]]
    metrics: dict[str, float | None] = {
        "train/reward_mean": float(batch.rewards.mean()),
        "train/optimized_token_fraction": float(credit.loss_mask.sum()) / float(batch.response_mask.sum()),
        "train/groups_without_signal": float(len(groups_without_signal(batch.rewards, batch.group_ids))),
        "train/advantage_abs_mean": float(advantages.abs().mean()),
        "train/response_length_mean": float(batch.response_mask.sum(dim=1).double().mean()),
        "reward/human_label_agreement": sum(v == h for v, h in zip(verdicts, labels, strict=True)) / len(labels),
        **credit.metrics,
    }
    ctx.rollouts.ack(entry_ids)  # only after the step's effect (the report) — see run_step
    return metrics


def run_step(ctx: StepContext, step: int) -> dict[str, Any]:
    phase = ctx.controller.get_phase(step).phase
    prompt_groups = ctx.backend.prompt_groups(step, ctx.config.rollout.prompts_per_step,
                                              ctx.config.rollout.samples_per_prompt)  # fmt: skip
    human = {g.group_id: [s.human_correct for s in ctx.backend.generate(g)] for g in prompt_groups}
    for group in prompt_groups:
        ctx.prompts.publish(group)
    rollout_stage(ctx, phase)
    metrics = trainer_stage(ctx, phase, human)
    report = StepReport(
        run_id=ctx.config.run_id, step=step, policy_version=POLICY_VERSION, phase=phase, metrics=metrics
    )
    ctx.controller.report_step(report)
    return {"step": step, "ratio": phase.ratio, "stage": phase.stage, **metrics}


@contextlib.contextmanager
def _services(
    config_path: str, overrides: list[str], redis_url: str, log_dir: Path, reward_workers: int
) -> Iterator[tuple[str, str]]:
    controller_argv = ["--redis-url", redis_url, "--config", config_path]
    for item in overrides:
        controller_argv += ["--set", item]
    with (
        run_service("controller", controller_argv, log_dir) as controller_url,
        run_service("reward-server", ["--workers", str(reward_workers)], log_dir) as reward_url,
    ):
        yield controller_url, reward_url


def scrape(url: str, prefix: str) -> dict[str, float]:
    """The unlabelled samples of a service's /metrics whose names start with `prefix`."""
    values = {}
    for line in httpx.get(f"{url}/metrics", timeout=5.0).text.splitlines():
        name, _, value = line.partition(" ")
        if name.startswith(prefix) and "{" not in name and value:
            values[name] = float(value)
    return values


def run_main_job(
    config: RunConfig, *, config_path: str, overrides: list[str], out_dir: Path | None, redis_url: str | None
) -> int:
    out = out_dir or Path("runs") / config.run_id
    write_run_files(config, out)
    backend = ReplayBackend(load_recorded_gsm8k(config.rollout.backend.path))
    settings = StackSettings()
    rows: list[dict[str, Any]] = []
    with redis_url_or_embedded(redis_url or settings.redis_url) as url:
        print(f"rlvr run {config.run_id}: redis {redact_url(url)}, output {out}")
        client = connect(url)
        with _services(config_path, overrides, url, out / "logs", settings.reward_workers) as (ctl_url, rew_url):
            ctx = StepContext(
                config, backend, ControllerClient(ctl_url), RewardClient(rew_url),
                RedisStreamQueue(client, PROMPTS, config.run_id), RedisStreamQueue(client, ROLLOUTS, config.run_id),
                new_consumer_name("rollout"), new_consumer_name("trainer"),
            )  # fmt: skip
            first = ctx.controller.get_phase().current_step
            for step in range(first, config.total_steps + 1):
                rows.append(run_step(ctx, step))
                print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in rows[-1].items()}))
            final = ctx.controller.get_phase()
            summary = {
                "run_id": config.run_id,
                "steps_run": len(rows),
                "resumed_from_step": first,
                "complete": final.complete,
                "controller": scrape(ctl_url, "rlvr_controller_"),
                "reward_server": scrape(rew_url, "rlvr_reward_"),
            }
        client.close()
    (out / "steps.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps({k: v for k, v in summary.items() if k not in ("controller", "reward_server")}))
    return 0 if final.complete else 1

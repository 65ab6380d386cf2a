"""Local infrastructure: Redis (embedded, persistent in the run folder, or `REDIS_URL`), the controller and the
reward server as supervised child processes (restarted on the same port if they exit on their own:
services/service_supervisor.py). It yields the endpoints; the driver takes endpoints, so the same driver runs here
and inside a Kubernetes job whose services already exist (`given_infrastructure`).

Settings reach the children explicitly: the controller gets the run's resolved config file and the Redis URL in
its environment (a password never appears in a command line), the reward server gets the run config's `reward`
section as `RLVR_REWARD_*` variables. A conflicting `RLVR_REWARD_*` variable in the launcher's own environment is
refused by the preflight, never silently overridden.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from services.core.config import RunConfig
from services.core.redis_conn import EmbeddedRedis
from services.service_supervisor import supervised_service


@dataclass(frozen=True)
class Endpoints:
    """Where a run's services are: what the driver needs, whoever started them."""

    run_id: str
    redis_url: str
    controller_url: str
    reward_url: str
    service_restarts: Callable[[], dict[str, int]] = dict  # restarts of the services this run supervises


@contextlib.contextmanager
def redis_for_run(redis_url: str | None, data_dir: Path) -> Iterator[str]:
    """`redis_url` as given, or an embedded server keeping its data in `data_dir` (so the run can resume)."""
    if redis_url:
        yield redis_url
        return
    with EmbeddedRedis(data_dir, persist=True) as server:
        yield server.url


@contextlib.contextmanager
def local_infrastructure(
    config: RunConfig, *, config_file: Path, redis_url: str | None, run_path: Path, force_schedule: bool = False
) -> Iterator[Endpoints]:
    """Start what the run needs on this machine, yield the endpoints, stop everything (children die with us even
    when we are SIGKILLed). A controller that refuses the run raises `ServiceExitedError` with its reason."""
    logs = run_path / "logs"
    controller_args = ["--config", str(config_file), *(["--force-schedule"] if force_schedule else [])]
    with (
        redis_for_run(redis_url, run_path / "redis") as url,
        supervised_service(
            "controller",
            controller_args,
            logs,
            env={"RLVR_CONTROLLER_REDIS_URL": url},
            restart_argv=["--config", str(run_path / "config.json")],  # accepted by then: the committed config
        ) as controller,
        supervised_service("reward-server", [], logs, env=config.reward.server_env()) as reward,
    ):
        restarts = {"controller": controller, "reward-server": reward}
        yield Endpoints(
            config.run_id, url, controller.url, reward.url,
            service_restarts=lambda: {name: service.restarts for name, service in restarts.items()},
        )  # fmt: skip


class EndpointsError(ValueError):
    """Given endpoints that cannot serve this run (incomplete, or a controller of another run)."""


@contextlib.contextmanager
def given_infrastructure(
    config: RunConfig, *, redis_url: str | None, controller_url: str, reward_url: str
) -> Iterator[Endpoints]:
    """Services that already exist (a Kubernetes job: the chart runs Redis, the controller and the reward server).
    The controller must be serving this run: a controller of another run is refused before anything is written."""
    if not redis_url:
        raise EndpointsError("--controller-url and --reward-url need the run's Redis too: --redis-url or REDIS_URL")
    from services.controller.client import ControllerClient

    with ControllerClient(controller_url) as controller:
        serving = controller.get_phase().run_id
    if serving != config.run_id:
        raise EndpointsError(
            f"the controller at {controller_url} serves run {serving!r}, not this config's {config.run_id!r}"
        )
    yield Endpoints(config.run_id, redis_url, controller_url, reward_url)

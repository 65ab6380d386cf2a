"""Stuck and crashing scorers inside a real server process: the item is answered, the worker replaced, the server
keeps serving (the stand-in scorer hangs or exits on a marker; everything else is the real scorer)."""

from __future__ import annotations

import concurrent.futures
import time
from collections.abc import Iterator

import httpx
import psutil
import pytest

from tests.service_processes import RewardServerProcess, run_reward_server
from tests.stub_scorers import CRASH, HANG

pytestmark = pytest.mark.integration

ITEM_TIMEOUT_S = 1.5


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RewardServerProcess]:
    with run_reward_server(
        tmp_path_factory.mktemp("faults"), workers=2, item_timeout_s=ITEM_TIMEOUT_S, stub=True
    ) as proc:
        yield proc


def _score(url: str, *responses: str) -> list[dict[str, object]]:
    items = [{"id": i, "response": r, "ground_truth": "2", "kind": "math"} for i, r in enumerate(responses)]
    response = httpx.post(f"{url}/v1/score", json={"items": items}, timeout=60)
    response.raise_for_status()
    return list(response.json()["results"])


def _worker_pids(server: RewardServerProcess) -> set[int]:
    """Scorer workers are the children of the server's forkserver."""
    forkservers = [p for p in psutil.Process(server.pid).children() if "forkserver" in " ".join(p.cmdline())]
    return {worker.pid for fs in forkservers for worker in fs.children()}


def _metric(url: str, name: str) -> float:
    for line in httpx.get(f"{url}/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not exported")


def test_stuck_item_killed_in_time_and_worker_replaced(server: RewardServerProcess) -> None:
    before = _worker_pids(server)
    assert len(before) == 2
    started = time.monotonic()
    hung, fine = _score(server.url, HANG, "\\boxed{2}")
    assert time.monotonic() - started <= ITEM_TIMEOUT_S + 1.0
    assert hung["status"] == "timeout" and fine["status"] == "ok"
    deadline = time.monotonic() + 20
    while _metric(server.url, "rlvr_reward_pool_workers") < 2:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    after = _worker_pids(server)
    assert len(before - after) == 1, "exactly the stuck worker is gone"
    assert _metric(server.url, 'rlvr_reward_pool_restarts_total{reason="timeout"}') >= 1


def test_crash_is_an_error_and_service_continues(server: RewardServerProcess) -> None:
    crashed, fine = _score(server.url, CRASH, "\\boxed{2}")
    assert crashed["status"] == "error" and "died" in str(crashed["detail"])
    assert fine["status"] == "ok"
    assert _score(server.url, "\\boxed{2}")[0]["reward"] == 1.0


def test_concurrent_requests_while_workers_hang(server: RewardServerProcess) -> None:
    """Every worker stuck at once: later requests queue, nothing is lost, all answered."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=6) as pool:
        stuck = [pool.submit(_score, server.url, HANG) for _ in range(2)]
        time.sleep(0.2)
        normal = [pool.submit(_score, server.url, "\\boxed{2}", "\\boxed{3}") for _ in range(4)]
        assert [f.result()[0]["status"] for f in stuck] == ["timeout", "timeout"]
        for future in normal:
            assert [r["reward"] for r in future.result()] == [1.0, 0.0]
    assert httpx.get(f"{server.url}/healthz").status_code == 200


def test_request_deadline_bounds_a_queue_of_stuck_items(tmp_path_factory: pytest.TempPathFactory) -> None:
    env = {"RLVR_REWARD_REQUEST_TIMEOUT_S": "3"}
    with run_reward_server(tmp_path_factory.mktemp("deadline"), item_timeout_s=1.0, stub=True, env=env) as server:
        started = time.monotonic()
        results = _score(server.url, *([HANG] * 10))
        assert time.monotonic() - started <= 3.0 + 1.5
        assert {r["status"] for r in results} == {"timeout"}
        assert any("deadline" in str(r["detail"]) for r in results)

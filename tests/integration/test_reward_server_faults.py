"""Stuck and crashing scorers inside a real server process: the item is answered, the worker replaced, the server
keeps serving (the stand-in scorer hangs or exits on a marker; everything else is the real scorer).

What is asserted is what the server promises and reports itself: each stuck item answered `timeout` by the deadline
the server enforced (its detail names the item limit or the request deadline), nothing lost, the worker replaced.
How long that took on the client's clock depends on how busy the machine is; it is recorded, never bounded.
"""

from __future__ import annotations

import concurrent.futures
import time
from collections.abc import Callable, Iterator

import httpx
import psutil
import pytest

from tests.service_processes import RewardServerProcess, run_reward_server
from tests.stub_scorers import CRASH, HANG

pytestmark = pytest.mark.integration

ITEM_TIMEOUT_S = 1.5
HANG_GUARD_S = 180.0  # only keeps a broken server from hanging the suite (above the 120 s request deadline)
ITEM_LIMIT_DETAIL = f"scoring exceeded the {ITEM_TIMEOUT_S:.2f}s item wall-clock limit; worker killed"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RewardServerProcess]:
    with run_reward_server(
        tmp_path_factory.mktemp("faults"), workers=2, item_timeout_s=ITEM_TIMEOUT_S, stub=True
    ) as proc:
        yield proc


def _score(url: str, *responses: str) -> list[dict[str, object]]:
    items = [{"id": i, "response": r, "ground_truth": "2", "kind": "math"} for i, r in enumerate(responses)]
    response = httpx.post(f"{url}/v1/score", json={"items": items}, timeout=HANG_GUARD_S)
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


def _wait_until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + HANG_GUARD_S
    while not condition():
        assert time.monotonic() < deadline, f"{what}: not within {HANG_GUARD_S} s"
        time.sleep(0.1)


def test_stuck_item_killed_at_its_limit_and_worker_replaced(
    server: RewardServerProcess, record_property: Callable[[str, object], None]
) -> None:
    before = _worker_pids(server)
    assert len(before) == 2
    timeouts = _metric(server.url, "rlvr_reward_timeouts_total")
    started = time.monotonic()
    hung, fine = _score(server.url, HANG, "\\boxed{2}")
    record_property("stuck_item_answered_after_s", round(time.monotonic() - started, 2))
    assert (hung["status"], hung["detail"]) == ("timeout", ITEM_LIMIT_DETAIL)  # the item limit, server-enforced
    assert fine["status"] == "ok"
    assert _metric(server.url, "rlvr_reward_timeouts_total") == timeouts + 1
    _wait_until(lambda: _metric(server.url, "rlvr_reward_pool_workers") == 2, "stuck worker replaced")
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
        time.sleep(0.2)  # lets the stuck ones go first on an idle machine; the assertions hold in any order
        normal = [pool.submit(_score, server.url, "\\boxed{2}", "\\boxed{3}") for _ in range(4)]
        assert [(r["status"], r["detail"]) for f in stuck for r in f.result()] == [("timeout", ITEM_LIMIT_DETAIL)] * 2
        for future in normal:
            assert [r["reward"] for r in future.result()] == [1.0, 0.0]
    assert httpx.get(f"{server.url}/healthz").status_code == 200


def test_request_deadline_bounds_a_queue_of_stuck_items(
    tmp_path_factory: pytest.TempPathFactory, record_property: Callable[[str, object], None]
) -> None:
    """Ten stuck items, one worker, 1 s each, a 3 s request deadline: at most three can use their whole item
    limit (one after another, by the server's clock); every other one is answered by the request deadline."""
    env = {"RLVR_REWARD_REQUEST_TIMEOUT_S": "3"}
    with run_reward_server(tmp_path_factory.mktemp("deadline"), item_timeout_s=1.0, stub=True, env=env) as server:
        started = time.monotonic()
        results = _score(server.url, *([HANG] * 10))
        record_property("ten_stuck_items_answered_after_s", round(time.monotonic() - started, 2))
    assert [r["status"] for r in results] == ["timeout"] * 10
    by_item_limit = [r for r in results if "1.00s item wall-clock limit" in r["detail"]]
    by_deadline = [r for r in results if "request deadline" in r["detail"]]
    assert len(by_item_limit) <= 3 and len(by_item_limit) + len(by_deadline) == 10, results

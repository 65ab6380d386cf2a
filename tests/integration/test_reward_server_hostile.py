"""Hostile inputs against a real reward server: each is answered with a clear status (a stuck one `timeout` at the
item limit the server enforces), and afterwards the server is healthy, still scores correctly and its memory stayed
bounded. Client-side latencies are recorded (`record_property`), never bounded: a busy machine is slow, not wrong."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator

import httpx
import pytest

from tests.service_processes import RewardServerProcess, run_reward_server

pytestmark = pytest.mark.integration

ITEM_TIMEOUT_S = 2.0
ITEM_LIMIT_DETAIL = f"scoring exceeded the {ITEM_TIMEOUT_S:.2f}s item wall-clock limit; worker killed"
HANG_GUARD_S = 180.0  # client timeouts: only keep a broken server from hanging the suite
MEMORY_GROWTH_LIMIT_BYTES = 1024 * 2**20
ITEM_STATUSES = {"ok", "timeout", "error", "invalid"}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RewardServerProcess]:
    with run_reward_server(tmp_path_factory.mktemp("hostile"), workers=2, item_timeout_s=ITEM_TIMEOUT_S) as proc:
        yield proc


@pytest.fixture(scope="module")
def http(server: RewardServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=HANG_GUARD_S) as client:
        yield client


@pytest.fixture(scope="module")
def baseline_rss(server: RewardServerProcess, http: httpx.Client) -> int:
    http.post("/v1/score", json={"items": [_item("\\boxed{2}", "2")]})  # warm
    return server.tree_rss_bytes()


def _item(response: str, ground_truth: str = "1", kind: str = "math", item_id: object = "x") -> dict[str, object]:
    return {"id": item_id, "response": response, "ground_truth": ground_truth, "kind": kind}


NESTED = 100_000
HOSTILE_ITEMS: dict[str, dict[str, object]] = {
    "deep_braces": _item("\\boxed{" + "{" * NESTED + "2" + "}" * NESTED + "}"),
    "deep_braces_unclosed": _item("\\boxed{" * (NESTED // 4)),
    "power_tower": _item("\\boxed{9^{9^{9^9}}}"),
    "power_tower_gold": _item("\\boxed{1}", ground_truth="9^{9^{9^9}}"),
    "power_tower_both": _item("\\boxed{9^{9^{9^9}}}", ground_truth="9^{9^{9^9}}"),
    "factorial": _item("\\boxed{1000000!}"),
    "factorial_both": _item("\\boxed{1000000!}", ground_truth="1000000!"),
    "factorial_gsm8k": _item("#### 1000000!", kind="gsm8k"),
    "huge_exponent_gsm8k": _item("The answer is 9**99999999999", kind="gsm8k"),
    "thousands_of_boxed": _item("\\boxed{1} " * 20_000),
    "boxed_fractions": _item("\\frac{" * 5_000 + "1" + "}{2}" * 5_000),
    "dollars": _item("$" * 200_000),
    "backslashes": _item("\\" * 200_000),
    "null_bytes": _item("\x00" * 10_000 + "\\boxed{1}"),
    "mcq_parens": _item("(" * 100_000, ground_truth="B", kind="mcq"),
    "long_digits": _item("\\boxed{" + "9" * 100_000 + "}", ground_truth="9" * 5_000),
    "matrix": _item("\\boxed{\\begin{pmatrix}" + "1&" * 20_000 + "1\\end{pmatrix}}"),
    "empty_strings": _item("", ground_truth="", item_id=""),
    "empty_response": _item(""),
    "unicode_soup": _item("".join(chr(c) for c in range(0x2000, 0x3000)) + "\\boxed{1}"),
}


@pytest.mark.parametrize("name", sorted(HOSTILE_ITEMS))
def test_hostile_item_gets_a_clear_status(
    http: httpx.Client, baseline_rss: int, name: str, record_property: Callable[[str, object], None]
) -> None:
    body = json.dumps({"items": [HOSTILE_ITEMS[name], _item("\\boxed{2}", "2", item_id="control")]})
    started = time.monotonic()
    response = http.post("/v1/score", content=body, headers={"content-type": "application/json"})
    record_property("answered_after_s", round(time.monotonic() - started, 3))
    assert response.status_code == 200, response.text[:500]
    hostile, control = response.json()["results"]
    assert hostile["status"] in ITEM_STATUSES and hostile["reward"] in (0.0, 1.0)
    assert hostile["status"] == "ok" or hostile.get("detail"), "a non-ok status must say why"
    if hostile["status"] == "timeout":  # stopped by the server at the item's own limit, not by a request deadline
        assert hostile["detail"] == ITEM_LIMIT_DETAIL, hostile
    assert (control["status"], control["reward"]) == ("ok", 1.0)


def _nested_json(depth: int) -> bytes:
    return b'{"items": ' + b"[" * depth + b"]" * depth + b"}"


HOSTILE_REQUESTS: dict[str, tuple[str, bytes, dict[str, str], int]] = {
    "megabyte_response": ("/v1/score", json.dumps({"items": [_item("x" * 2**20 + "\\boxed{1}")]}).encode(), {}, 413),
    "million_nested_braces": ("/v1/score", json.dumps({"items": [_item("{" * 10**6 + "}" * 10**6)]}).encode(), {}, 413),
    "megabyte_query": ("/get_reward", json.dumps({"query": ["q" * 2**20], "labels": ["1"]}).encode(), {}, 413),
    "too_many_items": ("/v1/score", json.dumps({"items": [_item("1")] * 1025}).encode(), {}, 413),
    "huge_body": ("/v1/score", b" " * (33 * 2**20), {}, 413),
    "million_nested_json": ("/v1/score", _nested_json(10**6), {}, 422),
    "invalid_json": ("/v1/score", b'{"items": [{"id": 1,', {}, 422),
    "invalid_utf8": ("/v1/score", b'{"items": [{"id": 1, "response": "\xc3\x28", "ground_truth": "1"}]}', {}, 422),
    "not_json_content_type": ("/v1/score", b"items=1", {"content-type": "text/plain"}, 422),
    "wrong_types": ("/v1/score", b'{"items": [{"id": [], "response": 1.5e999, "ground_truth": {}}]}', {}, 422),
    "missing_fields": ("/v1/score", b'{"items": [{"id": 1}]}', {}, 422),
    "items_not_list": ("/v1/score", b'{"items": "everything"}', {}, 422),
    "top_level_string": ("/v1/score", b'"items"', {}, 422),
    "nan_id": ("/v1/score", b'{"items": [{"id": NaN, "response": "1", "ground_truth": "1"}]}', {}, 422),
    "giant_int_id": (
        "/v1/score",
        b'{"items": [{"id": ' + b"9" * 100_000 + b', "response": "1", "ground_truth": "1"}]}',
        {},
        422,
    ),
    "long_id": ("/v1/score", json.dumps({"items": [{**_item("1"), "id": "i" * 300}]}).encode(), {}, 422),
    "labels_mismatch": ("/get_reward", b'{"query": ["a", "b"], "labels": ["1"]}', {}, 422),
    "labels_missing": ("/get_reward", b'{"query": ["a"]}', {}, 422),
    "empty_body": ("/v1/score", b"", {}, 422),
    "lone_surrogate": ("/v1/score", json.dumps({"items": [_item("\ud800 \\boxed{\udfff}")]}).encode(), {}, 422),
}


@pytest.mark.parametrize("name", sorted(HOSTILE_REQUESTS))
def test_hostile_request_is_refused_clearly(
    http: httpx.Client, baseline_rss: int, name: str, record_property: Callable[[str, object], None]
) -> None:
    route, body, headers, expected = HOSTILE_REQUESTS[name]
    started = time.monotonic()
    response = http.post(route, content=body, headers={"content-type": "application/json"} | headers)
    record_property("answered_after_s", round(time.monotonic() - started, 3))
    assert response.status_code == expected, response.text[:500]
    detail = response.json()
    assert detail.get("message") or isinstance(detail.get("detail"), str), detail


def test_chunked_body_over_limit_is_413(http: httpx.Client) -> None:
    def chunks() -> Iterator[bytes]:
        for _ in range(40):
            yield b" " * 2**20

    response = http.post("/v1/score", content=chunks(), headers={"content-type": "application/json"})
    assert response.status_code == 413


def test_pathological_batch_is_answered_item_by_item(
    http: httpx.Client, record_property: Callable[[str, object], None]
) -> None:
    items = [dict(HOSTILE_ITEMS[name], id=name) for name in sorted(HOSTILE_ITEMS)] * 2
    started = time.monotonic()
    response = http.post("/v1/score", json={"items": items})
    record_property("batch_answered_after_s", round(time.monotonic() - started, 2))
    assert response.status_code == 200, response.text[:500]
    results = response.json()["results"]
    assert [r["id"] for r in results] == [i["id"] for i in items]  # every item answered, in order
    assert {r["status"] for r in results} <= ITEM_STATUSES
    # Any timeout is the server's own: the item's limit, or the request deadline on a machine too busy to finish.
    timeouts = [r["detail"] for r in results if r["status"] == "timeout"]
    assert all(detail == ITEM_LIMIT_DETAIL or "request deadline" in detail for detail in timeouts), timeouts


def test_server_healthy_and_bounded_afterwards(
    server: RewardServerProcess, http: httpx.Client, baseline_rss: int
) -> None:
    assert http.get("/healthz").status_code == 200
    deadline = time.monotonic() + HANG_GUARD_S
    while (ready := http.get("/readyz")).status_code != 200 or ready.json()["workers"] != 2:
        assert time.monotonic() < deadline, ready.text
        time.sleep(0.2)
    result = http.post("/v1/score", json={"items": [_item("so \\boxed{\\frac{1}{2}}", "0.5")]}).json()["results"][0]
    assert (result["status"], result["reward"]) == ("ok", 1.0)
    growth = server.tree_rss_bytes() - baseline_rss
    assert growth < MEMORY_GROWTH_LIMIT_BYTES, f"RSS grew by {growth / 2**20:.0f} MiB"
    metrics = http.get("/metrics").text
    assert 'rlvr_reward_requests_total{code="500"' not in metrics, server.log_tail()
    assert "Traceback" not in server.log_tail(), server.log_tail()

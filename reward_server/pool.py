"""Scorer worker pool: long-lived processes, one item at a time each, a hard wall-clock limit per item.

Why processes: math-verify's own timeout uses `signal.alarm`, which works only in a main thread, and a CPU-bound
sympy call on a pathological expression (`9^{9^{9^9}}`) cannot be interrupted from another thread. Each worker runs
the scorer in its own main thread; the dispatcher (asyncio, in the server process) waits on the worker's pipe with a
deadline, SIGKILLs the worker when it passes, answers the item `timeout` and starts a replacement. Workers come
from a forkserver that preloaded math-verify, so a replacement is ready in well under a second.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
import multiprocessing
import os
import resource
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.context import BaseContext
from typing import Any, Literal

from reward_server.metrics import RewardMetrics
from reward_server.scorers import ScoreOutcome, score
from services.core.lifecycle import die_with_parent

logger = logging.getLogger(__name__)

ScoreFn = Callable[[Any, str, str], ScoreOutcome]
"""(kind, response, ground_truth) -> outcome; module-level so it pickles by reference into the workers."""

_MAX_REPLY_CHARS = 512
_GRACE_S = 1.0
_RESTART_BACKOFF_S = (0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
_IDLE_CHECK_S = 1.0
_PRELOAD = ("math_verify", "sympy", "reward_server.scorers")


@dataclass(frozen=True)
class ItemOutcome:
    """What the pool answers for one item."""

    status: Literal["ok", "timeout", "error"]
    reward: float = 0.0
    extracted: str | None = None
    detail: str | None = None


@dataclass(frozen=True)
class ScoreJob:
    kind: str
    response: str
    ground_truth: str


@dataclass
class _Queued:
    job: ScoreJob
    deadline: float  # event-loop time by which the item must be answered
    future: asyncio.Future[ItemOutcome] = field(repr=False)


# ---------------------------------------------------------------- worker process side


def _limit_memory(memory_limit_mb: int) -> None:
    if memory_limit_mb > 0:
        cap = memory_limit_mb * 2**20
        _, hard = resource.getrlimit(resource.RLIMIT_AS)
        resource.setrlimit(resource.RLIMIT_AS, (cap if hard == resource.RLIM_INFINITY else min(cap, hard), hard))


def _clip(text: str | None) -> str | None:
    """Short, and encodable as UTF-8 whatever the scorer echoed from its input."""
    if text is None:
        return None
    return text[:_MAX_REPLY_CHARS].encode("utf-8", "replace").decode("utf-8")


def _score_safely(score_fn: ScoreFn, kind: str, response: str, ground_truth: str) -> tuple[Any, ...]:
    try:
        outcome = score_fn(kind, response, ground_truth)
        reward = float(outcome.reward)
        if not math.isfinite(reward):
            return ("error", 0.0, None, f"scorer returned a non-finite reward {reward!r}")
        return ("ok", reward, _clip(outcome.extracted), _clip(outcome.detail))
    except Exception as exc:  # any scorer failure is this item's `error`, never the worker's death
        return ("error", 0.0, None, _clip(f"scorer failed: {type(exc).__name__}: {exc}"))


def _worker_main(conn: Connection, score_fn: ScoreFn, memory_limit_mb: int) -> None:
    """Entry point of a worker process: warm up, report ready, then score jobs until told to stop."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the server's to handle; it stops us in order
    die_with_parent(signal.SIGKILL)  # a SIGKILLed server (or its forkserver) must not leave a scorer behind
    _score_safely(score_fn, "math", "\\boxed{1}", "1")  # pay lazy imports / parser builds before `ready`
    _limit_memory(memory_limit_mb)
    conn.send(("ready", os.getpid()))
    while True:
        try:
            message = conn.recv()
        except EOFError:
            return
        if message is None:
            return
        kind, response, ground_truth = message
        conn.send(_score_safely(score_fn, kind, response, ground_truth))


# ---------------------------------------------------------------- server side


class _Worker:
    """One scorer process and the server's end of its pipe."""

    def __init__(self, process: multiprocessing.process.BaseProcess, conn: Connection) -> None:
        self.process = process
        self.conn = conn

    async def receive(self, timeout_s: float) -> Any:
        """The next message; TimeoutError when none came in time, EOFError when the worker died."""
        loop = asyncio.get_running_loop()
        readable: asyncio.Future[None] = loop.create_future()
        fd = self.conn.fileno()

        def on_readable() -> None:
            if not readable.done():
                readable.set_result(None)

        loop.add_reader(fd, on_readable)
        try:
            await asyncio.wait_for(readable, timeout_s)
        finally:
            loop.remove_reader(fd)
        return self.conn.recv()

    def alive(self) -> bool:
        """Whether the process still runs (False once closed: `close()` may be reaping it concurrently)."""
        try:
            return self.process.is_alive()
        except ValueError:
            return False

    def kill(self) -> None:
        if self.process.is_alive():
            self.process.kill()
        self.conn.close()

    async def reap(self) -> int | None:
        """Wait for the (killed or exited) process and free its handles; its exit code."""
        await asyncio.to_thread(self.process.join, 5.0)
        code = self.process.exitcode
        if code is not None:
            self.process.close()
        return code

    async def stop(self) -> None:
        """Ask the worker to exit, kill it if it does not within a second."""
        with contextlib.suppress(OSError):
            self.conn.send(None)
        await asyncio.to_thread(self.process.join, 1.0)
        self.kill()
        await self.reap()


async def _start_worker(ctx: BaseContext, score_fn: ScoreFn, memory_limit_mb: int, timeout_s: float) -> _Worker:
    parent_conn, child_conn = ctx.Pipe(duplex=True)
    process = ctx.Process(  # type: ignore[attr-defined]
        target=_worker_main, args=(child_conn, score_fn, memory_limit_mb), name="reward-scorer", daemon=True
    )
    await asyncio.to_thread(process.start)
    child_conn.close()
    worker = _Worker(process, parent_conn)
    try:
        message = await worker.receive(timeout_s)
        if not (isinstance(message, tuple) and message[:1] == ("ready",)):
            raise RuntimeError(f"worker sent {message!r} instead of ready")
    except BaseException:
        worker.kill()
        await worker.reap()
        raise
    return worker


class ScorerPool:
    """`size` scorer processes fed from one FIFO queue; see the module docstring for the timeout design."""

    def __init__(
        self,
        *,
        size: int,
        item_timeout_s: float,
        start_timeout_s: float,
        memory_limit_mb: int,
        start_method: str,
        max_queued_items: int,
        metrics: RewardMetrics,
        score_fn: ScoreFn = score,
    ) -> None:
        self._size = size
        self._item_timeout_s = item_timeout_s
        self._start_timeout_s = start_timeout_s
        self._memory_limit_mb = memory_limit_mb
        self._start_method = start_method
        self._max_queued_items = max_queued_items
        self._metrics = metrics
        self._score_fn = score_fn
        self._queue: asyncio.Queue[_Queued] = asyncio.Queue()
        self._workers: list[_Worker | None] = [None] * size
        self._slots: list[asyncio.Task[None]] = []
        self._all_up = asyncio.Event()
        self._closing = False

    @property
    def ready(self) -> bool:
        """Accepting items: all initial workers came up once and the pool is not closing. A respawn in progress
        stays ready (items wait in the queue for the replacement); /readyz asks `not_ready_reason` instead."""
        return self._all_up.is_set() and not self._closing

    @property
    def alive_workers(self) -> int:
        """Workers that reported ready and whose process still runs (one being replaced does not count)."""
        return sum(1 for worker in self._workers if worker is not None and worker.alive())

    def not_ready_reason(self) -> str | None:
        """Why /readyz answers 503, or None: starting, closing, or no live worker (items then wait in the queue for
        a replacement, but a balancer had better send new ones elsewhere)."""
        alive = self.alive_workers
        if self._closing:
            return "scorer pool is shutting down"
        if not self._all_up.is_set():
            return f"scorer pool is starting: {alive} of {self._size} workers up"
        if alive == 0:
            return "no live scorer worker: every one is being replaced (see rlvr_reward_pool_restarts_total)"
        return None

    @property
    def queue_depth(self) -> int:
        return self._queue.qsize()

    def has_room_for(self, count: int) -> bool:
        return self._queue.qsize() + count <= self._max_queued_items

    async def start(self) -> None:
        """Start every worker (retrying failures with backoff); returns once all are ready."""
        ctx = multiprocessing.get_context(self._start_method)
        if self._start_method == "forkserver":
            ctx.set_forkserver_preload(list(dict.fromkeys([*_PRELOAD, self._score_fn.__module__])))
        self._slots = [asyncio.create_task(self._run_slot(ctx, i), name=f"scorer-slot-{i}") for i in range(self._size)]
        await self._all_up.wait()

    async def close(self) -> None:
        """Stop the workers; items still queued or running are answered `error`."""
        self._closing = True
        for task in self._slots:
            task.cancel()
        await asyncio.gather(*self._slots, return_exceptions=True)
        while not self._queue.empty():
            _answer(self._queue.get_nowait(), ItemOutcome("error", detail="server shutting down"))
        await asyncio.gather(*(w.stop() for w in self._workers if w is not None), return_exceptions=True)
        self._workers = [None] * self._size
        self._metrics.pool_workers.set(0)
        self._metrics.queue_depth.set(0)

    async def score_batch(self, jobs: Sequence[ScoreJob], deadline: float) -> list[ItemOutcome]:
        """Score `jobs` (in any order across workers); every one is answered by `deadline` + a small grace."""
        loop = asyncio.get_running_loop()
        queued = [_Queued(job, deadline, loop.create_future()) for job in jobs]
        for item in queued:
            self._queue.put_nowait(item)
        self._metrics.queue_depth.set(self._queue.qsize())
        futures = [item.future for item in queued]
        if futures:
            await asyncio.wait(futures, timeout=max(0.0, deadline - loop.time()) + _GRACE_S)
        late = ItemOutcome("timeout", detail="no scorer worker finished the item before the request deadline")
        for item in queued:
            _answer(item, late)  # no-op for answered items; the slot skips the late ones
        return [item.future.result() for item in queued]

    async def _run_slot(self, ctx: BaseContext, index: int) -> None:
        await self._replace_worker(ctx, index, reason=None)
        current: _Queued | None = None
        try:
            while True:
                current = await self._next_item(ctx, index)
                self._metrics.queue_depth.set(self._queue.qsize())
                if current.future.done():
                    continue
                worker = self._workers[index]
                if worker is None or not worker.process.is_alive():  # died while idle (e.g. OOM-killed)
                    await self._replace_worker(ctx, index, reason="crash")
                outcome, healthy, restart_reason = await self._execute(index, current)
                _answer(current, outcome)
                if not healthy:
                    await self._replace_worker(ctx, index, reason=restart_reason)
        except asyncio.CancelledError:
            if current is not None:
                _answer(current, ItemOutcome("error", detail="server shutting down"))
            raise

    async def _next_item(self, ctx: BaseContext, index: int) -> _Queued:
        """The next queued item. While idle, check the worker every second and replace it if it died (e.g.
        OOM-killed): otherwise /readyz would stay 503 until an item came, and a balancer sends none to a 503."""
        while True:
            try:
                # Cancelling a waiting `get` leaves the queue as it was, so no item is lost to the timeout.
                return await asyncio.wait_for(self._queue.get(), _IDLE_CHECK_S)
            except TimeoutError:
                worker = self._workers[index]
                if worker is None or not worker.alive():
                    await self._replace_worker(ctx, index, reason="crash")

    async def _execute(self, index: int, queued: _Queued) -> tuple[ItemOutcome, bool, str]:
        """Run one item on slot `index`'s worker: (outcome, worker still usable, restart reason if not)."""
        worker = self._workers[index]
        assert worker is not None
        budget_s = min(self._item_timeout_s, queued.deadline - asyncio.get_running_loop().time())
        if budget_s <= 0:
            return ItemOutcome("timeout", detail="not started before the request deadline (server busy)"), True, ""
        job = queued.job
        started = time.perf_counter()
        try:
            worker.conn.send((job.kind, job.response, job.ground_truth))
            status, reward, extracted, detail = await worker.receive(budget_s)
        except TimeoutError:
            worker.kill()
            self._metrics.timeouts.inc()
            why = "item" if budget_s >= self._item_timeout_s else "request deadline"
            detail = f"scoring exceeded the {budget_s:.2f}s {why} wall-clock limit; worker killed"
            return ItemOutcome("timeout", detail=detail), False, "timeout"
        except (EOFError, OSError) as exc:
            worker.kill()
            return ItemOutcome("error", detail=f"scorer worker died ({type(exc).__name__})"), False, "crash"
        finally:
            self._metrics.item_duration.labels(kind=job.kind).observe(time.perf_counter() - started)
        return ItemOutcome(status, reward, extracted, detail), True, ""

    async def _replace_worker(self, ctx: BaseContext, index: int, reason: str | None) -> None:
        """Reap slot `index`'s worker (if any) and start a new one, retrying with backoff until it is up."""
        old = self._workers[index]
        if old is not None:
            self._workers[index] = None
            self._metrics.pool_workers.dec()
            code = await old.reap()
            logger.warning("scorer worker %d replaced (reason=%s, exit code %s)", index, reason, code)
            self._metrics.pool_restarts.labels(reason=reason or "crash").inc()
        for attempt in itertools.count():
            try:
                worker = await _start_worker(ctx, self._score_fn, self._memory_limit_mb, self._start_timeout_s)
                break
            except Exception as exc:  # keep trying: readiness stays 503 and the log says why
                delay = _RESTART_BACKOFF_S[min(attempt, len(_RESTART_BACKOFF_S) - 1)]
                logger.error("scorer worker %d failed to start (%r); retrying in %.1fs", index, exc, delay)
                self._metrics.pool_restarts.labels(reason="start_failed").inc()
                await asyncio.sleep(delay)
        self._workers[index] = worker
        self._metrics.pool_workers.inc()
        if self.alive_workers == self._size:
            self._all_up.set()


def _answer(queued: _Queued, outcome: ItemOutcome) -> None:
    if not queued.future.done():
        queued.future.set_result(outcome)

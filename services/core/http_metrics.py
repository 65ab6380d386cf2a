"""One ASGI middleware for every service's request metrics (count + latency by a bounded route label)."""

from __future__ import annotations

import time
from collections.abc import Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

RequestObserver = Callable[[Scope, int, float], None]
"""Called once per HTTP request with its scope (routing done), the response status, and the seconds it took."""


class RequestMetricsMiddleware:
    """Pure ASGI (streaming-safe, no body buffering): observes every HTTP request, errors included (code 500 when
    the app raised before answering). The observer picks the route label so label sets stay bounded."""

    def __init__(self, app: ASGIApp, observe: RequestObserver) -> None:
        self.app = app
        self.observe = observe

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        code = 500

        async def send_with_status(message: Message) -> None:
            nonlocal code
            if message["type"] == "http.response.start":
                code = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_with_status)
        finally:
            self.observe(scope, code, time.perf_counter() - started)

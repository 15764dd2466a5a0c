"""Pure ASGI middleware guarding request bodies before FastAPI reads them: too large
(413, from Content-Length or while streaming) or pausing too long between chunks (408,
then the connection closes). Once the body is complete, ``receive`` is not guarded
(streaming responses wait on it for the disconnect)."""

from __future__ import annotations

import asyncio
import re

from fastapi import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.api.problems import send_problem

_UPLOAD_PATH = re.compile(r"/v1/datasets/[^/]+(/observations)?/?")


def is_upload(method: str, path: str) -> bool:
    """A dataset upload (PUT /v1/datasets/{name}) or append (POST .../observations)."""
    match = _UPLOAD_PATH.fullmatch(path)
    if match is None:
        return False
    return method == ("POST" if match.group(1) else "PUT")


class BodyTooLarge(HTTPException):
    """Raised from ``receive``; FastAPI re-raises HTTPExceptions met while reading a body."""

    def __init__(self, max_bytes: int, setting: str = "FORECAST_MAX_BODY_BYTES") -> None:
        super().__init__(413, f"the request body exceeds {max_bytes} bytes (setting {setting})")
        self.max_bytes = max_bytes


class BodyTimedOut(HTTPException):
    def __init__(self, seconds: float) -> None:
        detail = f"the request body paused for more than {seconds:g}s (setting FORECAST_BODY_TIMEOUT)"
        super().__init__(408, detail, headers={"Connection": "close"})


class BodyLimits:
    def __init__(self, app: ASGIApp, max_bytes: int, pause_seconds: float, upload_bytes: int | None = None) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.pause_seconds = pause_seconds
        self.upload_bytes = upload_bytes if upload_bytes is not None else max_bytes

    def _limit(self, scope: Scope) -> tuple[int, str]:
        """Dataset uploads and appends (streamed to disk) have their own, larger limit."""
        if is_upload(scope.get("method", ""), scope.get("path", "")):
            return self.upload_bytes, "FORECAST_MAX_UPLOAD_BYTES"
        return self.max_bytes, "FORECAST_MAX_BODY_BYTES"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        max_bytes, setting = self._limit(scope)
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = 0
                if declared > max_bytes:
                    await self._refuse(send, BodyTooLarge(max_bytes, setting), scope.get("path", ""))
                    return
        received = 0
        body_complete = started = False

        async def guarded_receive() -> Message:
            nonlocal received, body_complete
            if body_complete:
                return await receive()
            try:
                # a deadline on this task (a timer handle), not `wait_for` (a new task per message)
                async with asyncio.timeout(self.pause_seconds):
                    message = await receive()
            except TimeoutError:
                raise BodyTimedOut(self.pause_seconds) from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > max_bytes:
                    raise BodyTooLarge(max_bytes, setting)
            body_complete = message["type"] != "http.request" or not message.get("more_body", False)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, guarded_receive, tracking_send)
        except (BodyTooLarge, BodyTimedOut) as exc:
            if not started:
                await self._refuse(send, exc, scope.get("path", ""))

    @staticmethod
    async def _refuse(send: Send, exc: BodyTooLarge | BodyTimedOut, path: str) -> None:
        if isinstance(exc, BodyTooLarge):
            await send_problem(send, 413, "Payload too large", str(exc.detail), path=path, limit=exc.max_bytes)
        else:
            close = ((b"connection", b"close"),)
            await send_problem(send, 408, "Request timeout", str(exc.detail), headers=close, path=path)

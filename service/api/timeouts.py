"""Pure ASGI middleware: a request body that pauses too long between chunks gets a 408."""

from __future__ import annotations

import asyncio

from fastapi import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.api.problems import send_problem


def _detail(seconds: float) -> str:
    return f"the request body paused for more than {seconds:g}s (setting FORECAST_BODY_TIMEOUT)"


class BodyTimedOut(HTTPException):
    """Raised from ``receive``; FastAPI re-raises HTTPExceptions met while reading a body."""

    def __init__(self, seconds: float) -> None:
        super().__init__(408, _detail(seconds), headers={"Connection": "close"})


class BodyTimeout:
    """Each ``receive`` of a body chunk may wait ``seconds``; then 408 (if nothing was answered
    yet) and the connection is closed. Once the body is complete, ``receive`` is not timed
    (streaming responses wait on it for the disconnect)."""

    def __init__(self, app: ASGIApp, seconds: float) -> None:
        self.app = app
        self.seconds = seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        body_complete = False
        started = False

        async def timed_receive() -> Message:
            nonlocal body_complete
            if body_complete:
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), self.seconds)
            except TimeoutError:
                raise BodyTimedOut(self.seconds) from None
            body_complete = message["type"] != "http.request" or not message.get("more_body", False)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, timed_receive, tracking_send)
        except BodyTimedOut:
            if not started:
                await self._refuse(send)

    async def _refuse(self, send: Send) -> None:
        await send_problem(send, 408, "Request timeout", _detail(self.seconds), headers=((b"connection", b"close"),))

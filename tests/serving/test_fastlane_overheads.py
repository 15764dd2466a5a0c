"""The per-request overheads trimmed for the fast lane keep their behaviour: the body pause
deadline (408, then close) without a task per message, a quiet ``receive`` once the body is
complete, and generated request ids that are version-4 UUIDs as before."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

from starlette.types import Message, Receive, Scope, Send

from service.api.limits import BodyLimits
from service.observability import new_request_id


def _scope() -> Scope:
    return {"type": "http", "method": "POST", "path": "/v1/models/m/predict", "headers": []}


async def _reading_app(scope: Scope, receive: Receive, send: Send) -> None:
    """Reads the whole body, then answers it back (a route)."""
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body", False):
            break
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body})


def _run(app: Any, messages: list[tuple[float, Message]], pause: float) -> list[Message]:
    """``app`` behind BodyLimits, each message delivered after its delay."""
    sent: list[Message] = []

    async def receive() -> Message:
        delay, message = messages.pop(0)
        await asyncio.sleep(delay)
        return message

    async def send(message: Message) -> None:
        sent.append(message)

    asyncio.run(BodyLimits(app, max_bytes=1000, pause_seconds=pause)(_scope(), receive, send))
    return sent


def test_a_body_within_the_pause_is_read_whole() -> None:
    chunks = [(0.0, {"type": "http.request", "body": b"ab", "more_body": True})]
    chunks.append((0.01, {"type": "http.request", "body": b"cd", "more_body": False}))
    sent = _run(_reading_app, chunks, pause=0.5)
    assert sent[0]["status"] == 200 and sent[1]["body"] == b"abcd"


def test_a_body_pausing_too_long_is_408_and_closes() -> None:
    chunks = [(0.0, {"type": "http.request", "body": b"ab", "more_body": True})]
    chunks.append((2.0, {"type": "http.request", "body": b"cd", "more_body": False}))
    sent = _run(_reading_app, chunks, pause=0.05)
    assert sent[0]["status"] == 408
    assert (b"connection", b"close") in sent[0]["headers"]
    problem = json.loads(sent[1]["body"])
    assert problem["status"] == 408 and "FORECAST_BODY_TIMEOUT" in problem["detail"]


def test_receive_after_the_body_is_not_under_the_deadline() -> None:
    """A streaming answer waits on ``receive`` for the disconnect, longer than the pause."""

    async def waits_for_disconnect(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        assert (await receive())["type"] == "http.disconnect"
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"done"})

    chunks = [(0.0, {"type": "http.request", "body": b"x", "more_body": False}), (0.2, {"type": "http.disconnect"})]
    sent = _run(waits_for_disconnect, chunks, pause=0.05)
    assert sent[0]["status"] == 200 and sent[1]["body"] == b"done"


def test_no_task_is_made_per_body_message() -> None:
    """The deadline is a timer on the request's own task (``wait_for`` made one per message)."""
    made: list[Any] = []

    async def main() -> None:
        loop = asyncio.get_running_loop()
        factory = loop.get_task_factory()
        loop.set_task_factory(lambda lp, coro, **kw: made.append(coro) or asyncio.Task(coro, loop=lp, **kw))
        chunks = [{"type": "http.request", "body": b"a", "more_body": True} for _ in range(20)]
        chunks.append({"type": "http.request", "body": b"", "more_body": False})

        async def receive() -> Message:
            return chunks.pop(0)

        sent: list[Message] = []

        async def send(message: Message) -> None:
            sent.append(message)

        await BodyLimits(_reading_app, max_bytes=1000, pause_seconds=1.0)(_scope(), receive, send)
        loop.set_task_factory(factory)
        assert sent[1]["body"] == b"a" * 20

    asyncio.run(main())
    assert made == []


def test_generated_request_ids_are_uuid4_hex() -> None:
    ids = [new_request_id() for _ in range(2000)]
    assert len(set(ids)) == len(ids)
    for rid in ids:
        parsed = uuid.UUID(hex=rid)
        assert parsed.hex == rid and parsed.version == 4 and parsed.variant == uuid.RFC_4122

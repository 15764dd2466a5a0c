"""The hot path in front of FastAPI: a repeated predict request is answered from the
response cache without routing, dependency solving or body validation.

An entry is written by the predict route after it answered from the fast path, keyed by
(model, exact body bytes, media type); it is served here only while it is still what
the route would answer (production still points at its version). Anything else — a
miss, a failed key check, an oversized body — goes to FastAPI with the body replayed.
"""

from __future__ import annotations

import re

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import ServiceError
from service.observability import Metrics
from service.registry.store import NAME_PATTERN
from service.security import KeyRing
from service.serving.cache import ModelCache
from service.serving.responses import ResponseCache

PREDICT_ROUTE = "/v1/models/{name}/predict"  # the route template: cached answers are counted under it
# the route's own name rule (the registry's), so the lane never answers a path the route would refuse
PREDICT_PATH = re.compile("/v1/models/(" + NAME_PATTERN.pattern.removeprefix("^").removesuffix("$") + ")/predict")
JSON, CSV, ARROW = "application/json", "text/csv", "application/vnd.apache.arrow.stream"


def negotiate(accept: str | None) -> str:
    """The response media type for an Accept header (JSON unless CSV or Arrow is asked)."""
    accept = accept or ""
    if ARROW in accept:
        return ARROW
    if CSV in accept and JSON not in accept:
        return CSV
    return JSON


class PredictFastLane:
    """Serves what the predict route cached, with the route's key check, body limit and
    metric labels; anything else goes to FastAPI with the body replayed."""

    def __init__(
        self,
        app: ASGIApp,
        responses: ResponseCache,
        cache: ModelCache,
        keys: KeyRing,
        metrics: Metrics,
        max_body_bytes: int,
    ) -> None:
        self.app = app
        self.responses = responses
        self.cache = cache
        self.keys = keys
        self.metrics = metrics
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        match = PREDICT_PATH.fullmatch(scope.get("path", "")) if scope["type"] == "http" else None
        if match is None or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        body, messages, complete = await self._read_body(receive)
        replay = _replaying(messages, receive)
        if complete and await self._answer_from_cache(scope, match.group(1), body, send):
            return
        await self.app(scope, replay, send)

    async def _read_body(self, receive: Receive) -> tuple[bytes, list[Message], bool]:
        """Up to the size limit; beyond it, FastAPI and the body limit take over."""
        messages: list[Message] = []
        size = 0
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                return b"", messages, False
            size += len(message.get("body", b""))
            if size > self.max_body_bytes:
                return b"", messages, False
            if not message.get("more_body", False):
                return b"".join(m.get("body", b"") for m in messages), messages, True

    async def _answer_from_cache(self, scope: Scope, name: str, body: bytes, send: Send) -> bool:
        headers = dict(scope.get("headers") or [])
        media = negotiate(headers.get(b"accept", b"").decode("latin-1"))
        entry = self.responses.get((name, body, media))
        if entry is None:
            return False
        try:
            self.keys.authorize(headers.get(b"authorization", b"").decode("latin-1") or None, "read")
            served = self.cache.peek(name) if entry.follows_production else None
        except ServiceError:
            return False  # FastAPI answers with the proper problem (401, 403, 404)
        if entry.follows_production and (served is None or served.version != entry.version):
            return False
        metrics = self.metrics
        metrics.predictions.labels(name, str(entry.version)).inc()
        metrics.fast_path.labels(name, "cache").inc()
        state = scope.setdefault("state", {})
        state["model"], state["version"], state["route"] = name, entry.version, PREDICT_ROUTE
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-length", str(len(entry.payload)).encode()), *entry.headers],
            }
        )
        await send({"type": "http.response.body", "body": entry.payload})
        return True


def _replaying(messages: list[Message], receive: Receive) -> Receive:
    pending = list(messages)

    async def replay() -> Message:
        if pending:
            return pending.pop(0)
        return await receive()

    return replay

"""The hot path in front of FastAPI: a predict request the precomputed table answers is
served here without routing, dependency solving or body validation.

Two ways in, both under the route's rules (the registry's name pattern, the key check,
the body limit, the metric labels, the same bytes and headers):

- a repeated body: the predict route caches its fast answers under (model, exact body
  bytes, media type); one is served while it is still what the route would answer
  (production still points at its version);
- a small plain JSON body (`parse_plain`: horizon or fh, series, coverage, quantiles,
  version, alias; nothing else) is parsed here, its version taken from memory
  (`ModelCache.peek`, never a load) and answered by `ServedVersion.try_fast`, cached under
  a normalised key (the version served, the steps asked, series, sorted levels), so other
  byte spellings of the same request share the entry.

Anything else — a miss the table cannot answer, a body with tables or timestamps, any
validation error, a failed key check, an oversized body — goes to FastAPI with the body
replayed, and the one error table answers.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import orjson
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import ServiceError
from service.forecasting.served import Answer, Limits, PredictQuery, ServedVersion
from service.observability import Metrics
from service.registry.store import NAME_PATTERN
from service.security import KeyRing
from service.serving.cache import ModelCache
from service.serving.responses import CachedAnswer, Headers, ResponseCache
from service.tables import encode_arrow, encode_csv, encode_json, format_time, json_columns

PREDICT_ROUTE = "/v1/models/{name}/predict"  # the route template: cached answers are counted under it
# the route's own name rule (the registry's), so the lane never answers a path the route would refuse
PREDICT_PATH = re.compile("/v1/models/(" + NAME_PATTERN.pattern.removeprefix("^").removesuffix("$") + ")/predict")
JSON, CSV, ARROW = "application/json", "text/csv", "application/vnd.apache.arrow.stream"

PLAIN_BODY_BYTES = 8 * 1024
"""Bodies up to this size are parsed by the lane (orjson: a few microseconds); larger ones go
to the route, which parses them on a worker thread past its own inline bound."""
PLAIN_KEYS = frozenset({"horizon", "fh", "series", "coverage", "quantiles", "version", "alias"})
NORMALISED = b"\x00"  # starts a normalised key's body slot: no JSON body starts with a NUL byte
HEADER_BLOCKS = 256  # header templates kept (one per version and media type served)
COUNTERS = 1024  # metric children kept (one per model, version and path)


def negotiate(accept: str | None) -> str:
    """The response media type for an Accept header (JSON unless CSV or Arrow is asked)."""
    accept = accept or ""
    if ARROW in accept:
        return ARROW
    if CSV in accept and JSON not in accept:
        return CSV
    return JSON


def encode_forecast(name: str, served: ServedVersion, answer: Answer, media: str) -> tuple[bytes, str | int]:
    """The predict answer's body in ``media`` and the cutoff it names (for X-Cutoff)."""
    cutoff = served.cutoff_text if answer.cutoff is served.cutoff else format_time(answer.cutoff)
    if media == JSON:
        payload = encode_json(
            {
                "model": name,
                "version": served.version,
                "cutoff": cutoff,
                "freq": served.freq,
                "forecast": json_columns(answer.columns),
                **({"observations_mode": answer.observations_mode} if answer.observations_mode else {}),
            }
        )
    else:
        payload = encode_arrow(answer.columns) if media == ARROW else encode_csv(answer.columns)
    return payload, cutoff


def answer_headers(served: ServedVersion, cutoff: str | int) -> dict[str, str]:
    """The predict answer's own headers (besides content type and length)."""
    return {"X-Model": served.name, "X-Model-Version": str(served.version), "X-Cutoff": str(cutoff)}


@dataclass(frozen=True, slots=True)
class PlainBody:
    """A predict body of plain keys only, checked as `PredictRequest` checks them (strict types,
    levels in (0, 1) sorted and unique); series still as the wire spells them."""

    horizon: int | None
    fh: tuple[int, ...] | None
    series: tuple[Any, ...] | None
    coverage: tuple[float, ...]
    quantiles: tuple[float, ...]
    version: int | None
    alias: str | None

    def query(self, keys: tuple[str, ...]) -> PredictQuery | None:
        """The domain query for a version with these key columns; None if a series key does
        not fit them (the route's 422 says how)."""
        series: tuple[tuple[str, ...], ...] | None = None
        if self.series is not None:
            found = [_series_key(s, keys) for s in self.series]
            if None in found:
                return None
            series = tuple(k for k in found if k is not None)
        return PredictQuery(
            horizon=self.horizon,
            fh=self.fh,
            series=series,
            coverage=self.coverage,
            quantiles=self.quantiles,
        )


def _is_int(value: Any) -> bool:
    return type(value) is int  # StrictInt: no bool, no float


def _levels(value: Any) -> tuple[float, ...] | None:
    if value is None:
        return None
    if type(value) is not list or not all(type(v) is float and 0.0 < v < 1.0 for v in value):
        return None
    return tuple(sorted(set(value)))


def _series_key(raw: Any, keys: tuple[str, ...]) -> tuple[str, ...] | None:
    """`normalize_series` for the spellings `parse_plain` lets through."""
    if type(raw) is str:
        return (raw,)
    if type(raw) is list:
        return tuple(str(v) for v in raw)
    if len(raw) != len(keys) or any(k not in raw for k in keys):
        return None
    return tuple(str(raw[k]) for k in keys)


def _series_item(item: Any) -> bool:
    if type(item) is str:
        return True
    if type(item) is list:
        return all(type(v) is str or type(v) is int for v in item)
    if type(item) is dict:
        return all(type(v) is str or type(v) is int for v in item.values())
    return False


def parse_plain(body: bytes) -> PlainBody | None:
    """The body as `PlainBody` when it is a JSON object of plain keys whose values the route
    would accept as they are; None for anything else (the route answers it)."""
    try:
        raw = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if type(raw) is not dict or not raw.keys() <= PLAIN_KEYS:
        return None
    get = raw.get
    horizon, fh, series, version, alias = get("horizon"), get("fh"), get("series"), get("version"), get("alias")
    if horizon is not None and not _is_int(horizon):
        return None
    if fh is not None and (type(fh) is not list or not all(_is_int(s) for s in fh)):
        return None
    if series is not None and (type(series) is not list or not all(_series_item(s) for s in series)):
        return None
    if version is not None and not (_is_int(version) and version >= 1):
        return None
    if alias is not None and type(alias) is not str:
        return None
    coverage, quantiles = _levels(get("coverage", [])), _levels(get("quantiles", []))
    if coverage is None or quantiles is None:
        return None
    return PlainBody(
        horizon=horizon,
        fh=tuple(fh) if fh is not None else None,
        series=tuple(series) if series is not None else None,
        coverage=coverage,
        quantiles=quantiles,
        version=version,
        alias=alias,
    )


def normalised_key(served: ServedVersion, query: PredictQuery) -> bytes:
    """The body slot of a response-cache key for ``query`` answered by ``served``: the same
    for every byte spelling of the same request (key order, spacing, level order and repeats,
    a series as a string or a one-item list). Only what `try_fast` answered is stored under it,
    and every request with this key validates alike: the key is its whole input."""
    fh = tuple(sorted(set(query.fh))) if query.fh is not None else None
    return NORMALISED + orjson.dumps([served.version, query.horizon, fh, query.series, query.coverage, query.quantiles])


def _is_json(content_type: bytes | None) -> bool:
    """Whether FastAPI parses a body of this content type as JSON (also when there is none)."""
    if content_type is None:
        return True
    kind = content_type.split(b";", 1)[0].strip().lower()
    return kind == b"application/json" or (kind.startswith(b"application/") and kind.endswith(b"+json"))


class PredictFastLane:
    """Serves what the predict route cached and the plain requests the precomputed table
    answers, with the route's key check, body limit, metric labels, bytes and headers;
    anything else goes to FastAPI with the body replayed."""

    def __init__(
        self,
        app: ASGIApp,
        responses: ResponseCache,
        cache: ModelCache,
        keys: KeyRing,
        metrics: Metrics,
        max_body_bytes: int,
        limits: Limits | None = None,
    ) -> None:
        self.app = app
        self.responses = responses
        self.cache = cache
        self.keys = keys
        self.metrics = metrics
        self.max_body_bytes = max_body_bytes
        self.limits = limits  # None: no parsing here, cached answers only
        self._templates: dict[tuple[str, int, str, str], Headers] = {}
        self._counters: dict[tuple[str, int, str], tuple[Any, Any]] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        match = PREDICT_PATH.fullmatch(scope.get("path", "")) if scope["type"] == "http" else None
        if match is None or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        body, messages, complete = await self._read_body(receive)
        if complete and await self._answer(scope, match.group(1), body, send):
            return
        await self.app(scope, _replaying(messages, receive), send)

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

    async def _answer(self, scope: Scope, name: str, body: bytes, send: Send) -> bool:
        """Whether the lane answered (False: nothing was sent, FastAPI answers)."""
        headers = dict(scope.get("headers") or [])
        media = negotiate(headers.get(b"accept", b"").decode("latin-1"))
        try:
            caching = self.responses.max_bytes > 0  # a cache of no bytes never holds an answer
            entry = None if not caching or body.startswith(NORMALISED) else self.responses.get((name, body, media))
            if entry is not None:
                return await self._send_cached(scope, name, entry, headers, send)
            if self.limits is None or len(body) > PLAIN_BODY_BYTES or not _is_json(headers.get(b"content-type")):
                return False
            self.keys.authorize(headers.get(b"authorization", b"").decode("latin-1") or None, "read")
            plain = parse_plain(body)
            if plain is None:
                return False
            served = self.cache.peek(name, plain.version, plain.alias)
            query = plain.query(served.schema.keys) if served is not None else None
            if served is None or query is None:
                return False
            key = (name, normalised_key(served, query), media) if caching else None
            entry = self.responses.get(key) if key is not None else None
            if entry is not None:
                return await self._send(scope, name, served.version, "cache", entry.payload, entry.headers, send)
            answer = served.try_fast(query, self.limits)
        except ServiceError:
            return False  # FastAPI answers with the proper problem (401, 403, 404, 422)
        if answer is None:
            return False  # sktime is needed: the route runs it on a worker thread
        payload, cutoff = encode_forecast(name, served, answer, media)
        block = self._headers(served, cutoff, media)
        if key is not None:
            self.responses.put(key, CachedAnswer(served.version, False, payload, block))
        return await self._send(scope, name, served.version, "fast", payload, block, send)

    async def _send_cached(
        self, scope: Scope, name: str, entry: CachedAnswer, headers: dict[bytes, bytes], send: Send
    ) -> bool:
        """An answer the route cached under the exact body, if it is still the route's."""
        self.keys.authorize(headers.get(b"authorization", b"").decode("latin-1") or None, "read")
        if entry.follows_production:
            served = self.cache.peek(name)
            if served is None or served.version != entry.version:
                return False
        return await self._send(scope, name, entry.version, "cache", entry.payload, entry.headers, send)

    def _headers(self, served: ServedVersion, cutoff: str | int, media: str) -> Headers:
        """The route's headers for this version and media type, content length left out
        (Starlette's `Response` builds them once per version, as the route's does)."""
        key = (served.name, served.version, str(cutoff), media)
        block = self._templates.get(key)
        if block is None:
            if len(self._templates) >= HEADER_BLOCKS:
                self._templates.clear()
            raw = Response(b"", media_type=media, headers=answer_headers(served, cutoff)).raw_headers
            block = self._templates[key] = tuple(h for h in raw if h[0] != b"content-length")
        return block

    async def _send(
        self, scope: Scope, name: str, version: int, path: str, payload: bytes, headers: Headers, send: Send
    ) -> bool:
        counters = self._counters.get((name, version, path))
        if counters is None:  # a label lookup costs more than the increment: once per model, version, path
            if len(self._counters) >= COUNTERS:
                self._counters.clear()
            counters = self._counters[(name, version, path)] = (
                self.metrics.predictions.labels(name, str(version)),
                self.metrics.fast_path.labels(name, path),
            )
        counters[0].inc()
        counters[1].inc()
        state = scope.setdefault("state", {})
        state["model"], state["version"], state["route"] = name, version, PREDICT_ROUTE
        length = (b"content-length", str(len(payload)).encode())
        # in the route's order: its own headers, then length and type as Starlette appends them
        if headers and headers[-1][0] == b"content-type":
            raw = [*headers[:-1], length, headers[-1]]
        else:
            raw = [length, *headers]
        await send({"type": "http.response.start", "status": 200, "headers": raw})
        await send({"type": "http.response.body", "body": payload})
        return True


def _replaying(messages: list[Message], receive: Receive) -> Receive:
    pending = list(messages)

    async def replay() -> Message:
        if pending:
            return pending.pop(0)
        return await receive()

    return replay

"""Loaded versions in memory, hot-swapped: the registry folder is polled, new targets of
aliases are loaded in a worker thread and swapped in only once loaded. Requests hold a
reference to the `ServedVersion` they started with, so in-flight work finishes on it.

State is replaced, never mutated in place: readers take ``self._models`` (a dict
replaced wholesale under ``_write_lock``) without locking.

Read-your-writes. Polling alone leaves a window: a retrain's worker moves an alias, then
reports `succeeded`; a client that saw `succeeded` and predicts before the next scan got
the old version (or a 404 for a new model). So the refreshes of one model run one at a
time (`refresh_model`: an older scan never overwrites what a newer one saw) and each
records a ticket taken when it began. ``mark()`` takes a ticket *after* the caller saw a
write (a finished job, a miss); ``await settle(name, mark)`` then returns once a refresh
of that model that began after the mark has completed, i.e. once this process serves
what the write left on disk. Settling is off the loop (a worker thread), coalesced (at
most one refresh of a model in flight; every caller that marked before it began shares
it), bounded by a timeout, and done only on a miss or a finished job: the fast path
(`peek`) reads no file.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from service.errors import (
    AliasesUnreadable,
    AliasNotFound,
    IntegrityError,
    ModelNotFound,
    NotReady,
    ServiceError,
    VersionLoadError,
    VersionNotFound,
)
from service.forecasting.served import ServedVersion, load_served
from service.forecasting.shards import ShardCache
from service.registry.store import ALIASES, Registry

log = logging.getLogger(__name__)

DEFAULT_SHARD_CACHE_BYTES = 256 * 2**20  # `FORECAST_SHARD_CACHE_BYTES`

# what /readyz (open, no key) says: short categories, never an exception's text or a path
LOADING = "loading"
INTEGRITY_FAILED = "integrity check failed"
RETRYING = "cannot be loaded (retrying)"
MISSING = "version does not exist"
ALIASES_UNREADABLE = "aliases.json unreadable"

# an absolute path: a "/" that does not continue a word, a relative path or a URL
_ABSOLUTE_PATH = re.compile(r"(?<![\w.:/>~])/[^\s'\"()\[\]{},;:]+")
_PATH_END = r"(?=[/\s'\"()\[\]{},;:]|$)"


def scrub_paths(text: str, root: Path | str | None = None) -> str:
    """``text`` without absolute filesystem paths: the registry ``root`` becomes
    ``<registry>``, any other absolute path ``<path>``. Details reach clients; the log
    keeps the full text."""
    if root is not None and str(root) not in ("", "/"):
        text = re.sub(re.escape(str(root)) + _PATH_END, "<registry>", text)
    return _ABSOLUTE_PATH.sub("<path>", text)


@dataclass(frozen=True)
class LoadFailure:
    """Why a version an alias points at is not loaded, and when it may be tried again."""

    detail: str  # the full reason (may hold paths: scrub it before it reaches a response)
    kind: str = "error"  # "integrity": never retried; "error": retried with backoff; "missing"
    attempts: int = 1
    retry_at: float | None = None  # cache clock time of the next attempt; None: not retried

    @property
    def category(self) -> str:
        return {"integrity": INTEGRITY_FAILED, "missing": MISSING}.get(self.kind, RETRYING)


@dataclass(frozen=True)
class ModelState:
    """What the server knows of one model at one moment (immutable snapshot)."""

    name: str
    versions: tuple[int, ...] = ()
    file_aliases: dict[str, int] = field(default_factory=dict)  # as in aliases.json (the last good one)
    serving: dict[str, int] = field(default_factory=dict)  # alias -> version actually served
    loaded: dict[int, ServedVersion] = field(default_factory=dict)
    failures: dict[int, LoadFailure] = field(default_factory=dict)
    aliases_error: str | None = None  # aliases.json unreadable now: file_aliases are the last good ones
    aliases_known: bool = True  # False: no good aliases.json was ever read, nothing to fall back on

    @property
    def load_errors(self) -> dict[int, str]:
        return {v: f.detail for v, f in self.failures.items()}


@dataclass(frozen=True)
class Readiness:
    ready: bool
    problems: dict[str, str]  # model -> why it is not ready (a short category)
    warnings: dict[str, list[str]]  # model -> what is wrong while it still serves


class ModelCache:
    def __init__(
        self,
        registry: Registry,
        extra_versions: int = 8,
        on_load: Callable[[str, int, float, str | None], None] | None = None,
        retry_base: float = 1.0,
        retry_max: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
        on_forget: Callable[[str, int], None] | None = None,
        shards: ShardCache | None = None,
    ) -> None:
        """A load that fails other than on integrity is tried again on the first poll
        ``retry_base`` seconds later, the wait doubling per failure up to ``retry_max``."""
        self.registry = registry
        self.shards = shards if shards is not None else ShardCache(DEFAULT_SHARD_CACHE_BYTES)
        self.extra_versions = extra_versions
        self.retry_base = retry_base
        self.retry_max = retry_max
        self._clock = clock
        self._models: dict[str, ModelState] = {}
        self._recent: OrderedDict[tuple[str, int], None] = OrderedDict()
        self._write_lock = threading.RLock()
        self._load_locks: dict[tuple[str, int], threading.Lock] = {}
        self._on_load = on_load or (lambda *_: None)
        self._on_forget = on_forget or (lambda *_: None)  # a version deleted from the registry
        self.scanned = False
        self._tickets = itertools.count(1)  # strictly increasing: marks and refresh starts
        self._refreshed: dict[str, int] = {}  # model -> ticket of its last completed refresh's start
        self._refresh_locks: dict[str, threading.Lock] = {}  # one refresh of a model at a time
        self._settle_locks: dict[str, asyncio.Lock] = {}  # coalesces settles of a model (on the loop)
        self._settle_loop: asyncio.AbstractEventLoop | None = None  # the loop those locks belong to

    # ------------------------------------------------------------------ reading
    def names(self) -> list[str]:
        return sorted(self._models)

    def state(self, name: str) -> ModelState:
        state = self._models.get(name)
        if state is None:
            raise ModelNotFound(f"no model named '{name}' in the registry", model=name)
        return state

    def get(self, name: str, version: int | None = None, alias: str | None = None) -> ServedVersion:
        """The served version for a request: in memory, no file access on the fast path."""
        state = self.state(name)
        if version is None:
            alias = alias or "production"
            if alias not in state.serving:
                if alias in state.file_aliases:
                    target = state.file_aliases[alias]
                    failure = state.failures.get(target)
                    reason = scrub_paths(failure.detail, self.registry.root) if failure else "still loading"
                    raise VersionLoadError(
                        f"alias '{alias}' of '{name}' points at v{target}, which is not loaded: {reason}",
                        model=name,
                        alias=alias,
                    )
                if state.aliases_error is not None and not state.aliases_known:
                    why = scrub_paths(state.aliases_error, self.registry.root)
                    raise NotReady(
                        f"the aliases of '{name}' cannot be read: {why}",
                        model=name,
                        alias=alias,
                    )
                raise AliasNotFound(f"model '{name}' has no alias '{alias}'", model=name, alias=alias)
            served = state.loaded.get(state.serving[alias])
            if served is not None:
                return served
            version = state.serving[alias]
        served = state.loaded.get(version)
        if served is not None:
            self._touch(name, version)
            return served
        if version not in state.versions and version not in self.registry.list_versions(name):
            raise VersionNotFound(f"model '{name}' has no version {version}", model=name, version=version)
        failure = state.failures.get(version)
        if failure is not None and failure.kind == "integrity":  # not read again, not unpickled
            raise IntegrityError(scrub_paths(failure.detail, self.registry.root), model=name, version=version)
        try:
            return self._load_extra(name, version)
        except ServiceError as exc:  # the reason goes to a client: without paths
            detail = scrub_paths(exc.detail, self.registry.root)
            if detail == exc.detail:
                raise
            raise type(exc)(detail, **exc.extra) from exc

    def is_ready(self) -> tuple[bool, dict[str, str]]:
        report = self.readiness()
        return report.ready, report.problems

    def readiness(self) -> Readiness:
        """Ready once scanned and every model with a `production` alias serves a version
        (and every model's aliases were readable at least once). What is wrong while a
        model still serves (last good aliases, an alias that cannot move) is a warning."""
        if not self.scanned:
            return Readiness(False, {"registry": "not scanned yet"}, {})
        problems: dict[str, str] = {}
        warnings: dict[str, list[str]] = {}
        for name, state in sorted(self._models.items()):
            notes: list[str] = []
            if state.aliases_error is not None:
                if not state.aliases_known:
                    problems[name] = ALIASES_UNREADABLE
                    continue
                notes.append(f"{ALIASES_UNREADABLE}: serving the last good aliases")
            for alias, target in sorted(state.file_aliases.items()):
                if state.serving.get(alias) == target:
                    continue
                failure = state.failures.get(target)
                why = f"{alias} -> v{target}: {failure.category if failure else LOADING}"
                if alias not in state.serving:
                    if alias == "production":
                        problems[name] = why
                    else:
                        notes.append(why)
                else:
                    notes.append(f"{why} (serving v{state.serving[alias]})")
            if notes:
                warnings[name] = notes
        return Readiness(not problems, problems, warnings)

    # ------------------------------------------------------------------ loading
    def _load(self, name: str, version: int) -> ServedVersion:
        key = (name, version)
        with self._write_lock:
            lock = self._load_locks.setdefault(key, threading.Lock())
        with lock:  # one load per version even when many requests ask at once
            current = self._models.get(name)
            if current is not None and version in current.loaded:
                return current.loaded[version]
            started = time.perf_counter()
            try:
                served = load_served(self.registry, name, version, self.shards)
            except ServiceError as exc:
                self._on_load(name, version, time.perf_counter() - started, exc.detail)
                raise
            except Exception as exc:
                detail = f"{type(exc).__name__}: {exc}"[:500]
                self._on_load(name, version, time.perf_counter() - started, detail)
                raise VersionLoadError(f"{name} v{version} cannot be loaded: {detail}") from exc
            self._on_load(name, version, time.perf_counter() - started, None)
            log.info("loaded %s v%d in %.3fs", name, version, time.perf_counter() - started)
            return served

    def _load_extra(self, name: str, version: int) -> ServedVersion:
        """A version asked for by number: loaded on demand, kept in a small LRU."""
        served = self._load(name, version)
        with self._write_lock:
            state = self._models.get(name)
            if state is not None:
                failures = {v: f for v, f in state.failures.items() if v != version}
                self._models = {
                    **self._models,
                    name: replace(state, loaded={**state.loaded, version: served}, failures=failures),
                }
            self._touch(name, version)
            self._evict()
        return served

    def peek(self, name: str, version: int | None = None, alias: str | None = None) -> ServedVersion | None:
        """The served version if it is in memory (never loads: safe on the event loop)."""
        state = self.state(name)
        if version is None:
            target = state.serving.get(alias or "production")
            return state.loaded.get(target) if target is not None else None
        served = state.loaded.get(version)
        if served is not None:
            self._touch(name, version)
        return served

    def _touch(self, name: str, version: int) -> None:
        """Remember a version asked for by number (the LRU of extra versions)."""
        key = (name, version)
        with self._write_lock:
            if key in self._recent:
                self._recent.move_to_end(key)
            else:
                self._recent[key] = None

    def _evict(self) -> None:
        """Drop loaded versions that no alias serves, beyond the LRU budget."""
        while len(self._recent) > self.extra_versions:
            (name, version), _ = self._recent.popitem(last=False)
            state = self._models.get(name)
            if state is None or version in state.serving.values():
                continue
            self._models = {
                **self._models,
                name: replace(state, loaded={v: s for v, s in state.loaded.items() if v != version}),
            }

    # ------------------------------------------------------------------ refresh
    def refresh(self, only: str | None = None) -> None:
        """Scan the registry (blocking I/O and loads: call from a worker thread)."""
        scan = next(self._tickets)
        names = [only] if only else self.registry.list_models()
        seen = set()
        for name in names:
            try:
                self.refresh_model(name)
                seen.add(name)
            except ServiceError as exc:
                log.error("cannot scan model %s: %s", name, exc.detail)
        if only is None:
            with self._write_lock:
                # not listed, and not refreshed by anyone since this scan began (a model
                # published meanwhile and settled by a request stays)
                gone = {n for n in set(self._models) - seen if self._refreshed.get(n, 0) < scan}
                if gone:
                    self._models = {n: s for n, s in self._models.items() if n not in gone}
            self.scanned = True

    def mark(self) -> int:
        """A ticket taken now: a refresh of a model that began after it saw every write
        that was visible to the caller before it took the ticket."""
        return next(self._tickets)

    def refresh_model(self, name: str, after: int | None = None) -> bool:
        """Re-read one model (blocking: call from a worker thread). Refreshes of one model
        run one at a time, so a scan that read the folder earlier never overwrites the state
        a later one wrote. With ``after`` (a `mark`), nothing is done when a refresh that
        began after it has completed already. Returns whether this call refreshed."""
        with self._write_lock:
            lock = self._refresh_locks.setdefault(name, threading.Lock())
        with lock:
            if after is not None and self._refreshed.get(name, 0) > after:
                return False
            started = next(self._tickets)
            self._refresh_model(name)
            self._refreshed[name] = started
            return True

    def forget(self, name: str, version: int) -> None:
        """A version deleted from the registry: out of memory now (unless an alias still
        serves it until its new target loads) and its cached answers dropped."""
        self.refresh_model(name)
        self._on_forget(name, version)

    def is_settled(self, name: str, mark: int) -> bool:
        """Whether a refresh of ``name`` that began after ``mark`` has completed."""
        return self._refreshed.get(name, 0) > mark

    async def settle(self, name: str, mark: int, timeout: float) -> bool:
        """Wait until a refresh of ``name`` that began after ``mark`` has completed (this
        one starts it on a worker thread if needed), at most ``timeout`` seconds. Callers
        queue on the loop, not on threads: at most one refresh of a model is in flight and
        every caller that marked before it began shares it. False: not within the timeout
        (the refresh goes on; the old version serves until the new one is loaded), or the
        name cannot be scanned."""
        if self.is_settled(name, mark):
            return True
        try:
            async with asyncio.timeout(timeout):
                if name not in self._models and not await asyncio.to_thread(self.registry.exists, name):
                    return False  # no such model on disk either (checked before any lock is kept for it)
                if self._settle_loop is not asyncio.get_running_loop():  # a new app lifespan (tests)
                    self._settle_loop, self._settle_locks = asyncio.get_running_loop(), {}
                lock = self._settle_locks.get(name)
                if lock is None:
                    if len(self._settle_locks) > 2 * len(self._models) + 64:  # models that came and went
                        self._settle_locks = {n: k for n, k in self._settle_locks.items() if k.locked()}
                    lock = self._settle_locks[name] = asyncio.Lock()
                async with lock:
                    if not self.is_settled(name, mark):
                        # shielded: a caller that stops waiting does not stop the refresh
                        await asyncio.shield(asyncio.to_thread(self.refresh_model, name, mark))
        except TimeoutError:
            log.warning("%s: not refreshed within %gs; answering from what is loaded", name, timeout)
            return False
        except ServiceError as exc:  # e.g. an invalid name: the caller answers as it would have
            log.debug("%s: cannot be refreshed: %s", name, exc.detail)
            return False
        except OSError as exc:  # the folder cannot be read now: the watcher logs and retries
            log.warning("%s: cannot be refreshed: %s", name, exc.strerror or type(exc).__name__)
            return False
        return True

    def _refresh_model(self, name: str) -> None:
        if not self.registry.exists(name):
            with self._write_lock:
                self._models = {n: s for n, s in self._models.items() if n != name}
            return
        versions = tuple(self.registry.list_versions(name))
        before = self._models.get(name) or ModelState(name=name, aliases_known=False)
        file_aliases, aliases_error, aliases_known = self._read_aliases(name, before, versions)
        loaded = dict(before.loaded)
        failures = {v: f for v, f in before.failures.items() if v not in loaded}
        serving: dict[str, int] = {}
        now = self._clock()
        for alias, target in file_aliases.items():
            if target not in loaded and _may_load(target, versions, failures.get(target), now):
                try:
                    loaded[target] = self._load(name, target)
                    failures.pop(target, None)
                except ServiceError as exc:
                    failures[target] = self._failed(name, target, exc, failures.get(target), now)
            if target in loaded:
                serving[alias] = target
                continue
            if target not in versions:
                failures.setdefault(target, LoadFailure(f"v{target} does not exist", kind="missing"))
            if alias in before.serving:  # keep the old one serving
                serving[alias] = before.serving[alias]
        gone = set(before.versions) - set(versions)  # deleted (retention, DELETE): out of memory
        with self._write_lock:
            for version in gone:
                self._recent.pop((name, version), None)
            keep = set(serving.values()) | {v for (n, v) in list(self._recent) if n == name}
            loaded = {v: s for v, s in loaded.items() if v in keep}
            failures = {
                v: f for v, f in failures.items() if v not in loaded and (v in versions or v in file_aliases.values())
            }
            self._models = {
                **self._models,
                name: ModelState(name, versions, file_aliases, serving, loaded, failures, aliases_error, aliases_known),
            }
        for version in sorted(gone):
            self.shards.forget(name, version)
            self._on_forget(name, version)

    def _read_aliases(
        self, name: str, before: ModelState, versions: tuple[int, ...]
    ) -> tuple[dict[str, int], str | None, bool]:
        """``(aliases, error, known)``: the file's aliases, or the last good ones and why the
        file cannot be used. A file that vanished while versions exist and aliases were
        known is suspect too (the Registry reads a missing file as no aliases)."""
        try:
            aliases = self.registry.read_aliases(name)
        except AliasesUnreadable as exc:
            error = exc.detail
        except OSError as exc:  # e.g. permissions: the same for the service
            error = f"{name}/{ALIASES} cannot be read: {exc.strerror or type(exc).__name__}"
        else:
            vanished = (
                not aliases
                and bool(before.file_aliases)
                and bool(versions)
                and not (self.registry.model_dir(name) / ALIASES).exists()
            )
            if not vanished:
                if before.aliases_error is not None:
                    log.warning("%s/%s is readable again: aliases %s", name, ALIASES, aliases)
                return aliases, None, True
            error = f"{name}/{ALIASES} has disappeared while the model has versions and aliases"
        if error != before.aliases_error:  # once per change, not every poll
            if before.aliases_known:
                log.error("%s; serving the last good aliases %s", error, before.file_aliases)
            else:
                log.error("%s; no good aliases were ever read: %s serves nothing", error, name)
        return dict(before.file_aliases), error, before.aliases_known

    def _failed(
        self, name: str, version: int, exc: ServiceError, previous: LoadFailure | None, now: float
    ) -> LoadFailure:
        """An integrity failure is final; any other is tried again after a backoff."""
        if isinstance(exc, IntegrityError):
            log.error("refusing %s v%d (not retried): %s", name, version, exc.detail)
            return LoadFailure(exc.detail, kind="integrity")
        attempts = (previous.attempts if previous is not None and previous.kind == "error" else 0) + 1
        delay = min(self.retry_base * 2.0 ** min(attempts - 1, 30), self.retry_max)
        log.error("cannot load %s v%d (attempt %d, next in %.0fs): %s", name, version, attempts, delay, exc.detail)
        return LoadFailure(exc.detail, kind="error", attempts=attempts, retry_at=now + delay)

    async def watch(self, interval: float, stop: asyncio.Event) -> None:
        """Poll the registry every ``interval`` seconds until ``stop`` is set."""
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=interval)
            if stop.is_set():
                break
            try:
                await asyncio.to_thread(self.refresh)
            except Exception:  # the watcher must survive anything a folder can hold
                log.exception("registry scan failed")


def _may_load(target: int, versions: tuple[int, ...], failure: LoadFailure | None, now: float) -> bool:
    if target not in versions:
        return False
    if failure is None or failure.kind == "missing":  # never tried, or published since
        return True
    return failure.retry_at is not None and now >= failure.retry_at


def describe_state(state: ModelState, root: Path | str | None = None) -> dict[str, Any]:
    """The state for the (authenticated) model detail: full reasons, without paths."""
    return {
        "versions": list(state.versions),
        "aliases": dict(state.file_aliases),
        "serving": dict(state.serving),
        "loaded_versions": sorted(state.loaded),
        "load_errors": {str(v): scrub_paths(f.detail, root) for v, f in sorted(state.failures.items())},
        "aliases_error": scrub_paths(state.aliases_error, root) if state.aliases_error is not None else None,
    }

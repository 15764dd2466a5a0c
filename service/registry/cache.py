"""Loaded versions in memory, hot-swapped: the registry folder is polled, new targets of
aliases are loaded in a worker thread and swapped in only once loaded. Requests hold a
reference to the `ServedVersion` they started with, so in-flight work finishes on it.

State is replaced, never mutated in place: readers take ``self._models`` (a dict
replaced wholesale under ``_write_lock``) without locking.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from service.errors import (
    AliasNotFound,
    ModelNotFound,
    ServiceError,
    VersionLoadError,
    VersionNotFound,
)
from service.forecasting.served import ServedVersion
from service.registry.store import Registry

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelState:
    """What the server knows of one model at one moment (immutable snapshot)."""

    name: str
    versions: tuple[int, ...] = ()
    file_aliases: dict[str, int] = field(default_factory=dict)  # as in aliases.json
    serving: dict[str, int] = field(default_factory=dict)  # alias -> version actually served
    loaded: dict[int, ServedVersion] = field(default_factory=dict)
    load_errors: dict[int, str] = field(default_factory=dict)


class ModelCache:
    def __init__(
        self,
        registry: Registry,
        extra_versions: int = 8,
        on_load: Callable[[str, int, float, str | None], None] | None = None,
    ) -> None:
        self.registry = registry
        self.extra_versions = extra_versions
        self._models: dict[str, ModelState] = {}
        self._recent: OrderedDict[tuple[str, int], None] = OrderedDict()
        self._write_lock = threading.RLock()
        self._load_locks: dict[tuple[str, int], threading.Lock] = {}
        self._on_load = on_load or (lambda *_: None)
        self.scanned = False

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
                    reason = state.load_errors.get(target, "still loading")
                    raise VersionLoadError(
                        f"alias '{alias}' of '{name}' points at v{target}, which is not loaded: {reason}",
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
        return self._load_extra(name, version)

    def is_ready(self) -> tuple[bool, dict[str, str]]:
        """Ready once scanned and every model with a `production` alias serves a version."""
        problems: dict[str, str] = {}
        if not self.scanned:
            return False, {"registry": "not scanned yet"}
        for name, state in self._models.items():
            if "production" in state.file_aliases and "production" not in state.serving:
                target = state.file_aliases["production"]
                problems[name] = state.load_errors.get(target, f"loading v{target}")
        return not problems, problems

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
                artifact = self.registry.load(name, version)
                precomputed = self.registry.read_precomputed(name, version, artifact.manifest)
                served = ServedVersion(name, version, artifact.manifest, artifact.forecaster, precomputed)
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
                self._models = {**self._models, name: replace(state, loaded={**state.loaded, version: served})}
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
        names = [only] if only else self.registry.list_models()
        seen = set()
        for name in names:
            try:
                self._refresh_model(name)
                seen.add(name)
            except ServiceError as exc:
                log.error("cannot scan model %s: %s", name, exc.detail)
        if only is None:
            with self._write_lock:
                gone = set(self._models) - seen
                if gone:
                    self._models = {n: s for n, s in self._models.items() if n not in gone}
            self.scanned = True

    def _refresh_model(self, name: str) -> None:
        if not self.registry.exists(name):
            with self._write_lock:
                self._models = {n: s for n, s in self._models.items() if n != name}
            return
        versions = tuple(self.registry.list_versions(name))
        file_aliases = {a: v for a, v in self.registry.read_aliases(name).items()}
        before = self._models.get(name) or ModelState(name=name)
        loaded = dict(before.loaded)
        errors = dict(before.load_errors)
        serving: dict[str, int] = {}
        for alias, target in file_aliases.items():
            if target in loaded:
                serving[alias] = target
                continue
            if target not in versions or target in errors:
                if alias in before.serving:  # keep the old one serving
                    serving[alias] = before.serving[alias]
                if target not in versions:
                    errors.setdefault(target, f"v{target} does not exist")
                continue
            try:
                loaded[target] = self._load(name, target)
                serving[alias] = target
            except ServiceError as exc:
                errors[target] = exc.detail
                log.error("refusing %s v%d: %s", name, target, exc.detail)
                if alias in before.serving:
                    serving[alias] = before.serving[alias]
        with self._write_lock:
            keep = set(serving.values()) | {v for (n, v) in list(self._recent) if n == name}
            loaded = {v: s for v, s in loaded.items() if v in keep}
            errors = {v: e for v, e in errors.items() if v in versions or v in file_aliases.values()}
            self._models = {
                **self._models,
                name: ModelState(name, versions, file_aliases, serving, loaded, errors),
            }

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


def describe_state(state: ModelState) -> dict[str, Any]:
    return {
        "versions": list(state.versions),
        "aliases": dict(state.file_aliases),
        "serving": dict(state.serving),
        "loaded_versions": sorted(state.loaded),
        "load_errors": {str(v): e for v, e in sorted(state.load_errors.items())},
    }

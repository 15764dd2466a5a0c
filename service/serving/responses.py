"""Serialised fast-path answers in memory, bounded by bytes (what the fast lane serves)."""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass


@dataclass(frozen=True)
class CachedAnswer:
    """A serialised fast-path answer. ``follows_production``: the body named no version,
    so it is valid only while production still points at ``version``."""

    version: int
    follows_production: bool
    payload: bytes
    headers: tuple[tuple[bytes, bytes], ...]


class ResponseCache:
    """LRU of serialised fast-path answers keyed by (model, exact body bytes, media type),
    bounded by bytes. Versions are immutable, so entries never go stale, only evicted."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.size = 0
        self._items: OrderedDict[tuple[str, bytes, str], CachedAnswer] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple[str, bytes, str]) -> CachedAnswer | None:
        with self._lock:
            value = self._items.get(key)
            if value is not None:
                self._items.move_to_end(key)
            return value

    def put(self, key: tuple[str, bytes, str], value: CachedAnswer) -> None:
        cost = len(value.payload) + len(key[1])
        if cost > self.max_bytes // 4:
            return
        with self._lock:
            previous = self._items.pop(key, None)
            if previous is not None:
                self.size -= len(previous.payload) + len(key[1])
            self._items[key] = value
            self.size += cost
            while self.size > self.max_bytes:
                old_key, old = self._items.popitem(last=False)
                self.size -= len(old.payload) + len(old_key[1])

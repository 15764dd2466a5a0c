"""Serialised fast-path answers in memory, bounded by the bytes they really hold (what
the fast lane serves).

The budget counts what an entry keeps alive, as ``sys.getsizeof`` reports it: the key
(model, media type and body in one bytes object), the answer object, the payload (an
exact-size copy), the LRU table's own slots and nodes, and each distinct header block
once. Counting payload and body lengths only held 5-60x the budget: orjson's bytes keep
the 4 KB buffer they were written into (a 200-byte answer holds 4 KB, which getsizeof
does not see), and an entry kept a dozen small objects besides (key tuple, name, body,
answer and its ``__dict__``, four header pairs of two bytes each). An entry here is three
objects (key, answer, payload) plus its table slot; answers of one version share one
header block. tracemalloc agrees with the count (tests/serving/test_responses.py).
"""

from __future__ import annotations

import sys
import threading
from collections import OrderedDict
from dataclasses import dataclass, replace

Headers = tuple[tuple[bytes, bytes], ...]
Key = tuple[str, bytes, str]  # (model, exact body bytes, media type), as the fast lane and the route ask

# what one dict entry of a header block costs in the sharing table (slot, the [block, users] list)
_SHARED_SLOT = sys.getsizeof([None, 0]) + 3 * 8 * 2
_EMPTY_BYTES = sys.getsizeof(b"")  # a bytes object's header
_EMPTY_TABLE = sys.getsizeof(OrderedDict())


@dataclass(frozen=True, slots=True)
class CachedAnswer:
    """A serialised fast-path answer. ``follows_production``: the body named no version,
    so it is valid only while production still points at ``version``."""

    version: int
    follows_production: bool
    payload: bytes
    headers: Headers


def _packed(key: Key) -> bytes:
    """One bytes object for (model, body, media type). Model names never hold a newline
    (the registry's name rule) and media types are the lane's constants: unambiguous."""
    name, body, media = key
    return b"%s\n%s\n%s" % (media.encode("latin-1"), name.encode(), body)


def _model(packed: bytes) -> str:
    return packed.split(b"\n", 2)[1].decode()


def _headers_size(headers: Headers) -> int:
    return sys.getsizeof(headers) + sum(
        sys.getsizeof(pair) + sys.getsizeof(pair[0]) + sys.getsizeof(pair[1]) for pair in headers
    )


class ResponseCache:
    """LRU of serialised fast-path answers keyed by (model, exact body bytes, media type),
    bounded by the bytes it holds (``size``, never above ``max_bytes`` after a `put`).
    Versions are immutable, so entries never go stale, only evicted (or forgotten with a
    deleted version)."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._entries = 0  # bytes of keys, answers and payloads
        self._shared = 0  # bytes of the shared header blocks
        self._items: OrderedDict[bytes, CachedAnswer] = OrderedDict()
        self._headers: dict[Headers, list] = {}  # header block -> [the stored block, entries using it]
        self._lock = threading.Lock()

    @property
    def size(self) -> int:
        """The bytes held: entries, header blocks and the LRU table (beyond an empty one's)."""
        return self._entries + self._shared + sys.getsizeof(self._items) - _EMPTY_TABLE

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: Key) -> CachedAnswer | None:
        packed = _packed(key)
        with self._lock:
            value = self._items.get(packed)
            if value is not None:
                self._items.move_to_end(packed)
            return value

    def forget(self, model: str, version: int) -> None:
        """Drop every answer of a version that was deleted from the registry."""
        with self._lock:
            for packed in [k for k, v in self._items.items() if v.version == version and _model(k) == model]:
                self._drop(packed, self._items.pop(packed))
            if not self._items:
                self._items = OrderedDict()  # a table emptied keeps its size: let it go

    def put(self, key: Key, value: CachedAnswer) -> None:
        packed = _packed(key)
        cost = self._cost(packed, value)
        if cost + _headers_size(value.headers) > self.max_bytes // 4:
            return
        # an exact-size copy: orjson's bytes keep the buffer it wrote into (4 KB for a
        # 200-byte answer), which sys.getsizeof does not see
        value = replace(value, payload=memoryview(value.payload).tobytes())
        with self._lock:
            previous = self._items.pop(packed, None)
            if previous is not None:
                self._drop(packed, previous)
            shared = self._headers.get(value.headers)
            if shared is None:
                shared = self._headers[value.headers] = [value.headers, 0]
                self._shared += _headers_size(value.headers) + _SHARED_SLOT
            shared[1] += 1
            self._items[packed] = replace(value, headers=shared[0])
            self._entries += cost
            while self.size > self.max_bytes and self._items:
                self._drop(*self._items.popitem(last=False))

    @staticmethod
    def _cost(packed: bytes, value: CachedAnswer) -> int:
        """Key, answer and payload as stored (the payload an exact-size copy)."""
        return sys.getsizeof(packed) + sys.getsizeof(value) + _EMPTY_BYTES + len(value.payload)

    def _drop(self, packed: bytes, value: CachedAnswer) -> None:
        """Uncount an entry already taken out of the table (under the lock)."""
        self._entries -= self._cost(packed, value)
        shared = self._headers[value.headers]
        shared[1] -= 1
        if shared[1] == 0:
            del self._headers[value.headers]
            self._shared -= _headers_size(value.headers) + _SHARED_SLOT

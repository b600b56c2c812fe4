"""The resolver's cache (pure: the caller passes the time): positive, negative, failed entries.

Positive entries live for the answer's ttl (bounded by ttl_min/ttl_max), negative ones ("AA
answered but does not resolve") for negative_ttl and failures ("no answer") for failure_ttl.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Generic, Literal, TypeVar

Kind = Literal["positive", "negative", "failure"]
V = TypeVar("V")


@dataclass(frozen=True)
class Entry(Generic[V]):
    kind: Kind
    value: V  # a Resolution for positive entries, the reason (str) otherwise
    expires: float


class Cache(Generic[V]):
    """A bounded LRU map from anycast address to Entry; safe to share between threads."""

    def __init__(self, max_entries: int = 4096) -> None:
        self.max_entries = max_entries
        self._entries: OrderedDict[str, Entry] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str, now: float) -> Entry | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            if now >= entry.expires:
                del self._entries[key]
                return None
            self._entries.move_to_end(key)
            return entry

    def put(self, key: str, kind: Kind, value: object, ttl: float, now: float) -> None:
        with self._lock:
            if ttl <= 0:
                self._entries.pop(key, None)
                return
            self._entries[key] = Entry(kind, value, now + ttl)
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)

    def forget(self, key: str) -> None:
        with self._lock:
            self._entries.pop(key, None)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)

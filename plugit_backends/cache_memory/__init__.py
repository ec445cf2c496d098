"""The default cache backend: in-process, bounded, thread-safe (cachetools).

Configuration (all optional)::

    cache = "memory"

    [cache_memory]
    max_bytes = 67108864   # total size of the stored values; least recently used go first
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cachetools import TLRUCache

from plugit_core.backends import RegisterBackend
from plugit_core.config import ProxyConfig
from plugit_core.hookspecs import hookimpl
from plugit_core.settings import setting

__all__ = ["MemoryCache"]


def _expiry(_key: str, value: tuple[bytes, float], _now: float) -> float:
    return value[1]


class MemoryCache:
    """A :class:`plugit_core.kinds.cache.CacheBackend` held in this process."""

    def __init__(self, max_bytes: int = 64 * 1024 * 1024) -> None:
        self._data: TLRUCache[str, tuple[bytes, float]] = TLRUCache(
            maxsize=max_bytes, ttu=_expiry, timer=time.monotonic, getsizeof=lambda v: len(v[0]) + 64
        )
        self._lock = threading.Lock()

    def get(self, key: str) -> bytes | None:
        with self._lock:
            item = self._data.get(key)
        return None if item is None else item[0]

    def set(self, key: str, value: bytes, ttl: float) -> None:
        if ttl <= 0:
            return
        with self._lock:
            try:
                self._data[key] = (value, time.monotonic() + ttl)
            except ValueError:  # larger than the whole cache: not cached
                self._data.pop(key, None)

    def delete(self, key: str) -> None:
        with self._lock:
            self._data.pop(key, None)

    def clear(self) -> None:
        with self._lock:
            self._data.clear()


@dataclass(frozen=True)
class MemoryCacheSettings:
    """The ``[cache_memory]`` table."""

    max_bytes: int = setting(
        64 * 1024 * 1024, minimum=1024, help="bytes of cached values, the oldest dropped first"
    )


def _factory(config: ProxyConfig, section: Mapping[str, Any]) -> MemoryCache:
    return MemoryCache(config.read(MemoryCacheSettings, "cache_memory", section).max_bytes)


@hookimpl(trylast=True)
def plugit_register_backends(register: RegisterBackend) -> None:
    register("cache", "memory", _factory)

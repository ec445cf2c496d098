"""The ``cache`` backend kind: :class:`CacheBackend`, the byte-valued cache behind the meta,
template and page caches, and :data:`CacheFactory`, what a plugin registers to offer one.

Implementations: ``plugit_backends.cache_memory`` (in-process, the default) and
``plugit_backends.cache_redis``; both pass
:class:`plugit_core.kinds.cache.testing.CacheBackendConformance`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from ...config import ProxyConfig

__all__ = ["CacheBackend", "CacheFactory"]


@runtime_checkable
class CacheBackend(Protocol):
    """A byte-valued cache with per-entry lifetime.  Must be safe to use from many threads.

    A backend that fails (a lost connection) must not raise to the caller: ``get`` answers
    None and ``set`` does nothing, after logging a warning.
    """

    def get(self, key: str) -> bytes | None:
        """The value stored under ``key``, or None when absent or expired."""

    def set(self, key: str, value: bytes, ttl: float) -> None:
        """Store ``value`` for ``ttl`` seconds (> 0)."""

    def delete(self, key: str) -> None:
        """Forget ``key`` (no error when absent)."""

    def clear(self) -> None:
        """Forget everything this backend stored."""


#: ``factory(proxy_config, section)``: builds the cache from its own table (``[cache_<name>]``).
CacheFactory = Callable[["ProxyConfig", Mapping[str, Any]], CacheBackend]

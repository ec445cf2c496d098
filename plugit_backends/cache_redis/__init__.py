"""A cache shared by every proxy process: Redis (redis-py, the ``redis`` extra).

Configuration (all optional)::

    cache = "redis"

    [cache_redis]
    url = "redis://127.0.0.1:6379/0"   # redis://, rediss:// (TLS) or unix://
    prefix = "plugit:cache:"            # every key starts with it; clear() removes only these
    socket_timeout = 0.25               # seconds: a cache must answer fast or be skipped
    retry_interval = 1                  # at most this long between two attempts while down
    fallback_max_bytes = 16777216       # size of the in-process cache used while Redis is down
    max_connections = 0                 # 0: as many pooled connections as threads need
    max_waiters = 8                     # threads in Redis calls at once; more use the fallback
    required = false                    # /_plugit/ready is 503 while it is down (if true)

When Redis does not answer (refused, timed out, any ``redis.RedisError``) the cache logs a
warning (once, then at most once a minute while it lasts) and serves from an in-process
:class:`~plugit_backends.cache_memory.MemoryCache` instead; it tries Redis again at most every
``retry_interval`` seconds, logs when Redis answers again and then drops the in-process copy.
Requests never fail because of the cache.  Calls go through a
:class:`~plugit_core.stores.StoreGuard` (``cache_redis`` in ``/_plugit/ready`` and
``/_plugit/metrics``).  See docs/redis.md.

The connection, URL and settings helpers it shares with ``plugit_backends.session_redis`` are
``plugit_backends.redis``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from plugit_backends.cache_memory import MemoryCache
from plugit_backends.redis import (
    DEFAULT_URL,
    connection_pool,
    glob_escape,
    is_outage,
    prefix_setting,
    redact_url,
    redis,
    url_setting,
)
from plugit_core.backends import RegisterBackend
from plugit_core.config import ConfigError, ProxyConfig
from plugit_core.hookspecs import hookimpl
from plugit_core.settings import setting
from plugit_core.stores import (
    DEFAULT_MAX_WAITERS,
    GuardSettings,
    StoreGuard,
    StoreUnavailable,
)

__all__ = ["RedisCache"]

log = logging.getLogger("plugit.cache.redis")

WARN_INTERVAL = 60.0  # seconds between two "still down" warnings


class RedisCache:
    """A :class:`plugit_core.kinds.cache.CacheBackend` in Redis, shared by every proxy process.

    Keys are ``prefix + key``; values are stored as they are (bytes) with a millisecond expiry.
    Never raises a Redis error: while Redis is unavailable ``fallback`` (a :class:`MemoryCache`)
    answers instead.
    """

    def __init__(
        self,
        url: str = DEFAULT_URL,
        *,
        prefix: str = "plugit:cache:",
        socket_timeout: float = 0.25,
        retry_interval: float = 1.0,
        warn_interval: float = WARN_INTERVAL,
        fallback_max_bytes: int = 16 * 1024 * 1024,
        max_connections: int | None = None,
        max_waiters: int = DEFAULT_MAX_WAITERS,
        required: bool = False,
    ) -> None:
        self.url = url
        self.prefix = prefix
        self._pool = connection_pool(
            url, socket_timeout=socket_timeout, max_connections=max_connections
        )
        self._redis = redis.Redis(connection_pool=self._pool)
        self.fallback = MemoryCache(fallback_max_bytes)
        self.guard = StoreGuard(
            "cache_redis",
            f"the Redis cache at {redact_url(url)}",
            wait=socket_timeout,
            max_waiters=max_waiters,
            max_backoff=retry_interval,
            is_outage=is_outage,
            probe=lambda: self._redis.ping(),
            required=required,
            consequence="using the in-process cache meanwhile",
            on_recover=self.fallback.clear,  # others wrote to Redis meanwhile: drop our copies
            logger=log,
        )
        self.store_guards = (self.guard,)
        self.health = self.guard  # the former name

    def _key(self, key: str) -> str:
        return self.prefix + key

    def get(self, key: str) -> bytes | None:
        try:
            with self.guard.call():
                value = self._redis.get(self._key(key))
        except StoreUnavailable:
            return self.fallback.get(key)
        assert value is None or isinstance(value, bytes)  # (no decode_responses: bytes)
        return value

    def set(self, key: str, value: bytes, ttl: float) -> None:
        if ttl <= 0:
            return
        try:
            with self.guard.call():
                self._redis.set(self._key(key), value, px=max(1, math.ceil(ttl * 1000)))
        except StoreUnavailable:
            self.fallback.set(key, value, ttl)

    def delete(self, key: str) -> None:
        self.fallback.delete(key)
        try:
            with self.guard.call():
                self._redis.delete(self._key(key))
        except StoreUnavailable:
            pass

    def clear(self) -> None:
        """Delete every key under ``prefix`` (SCAN and UNLINK, never FLUSHDB)."""
        self.fallback.clear()
        try:
            with self.guard.call():
                batch: list[bytes] = []
                pattern = glob_escape(self.prefix) + "*"
                for name in self._redis.scan_iter(match=pattern, count=500):
                    batch.append(name)
                    if len(batch) >= 500:
                        self._redis.unlink(*batch)
                        batch.clear()
                if batch:
                    self._redis.unlink(*batch)
        except StoreUnavailable:
            self.guard.warn("%s: not cleared, Redis is unavailable", self.guard.label)

    def close(self) -> None:
        """Close the pooled connections (the cache still works: they reopen on demand)."""
        self._pool.disconnect()


@dataclass(frozen=True)
class RedisCacheSettings:
    """The ``[cache_redis]`` table."""

    url: str = url_setting()
    prefix: str = prefix_setting("plugit:cache:")
    socket_timeout: float = setting(0.25, minimum=0.001, help="seconds of a Redis call")
    retry_interval: float = setting(1.0, help="seconds between tries while Redis is down")
    fallback_max_bytes: int = setting(
        16 * 1024 * 1024, minimum=1024, help="bytes of the in-process cache used meanwhile"
    )
    max_connections: int = setting(0, help="pooled connections (0: no limit)")
    guard: GuardSettings = setting(default_factory=GuardSettings, flatten=True)


def _factory(config: ProxyConfig, section: Mapping[str, Any]) -> RedisCache:
    settings = config.read(RedisCacheSettings, "cache_redis", section)
    if redis is None:
        raise ConfigError(
            "cache",
            "the redis cache needs the redis package: pip install 'plugit-wsgi[redis]'",
            config.source,
        )
    try:
        return RedisCache(
            settings.url,
            prefix=settings.prefix,
            socket_timeout=settings.socket_timeout,
            retry_interval=settings.retry_interval,
            fallback_max_bytes=settings.fallback_max_bytes,
            max_connections=settings.max_connections or None,
            **settings.guard.options(required=False),
        )
    except ValueError as exc:  # redis-py could not parse the URL
        raise config.error("cache_redis.url", str(exc)) from None


@hookimpl(trylast=True)
def plugit_register_backends(register: RegisterBackend) -> None:
    register("cache", "redis", _factory)

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

The helpers :func:`connection_pool` and :func:`redact_url` are shared with
``plugit_backends.session_redis``.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit, urlunsplit

try:
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry
except ImportError:  # the optional ``redis`` extra is not installed
    redis = None  # type: ignore[assignment]

from plugit_backends.cache_memory import MemoryCache
from plugit_core.backends import RegisterBackend
from plugit_core.config import ConfigError, ProxyConfig, SectionReader
from plugit_core.hookspecs import hookimpl
from plugit_core.stores import (
    DEFAULT_MAX_WAITERS,
    StoreGuard,
    StoreUnavailable,
    read_guard_settings,
)

__all__ = ["RedisCache", "RedisHealth", "connection_pool", "redact_url"]

log = logging.getLogger("plugit.cache.redis")

DEFAULT_URL = "redis://127.0.0.1:6379/0"
WARN_INTERVAL = 60.0  # seconds between two "still down" warnings


def redact_url(url: str) -> str:
    """``url`` without its password, for logs."""
    try:
        split = urlsplit(url)
        if split.password is None:
            return url
        netloc = split.netloc.rsplit("@", 1)[1]
        user = split.username or ""
        return urlunsplit(split._replace(netloc=f"{user}:***@{netloc}"))
    except ValueError:
        return "<invalid Redis URL>"


def connection_pool(url: str, *, socket_timeout: float, max_connections: int | None = None) -> Any:
    """A redis-py connection pool that fails fast: no retries, connect and read timeouts.

    Raises ValueError for a URL redis-py cannot parse and RuntimeError when redis-py is not
    installed.
    """
    if redis is None:
        raise RuntimeError("the redis package is not installed: pip install 'plugit-wsgi[redis]'")
    options: dict[str, Any] = {
        "socket_timeout": socket_timeout,
        "socket_connect_timeout": socket_timeout,
        "retry": Retry(NoBackoff(), 0),
        "health_check_interval": 0,
    }
    if max_connections:
        options["max_connections"] = max_connections
    return redis.ConnectionPool.from_url(url, **options)


class RedisHealth:
    """Whether to ask Redis now, and the rate-limited logging of its outages.

    After a failure Redis is skipped for ``retry_interval`` seconds; then one caller (only one,
    whatever the number of threads) tries again.  The first failure logs a warning, later ones
    at most every ``warn_interval`` seconds; the recovery is logged once.
    """

    def __init__(
        self,
        what: str,
        logger: logging.Logger,
        *,
        retry_interval: float = 5.0,
        warn_interval: float = WARN_INTERVAL,
        clock: Any = time.monotonic,
    ) -> None:
        self.what = what
        self.log = logger
        self.retry_interval = retry_interval
        self.warn_interval = warn_interval
        self._clock = clock
        self._lock = threading.Lock()
        self._down = False
        self._retry_at = 0.0
        self._last_warning = -math.inf
        self.failures = 0  # every failure since start (for tests and metrics)

    @property
    def down(self) -> bool:
        return self._down

    def should_try(self) -> bool:
        """True when Redis is up, or when it is down and this caller is the one to retry."""
        if not self._down:
            return True
        with self._lock:
            now = self._clock()
            if not self._down or now >= self._retry_at:
                self._retry_at = now + self.retry_interval  # the other threads keep skipping
                return True
            return False

    def failed(self, error: BaseException, consequence: str) -> None:
        """Record a failure; warn on the first one and then at most every ``warn_interval``."""
        with self._lock:
            now = self._clock()
            first = not self._down
            self._down = True
            self.failures += 1
            self._retry_at = now + self.retry_interval
            warn = first or now - self._last_warning >= self.warn_interval
            if warn:
                self._last_warning = now
        if warn:
            self.log.warning(
                "%s %s: %s: %s; %s (next attempt in %gs)",
                self.what,
                "is unavailable" if first else "is still unavailable",
                type(error).__name__,
                error,
                consequence,
                self.retry_interval,
            )

    def succeeded(self) -> bool:
        """Record a success; True when it ends an outage (logged once)."""
        if not self._down:
            return False
        with self._lock:
            if not self._down:
                return False
            self._down = False
            self._last_warning = -math.inf
        self.log.warning("%s answers again", self.what)
        return True

    def warn(self, message: str, *args: Any) -> None:
        """A warning about a consequence of the outage, at most every ``warn_interval``."""
        with self._lock:
            now = self._clock()
            if now - self._last_warning < self.warn_interval:
                return
            self._last_warning = now
        self.log.warning(message, *args)


class RedisCache:
    """A :class:`plugit_core.backends.CacheBackend` in Redis, shared by every proxy process.

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
            is_outage=_redis_outage,
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
                pattern = _glob_escape(self.prefix) + "*"
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


def _redis_outage(exc: BaseException) -> bool:
    """Every redis-py error is an outage of the store (refused, timed out, out of memory,
    read-only replica, loading)."""
    return redis is not None and isinstance(exc, (redis.RedisError, OSError))


def _glob_escape(text: str) -> str:
    """``text`` as a literal in a Redis MATCH pattern."""
    return "".join("\\" + c if c in "*?[]\\^" else c for c in text)


def read_url(reader: SectionReader) -> str:
    """The ``url`` setting of a Redis backend's table, checked."""
    return reader.url("url", DEFAULT_URL, schemes=("redis", "rediss", "unix")) or DEFAULT_URL


def read_prefix(reader: SectionReader, default: str) -> str:
    """The ``prefix`` setting of a Redis backend's table: never empty (every key would match)."""
    prefix = reader.str("prefix", default)
    if not prefix:
        raise reader.error("prefix", "expected a non-empty string")
    return prefix


def _factory(config: ProxyConfig, section: Mapping[str, Any]) -> RedisCache:
    reader = config.reader("cache_redis", section)
    reader.known(
        {
            "url",
            "prefix",
            "socket_timeout",
            "retry_interval",
            "fallback_max_bytes",
            "max_connections",
            "max_waiters",
            "required",
        }
    )
    if redis is None:
        raise ConfigError(
            "cache",
            "the redis cache needs the redis package: pip install 'plugit-wsgi[redis]'",
            config.source,
        )
    url = read_url(reader)
    options = {
        "prefix": read_prefix(reader, "plugit:cache:"),
        "socket_timeout": reader.number("socket_timeout", 0.25, minimum=0.001),
        "retry_interval": reader.number("retry_interval", 1, minimum=0),
        "fallback_max_bytes": reader.number(
            "fallback_max_bytes", 16 * 1024 * 1024, minimum=1024, integer=True
        ),
        "max_connections": reader.number("max_connections", 0, minimum=0, integer=True) or None,
        **read_guard_settings(reader, wait=False, required=False),
    }
    try:
        return RedisCache(url, **options)
    except ValueError as exc:  # redis-py could not parse the URL
        raise reader.error("url", str(exc)) from None


@hookimpl(trylast=True)
def plugit_register_backends(register: RegisterBackend) -> None:
    register("cache", "redis", _factory)

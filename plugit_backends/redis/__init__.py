"""Redis helpers shared by the Redis backends (``cache_redis``, ``session_redis``): the
redis-py module when the ``redis`` extra is installed (else None), connection pools that fail
fast, what counts as an outage, URLs without their password for logs, and the ``url`` and
``prefix`` fields of every Redis backend's settings.

(The Redis tests use ``plugit_core.testing.redis``: a Redis to test against, or a private
``redis-server``.)
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit, urlunsplit

try:
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry
except ImportError:  # the optional ``redis`` extra is not installed
    redis = None  # type: ignore[assignment]

from plugit_core.settings import setting, url_with

__all__ = [
    "DEFAULT_URL",
    "connection_pool",
    "glob_escape",
    "is_outage",
    "prefix_setting",
    "redact_url",
    "redis",
    "url_setting",
]

DEFAULT_URL = "redis://127.0.0.1:6379/0"


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


def is_outage(exc: BaseException) -> bool:
    """Every redis-py error is an outage of the store (refused, timed out, out of memory,
    read-only replica, loading)."""
    return redis is not None and isinstance(exc, (redis.RedisError, OSError))


def glob_escape(text: str) -> str:
    """``text`` as a literal in a Redis MATCH pattern."""
    return "".join("\\" + c if c in "*?[]\\^" else c for c in text)


def url_setting() -> Any:
    """The ``url`` field of a Redis backend's settings (``plugit_core.settings``)."""
    return setting(
        DEFAULT_URL,
        check=url_with("redis", "rediss", "unix"),
        help="the Redis server: redis://, rediss:// (TLS) or unix:// (a socket)",
    )


def prefix_setting(default: str) -> Any:
    """The ``prefix`` field of a Redis backend's settings: never empty (every key would match)."""
    return setting(default, non_empty=True, help="the start of every key the backend writes")

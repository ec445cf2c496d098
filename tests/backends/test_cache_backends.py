"""Every cache backend passes the shared conformance suite; then what only Redis does: key layout,
its own prefix, the configuration, and the in-process fallback while Redis is away."""

from __future__ import annotations

import logging
import secrets
import socket
import time
from collections.abc import Iterator

import pytest

from plugit_backends.cache_memory import MemoryCache
from plugit_backends.cache_redis import RedisCache, plugit_register_backends
from plugit_core.backends import Backends
from plugit_core.config import ConfigError, ProxyConfig
from plugit_core.kinds.cache.testing import CacheBackendConformance
from plugit_core.testing import free_port, wait_until
from plugit_core.testing.redis import delete_prefix, redis_for_tests, redis_server

redis = pytest.importorskip("redis")  # the ``redis`` extra

LOGGER = "plugit.cache.redis"


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    with redis_for_tests() as url:
        yield url


@pytest.fixture
def prefix(redis_url: str) -> Iterator[str]:
    """A key prefix of this test alone (parallel runs share the Redis); its keys go at the end."""
    prefix = f"plugit-test:{secrets.token_hex(8)}:cache:"
    yield prefix
    delete_prefix(redis_url, prefix)


@pytest.fixture
def raw(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url, socket_timeout=5)
    yield client
    client.close()
    client.connection_pool.disconnect()


class TestMemoryCache(CacheBackendConformance):
    @pytest.fixture
    def cache(self) -> MemoryCache:
        return MemoryCache(64 * 1024 * 1024)


class TestRedisCache(CacheBackendConformance):
    @pytest.fixture
    def cache(self, redis_url: str, prefix: str) -> Iterator[RedisCache]:
        cache = RedisCache(redis_url, prefix=prefix, socket_timeout=5)
        try:
            yield cache
            # the in-process fallback must not have answered in Redis' place
            assert cache.health.failures == 0, "Redis failed during the test"
        finally:
            cache.close()


# -- Redis only --------------------------------------------------------------------------------


@pytest.fixture
def make_cache(redis_url: str, prefix: str) -> Iterator:
    made: list[RedisCache] = []

    def make(url: str = redis_url, **options) -> RedisCache:
        options.setdefault("prefix", prefix)
        cache = RedisCache(url, **options)
        made.append(cache)
        return cache

    yield make
    for cache in made:
        cache.close()


def test_key_layout_and_expiry(make_cache, raw, prefix):
    cache = make_cache()
    cache.set("page:/svc/x", b"\x00\xffvalue", 30.5)
    assert raw.get(prefix + "page:/svc/x") == b"\x00\xffvalue"
    assert 29_000 < raw.pttl(prefix + "page:/svc/x") <= 30_500


def test_two_instances_with_the_same_prefix_share_entries(make_cache):
    one, two = make_cache(), make_cache()
    one.set("k", b"from one", 60)
    assert two.get("k") == b"from one"
    two.delete("k")
    assert one.get("k") is None


def test_clear_deletes_only_its_prefix(make_cache, raw, prefix, redis_url):
    other_prefix = prefix + "other*["  # glob characters in a prefix are literal
    mine = make_cache(prefix=prefix + "mine*[")
    other = make_cache(prefix=other_prefix)
    for i in range(1200):  # more than one SCAN and UNLINK batch
        mine.set(f"k{i}", b"v", 60)
    other.set("k", b"kept", 60)
    raw.set(prefix + "mineX", b"kept too", ex=60)  # would match the prefix read as a glob
    mine.clear()
    assert mine.get("k1") is None and mine.get("k1199") is None
    assert other.get("k") == b"kept"
    assert raw.get(prefix + "mineX") == b"kept too"
    assert not list(raw.scan_iter(match=prefix + "mine\\*\\[*"))


def test_unreachable_redis_falls_back_to_memory_with_one_warning(make_cache, caplog):
    cache = make_cache(f"redis://127.0.0.1:{free_port()}/0", retry_interval=60)
    caplog.set_level(logging.WARNING, logger=LOGGER)
    assert cache.get("k") is None
    cache.set("k", b"v", 60)
    assert cache.get("k") == b"v"  # from the in-process fallback
    for _ in range(50):
        cache.set("k", b"v", 60)
        cache.get("k")
    cache.delete("k")
    assert cache.get("k") is None
    cache.clear()
    warnings = [r for r in caplog.records if r.name == LOGGER]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    assert warnings[0].levelno == logging.WARNING
    assert "unavailable" in warnings[0].getMessage()
    assert cache.health.down


def test_the_password_is_not_logged(make_cache, caplog):
    cache = make_cache(f"redis://user:hunter2-secret@127.0.0.1:{free_port()}/0")
    caplog.set_level(logging.WARNING, logger=LOGGER)
    cache.get("k")
    assert caplog.records
    assert "hunter2-secret" not in caplog.text
    assert "user:***@127.0.0.1" in caplog.text


def test_a_silent_redis_is_skipped_after_socket_timeout(make_cache, caplog):
    """A server that accepts connections but never answers costs one timeout, not one each."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        port = silent.getsockname()[1]
        cache = make_cache(f"redis://127.0.0.1:{port}/0", socket_timeout=0.2, retry_interval=60)
        caplog.set_level(logging.WARNING, logger=LOGGER)
        started = time.monotonic()
        assert cache.get("k") is None
        first = time.monotonic() - started
        started = time.monotonic()
        for _ in range(20):
            cache.set("k", b"v", 60)
            assert cache.get("k") == b"v"
        later = time.monotonic() - started
        cache.close()
    assert 0.15 < first < 2
    assert later < 0.5
    assert "TimeoutError" in caplog.text


def test_redis_stopping_and_coming_back(make_cache, caplog):
    caplog.set_level(logging.WARNING, logger=LOGGER)
    with redis_server() as server:
        cache = make_cache(server.url, retry_interval=0.2)
        cache.set("k", b"in redis", 60)
        server.stop()
        assert cache.get("k") is None  # Redis is gone, the fallback never saw it
        cache.set("k", b"in memory", 60)
        assert cache.get("k") == b"in memory"
        assert "unavailable" in caplog.text
        server.start()  # a new, empty Redis on the same port

        def back() -> bool:
            cache.set("probe", b"x", 60)
            return not cache.health.down

        wait_until(back, timeout=5)
        assert "answers again" in caplog.text
        assert cache.get("k") is None  # the fallback's copies were dropped
        assert cache.get("probe") == b"x"
        client = redis.Redis.from_url(server.url)
        try:
            assert client.get(cache.prefix + "probe") == b"x"
        finally:
            client.close()
            client.connection_pool.disconnect()


def build(table: dict | None = None, **top) -> RedisCache:
    backends = Backends()
    plugit_register_backends(register=backends.register)
    data = {"dev_mode": True, "cache": "redis", **top}
    if table is not None:
        data["cache_redis"] = table
    return backends.build("cache", "redis", ProxyConfig.from_mapping(data))


def test_defaults():
    cache = build()
    try:
        assert cache.url == "redis://127.0.0.1:6379/0"
        assert cache.prefix == "plugit:cache:"
        assert cache.guard.max_backoff == 1  # at most a second between two attempts
        kwargs = cache._pool.connection_kwargs
        assert kwargs["socket_timeout"] == 0.25
        assert kwargs["socket_connect_timeout"] == 0.25
    finally:
        cache.close()


def test_settings():
    cache = build(
        {
            "url": "redis://127.0.0.1:6390/3",
            "prefix": "site:",
            "socket_timeout": 1,
            "retry_interval": 0.5,
            "fallback_max_bytes": 4096,
            "max_connections": 10,
        }
    )
    try:
        assert cache.prefix == "site:"
        assert cache._pool.connection_kwargs["db"] == 3
        assert cache._pool.max_connections == 10
        assert cache.guard.max_backoff == 0.5
    finally:
        cache.close()


@pytest.mark.parametrize(
    ("table", "key"),
    [
        ({"nope": 1}, "cache_redis.nope"),
        ({"url": "http://localhost"}, "cache_redis.url"),
        ({"url": 5}, "cache_redis.url"),
        ({"url": "redis://host:notaport/0"}, "cache_redis.url"),
        ({"prefix": ""}, "cache_redis.prefix"),
        ({"socket_timeout": 0}, "cache_redis.socket_timeout"),
        ({"socket_timeout": "fast"}, "cache_redis.socket_timeout"),
        ({"retry_interval": -1}, "cache_redis.retry_interval"),
        ({"fallback_max_bytes": 10}, "cache_redis.fallback_max_bytes"),
        ({"max_connections": 1.5}, "cache_redis.max_connections"),
        ({"max_connections": True}, "cache_redis.max_connections"),
    ],
)
def test_bad_settings(table, key):
    with pytest.raises(ConfigError) as info:
        build(table)
    assert info.value.key == key

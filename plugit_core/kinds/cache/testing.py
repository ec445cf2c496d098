"""The shared conformance suite of the ``cache`` kind: every
:class:`~plugit_core.kinds.cache.CacheBackend` passes :class:`CacheBackendConformance`.

Subclass it in a test module (named ``Test...`` so pytest collects it) and give it the fixture
it asks for::

    class TestMyCache(CacheBackendConformance):
        @pytest.fixture
        def cache(self):
            cache = MyCache(...)
            yield cache
            cache.clear()

This module needs pytest (the ``test`` extra).
"""

from __future__ import annotations

import secrets
import threading
import time
from typing import Any

import pytest

from ...testing.helpers import wait_until
from . import CacheBackend

__all__ = ["CacheBackendConformance"]


class CacheBackendConformance:
    """The contract of every cache backend.  Subclasses provide the ``cache`` fixture: an
    empty cache that accepts values of at least 4 MiB."""

    def test_is_a_cache_backend(self, cache: Any) -> None:
        assert isinstance(cache, CacheBackend)

    def test_missing_key_is_none(self, cache: Any) -> None:
        assert cache.get("missing") is None

    def test_set_then_get(self, cache: Any) -> None:
        cache.set("k", b"value", 60)
        assert cache.get("k") == b"value"

    def test_overwrite(self, cache: Any) -> None:
        cache.set("k", b"one", 60)
        cache.set("k", b"two", 60)
        assert cache.get("k") == b"two"

    def test_keys_are_independent(self, cache: Any) -> None:
        keys = ["a", "A", "a ", "page:/svc/x?q=1", "été/日本", "star*", "[br]ace?", "back\\slash"]
        for i, key in enumerate(keys):
            cache.set(key, str(i).encode(), 60)
        assert [cache.get(key) for key in keys] == [str(i).encode() for i in range(len(keys))]

    def test_entry_expires_after_its_ttl(self, cache: Any) -> None:
        cache.set("short", b"1", 1.0)
        cache.set("long", b"2", 60)
        assert cache.get("short") == b"1"
        wait_until(lambda: cache.get("short") is None, timeout=5)
        assert cache.get("long") == b"2"

    def test_overwrite_sets_a_new_ttl(self, cache: Any) -> None:
        cache.set("k", b"old", 0.3)
        cache.set("k", b"new", 60)
        time.sleep(0.5)
        assert cache.get("k") == b"new"

    def test_non_positive_ttl_stores_nothing(self, cache: Any) -> None:
        cache.set("zero", b"x", 0)
        cache.set("negative", b"x", -5)
        assert cache.get("zero") is None
        assert cache.get("negative") is None

    def test_delete(self, cache: Any) -> None:
        cache.set("k", b"v", 60)
        cache.set("other", b"w", 60)
        cache.delete("k")
        assert cache.get("k") is None
        assert cache.get("other") == b"w"

    def test_delete_missing_key_is_no_error(self, cache: Any) -> None:
        cache.delete("never-set")

    def test_clear(self, cache: Any) -> None:
        for i in range(50):
            cache.set(f"k{i}", b"v", 60)
        cache.clear()
        assert all(cache.get(f"k{i}") is None for i in range(50))
        cache.set("after", b"v", 60)  # still usable
        assert cache.get("after") == b"v"

    @pytest.mark.parametrize(
        "value",
        [b"", b"\x00", bytes(range(256)), b"\xff\xfe\xfd invalid utf-8 \xc3\x28", "é".encode()],
        ids=["empty", "nul", "all-bytes", "invalid-utf8", "utf8"],
    )
    def test_bytes_round_trip(self, cache: Any, value: bytes) -> None:
        cache.set("bytes", value, 60)
        got = cache.get("bytes")
        assert type(got) is bytes
        assert got == value

    def test_large_value(self, cache: Any) -> None:
        value = secrets.token_bytes(4 * 1024 * 1024)
        cache.set("large", value, 60)
        assert cache.get("large") == value

    def test_many_threads(self, cache: Any) -> None:
        errors: list[BaseException] = []
        start = threading.Barrier(8)

        def work(n: int) -> None:
            try:
                start.wait()
                for i in range(100):
                    key, value = f"t{n}:{i}", f"{n}:{i}".encode() * 10
                    cache.set(key, value, 60)
                    assert cache.get(key) == value
                    cache.set("shared", value, 60)
                    assert cache.get("shared") is not None
                    if i % 10 == 0:
                        cache.delete(key)
                        assert cache.get(key) is None
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert not errors, errors[0]
        assert cache.get("t3:99") == b"3:99" * 10

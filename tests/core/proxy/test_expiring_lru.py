"""The small expiring LRU behind the proxy's wrapped pages and the services' metas."""

from __future__ import annotations

import threading

from plugit_core.proxy.upstream import ExpiringLRU


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_an_entry_lives_until_its_time_then_is_gone() -> None:
    clock = Clock()
    cache = ExpiringLRU(maxsize=4, clock=clock)
    cache.put("page", "<html>", expires=1010.0)
    assert cache.get("page") == "<html>"
    clock.now = 1009.9
    assert cache.get("page") == "<html>"
    clock.now = 1010.0  # expired at its time exactly
    assert cache.get("page") is None
    clock.now = 1000.0  # gone for good, not hidden
    assert cache.get("page") is None


def test_a_cached_none_is_told_apart_from_a_miss_by_wrapping_it() -> None:
    cache = ExpiringLRU(maxsize=4, clock=Clock())
    cache.put("meta/missing", (None,), expires=2000.0)  # how the meta cache keeps a 404
    assert cache.get("meta/missing") == (None,)
    assert cache.get("meta/unknown") is None


def test_the_least_recently_used_goes_first_when_full() -> None:
    cache = ExpiringLRU(maxsize=2, clock=Clock())
    cache.put("a", 1, expires=2000.0)
    cache.put("b", 2, expires=2000.0)
    assert cache.get("a") == 1  # a is now the most recently used
    cache.put("c", 3, expires=2000.0)
    assert (cache.get("a"), cache.get("b"), cache.get("c")) == (1, None, 3)


def test_a_value_already_expired_is_not_kept_and_pushes_nothing_out() -> None:
    clock = Clock()
    cache = ExpiringLRU(maxsize=1, clock=clock)
    cache.put("live", 1, expires=2000.0)
    cache.put("late", 2, expires=999.0)
    assert cache.get("live") == 1 and cache.get("late") is None
    cache.put("live", 3, expires=1000.0)  # an update already expired drops the old value too
    assert cache.get("live") is None


def test_the_wall_clock_is_read_at_each_look_up(monkeypatch) -> None:
    import time

    cache = ExpiringLRU(maxsize=2)
    cache.put("k", "v", expires=time.time() + 60)
    assert cache.get("k") == "v"
    real = time.time
    monkeypatch.setattr(time, "time", lambda: real() + 120)
    assert cache.get("k") is None


def test_many_threads_never_see_more_than_maxsize_or_a_torn_entry() -> None:
    cache = ExpiringLRU(maxsize=64, clock=Clock())
    errors: list[str] = []

    def work(n: int) -> None:
        for i in range(2000):
            key = (n * 7 + i) % 200
            cache.put(key, (key, key), expires=2000.0)
            got = cache.get(key)
            if got is not None and got != (key, key):
                errors.append(f"{key}: {got}")

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(cache._data) <= 64

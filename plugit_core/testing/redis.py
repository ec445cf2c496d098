"""Redis for tests: :func:`redis_for_tests` gives the URL of a Redis to test against (the
shared one, or a private server), :func:`redis_server` runs a throwaway ``redis-server`` (to
stop and restart it mid-test), :func:`delete_prefix` cleans up a test's keys.

This module needs pytest (the ``test`` extra); the redis package is imported when used.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from .helpers import free_port, wait_for_port

__all__ = ["RedisServer", "delete_prefix", "redis_for_tests", "redis_server"]


@dataclass
class RedisServer:
    """A ``redis-server`` process started by :func:`redis_server`."""

    port: int
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """Start (or restart, on the same port) the server; return once it accepts clients."""
        if self.process is not None and self.process.poll() is None:
            return
        executable = shutil.which("redis-server")
        if executable is None:
            pytest.skip("redis-server is not installed")
        self.process = subprocess.Popen(  # noqa: S603 (a fixed executable and arguments)
            [
                executable,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--daemonize",
                "no",
                "--loglevel",
                "warning",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_for_port("127.0.0.1", self.port, timeout=10)
        except TimeoutError:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop the server (its data is lost)."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(10)
        self.process = None


@contextlib.contextmanager
def redis_server(port: int | None = None) -> Iterator[RedisServer]:
    """A private ``redis-server`` on 127.0.0.1 (a free port by default), keeping nothing on disk,
    stopped at the end; :meth:`RedisServer.stop` and :meth:`RedisServer.start` stop and restart
    it meanwhile.  Skips the test when ``redis-server`` is not installed."""
    server = RedisServer(port or free_port())
    server.start()
    try:
        yield server
    finally:
        server.stop()


def _answers(url: str) -> bool:
    import redis

    client = redis.Redis.from_url(url, socket_timeout=1, socket_connect_timeout=1)
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
    finally:
        client.close()
        client.connection_pool.disconnect()


@contextlib.contextmanager
def redis_for_tests() -> Iterator[str]:
    """The URL of a Redis to test against.

    ``PLUGIT_TEST_REDIS_URL`` (default ``redis://127.0.0.1:6379/0``) when it answers, else a
    private ``redis-server`` started for the block.  Tests sharing a Redis must use their own key
    prefix.  Skips without the redis package or any Redis, unless ``PLUGIT_REQUIRE_REDIS=1``.
    """
    try:
        import redis  # noqa: F401
    except ImportError:
        if os.environ.get("PLUGIT_REQUIRE_REDIS") == "1":
            pytest.fail("the redis package is not installed (pip install 'plugit-wsgi[redis]')")
        pytest.skip("the redis package is not installed (pip install 'plugit-wsgi[redis]')")
    url = os.environ.get("PLUGIT_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
    if _answers(url):
        yield url
        return
    if shutil.which("redis-server") is None and os.environ.get("PLUGIT_REQUIRE_REDIS") == "1":
        pytest.fail(f"no Redis answers at {url} and redis-server is not installed")
    with redis_server() as server:
        yield server.url


def delete_prefix(url: str, prefix: str) -> int:
    """Delete every key starting with ``prefix`` (SCAN, not FLUSHDB); the number deleted."""
    import redis

    client = redis.Redis.from_url(url, socket_timeout=5)
    try:
        pattern = "".join("\\" + c if c in "*?[]\\^" else c for c in prefix) + "*"
        names = list(client.scan_iter(match=pattern, count=1000))
        for start in range(0, len(names), 500):
            client.unlink(*names[start : start + 500])
        return len(names)
    finally:
        client.close()
        client.connection_pool.disconnect()

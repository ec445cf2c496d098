"""Small tools of tests that need servers and time: :func:`serve` runs a WSGI app on a real
port, :func:`free_port` and :func:`wait_for_port` find and wait for ports, :func:`wait_until`
polls a condition (never a fixed sleep), :class:`FakeClock` is a clock tests move by hand.

Nothing here imports pytest at import time: the CLI's ``plugit service --check`` imports this
package in production.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from werkzeug.serving import ThreadedWSGIServer

__all__ = ["FakeClock", "free_port", "serve", "wait_for_port", "wait_until"]


@contextlib.contextmanager
def serve(app: Callable[..., Any], host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
    """Serve ``app`` over real HTTP on ``host`` (a free port by default); yield its base URL."""
    server = ThreadedWSGIServer(host, port, app)  # (its request threads are daemons)
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    try:
        shown = f"[{host}]" if ":" in host else host
        yield f"http://{shown}:{server.port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now on ``host`` (IPv4 or IPv6)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def wait_for_port(host: str, port: int, timeout: float = 30.0) -> None:
    """Poll until a TCP server accepts connections on ``host:port``; raise TimeoutError after
    ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing listens on {host}:{port} after {timeout}s") from None
            time.sleep(0.05)


def wait_until(condition: Callable[[], Any], timeout: float = 5.0, interval: float = 0.05) -> Any:
    """Poll ``condition`` until it returns a true value (returned); fail after ``timeout``."""
    import pytest

    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"condition still false after {timeout}s")
        time.sleep(interval)


class FakeClock:
    """A clock for the failed-login records that tests move forward by hand."""

    def __init__(self, start: float | None = None) -> None:
        self.now = time.time() if start is None else start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds

"""Test helpers for PlugIt services, proxies and plugins.

* :func:`serve` runs any WSGI app on a real loopback port in a thread, for the length of a
  ``with`` block, and gives its base URL.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from werkzeug.serving import make_server

__all__ = ["serve", "wait_for_port"]


@contextlib.contextmanager
def serve(app: Callable[..., Any], host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
    """Serve ``app`` over real HTTP on ``host`` (a free port by default); yield its base URL."""
    server = make_server(host, port, app, threaded=True)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        shown = f"[{host}]" if ":" in host else host
        yield f"http://{shown}:{server.port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


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

"""The proxy's own transport forwarding the service's reply, and nothing else: the floor.

What any proxy that calls the service on every request pays under this server: one request
parsed by gunicorn, one call through the transport the proxy uses, the reply written back.
The gap between this and ``uncached`` is the proxy's own work (pipeline, template, layout).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import Any

from plugit_core.proxy.transport import make_transport

_transport = make_transport(
    "auto",
    "bench",
    os.environ["BENCH_SERVICE_URL"],
    connect_timeout=2.0,
    timeout=5.0,
    max_connections=32,
)


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    exchange = _transport.send("GET", environ["PATH_INFO"], {}, None)
    complete = False
    try:
        body = exchange.read(10 * 1024 * 1024)
        complete = True
    finally:
        exchange.close(complete=complete)
    content_type = exchange.headers.get("Content-Type", "application/octet-stream")
    start_response(
        f"{exchange.status} -",
        [("Content-Type", content_type), ("Content-Length", str(len(body)))],
    )
    return [body]

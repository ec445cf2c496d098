"""werkzeug's ProxyMiddleware in front of the service: the bytes-forwarding baseline."""

from __future__ import annotations

import os

from werkzeug.exceptions import NotFound
from werkzeug.middleware.http_proxy import ProxyMiddleware

# werkzeug normalises each prefix to "/name/": mount the service's action endpoints.
app = ProxyMiddleware(
    NotFound(), {"/action/": {"target": os.environ["BENCH_SERVICE_URL"] + "/action/"}}
)

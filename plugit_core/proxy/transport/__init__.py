"""The HTTP/1.1 exchanges between the proxy and one service, with pooled keep-alive connections.

Two implementations of one small interface, chosen by the top-level ``http_client`` setting:

* ``urllib3``: urllib3's connection pool (what a ``requests.Session`` pools with), always
  available;
* ``httptools``: plain sockets and the llhttp parser through ``httptools``
  (``pip install 'plugit-wsgi[speedups]'``).  It costs a fifth of urllib3's CPU per call
  (``benchmarks/README.md``), which on an uncached page is most of what the proxy does.

``auto`` (the default) takes ``httptools`` when it is installed.  Both give the same
:class:`Exchange`: status and headers once the head has arrived, then the body read whole (up
to a limit) or streamed, then :meth:`Exchange.close`, which gives the connection back to the
pool only when the reply was read to its end.  Failures are :class:`ServiceError` with the
kinds the rest of the proxy acts on (``unreachable``, ``timeout``, ``bad_reply``).
"""

from __future__ import annotations

from urllib.parse import urlsplit

from ...config import HTTP_CLIENTS, httptools_available
from .common import Exchange, ServiceError, Transport
from .pooled import Urllib3Transport
from .sockets import HttptoolsTransport

__all__ = [
    "Exchange",
    "HttptoolsTransport",
    "ServiceError",
    "Transport",
    "Urllib3Transport",
    "httptools_available",
    "make_transport",
]


def make_transport(
    kind: str,
    name: str,
    url: str,
    *,
    connect_timeout: float,
    timeout: float,
    max_connections: int,
) -> Transport:
    """The transport for one service; ``kind`` is one of :data:`~plugit_core.config.HTTP_CLIENTS`.

    ``auto`` takes ``httptools`` when it is installed and the service speaks plain http
    (``https`` services always go through urllib3, which does TLS).
    """
    if kind not in HTTP_CLIENTS:
        raise ValueError(f"http_client must be one of {', '.join(HTTP_CLIENTS)}, not {kind!r}")
    plain = urlsplit(url).scheme == "http"
    if kind == "httptools" or (kind == "auto" and plain and httptools_available()):
        return HttptoolsTransport(
            name, url, connect_timeout=connect_timeout, timeout=timeout, max_idle=max_connections
        )
    return Urllib3Transport(
        name, url, connect_timeout=connect_timeout, timeout=timeout, max_connections=max_connections
    )

"""Small helpers of the original service library (PROTOCOL.md 4.6), kept under their names, and
:func:`abort` for actions."""

from __future__ import annotations

import hashlib
import os
from typing import Any, NoReturn

from werkzeug.exceptions import HTTPException
from werkzeug.exceptions import abort as _werkzeug_abort
from werkzeug.wrappers import Response

from ..networks import address_in_networks, parse_networks

__all__ = [
    "abort",
    "add_unique_postfix",
    "addressInNetwork",
    "get_session_from_request",
    "md5Checksum",
]


def abort(status: int | Response, *args: Any, **kwargs: Any) -> NoReturn:
    """Stop the action with an HTTP status (``abort(403)``, ``abort(429)``) or a response.

    werkzeug's ``abort``, plus ``abort(304)`` (Not Modified), which the proxy passes to the
    browser but werkzeug has no exception for.
    """
    if isinstance(status, int) and status == 304:
        raise HTTPException(response=Response(status=304))
    _werkzeug_abort(status, *args, **kwargs)


_SESSION_PREFIX = "x-plugitsession-"


def get_session_from_request(request: Any) -> dict[str, str]:
    """This service's session values sent by the proxy, keyed by lower-cased name.

    Header names are matched case-insensitively with ``_`` and ``-`` alike, since WSGI servers
    and front-end proxies rewrite them.
    """
    values: dict[str, str] = {}
    for name, value in request.headers.items():
        lower = name.lower().replace("_", "-")
        if lower.startswith(_SESSION_PREFIX):
            values[lower[len(_SESSION_PREFIX) :]] = value
    return values


def md5Checksum(path: str | os.PathLike[str]) -> str:  # noqa: N802 (original name)
    """MD5 hex digest of a file, read in chunks."""
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(65536), b""):
            digest.update(chunk)
    return digest.hexdigest()


def add_unique_postfix(path: str) -> str:
    """``path`` when no such file exists, else the first free ``name(N).ext`` with N = 2, 3, ..."""
    if not os.path.exists(path):
        return path
    base, ext = os.path.splitext(path)
    n = 2
    while os.path.exists(f"{base}({n}){ext}"):
        n += 1
    return f"{base}({n}){ext}"


def addressInNetwork(ip: str, net: str) -> bool:  # noqa: N802 (original name)
    """True when ``ip`` lies in the CIDR network ``net`` (IPv4 or IPv6, any prefix length)."""
    return address_in_networks(ip, parse_networks([net]))

"""Small helpers of the original service library (PROTOCOL.md 4.6), kept under their names, and
:func:`abort` for actions."""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any, NoReturn

from werkzeug.exceptions import HTTPException
from werkzeug.exceptions import abort as _werkzeug_abort
from werkzeug.http import HTTP_STATUS_CODES
from werkzeug.wrappers import Response

from ..networks import address_in_networks, parse_networks

__all__ = [
    "abort",
    "add_unique_postfix",
    "addressInNetwork",
    "get_session_from_request",
    "md5Checksum",
]


def abort(
    status: int | Response | HTTPException | type[HTTPException], *args: Any, **kwargs: Any
) -> NoReturn:
    """Stop the action with an HTTP status, as Flask's ``abort`` did in the original library.

    ``status`` is one of:

    * a status code: ``abort(403)``, ``abort(429)``, ``abort(403, "members only")``; also the
      codes werkzeug has no exception for (``abort(304)``, ``abort(420)``), answered with that
      status (no body below 400, the usual JSON error above);
    * a response (werkzeug's or Flask's), sent as it is;
    * an HTTP exception, an instance or its class (``abort(NotModified())`` with the service's
      own ``class NotModified(HTTPException): code = 304``, ``abort(Forbidden)``).

    Anything else is a TypeError (the action fails with a 500, logged).
    """
    if isinstance(status, type) and issubclass(status, HTTPException):
        raise status(*args, **kwargs)
    if isinstance(status, HTTPException):
        raise status
    if isinstance(status, Response):
        raise HTTPException(response=status)
    if isinstance(status, bool) or not isinstance(status, int):
        raise TypeError(
            f"abort() takes a status code, a response or an HTTP exception, "
            f"not {type(status).__name__}"
        )
    if not 100 <= status <= 599:
        raise ValueError(f"abort(): {status} is not an HTTP status")
    try:
        _werkzeug_abort(status, *args, **kwargs)
    except LookupError:  # no werkzeug exception for this code
        pass
    if status < 400:
        raise HTTPException(response=Response(status=status))
    name = HTTP_STATUS_CODES.get(status, "error")
    payload: dict[str, Any] = {"error": name.lower().replace(" ", "_"), "status": status}
    description = args[0] if args else kwargs.get("description")
    if description:
        payload["message"] = str(description)
    body = json.dumps(payload, separators=(",", ":"))
    response = Response(body, status=status, mimetype="application/json")
    response.headers["X-Content-Type-Options"] = "nosniff"
    raise HTTPException(response=response)


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

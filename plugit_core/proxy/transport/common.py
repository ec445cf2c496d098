"""What the two transports share: the interface, the errors and their wording."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

import urllib3

__all__ = ["Exchange", "Named", "ServiceError", "Transport"]


class ServiceError(Exception):
    """A service could not give a usable answer.

    ``kind``: ``unreachable``, ``timeout``, ``busy`` (its concurrency cap is reached),
    ``circuit_open``, ``bad_reply`` (garbage), ``incompatible`` (wrong protocol), ``error``
    (it answered 5xx).  ``status`` is the HTTP status the browser gets (502, 503 or 504).
    The message is for logs and dev mode; users see a generic text naming the service.
    """

    STATUS = {
        "unreachable": 502,
        "bad_reply": 502,
        "incompatible": 502,
        "error": 502,
        "timeout": 504,
        "busy": 503,
        "circuit_open": 503,
    }

    def __init__(
        self,
        service: str,
        kind: str,
        message: str,
        status: int | None = None,
        *,
        cause: str | None = None,
    ) -> None:
        super().__init__(f"{service}: {message}")
        self.service = service
        self.kind = kind
        self.message = message
        self.status = status or self.STATUS.get(kind, 502)
        # What the service did to get here: for ``circuit_open``, the kind of its last failure
        # (``unreachable``, ``timeout``, ``error``), so a dead service is called unreachable.
        self.cause = cause


class Exchange(Protocol):
    """One reply being received."""

    status: int
    headers: urllib3.HTTPHeaderDict

    def read(self, limit: int) -> bytes:
        """The whole body; :class:`ServiceError` (``bad_reply``) past ``limit`` bytes."""

    def stream(self, size: int) -> Iterator[bytes]:
        """The body piece by piece, as it arrives."""

    def close(self, *, complete: bool) -> None:
        """End the exchange; the connection is kept only when ``complete`` is true."""


class Transport(Protocol):
    """Sends requests to one service."""

    def send(
        self, method: str, target: str, headers: dict[str, str], body: bytes | None
    ) -> Exchange:
        """Send a request (``target``: path and query) and wait for the head of the reply."""

    def close(self) -> None:
        """Close every idle connection."""


def short(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) < 200 else text[:200] + "..."


def bodiless(method: str, status: int) -> bool:
    """A reply that has no body whatever its Content-Length says (RFC 9110 section 6.4.1)."""
    return method == "HEAD" or status in (204, 304) or status < 200


def too_large(name: str, length: str | None, limit: int) -> ServiceError | None:
    if length and length.isascii() and length.isdigit() and int(length) > limit:
        return ServiceError(name, "bad_reply", f"reply of {length} bytes is over the {limit} limit")
    return None


def over_limit(name: str, limit: int) -> ServiceError:
    return ServiceError(name, "bad_reply", f"reply is over the {limit} bytes limit")


class Named(Protocol):
    """What an error names: the service and its timeout."""

    name: str
    timeout: float


def unanswered(transport: Named) -> ServiceError:
    """No reply, or not its head, within the service's timeout."""
    return ServiceError(transport.name, "timeout", f"no answer within {transport.timeout}s")


def late(transport: Named, what: str = "reply") -> ServiceError:
    """``what`` (the reply, a file transfer) not finished within the service's timeout: one read
    waited that long, or the reply was cut at its deadline (``proxy/deadlines.py``)."""
    return ServiceError(
        transport.name, "timeout", f"{what} not finished within {transport.timeout}s"
    )

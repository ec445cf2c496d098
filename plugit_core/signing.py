"""Request signatures between a proxy and its services.

The proxy signs every request it sends to a service that has a shared secret; the service library
refuses any request whose signature is missing, wrong, stale or replayed.  Both sides use this one
module, so the canonical form cannot drift between them.

What is signed (one line each, joined with ``\\n``)::

    PLUGIT-HMAC-SHA256
    <timestamp: integer seconds since the epoch>
    <nonce: random URL-safe text, unique per request>
    <METHOD>
    <path, percent-decoded, as the service sees SCRIPT_NAME + PATH_INFO>
    <raw query string, byte for byte>
    <hex SHA-256 of the body>
    <signed headers: "name:value" lines, names lower-cased, sorted>

The signed headers are every ``X-Plugit*`` header of the request (identity, organisation, session
values, remote address) and ``Content-Type`` (so a body cannot be re-read as another form type).
A service therefore knows that the user fields it receives, in the query, the body or the
headers, were produced by the proxy that holds the secret, at most ``max_age`` seconds ago, and
only once.

This module does no I/O: callers pass the parts of the request they hold.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import threading
import time
from collections.abc import Iterable, Mapping

from cachetools import TTLCache

__all__ = [
    "ALGORITHM",
    "NONCE_HEADER",
    "SIGNATURE_HEADER",
    "TIMESTAMP_HEADER",
    "NonceRegistry",
    "SignatureError",
    "sign_request",
    "verify_request",
]

ALGORITHM = "PLUGIT-HMAC-SHA256"
SIGNATURE_HEADER = "X-Plugit-Signature"
TIMESTAMP_HEADER = "X-Plugit-Timestamp"
NONCE_HEADER = "X-Plugit-Nonce"
_OWN_HEADERS = frozenset(h.lower() for h in (SIGNATURE_HEADER, TIMESTAMP_HEADER, NONCE_HEADER))
_EMPTY_BODY_DIGEST = hashlib.sha256(b"").hexdigest()
# ASCII only: str.isdigit() accepts "²", which int() refuses, and compare_digest refuses non-ASCII.
_SIGNATURE = re.compile(r"v1=[0-9a-f]{64}", re.ASCII)
_TIMESTAMP = re.compile(r"[0-9]{1,12}", re.ASCII)
_NONCE = re.compile(r"[A-Za-z0-9_-]{1,128}", re.ASCII)


class SignatureError(Exception):
    """A request signature is missing, malformed, wrong, stale or replayed.

    ``code`` is machine readable (``missing``, ``malformed``, ``stale``, ``replayed``,
    ``mismatch``); the message is safe to show to the caller: it never contains the secret or
    the expected value.
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _is_signed_header(name: str) -> bool:
    lower = name.lower().replace("_", "-")
    return (lower.startswith("x-plugit") and lower not in _OWN_HEADERS) or lower == "content-type"


def _canonical(
    *,
    method: str,
    path: str,
    query: bytes | str,
    body_digest: str,
    timestamp: str,
    nonce: str,
    headers: Iterable[tuple[str, str]],
) -> bytes:
    if isinstance(query, bytes):
        query = query.decode("latin-1")
    signed = sorted(
        f"{name.lower().replace('_', '-')}:{value.strip()}"
        for name, value in headers
        if _is_signed_header(name)
    )
    lines = [ALGORITHM, timestamp, nonce, method.upper(), path, query, body_digest, *signed]
    return "\n".join(lines).encode("utf-8")


def _digest(secret: str | bytes, message: bytes) -> str:
    key = secret.encode("utf-8") if isinstance(secret, str) else secret
    return hmac.new(key, message, hashlib.sha256).hexdigest()


def body_digest(body: bytes | None) -> str:
    """Hex SHA-256 of a request body (``None`` and ``b""`` are the same)."""
    return hashlib.sha256(body).hexdigest() if body else _EMPTY_BODY_DIGEST


def sign_request(
    secret: str | bytes,
    *,
    method: str,
    path: str,
    query: bytes | str = b"",
    body: bytes | None = None,
    headers: Mapping[str, str] | Iterable[tuple[str, str]] = (),
    now: float | None = None,
) -> dict[str, str]:
    """Return the three headers to add to a request so that the service accepts it.

    ``headers`` are the headers the request will carry; every ``X-Plugit*`` one among them, and
    ``Content-Type``, is covered by the signature, so add the returned headers last and change
    nothing afterwards.
    """
    items = headers.items() if isinstance(headers, Mapping) else headers
    timestamp = str(int(time.time() if now is None else now))
    nonce = secrets.token_urlsafe(16)
    message = _canonical(
        method=method,
        path=path,
        query=query,
        body_digest=body_digest(body),
        timestamp=timestamp,
        nonce=nonce,
        headers=items,
    )
    return {
        TIMESTAMP_HEADER: timestamp,
        NONCE_HEADER: nonce,
        SIGNATURE_HEADER: f"v1={_digest(secret, message)}",
    }


class NonceRegistry:
    """Remembers the nonces seen within the freshness window, to refuse replays.

    Bounded: at most ``maxsize`` nonces are kept.  When it is full the oldest are forgotten, which
    can only let a replay through if more than ``maxsize`` signed requests arrive within
    ``ttl`` seconds.  It lives in one process: a service run as several processes behind a load
    balancer refuses a replay sent to the same process only.
    """

    def __init__(self, ttl: float, maxsize: int = 100_000) -> None:
        self._seen: TTLCache[str, bool] = TTLCache(maxsize=maxsize, ttl=ttl)
        self._lock = threading.Lock()

    def add(self, nonce: str) -> bool:
        """Record ``nonce``; return False when it was already seen."""
        with self._lock:
            if nonce in self._seen:
                return False
            self._seen[nonce] = True
            return True


def verify_request(
    secret: str | bytes,
    *,
    method: str,
    path: str,
    query: bytes | str,
    body: bytes | None,
    headers: Mapping[str, str] | Iterable[tuple[str, str]],
    max_age: float = 300,
    nonces: NonceRegistry | None = None,
    now: float | None = None,
) -> None:
    """Check a request's signature; raise :class:`SignatureError` when it must be refused."""
    items = list(headers.items() if isinstance(headers, Mapping) else headers)
    found = {name.lower(): value for name, value in items if name.lower() in _OWN_HEADERS}
    signature = found.get(SIGNATURE_HEADER.lower())
    timestamp = found.get(TIMESTAMP_HEADER.lower())
    nonce = found.get(NONCE_HEADER.lower())
    if not signature or not timestamp or not nonce:
        raise SignatureError("missing", "this service only accepts signed requests")
    if (
        not _SIGNATURE.fullmatch(signature)
        or not _TIMESTAMP.fullmatch(timestamp)
        or not _NONCE.fullmatch(nonce)
    ):
        raise SignatureError("malformed", "the request signature is malformed")
    current = time.time() if now is None else now
    if abs(current - int(timestamp)) > max_age:
        raise SignatureError("stale", "the request signature has expired")
    message = _canonical(
        method=method,
        path=path,
        query=query,
        body_digest=body_digest(body),
        timestamp=timestamp,
        nonce=nonce,
        headers=items,
    )
    if not hmac.compare_digest(signature[3:], _digest(secret, message)):
        raise SignatureError("mismatch", "the request signature does not match")
    if nonces is not None and not nonces.add(nonce):
        raise SignatureError("replayed", "this signed request was already received")

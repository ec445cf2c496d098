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

import contextlib
import select
import socket
from collections import deque
from collections.abc import Iterator
from typing import Protocol
from urllib.parse import urlsplit

import urllib3

from ..config import HTTP_CLIENTS, httptools_available

__all__ = [
    "Exchange",
    "HttptoolsTransport",
    "ServiceError",
    "Transport",
    "Urllib3Transport",
    "httptools_available",
    "make_transport",
]


# RFC 9110 section 9.2.2: a request that may be sent again when a kept-alive connection turns
# out to have been closed by the service before it read anything.
_IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})
_FORBIDDEN_IN_HEADERS = ("\r", "\n", "\0")
MAX_HEAD_BYTES = 64 * 1024  # a reply's status line and headers (give or take one read)
MAX_HEADERS = 100


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


def _short(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) < 200 else text[:200] + "..."


def _bodiless(method: str, status: int) -> bool:
    """A reply that has no body whatever its Content-Length says (RFC 9110 section 6.4.1)."""
    return method == "HEAD" or status in (204, 304) or status < 200


def _too_large(name: str, length: str | None, limit: int) -> ServiceError | None:
    if length and length.isascii() and length.isdigit() and int(length) > limit:
        return ServiceError(name, "bad_reply", f"reply of {length} bytes is over the {limit} limit")
    return None


def _over_limit(name: str, limit: int) -> ServiceError:
    return ServiceError(name, "bad_reply", f"reply is over the {limit} bytes limit")


# -- urllib3 --------------------------------------------------------------------------------------


class Urllib3Transport:
    """urllib3's pool: no retries, no redirects, one read timeout per socket operation."""

    def __init__(
        self, name: str, url: str, *, connect_timeout: float, timeout: float, max_connections: int
    ) -> None:
        self.name = name
        self.timeout = timeout
        self.pool = urllib3.connection_from_url(
            url,
            maxsize=max_connections,
            block=False,
            retries=False,
            timeout=urllib3.Timeout(connect=connect_timeout, read=timeout),
        )

    def send(
        self, method: str, target: str, headers: dict[str, str], body: bytes | None
    ) -> _Urllib3Exchange:
        try:
            response = self.pool.urlopen(
                method,
                target,
                body=body,
                headers=headers,
                redirect=False,
                preload_content=False,
                assert_same_host=False,
            )
        except urllib3.exceptions.ConnectTimeoutError as exc:  # (NewConnectionError too)
            raise ServiceError(
                self.name, "unreachable", f"connection failed: {_short(exc)}"
            ) from exc
        except urllib3.exceptions.TimeoutError as exc:
            raise ServiceError(self.name, "timeout", f"no answer within {self.timeout}s") from exc
        except urllib3.exceptions.HTTPError as exc:
            raise ServiceError(
                self.name, "unreachable", f"{type(exc).__name__}: {_short(exc)}"
            ) from exc
        if not 200 <= response.status <= 599:  # 101 Switching Protocols, or no real status
            response.close()
            response.release_conn()
            raise ServiceError(self.name, "bad_reply", f"status {response.status}")
        return _Urllib3Exchange(self, response, method)

    def close(self) -> None:
        self.pool.close()


class _Urllib3Exchange:
    def __init__(
        self, transport: Urllib3Transport, response: urllib3.BaseHTTPResponse, method: str
    ) -> None:
        self._transport = transport
        self._response = response
        self._bodiless = _bodiless(method, response.status)
        self._read_all = False
        self.status = response.status
        self.headers = response.headers

    def read(self, limit: int) -> bytes:
        name = self._transport.name
        error = (
            None if self._bodiless else _too_large(name, self.headers.get("Content-Length"), limit)
        )
        if error:
            raise error
        with _urllib3_errors(self._transport, "reply"):
            body = self._response.read(limit + 1)
        if len(body) > limit:
            raise _over_limit(name, limit)
        self._read_all = True
        return body

    def stream(self, size: int) -> Iterator[bytes]:
        with _urllib3_errors(self._transport, "file transfer"):
            yield from self._response.stream(size)
        self._read_all = True

    def close(self, *, complete: bool) -> None:
        if not (complete and self._read_all):  # never reuse a connection with unread bytes
            self._response.close()
        self._response.release_conn()


@contextlib.contextmanager
def _urllib3_errors(transport: Urllib3Transport, what: str) -> Iterator[None]:
    try:
        yield
    except urllib3.exceptions.TimeoutError as exc:
        raise ServiceError(
            transport.name, "timeout", f"{what} not finished within {transport.timeout}s"
        ) from exc
    except urllib3.exceptions.HTTPError as exc:
        raise ServiceError(
            transport.name, "unreachable", f"{what} interrupted: {_short(exc)}"
        ) from exc


# -- httptools ------------------------------------------------------------------------------------


class HttptoolsTransport:
    """Plain sockets, parsed by llhttp.

    Idle connections wait in a LIFO pool (the warmest first) of at most ``max_idle``; one that
    the service closed, or that holds unexpected bytes, is dropped when taken.  A request
    that finds its kept-alive connection closed before any byte of reply is sent again on a
    new connection when its method is idempotent.
    """

    def __init__(
        self, name: str, url: str, *, connect_timeout: float, timeout: float, max_idle: int
    ) -> None:
        try:
            import httptools
        except ImportError:
            raise ValueError(
                "http_client 'httptools' needs: pip install 'plugit-wsgi[speedups]'"
            ) from None

        self.parser_class = httptools.HttpResponseParser
        # HttpParserUpgrade (a 101 with Upgrade) is not an HttpParserError.
        self.parser_error = (httptools.HttpParserError, httptools.HttpParserUpgrade)
        parts = urlsplit(url)
        if parts.scheme != "http":
            raise ValueError(f"http_client 'httptools' speaks plain http, not {parts.scheme}")
        self.name = name
        self.address = (parts.hostname or "localhost", parts.port or 80)
        host = parts.hostname or "localhost"
        host = f"[{host}]" if ":" in host else host
        self._host = host if parts.port in (None, 80) else f"{host}:{parts.port}"
        self.connect_timeout = connect_timeout
        self.timeout = timeout
        self._idle: deque[socket.socket] = deque()
        self._max_idle = max_idle

    def send(
        self, method: str, target: str, headers: dict[str, str], body: bytes | None
    ) -> _HttptoolsExchange:
        head = self._head(method, target, headers, body)
        # A kept-alive connection the service closed before answering anything: an idempotent
        # request is sent again, once, on a new connection (RFC 9112 section 9.3.1.1).
        sock, reused = self._connection()
        try:
            return self._exchange(sock, method, head, body)
        except _RetryableError:
            if not (reused and method in _IDEMPOTENT):
                raise ServiceError(
                    self.name, "unreachable", "connection closed before any reply"
                ) from None
        sock, _ = self._connection(fresh=True)
        try:
            return self._exchange(sock, method, head, body)
        except _RetryableError:
            raise ServiceError(
                self.name, "unreachable", "connection closed before any reply"
            ) from None

    def _exchange(
        self, sock: socket.socket, method: str, head: bytes, body: bytes | None
    ) -> _HttptoolsExchange:
        """Send on ``sock`` and wait for the head of the reply; ``sock`` is closed on failure."""
        exchange = _HttptoolsExchange(self, sock, method)
        try:
            try:
                if body and len(body) < 64 * 1024:
                    sock.sendall(head + body)
                else:
                    sock.sendall(head)
                    if body:
                        sock.sendall(body)
            except (BrokenPipeError, ConnectionResetError):
                # The service may have answered before reading the whole body (a 413) and
                # closed: its reply, if any, is read below; none at all means no reply.
                pass
            exchange.receive_head()
            return exchange
        except _NoReplyError:
            sock.close()
            raise _RetryableError from None
        except TimeoutError:
            sock.close()
            raise ServiceError(self.name, "timeout", f"no answer within {self.timeout}s") from None
        except OSError as exc:
            sock.close()
            if not exchange.received:
                raise _RetryableError from None
            raise ServiceError(
                self.name, "unreachable", f"connection lost: {_short(exc)}"
            ) from None
        except BaseException:
            sock.close()
            raise

    def _head(self, method: str, target: str, headers: dict[str, str], body: bytes | None) -> bytes:
        """The request line and headers: Host ours unless given, Content-Length always ours."""
        lines = [f"{method} {target} HTTP/1.1", ""]
        host = self._host
        for name, value in headers.items():
            value = str(value)
            if any(c in name or c in value for c in _FORBIDDEN_IN_HEADERS) or ":" in name:
                raise ValueError(f"invalid header for {self.name}: {name!r}")
            lower = name.lower()
            if lower == "host":
                host = value
            elif lower != "content-length":
                lines.append(f"{name}: {value}")
        lines[1] = f"Host: {host}"
        if body is not None:
            lines.append(f"Content-Length: {len(body)}")
        lines.append("\r\n")
        return "\r\n".join(lines).encode("latin-1")

    def _connection(self, *, fresh: bool = False) -> tuple[socket.socket, bool]:
        """An idle connection from the pool (unless ``fresh``) or a new one; True when reused."""
        while not fresh:
            try:
                sock = self._idle.pop()
            except IndexError:
                break
            if _still_open(sock):
                return sock, True
            sock.close()
        try:
            sock = socket.create_connection(self.address, timeout=self.connect_timeout)
        except OSError as exc:  # refused, unresolvable, or not accepted within connect_timeout
            raise ServiceError(
                self.name, "unreachable", f"connection failed: {_short(exc)}"
            ) from None
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.settimeout(self.timeout)
        return sock, False

    def give_back(self, sock: socket.socket) -> None:
        if len(self._idle) < self._max_idle:
            self._idle.append(sock)
        else:
            sock.close()

    def close(self) -> None:
        while True:
            try:
                self._idle.pop().close()
            except IndexError:
                return


def _still_open(sock: socket.socket) -> bool:
    """True when an idle connection has nothing to read: readable while idle means closed by
    the service, or unexpected bytes, and either way unusable."""
    poll = select.poll()
    poll.register(sock, select.POLLIN)
    return not poll.poll(0)


class _NoReplyError(Exception):
    pass


class _RetryableError(Exception):
    """Nothing at all came back: the request may be sent again if it is idempotent."""


class _HttptoolsExchange:
    """One reply, parsed as its bytes arrive; the parser calls the ``on_*`` methods."""

    def __init__(self, transport: HttptoolsTransport, sock: socket.socket, method: str) -> None:
        self._transport = transport
        self._sock: socket.socket | None = sock
        self._parser = transport.parser_class(self)
        self._method = method
        self._raw: list[tuple[bytes, bytes]] = []
        self._chunks: list[bytes] = []
        self._size = 0
        self._head_bytes = 0
        self._head_status = 0
        self._in_head = True
        self._complete = False
        self._reusable = True
        self.received = False
        self.status = 0
        self.headers: urllib3.HTTPHeaderDict = urllib3.HTTPHeaderDict()

    # parser callbacks

    def on_message_begin(self) -> None:
        if self._complete:  # bytes after the reply: the connection is not clean
            self._reusable = False

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._in_head and not self._complete:
            self._raw.append((name, value))

    def on_headers_complete(self) -> None:
        if self._complete:  # a second message: on_message_begin made the connection unusable
            return
        self._in_head = False
        # Asked now: once the message is complete the parser has moved on to the next one.
        self._head_status = self._parser.get_status_code()
        if not self._parser.should_keep_alive():
            self._reusable = False

    def on_body(self, body: bytes) -> None:
        if not self._complete:
            self._chunks.append(body)
            self._size += len(body)

    def on_message_complete(self) -> None:
        if self._complete:  # a second message: the connection is not clean
            self._reusable = False
        elif 100 <= self._head_status < 200:  # interim (100, 103): the real reply follows
            self._raw = []
            self._in_head = True
        else:
            self._complete = True

    # reading

    def receive_head(self) -> None:
        while self._in_head:
            self._receive()
        self.status = self._head_status
        if not 200 <= self.status <= 599:
            raise ServiceError(self._transport.name, "bad_reply", f"status {self.status}")
        headers = self.headers
        for name, value in self._raw:
            headers.add(name.decode("latin-1"), value.decode("latin-1"))
        if self._method == "HEAD":  # no body follows a HEAD reply, whatever Content-Length says
            self._complete = True
            self._chunks = []

    def _receive(self) -> None:
        assert self._sock is not None
        data = self._sock.recv(65536)
        if not data:
            self._end_of_stream()
            return
        self.received = True
        if self._in_head:
            self._head_bytes += len(data)
        try:
            self._parser.feed_data(data)
        except self._transport.parser_error as exc:
            if self._complete:  # garbage after a complete reply: drop the connection only
                self._reusable = False
                return
            raise ServiceError(
                self._transport.name, "bad_reply", f"not an HTTP reply ({_short(exc)})"
            ) from None
        # The head may end in the read that passes the limit: it is at most one read longer.
        if len(self._raw) > MAX_HEADERS or (self._in_head and self._head_bytes > MAX_HEAD_BYTES):
            raise ServiceError(
                self._transport.name,
                "bad_reply",
                f"reply head over {MAX_HEAD_BYTES} bytes or {MAX_HEADERS} headers",
            )

    def _end_of_stream(self) -> None:
        self._reusable = False
        if not self.received:
            raise _NoReplyError("connection closed before any reply")
        if self._in_head:
            raise ServiceError(
                self._transport.name, "bad_reply", "connection closed in the middle of the reply"
            )
        framed = (
            "Content-Length" in self.headers
            or "chunked" in self.headers.get("Transfer-Encoding", "").lower()
        )
        if framed:
            raise ServiceError(
                self._transport.name, "unreachable", "reply interrupted: connection closed"
            )
        self._complete = True  # a reply without framing ends when its connection does

    def read(self, limit: int) -> bytes:
        name = self._transport.name
        bodiless = _bodiless(self._method, self.status)
        error = None if bodiless else _too_large(name, self.headers.get("Content-Length"), limit)
        if error:
            raise error
        with _socket_errors(self._transport, "reply"):
            while not self._complete and self._size <= limit:
                self._receive()
        if self._size > limit:
            raise _over_limit(name, limit)
        body = b"".join(self._chunks)
        self._chunks = []
        return body

    def stream(self, size: int) -> Iterator[bytes]:
        with _socket_errors(self._transport, "file transfer"):
            while True:
                if self._chunks:
                    chunks, self._chunks = self._chunks, []
                    yield from chunks
                if self._complete:
                    return
                self._receive()

    def close(self, *, complete: bool) -> None:
        sock, self._sock = self._sock, None
        if sock is None:
            return
        if complete and self._complete and self._reusable:
            self._transport.give_back(sock)
        else:
            sock.close()


@contextlib.contextmanager
def _socket_errors(transport: HttptoolsTransport, what: str) -> Iterator[None]:
    try:
        yield
    except TimeoutError:
        raise ServiceError(
            transport.name, "timeout", f"{what} not finished within {transport.timeout}s"
        ) from None
    except (_NoReplyError, OSError) as exc:
        raise ServiceError(
            transport.name, "unreachable", f"{what} interrupted: {_short(exc)}"
        ) from None

"""The httptools transport: plain sockets and the llhttp parser (the ``speedups`` extra)."""

from __future__ import annotations

import contextlib
import select
import socket
from collections import deque
from collections.abc import Iterator
from urllib.parse import urlsplit

import urllib3

from ..deadlines import DEADLINES, Watch
from .common import ServiceError, bodiless, late, over_limit, short, too_large, unanswered

__all__ = ["HttptoolsTransport"]

# RFC 9110 section 9.2.2: a request that may be sent again when a kept-alive connection turns
# out to have been closed by the service before it read anything.
_IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})
_FORBIDDEN_IN_HEADERS = ("\r", "\n", "\0")
MAX_HEAD_BYTES = 64 * 1024  # a reply's status line and headers (give or take one read)
MAX_HEADERS = 100


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
        exchange = _HttptoolsExchange(self, sock, method, DEADLINES.watch(sock, self.timeout))
        try:
            return self._send_on(exchange, sock, head, body)
        except (ServiceError, _RetryableError):
            if not exchange.watch.cancel():  # cut at the deadline: late, not unreachable
                raise unanswered(self) from None
            raise

    def _send_on(
        self, exchange: _HttptoolsExchange, sock: socket.socket, head: bytes, body: bytes | None
    ) -> _HttptoolsExchange:
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
            raise unanswered(self) from None
        except OSError as exc:
            sock.close()
            if not exchange.received:
                raise _RetryableError from None
            raise ServiceError(self.name, "unreachable", f"connection lost: {short(exc)}") from None
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
                self.name, "unreachable", f"connection failed: {short(exc)}"
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

    def __init__(
        self, transport: HttptoolsTransport, sock: socket.socket, method: str, watch: Watch
    ) -> None:
        self._transport = transport
        self._sock: socket.socket | None = sock
        self.watch = watch  # the whole reply's deadline (deadlines.py)
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
                self._transport.name, "bad_reply", f"not an HTTP reply ({short(exc)})"
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
        empty = bodiless(self._method, self.status)
        error = None if empty else too_large(name, self.headers.get("Content-Length"), limit)
        if error:
            raise error
        try:
            with _socket_errors(self._transport, "reply"):
                while not self._complete and self._size <= limit:
                    self._receive()
        except ServiceError:
            if not self.watch.cancel():
                self._reusable = False
                raise late(self._transport) from None
            raise
        if not self.watch.cancel():
            # the connection was shut down at the deadline: what came is not all (a reply
            # without framing ends with its connection), and the connection is spent
            self._reusable = False
            raise late(self._transport)
        if self._size > limit:
            raise over_limit(name, limit)
        body = b"".join(self._chunks)
        self._chunks = []
        return body

    def stream(self, size: int) -> Iterator[bytes]:
        if not self.watch.cancel():  # a file is paced by its reader: each read has the timeout
            self._reusable = False
            raise late(self._transport)
        with _socket_errors(self._transport, "file transfer"):
            while True:
                if self._chunks:
                    chunks, self._chunks = self._chunks, []
                    yield from chunks
                if self._complete:
                    return
                self._receive()

    def close(self, *, complete: bool) -> None:
        if not self.watch.cancel():
            self._reusable = False
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
        raise late(transport, what) from None
    except (_NoReplyError, OSError) as exc:
        raise ServiceError(
            transport.name, "unreachable", f"{what} interrupted: {short(exc)}"
        ) from None

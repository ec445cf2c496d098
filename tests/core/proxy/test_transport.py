"""The two transports of :mod:`plugit_core.proxy.transport`, held to one contract.

Every behaviour test runs against both ``urllib3`` and ``httptools``, each talking over loopback
to a :class:`ScriptedServer`: a raw-socket server that answers each request with scripted bytes,
so that a misbehaving service (garbage, a hang, a body cut short, a connection closed at the
worst moment) is as easy to produce as a well-behaved one.
"""

from __future__ import annotations

import contextlib
import re
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

import pytest
from proxy_helpers import STRONG_KEY

from plugit_core import protocol
from plugit_core.config import ConfigError, ProxyConfig, ServiceMount
from plugit_core.proxy.transport import (
    Exchange,
    HttptoolsTransport,
    ServiceError,
    Transport,
    Urllib3Transport,
    make_transport,
)
from plugit_core.proxy.upstream import ServiceClient, UpstreamRequest
from plugit_core.testing import free_port

pytest.importorskip("httptools")

KINDS = ("urllib3", "httptools")
TIMEOUT = 0.5  # every read; a test that waits for one stays well under a second
LIMIT = 1000  # the body limit passed to read() unless a test says otherwise
HANG_GUARD = 5.0  # seconds: only there to catch a hang, not to measure speed
CLOSE = "Connection: close\r\n"


# -- a scripted server ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Reply:
    """What the server does with one request: send ``data``, then ``keep`` the connection for the
    next request, ``close`` it, or ``hang`` (hold it open, silent, until the server stops)."""

    data: bytes = b""
    then: Literal["keep", "close", "hang"] = "keep"
    # > 0: ``data`` is sent a byte at a time, one every ``pace`` seconds after the first
    # ``quick`` bytes (a service trickling its reply, each byte well within the read timeout)
    pace: float = 0.0
    quick: int = 0


class ScriptedServer:
    """A loopback server answering the requests it receives, on any connection, with the next
    :class:`Reply` of its script (closing the connection once the script is used up).

    It listens before the constructor returns, so it is ready at once.  It counts the
    connections it accepted and those it has closed, and records every request (head and body)
    and every byte received.
    """

    def __init__(self, *script: Reply) -> None:
        self._script = deque(script)
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._sockets: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self.connections = 0
        self.closed = 0
        self.requests: list[bytes] = []
        self.received = bytearray()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.address = self._listener.getsockname()
        self.url = f"http://127.0.0.1:{self.address[1]}"
        self._acceptor = self._spawn(self._accept)

    def methods(self) -> list[str]:
        with self._lock:
            return [request.split(b" ", 1)[0].decode() for request in self.requests]

    def stop(self) -> None:
        self._stopping.set()
        with socket.create_connection(self.address):  # wakes the accept loop, which then ends
            self._acceptor.join()
        with self._lock:
            sockets, threads = list(self._sockets), list(self._threads)
        for sock in sockets:  # wakes the threads blocked in recv()
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        for thread in threads:
            thread.join(timeout=HANG_GUARD)
        self._listener.close()

    def _spawn(self, target: Callable[..., None], *args: object) -> threading.Thread:
        thread = threading.Thread(target=target, args=args, daemon=True)
        with self._lock:
            self._threads.append(thread)
        thread.start()
        return thread

    def _accept(self) -> None:
        while True:
            sock, _ = self._listener.accept()
            if self._stopping.is_set():
                sock.close()
                return
            with self._lock:
                self.connections += 1
                self._sockets.append(sock)
            self._spawn(self._serve, sock)

    def _serve(self, sock: socket.socket) -> None:
        with contextlib.suppress(OSError), sock:
            buffer = b""
            while True:
                request, buffer = self._read_request(sock, buffer)
                if request is None:
                    break
                with self._lock:
                    self.requests.append(request)
                    reply = self._script.popleft() if self._script else Reply(then="close")
                if reply.pace:
                    sock.sendall(reply.data[: reply.quick])
                    for i in range(reply.quick, len(reply.data)):
                        if self._stopping.wait(reply.pace):
                            break
                        sock.sendall(reply.data[i : i + 1])
                else:
                    sock.sendall(reply.data)
                if reply.then == "hang":
                    self._stopping.wait()
                if reply.then != "keep":
                    break
        with self._lock:
            self.closed += 1

    def _read_request(self, sock: socket.socket, buffer: bytes) -> tuple[bytes | None, bytes]:
        """One request (head and Content-Length body) and the bytes after it; None at EOF."""
        while b"\r\n\r\n" not in buffer:
            if not (data := self._recv(sock)):
                return None, buffer
            buffer += data
        end = buffer.index(b"\r\n\r\n") + 4
        length = re.search(rb"^content-length:\s*(\d+)", buffer[:end], re.I | re.M)
        end += int(length[1]) if length else 0
        while len(buffer) < end:
            if not (data := self._recv(sock)):
                return None, buffer
            buffer += data
        return buffer[:end], buffer[end:]

    def _recv(self, sock: socket.socket) -> bytes:
        data = sock.recv(65536)
        with self._lock:
            self.received += data
        return data


def reply(body: bytes = b"", *, status: str = "200 OK", headers: str = "") -> bytes:
    """A reply framed by Content-Length; ``headers``: extra lines, each ending in CRLF."""
    return f"HTTP/1.1 {status}\r\nContent-Length: {len(body)}\r\n{headers}\r\n".encode() + body


def chunked(*pieces: bytes, headers: str = "") -> bytes:
    """A 200 reply whose body is ``pieces``, one chunk each."""
    head = f"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n{headers}\r\n".encode()
    return head + b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"


def wait_until(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + HANG_GUARD
    while not condition():
        assert time.monotonic() < deadline, "the server never got there"
        time.sleep(0.005)


# -- fixtures and helpers -------------------------------------------------------------------------


@pytest.fixture(params=KINDS)
def kind(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def serve() -> Iterator[Callable[..., ScriptedServer]]:
    """``serve(*script)``: a started :class:`ScriptedServer`, stopped after the test."""
    servers: list[ScriptedServer] = []

    def start(*script: Reply) -> ScriptedServer:
        servers.append(ScriptedServer(*script))
        return servers[-1]

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def connect(kind: str) -> Iterator[Callable[[str], Transport]]:
    """``connect(url)``: a transport of the test's kind to ``url``, closed after the test."""
    transports: list[Transport] = []

    def make(url: str) -> Transport:
        transport = make_transport(
            kind, "svc", url, connect_timeout=TIMEOUT, timeout=TIMEOUT, max_connections=4
        )
        transports.append(transport)
        return transport

    yield make
    for transport in transports:
        transport.close()


@pytest.fixture
def service_client(kind: str) -> Iterator[Callable[..., ServiceClient]]:
    """``service_client(url, **mount_options)``: the proxy's client of a service at ``url``
    (timeout ``TIMEOUT``), over the test's kind of transport, closed after the test."""
    clients: list[ServiceClient] = []

    def make(url: str, **options: Any) -> ServiceClient:
        mount = ServiceMount(
            name="svc", url=url, mount="/x/", title="x", timeout=TIMEOUT, **options
        )
        clients.append(ServiceClient(mount, http_client=kind))
        return clients[-1]

    yield make
    for client in clients:
        client.close()


def fetch(
    transport: Transport,
    method: str = "GET",
    body: bytes | None = None,
    *,
    headers: dict[str, str] | None = None,
    limit: int = LIMIT,
) -> tuple[Exchange, bytes]:
    """Send a request and read its reply whole, as the proxy does; the connection goes back to
    the pool only when the reply was read."""
    exchange = transport.send(method, "/", headers or {}, body)
    complete = False
    try:
        data = exchange.read(limit)
        complete = True
    finally:
        exchange.close(complete=complete)
    return exchange, data


def failure(call: Callable[[], object]) -> ServiceError:
    """The ServiceError ``call`` raises."""
    with pytest.raises(ServiceError) as caught:
        call()
    return caught.value


def idle_connections(transport: Transport) -> int:
    """How many open connections wait in the transport's pool."""
    if isinstance(transport, HttptoolsTransport):
        return len(transport._idle)
    assert isinstance(transport, Urllib3Transport)
    return sum(1 for conn in list(transport.pool.pool.queue) if conn and conn.is_connected)


@contextlib.contextmanager
def full_backlog() -> Iterator[str]:
    """The URL of a listening socket whose accept queue is full: connecting to it times out."""
    with (
        socket.create_server(("127.0.0.1", 0), backlog=0) as listener,
        contextlib.ExitStack() as stack,
    ):
        address = listener.getsockname()
        for _ in range(8):
            filler = stack.enter_context(socket.socket())
            filler.settimeout(0.1)
            try:
                filler.connect(address)
            except TimeoutError:
                break
        else:
            pytest.fail("the accept queue never filled up")
        yield f"http://127.0.0.1:{address[1]}"


# -- reading replies ------------------------------------------------------------------------------


def test_content_length_reply_is_read_whole_with_its_status_and_headers(serve, connect):
    body = b"x" * 300
    server = serve(Reply(reply(body, status="201 Created", headers="Content-Type: text/plain\r\n")))
    exchange, data = fetch(connect(server.url))
    assert data == body
    assert exchange.status == 201
    assert exchange.headers.get("content-type") == "text/plain"
    assert exchange.headers.get("CONTENT-TYPE") == "text/plain"


def test_chunked_reply_is_read_whole(serve, connect):
    server = serve(Reply(chunked(b"hello, ", b"chunked ", b"world")))
    exchange, data = fetch(connect(server.url))
    assert (exchange.status, data) == (200, b"hello, chunked world")


def test_reply_ended_by_closing_is_read_whole_and_its_connection_not_kept(serve, connect):
    unframed = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the end"
    server = serve(Reply(unframed, then="close"), Reply(reply(b"next")))
    transport = connect(server.url)
    assert fetch(transport)[1] == b"until the end"
    assert idle_connections(transport) == 0
    assert fetch(transport)[1] == b"next"
    assert server.connections == 2


def test_reply_with_connection_close_does_not_keep_its_connection(serve, connect):
    # The server would take another request on it: only the client can tell it must not.
    server = serve(Reply(reply(b"one", headers="Connection: close\r\n")), Reply(reply(b"two")))
    transport = connect(server.url)
    assert fetch(transport)[1] == b"one"
    assert fetch(transport)[1] == b"two"
    assert server.connections == 2


def test_interim_100_continue_is_skipped_for_the_real_reply(serve, connect):
    interim = b"HTTP/1.1 100 Continue\r\nX-Interim: yes\r\n\r\n"
    server = serve(Reply(interim + reply(b"real", headers="X-Real: yes\r\n")))
    exchange, data = fetch(connect(server.url), "POST", b"payload")
    assert (exchange.status, data) == (200, b"real")
    assert exchange.headers.get("x-real") == "yes"
    assert "x-interim" not in exchange.headers


def test_streamed_reply_comes_whole_and_in_order_then_its_connection_is_kept(serve, connect):
    server = serve(Reply(chunked(b"abc", b"defghij", b"klmnopqrst")), Reply(reply(b"next")))
    transport = connect(server.url)
    exchange = transport.send("GET", "/", {}, None)
    assert b"".join(exchange.stream(4)) == b"abcdefghijklmnopqrst"
    exchange.close(complete=True)
    assert fetch(transport)[1] == b"next"
    assert server.connections == 1


# -- keep-alive -----------------------------------------------------------------------------------


def test_keep_alive_reuses_one_connection(serve, connect):
    server = serve(Reply(reply(b"one")), Reply(chunked(b"two")))
    transport = connect(server.url)
    assert fetch(transport)[1] == b"one"
    assert idle_connections(transport) == 1
    assert fetch(transport)[1] == b"two"
    assert server.connections == 1
    assert server.methods() == ["GET", "GET"]


def test_connection_closed_by_the_service_while_idle_is_replaced(serve, connect):
    # A plain keep-alive reply, then the service closes the connection (as on its idle timeout).
    server = serve(Reply(reply(b"one"), then="close"), Reply(reply(b"two")))
    transport = connect(server.url)
    assert fetch(transport)[1] == b"one"
    wait_until(lambda: server.closed == 1)
    assert fetch(transport)[1] == b"two"
    assert server.connections == 2


def test_post_is_not_sent_again_when_a_kept_connection_closes_without_reply(serve, connect):
    # The service takes the POST on the kept-alive connection, then closes it without a word:
    # the POST may have been acted on, so it must not be sent again on a new connection.
    server = serve(Reply(reply(b"one")), Reply(then="close"), Reply(reply(b"sent twice")))
    transport = connect(server.url)
    assert fetch(transport)[1] == b"one"
    error = failure(lambda: fetch(transport, "POST", b"order=1"))
    assert error.kind == "unreachable"
    assert server.methods() == ["GET", "POST"]
    assert server.connections == 1


# Only HttptoolsTransport promises this (RFC 9110 section 9.2.2): Urllib3Transport runs urllib3
# with retries=False, and reports such a GET "unreachable" as it does the POST above.
@pytest.mark.parametrize("kind", ["httptools"])
def test_get_is_sent_again_when_a_kept_connection_closes_without_reply(serve, connect):
    server = serve(Reply(reply(b"one")), Reply(then="close"), Reply(reply(b"two")))
    transport = connect(server.url)
    assert fetch(transport)[1] == b"one"
    assert fetch(transport)[1] == b"two"
    assert server.methods() == ["GET", "GET", "GET"]
    assert server.connections == 2


def test_a_request_is_sent_again_once_at_most(serve, connect, kind):
    # Three kept-alive connections, then a service that drops every connection it is asked on:
    # the GET goes out once more on a new connection (httptools), never once per pooled one.
    server = serve(*[Reply(reply(b"warm")) for _ in range(3)], *[Reply(then="close")] * 5)
    transport = connect(server.url)
    exchanges = [transport.send("GET", "/", {}, None) for _ in range(3)]
    for exchange in exchanges:
        assert exchange.read(LIMIT) == b"warm"
        exchange.close(complete=True)
    assert idle_connections(transport) == 3
    assert failure(lambda: fetch(transport)).kind == "unreachable"
    assert len(server.requests) == 3 + {"httptools": 2, "urllib3": 1}[kind]


@pytest.mark.parametrize("complete", [False, True], ids=["unread", "unread-said-complete"])
def test_closing_before_the_body_is_read_drops_the_connection(serve, connect, complete):
    # Only the head: had the connection gone back to the pool, the next request would use it.
    server = serve(Reply(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"), Reply(reply(b"next")))
    transport = connect(server.url)
    exchange = transport.send("GET", "/", {}, None)
    exchange.close(complete=complete)
    assert fetch(transport)[1] == b"next"
    assert server.connections == 2


BODILESS = [("HEAD", "200 OK"), ("GET", "304 Not Modified")]


@pytest.mark.parametrize(("method", "status"), BODILESS)
def test_bodiless_reply_has_no_body_and_keeps_its_connection(serve, connect, method, status):
    head = f"HTTP/1.1 {status}\r\nContent-Length: 100\r\n\r\n".encode()
    server = serve(Reply(head), Reply(reply(b"the body")))
    transport = connect(server.url)
    exchange, data = fetch(transport, method)
    assert data == b""
    assert exchange.headers.get("content-length") == "100"
    assert fetch(transport)[1] == b"the body"
    assert server.connections == 1
    assert server.methods() == [method, "GET"]


@pytest.mark.parametrize(("method", "status"), BODILESS)
def test_bodiless_reply_declaring_more_than_the_limit_is_not_refused(
    serve, connect, method, status
):
    head = f"HTTP/1.1 {status}\r\nContent-Length: {LIMIT * 5}\r\n\r\n".encode()
    server = serve(Reply(head))
    assert fetch(connect(server.url), method)[1] == b""


# -- size limits ----------------------------------------------------------------------------------


def test_declared_length_over_the_limit_is_refused_before_the_body(serve, connect):
    # The body never comes: waiting for it would end in a timeout, not a bad_reply.
    server = serve(Reply(b"HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\n", then="hang"))
    exchange = connect(server.url).send("GET", "/", {}, None)
    try:
        assert failure(lambda: exchange.read(LIMIT)).kind == "bad_reply"
    finally:
        exchange.close(complete=False)


def test_undeclared_length_over_the_limit_is_refused(serve, connect):
    server = serve(Reply(chunked(b"y" * LIMIT)), Reply(chunked(b"y" * LIMIT, b"!")))
    transport = connect(server.url)
    assert fetch(transport)[1] == b"y" * LIMIT  # up to the limit is fine
    assert failure(lambda: fetch(transport)).kind == "bad_reply"


def test_declared_length_of_exactly_the_limit_is_read(serve, connect):
    server = serve(Reply(reply(b"y" * LIMIT)))
    assert fetch(connect(server.url))[1] == b"y" * LIMIT


# -- failures -------------------------------------------------------------------------------------


def test_garbage_instead_of_http_is_a_service_error(serve, connect, kind):
    server = serve(Reply(b"hello there\r\n\r\n", then="hang"))
    error = failure(lambda: fetch(connect(server.url)))
    # llhttp refuses the reply as such; http.client raises BadStatusLine, which urllib3 reports
    # as a ProtocolError ("connection aborted"), hence "unreachable" for urllib3.
    assert error.kind == {"httptools": "bad_reply", "urllib3": "unreachable"}[kind]


@pytest.mark.parametrize(
    "data",
    [
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
        b"HTTP/1.1 101 Switching Protocols\r\n\r\n",
    ],
    ids=["upgrade", "bare-101"],
)
def test_switching_protocols_is_a_bad_reply_and_drops_the_connection(serve, connect, data):
    server = serve(Reply(data))
    error = failure(lambda: fetch(connect(server.url)))
    assert error.kind == "bad_reply"
    wait_until(lambda: server.closed == 1)  # the connection is not kept for another request


def test_oversized_reply_head_is_refused(serve, connect, kind):
    head = reply(b"ok", headers=f"X-Big: {'a' * 300_000}\r\n")
    error = failure(lambda: fetch(connect(serve(Reply(head)).url)))
    assert error.kind == {"httptools": "bad_reply", "urllib3": "unreachable"}[kind]


def test_too_many_reply_headers_are_refused(serve, connect):
    head = reply(b"ok", headers="".join(f"X-H{i}: {i}\r\n" for i in range(150)))
    assert isinstance(failure(lambda: fetch(connect(serve(Reply(head)).url))), ServiceError)


def test_stray_interim_reply_after_the_reply_does_not_replace_it(serve, connect):
    server = serve(Reply(reply(b"ok", headers="X-A: 1\r\n") + b"HTTP/1.1 100 Continue\r\n\r\n"))
    exchange, data = fetch(connect(server.url))
    assert (exchange.status, exchange.headers.get("x-a"), data) == (200, "1", b"ok")


def test_non_ascii_digits_in_content_length_are_a_service_error(serve, connect):
    head = "HTTP/1.1 200 OK\r\nContent-Length: \u00b2\r\n\r\nok".encode("latin-1")
    server = serve(Reply(head, then="close"))
    try:
        fetch(connect(server.url))
    except ServiceError:
        pass  # refused as not HTTP (httptools), or read to the close (urllib3): never ValueError


def test_silent_service_times_out(serve, connect):
    server = serve(Reply(then="hang"))
    started = time.monotonic()
    error = failure(lambda: fetch(connect(server.url)))
    assert error.kind == "timeout" and error.status == 504
    assert time.monotonic() - started < HANG_GUARD


# A service trickling its reply a byte every 0.05 s never lets one read wait TIMEOUT (0.5 s), and
# would take 10 s or more to finish: the reply as a whole is cut at TIMEOUT, a timeout (504) that
# its circuit breaker counts.
TRICKLE = 0.05


def trickled(data: bytes, then: Literal["keep", "close", "hang"] = "keep") -> Reply:
    """``data``'s head at once, then its body a byte every ``TRICKLE`` seconds."""
    return Reply(data, then=then, pace=TRICKLE, quick=data.index(b"\r\n\r\n") + 4)


def test_a_head_trickled_a_byte_at_a_time_times_out_as_a_whole(serve, connect):
    server = serve(Reply(reply(b"x", headers="X-Padding: " + "p" * 200 + "\r\n"), pace=TRICKLE))
    started = time.monotonic()
    error = failure(lambda: connect(server.url).send("GET", "/", {}, None))
    assert error.kind == "timeout" and error.status == 504
    assert time.monotonic() - started < HANG_GUARD


@pytest.mark.parametrize("framing", ["length", "chunked", "unframed"])
def test_a_body_trickled_a_byte_at_a_time_times_out_as_a_whole(serve, connect, framing):
    body = b"z" * 200
    data = {
        "length": reply(body),
        "chunked": chunked(*(body[i : i + 10] for i in range(0, 200, 10))),
        # ends when the connection does: cut at the deadline it must not pass for a whole reply
        "unframed": b"HTTP/1.1 200 OK\r\n\r\n" + body,
    }[framing]
    server = serve(trickled(data, then="close"))
    transport = connect(server.url)
    started = time.monotonic()
    exchange = transport.send("GET", "/", {}, None)
    try:
        error = failure(lambda: exchange.read(LIMIT))
    finally:
        exchange.close(complete=True)
    assert error.kind == "timeout" and error.status == 504
    assert time.monotonic() - started < HANG_GUARD
    assert idle_connections(transport) == 0  # a connection cut at its deadline is not kept


def test_a_reply_within_the_deadline_keeps_its_connection(serve, connect):
    # the watch of a reply read in time is cancelled: nothing cuts the connection later
    server = serve(Reply(reply(b"first")), Reply(reply(b"second")))
    transport = connect(server.url)
    assert fetch(transport)[1] == b"first"
    time.sleep(TIMEOUT * 2)  # past the first reply's deadline, on purpose
    assert fetch(transport)[1] == b"second"
    assert server.connections == 1


def test_a_streamed_file_may_take_longer_than_the_reply_deadline(serve, connect):
    # a file on its way to a browser is paced by the browser: only each read has the timeout
    body = b"f" * 30  # 30 x 0.05 s = 1.5 s, three times TIMEOUT
    data = reply(body, headers=f"{protocol.H_FILE}: True\r\n")
    server = serve(trickled(data))
    exchange = connect(server.url).send("GET", "/", {}, None)
    try:
        assert b"".join(exchange.stream(8)) == body
    finally:
        exchange.close(complete=True)


def test_a_trickling_service_opens_its_circuit_like_a_silent_one(serve, service_client):
    server = serve(*[trickled(reply(b"y" * 100), then="close")] * 2)
    client = service_client(server.url, connect_timeout=TIMEOUT, breaker_failures=2)
    for _ in range(2):
        with pytest.raises(ServiceError) as raised:
            client.send(UpstreamRequest("GET", "page"))
        assert raised.value.kind == "timeout"
    with pytest.raises(ServiceError) as raised:
        client.send(UpstreamRequest("GET", "page"))
    assert (raised.value.kind, raised.value.cause) == ("circuit_open", "timeout")
    assert len(server.requests) == 2  # the third call never reached it


def test_nothing_listening_is_unreachable(connect):
    error = failure(lambda: fetch(connect(f"http://127.0.0.1:{free_port()}")))
    assert error.kind == "unreachable" and error.status == 502


def test_connection_not_accepted_in_time_is_unreachable(connect):
    with full_backlog() as url:
        started = time.monotonic()
        error = failure(lambda: fetch(connect(url)))
    assert error.kind == "unreachable"
    assert time.monotonic() - started < HANG_GUARD


def test_body_cut_short_is_unreachable(serve, connect):
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n"
    server = serve(Reply(head + b"z" * 10, then="close"))
    exchange = connect(server.url).send("GET", "/", {}, None)
    try:
        assert failure(lambda: exchange.read(LIMIT)).kind == "unreachable"
    finally:
        exchange.close(complete=False)


def test_header_with_a_line_break_is_refused_before_sending(serve, connect):
    server = serve(Reply(reply(b"never")))
    transport = connect(server.url)
    with pytest.raises(ValueError):
        transport.send("GET", "/", {"X-Note": "a\r\nX-Injected: yes"}, None)
    assert server.received == b""


@pytest.mark.parametrize(("name", "value"), [("content-length", "5"), ("host", "svc.example")])
def test_callers_own_host_or_length_header_is_sent_once(serve, connect, name, value):
    server = serve(Reply(reply(b"ok")))
    fetch(connect(server.url), "POST", b"hello", headers={name: value})
    lines = server.requests[0].decode("latin-1").lower().split("\r\n")
    assert [line for line in lines if line.startswith(f"{name}:")] == [f"{name}: {value}"]


def test_a_reply_sent_while_refusing_an_upload_is_read(connect):
    # The service reads only the head of a large upload, answers 413 and closes: the rest of the
    # body meets a reset connection, and the 413 must still reach the proxy.
    with socket.create_server(("127.0.0.1", 0)) as listener:

        def refuse() -> None:
            sock, _ = listener.accept()
            with sock:
                head = b""
                while b"\r\n\r\n" not in head:
                    head += sock.recv(65536)
                sock.sendall(reply(b"too big", status="413 Payload Too Large", headers=CLOSE))

        thread = threading.Thread(target=refuse, daemon=True)
        thread.start()
        url = f"http://127.0.0.1:{listener.getsockname()[1]}"
        exchange, data = fetch(connect(url), "POST", b"x" * (8 * 1024 * 1024))
        thread.join(HANG_GUARD)
    assert (exchange.status, data) == (413, b"too big")


@pytest.mark.parametrize("kind", ["httptools"])
def test_content_length_is_always_the_bodys_own(serve, connect):
    server = serve(Reply(reply(b"ok")))
    fetch(connect(server.url), "POST", b"hello", headers={"Content-Length": "99"})
    assert b"\r\nContent-Length: 5\r\n" in server.requests[0]
    assert b"99" not in server.requests[0]


@pytest.mark.parametrize("size", [64 * 1024 - 1, 64 * 1024, 300_000])
def test_request_bodies_of_any_size_arrive_whole(serve, connect, size):
    body = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
    server = serve(Reply(reply(b"ok")))
    assert fetch(connect(server.url), "POST", body)[1] == b"ok"
    assert server.requests[0].endswith(b"\r\n\r\n" + body)


# -- choosing a transport -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("choice", "url", "expected"),
    [
        ("auto", "http://127.0.0.1:9", HttptoolsTransport),
        ("auto", "https://127.0.0.1:9", Urllib3Transport),
        ("urllib3", "http://127.0.0.1:9", Urllib3Transport),
        ("httptools", "http://127.0.0.1:9", HttptoolsTransport),
    ],
)
def test_make_transport_picks_the_transport(choice, url, expected):
    transport = make_transport(choice, "svc", url, connect_timeout=1, timeout=1, max_connections=1)
    try:
        assert type(transport) is expected
    finally:
        transport.close()


@pytest.mark.parametrize(("choice", "url"), [("nope", "http://x"), ("httptools", "https://x")])
def test_make_transport_refuses_an_unknown_kind_or_tls_for_httptools(choice, url):
    with pytest.raises(ValueError):
        make_transport(choice, "svc", url, connect_timeout=1, timeout=1, max_connections=1)


@pytest.mark.parametrize(
    ("http_client", "url"), [("bogus", "http://127.0.0.1:9"), ("httptools", "https://example.org")]
)
def test_config_refuses_an_unusable_http_client(http_client, url):
    services = [{"name": "svc", "url": url, "mount": "/svc/"}]
    with pytest.raises(ConfigError) as caught:
        ProxyConfig.from_mapping(
            {"secret_key": STRONG_KEY, "http_client": http_client, "services": services}
        )
    assert caught.value.key == "http_client"


def test_config_takes_httptools_for_plain_http_services():
    services = [{"name": "svc", "url": "http://127.0.0.1:9", "mount": "/svc/"}]
    config = ProxyConfig.from_mapping(
        {"secret_key": STRONG_KEY, "http_client": "httptools", "services": services}
    )
    assert config.http_client == "httptools"


# -- through the service client -------------------------------------------------------------------


def test_service_client_streams_a_file_and_then_frees_its_slot(serve, service_client):
    file_header = f"{protocol.H_FILE}: True\r\nContent-Type: application/octet-stream\r\n"
    server = serve(Reply(chunked(b"file ", b"content", headers=file_header)))
    client = service_client(server.url, connect_timeout=TIMEOUT, max_concurrency=2)
    reply = client.send(UpstreamRequest("GET", "file"))
    assert reply.stream is not None and reply.body == b""
    assert client._slots.acquire(blocking=False)  # the stream holds the other one
    assert not client._slots.acquire(blocking=False)
    client._slots.release()
    assert b"".join(reply.stream) == b"file content"
    for _ in range(client.mount.max_concurrency):
        assert client._slots.acquire(blocking=False)
    for _ in range(client.mount.max_concurrency):
        client._slots.release()
    assert server.requests[0].startswith(b"GET /file HTTP/1.1\r\n")


def test_service_client_raises_when_a_streamed_file_is_cut(serve, service_client):
    file_header = f"{protocol.H_FILE}: True\r\nTransfer-Encoding: chunked\r\n"
    cut = f"HTTP/1.1 200 OK\r\n{file_header}\r\n5\r\nhello\r\n".encode()
    server = serve(Reply(cut, then="close"))
    client = service_client(server.url, max_concurrency=2)
    reply = client.send(UpstreamRequest("GET", "file"))
    assert reply.stream is not None
    received = []
    with pytest.raises(ServiceError):  # the browser's transfer must fail too, not end "whole"
        for piece in reply.stream:
            received.append(piece)
    assert b"".join(received) == b"hello"
    assert client._slots.acquire(blocking=False) and client._slots.acquire(blocking=False)

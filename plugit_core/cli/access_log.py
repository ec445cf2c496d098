"""The access log of the apps served on granian: one line per request, written in batches.

granian's own access log runs Python's ``logging`` for every request (a record, a formatter, a
lock and a write to standard output) in the thread that served it, while the thread holds the
interpreter's lock: on a busy process that costs more than a cached page.  :class:`AccessLog`
builds each line with one f-string and hands it to :class:`LineBatches`, whose thread writes the
lines of each half second together (in pieces of whole lines that a pipe shared by the server's
workers never mixes).  A line reaches the output at most ``interval`` seconds
after its request (as nginx's ``access_log ... buffer= flush=``); the last lines are written when
the worker stops, and lost only if it is killed.

The line is the Common Log Format followed by the duration in milliseconds, as gunicorn writes
it for ``plugit proxy --server gunicorn``::

    127.0.0.1 - - [08/Dec/2026:03:24:51 +0000] "GET /polls/?page=2 HTTP/1.1" 200 5120 1.3

A quote, a backslash, a control or non-ASCII character of the request line is written as
``\\xHH`` (a path can carry ``%0A`` that its decoding turns into a new line: it must not start a
forged line of its own).
"""

from __future__ import annotations

import atexit
import multiprocessing.util
import os
import select
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TextIO
from urllib.parse import quote

# What may stand in a logged request line as it is: printable ASCII but the quote and backslash.
_ESCAPES = {c: f"\\x{c:02x}" for c in (*range(0x20), 0x22, 0x5C, *range(0x7F, 0x100))}
# The characters a path keeps unquoted (RFC 3986 pchar and "/", and "%" of an encoded one).
_PATH_SAFE = "/:@!$&'()*+,;=-._~%"


def request_line(environ: dict[str, Any]) -> str:
    """``METHOD target PROTOCOL`` of ``environ``, escaped for a log line."""
    target = environ.get("RAW_URI") or environ.get("REQUEST_URI")
    if not target:
        path = environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", "")
        # PATH_INFO is the decoded path, one character per byte (latin-1): quote the bytes again
        target = quote(path.encode("latin-1", "replace"), safe=_PATH_SAFE)
        query = environ.get("QUERY_STRING")
        if query:
            target = f"{target}?{query}"
    line = f"{environ.get('REQUEST_METHOD', '-')} {target} {environ.get('SERVER_PROTOCOL', '-')}"
    return line.translate(_ESCAPES)


class LineBatches:
    """Lines gathered from any thread and written together by one thread of their own.

    ``add`` takes a lock held only to append, so a request never waits on the output; the
    writer wakes every ``interval`` seconds, or at once past ``limit`` characters waiting.
    A failed write (the output closed) loses its lines, never a request.
    """

    def __init__(self, out: TextIO | None = None, interval: float = 0.5, limit: int = 64 * 1024):
        self._out = out
        self.interval = interval
        self.limit = limit
        self._lines: list[str] = []
        self._size = 0
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._writer: threading.Thread | None = None
        self._closed = False
        # a granian worker is a multiprocessing child, which ends without running atexit
        multiprocessing.util.Finalize(self, self.flush, exitpriority=100)
        atexit.register(self.flush)

    def add(self, line: str) -> None:
        with self._lock:
            self._lines.append(line)
            self._size += len(line)
            full = self._size >= self.limit or self._closed
            if self._writer is None and not self._closed:  # in the process that serves
                self._writer = threading.Thread(
                    target=self._write_batches, name="plugit-access-log", daemon=True
                )
                self._writer.start()
        if full:
            if self._closed:
                self.flush()
            else:
                self._wake.set()

    def flush(self) -> None:
        """Write every line waiting now.

        To a file descriptor (standard output), the lines go in writes of at most ``PIPE_BUF``
        bytes, each ending at the end of a line: the workers of a server share their standard
        output, often a pipe (a container's log, the journal), where only such writes are never
        mixed with another process's.  Any other stream gets them in one write.
        """
        with self._lock:
            lines, self._lines, self._size = self._lines, [], 0
        if not lines:
            return
        out = self._out or sys.stdout
        try:
            try:
                fd = out.fileno()
            except (AttributeError, OSError, ValueError):  # not a file (io.StringIO)
                out.write("".join(lines))
                out.flush()
                return
            out.flush()  # what the stream holds goes first
            for chunk in whole_lines(lines, select.PIPE_BUF):
                view = memoryview(chunk)
                while view:
                    view = view[os.write(fd, view) :]
        except (OSError, ValueError):  # the output is gone: the lines with it
            pass

    def close(self) -> None:
        """Stop the writer and write what waits; lines added later are written at once."""
        self._closed = True
        self._wake.set()
        writer = self._writer
        if writer is not None and writer is not threading.current_thread():
            writer.join()
        self.flush()

    def _write_batches(self) -> None:
        while not self._closed:
            self._wake.wait(self.interval)
            self._wake.clear()
            self.flush()


def whole_lines(lines: Iterable[str], size: int) -> Iterator[bytes]:
    """``lines`` encoded and joined into pieces of at most ``size`` bytes, each the end of a
    line (a longer line is a piece of its own)."""
    piece: list[bytes] = []
    length = 0
    for line in lines:
        data = line.encode("utf-8", "replace")
        if piece and length + len(data) > size:
            yield b"".join(piece)
            piece, length = [], 0
        piece.append(data)
        length += len(data)
    if piece:
        yield b"".join(piece)


class AccessLog:
    """WSGI middleware: a line in ``batches`` for each request ``app`` answers.

    The line is added when the response is done: at once for a body given as a list, when the
    server closes it for any other (the duration then includes sending a streamed body).
    """

    def __init__(self, app: Callable[..., Any], batches: LineBatches | None = None) -> None:
        self.app = app
        self.batches = batches or LineBatches()
        self._second = -1
        self._stamp = ""

    def __call__(
        self, environ: dict[str, Any], start_response: Callable[..., Any]
    ) -> Iterable[bytes]:
        started = time.perf_counter()
        status = ["500"]

        def start(response_status: str, headers: list[Any], exc_info: Any = None) -> Any:
            status[0] = response_status[:3]
            return start_response(response_status, headers, exc_info)

        try:
            body = self.app(environ, start)
        except BaseException:
            self.log(environ, "500", None, started)
            raise
        if isinstance(body, list):
            self.log(environ, status[0], sum(map(len, body)), started)
            return body
        return _Logged(self, body, environ, status, started)

    def log(self, environ: dict[str, Any], status: str, size: int | None, started: float) -> None:
        now = time.time()
        second = int(now)
        if second != self._second:  # one strftime a second, not one a request
            self._stamp = time.strftime("[%d/%b/%Y:%H:%M:%S %z]", time.localtime(now))
            self._second = second
        took = (time.perf_counter() - started) * 1000
        self.batches.add(
            f'{environ.get("REMOTE_ADDR") or "-"} - - {self._stamp} "{request_line(environ)}" '
            f"{status} {'-' if size is None else size} {took:.1f}\n"
        )


class _Logged:
    """A streamed body that adds its request's line when the server closes it."""

    __slots__ = ("_body", "_environ", "_log", "_size", "_started", "_status")

    def __init__(
        self,
        log: AccessLog,
        body: Iterable[bytes],
        environ: dict[str, Any],
        status: list[str],
        started: float,
    ) -> None:
        self._log = log
        self._body = body
        self._environ = environ
        self._status = status
        self._started = started
        self._size = 0

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self._body:
            self._size += len(chunk)
            yield chunk

    def close(self) -> None:
        try:
            close = getattr(self._body, "close", None)
            if close is not None:
                close()
        finally:
            self._log.log(self._environ, self._status[0], self._size, self._started)

"""The urllib3 transport: urllib3's connection pool, always available."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator
from typing import Any

import urllib3
import urllib3.connection

from ..deadlines import DEADLINES, Watch
from .common import ServiceError, bodiless, late, over_limit, short, too_large, unanswered

__all__ = ["Urllib3Transport"]


_watching = threading.local()  # the watch of the reply a thread's urllib3 call waits for


class _Watched:
    """A urllib3 connection whose reply is watched by :data:`DEADLINES` from the moment the
    request is sent (http.client reads the head itself, a socket timeout per read)."""

    sock: socket.socket | None
    reply_timeout: float

    def __init__(self, *args: Any, reply_timeout: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.reply_timeout = reply_timeout

    def getresponse(self) -> Any:
        if self.sock is not None:
            _watching.watch = DEADLINES.watch(self.sock, self.reply_timeout)
        return super().getresponse()  # type: ignore[misc]


class _WatchedHTTPConnection(_Watched, urllib3.connection.HTTPConnection):
    pass


class _WatchedHTTPSConnection(_Watched, urllib3.connection.HTTPSConnection):
    pass


class Urllib3Transport:
    """urllib3's pool: no retries, no redirects, a read timeout per socket operation and the
    whole reply within the same timeout (:mod:`.deadlines`)."""

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
            reply_timeout=timeout,
        )
        self.pool.ConnectionCls = (
            _WatchedHTTPSConnection
            if isinstance(self.pool, urllib3.HTTPSConnectionPool)
            else _WatchedHTTPConnection
        )

    def send(
        self, method: str, target: str, headers: dict[str, str], body: bytes | None
    ) -> _Urllib3Exchange:
        _watching.watch = None
        try:
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
            finally:
                watch, _watching.watch = _watching.watch, None
        except urllib3.exceptions.HTTPError as exc:
            if watch is not None and not watch.cancel():  # cut at the deadline: late
                raise unanswered(self) from exc
            raise self._error(exc) from exc
        except BaseException:
            if watch is not None:  # the connection may go back to the pool: leave it whole
                watch.cancel()
            raise
        if watch is None:  # never: every connection of the pool is watched
            raise RuntimeError("urllib3 answered without calling getresponse()")
        if not 200 <= response.status <= 599:  # 101 Switching Protocols, or no real status
            watch.cancel()
            response.close()
            response.release_conn()
            raise ServiceError(self.name, "bad_reply", f"status {response.status}")
        return _Urllib3Exchange(self, response, method, watch)

    def _error(self, exc: urllib3.exceptions.HTTPError) -> ServiceError:
        if isinstance(exc, urllib3.exceptions.ConnectTimeoutError):  # (NewConnectionError too)
            return ServiceError(self.name, "unreachable", f"connection failed: {short(exc)}")
        if isinstance(exc, urllib3.exceptions.TimeoutError):
            return unanswered(self)
        return ServiceError(self.name, "unreachable", f"{type(exc).__name__}: {short(exc)}")

    def close(self) -> None:
        self.pool.close()


class _Urllib3Exchange:
    def __init__(
        self,
        transport: Urllib3Transport,
        response: urllib3.BaseHTTPResponse,
        method: str,
        watch: Watch,
    ) -> None:
        self._transport = transport
        self._response = response
        self.watch = watch  # the whole reply's deadline (deadlines.py)
        self._bodiless = bodiless(method, response.status)
        self._read_all = False
        self.status = response.status
        self.headers = response.headers

    def read(self, limit: int) -> bytes:
        name = self._transport.name
        error = (
            None if self._bodiless else too_large(name, self.headers.get("Content-Length"), limit)
        )
        if error:
            raise error
        try:
            with _urllib3_errors(self._transport, "reply"):
                body = self._response.read(limit + 1)
        except ServiceError:
            if not self.watch.cancel():
                raise late(self._transport) from None
            raise
        if not self.watch.cancel():  # the connection was shut down: what came is not all
            raise late(self._transport)
        if len(body) > limit:
            raise over_limit(name, limit)
        self._read_all = True
        return body

    def stream(self, size: int) -> Iterator[bytes]:
        if not self.watch.cancel():  # a file is paced by its reader: each read has the timeout
            raise late(self._transport)
        with _urllib3_errors(self._transport, "file transfer"):
            yield from self._response.stream(size)
        self._read_all = True

    def close(self, *, complete: bool) -> None:
        intact = self.watch.cancel()
        if not (complete and self._read_all and intact):  # never reuse a spent connection
            self._response.close()
        self._response.release_conn()


@contextlib.contextmanager
def _urllib3_errors(transport: Urllib3Transport, what: str) -> Iterator[None]:
    try:
        yield
    except urllib3.exceptions.TimeoutError as exc:
        raise late(transport, what) from exc
    except urllib3.exceptions.HTTPError as exc:
        raise ServiceError(
            transport.name, "unreachable", f"{what} interrupted: {short(exc)}"
        ) from exc

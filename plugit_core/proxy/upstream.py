"""HTTP calls from the proxy to one service: pooled, time-limited, signed, never redirected.

One :class:`ServiceClient` per mounted service, each with its own pool of keep-alive
connections (:mod:`.transport`), its own timeouts and its own cap on concurrent calls, so a
slow service only ever ties up its own share of the proxy's threads.
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar
from urllib.parse import quote, unquote, urlencode, urlsplit

import urllib3
from cachetools import LRUCache

from .. import protocol
from ..config import ServiceMount
from ..signing import sign_request
from .health import CircuitBreaker, ServiceMetrics
from .transport import Exchange, ServiceError, make_transport

__all__ = ["ServiceClient", "ServiceError", "ServiceReply", "SingleFlight", "UpstreamRequest"]

log = logging.getLogger("plugit.proxy.upstream")
T = TypeVar("T")


@dataclass
class UpstreamRequest:
    """The request about to be sent to a service's action (plugins may change it)."""

    method: str
    path: str  # below the service URL, e.g. "action/show/5"
    params: list[tuple[str, str]] = field(default_factory=list)
    form: list[tuple[str, str]] | None = None
    files: list[tuple[str, tuple[str, Any, str]]] = field(default_factory=list)
    body: bytes | None = None  # a raw body (JSON, ...) when not form data
    content_type: str | None = None
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class ServiceReply:
    """A service's answer; ``body`` is fully read unless ``stream`` is set (files)."""

    status: int
    headers: Any  # case-insensitive mapping
    body: bytes = b""
    stream: Iterator[bytes] | None = None
    close: Callable[[], None] | None = None

    def json(self) -> Any:
        if not self.body or self.body.strip() == b"{}":
            return {}
        try:
            return json.loads(self.body)
        except ValueError as exc:
            raise ValueError(f"the reply is not JSON ({exc})") from None
        except RecursionError:
            raise ValueError("the reply's JSON is nested too deeply") from None


def _wall_clock() -> float:
    return time.time()  # looked up at each call: a test may move the clock


class ExpiringLRU:
    """A small thread-safe LRU whose entries expire at a given time of ``clock`` (wall-clock
    time by default).

    A look-up costs one dict access under a lock (the page cache's hits go through it); an
    expired entry is dropped when it is looked up, or pushed out by newer ones.
    """

    def __init__(self, maxsize: int, clock: Callable[[], float] | None = None) -> None:
        self._data: collections.OrderedDict[Any, tuple[Any, float]] = collections.OrderedDict()
        self._maxsize = maxsize
        self._clock = clock or _wall_clock
        self._lock = threading.Lock()

    def get(self, key: Any) -> Any:
        """The value under ``key``, or None when absent or expired."""
        with self._lock:
            item = self._data.get(key)
            if item is None:
                return None
            if item[1] <= self._clock():
                del self._data[key]
                return None
            self._data.move_to_end(key)
            return item[0]

    def put(self, key: Any, value: Any, expires: float) -> None:
        """Keep ``value`` until ``expires`` (a time of the clock); a value already expired is
        not kept (nor is what the key held before)."""
        with self._lock:
            if expires <= self._clock():
                self._data.pop(key, None)
                return
            self._data[key] = (value, expires)
            self._data.move_to_end(key)
            while len(self._data) > self._maxsize:
                self._data.popitem(last=False)


class SingleFlight(Generic[T]):
    """Run one call per key at a time; concurrent callers with the same key share its result."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._calls: dict[Any, _Call[T]] = {}

    def do(self, key: Any, fn: Callable[[], T]) -> T:
        with self._lock:
            call = self._calls.get(key)
            leader = call is None
            if leader:
                call = self._calls[key] = _Call()
        assert call is not None
        if not leader:
            call.done.wait()
            if call.error is not None:
                raise call.error
            return call.result  # type: ignore[return-value]
        try:
            call.result = fn()
            return call.result
        except BaseException as exc:
            call.error = exc
            raise
        finally:
            with self._lock:
                del self._calls[key]
            call.done.set()


class _Call(Generic[T]):
    __slots__ = ("done", "error", "result")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.result: T | None = None
        self.error: BaseException | None = None


class ServiceClient:
    """Talks to one service."""

    META_DEFAULT_TTL = 300.0

    def __init__(
        self,
        mount: ServiceMount,
        *,
        user_agent: str = "PlugIt-proxy",
        http_client: str = "auto",
        cache_meta: bool = True,
    ) -> None:
        self.mount = mount
        self.name = mount.name
        self.transport = make_transport(
            http_client,
            mount.name,
            mount.url,
            connect_timeout=mount.connect_timeout,
            timeout=mount.timeout,
            max_connections=mount.max_concurrency,
        )
        self._headers = {"User-Agent": user_agent, "Accept-Encoding": "identity"}
        self.breaker = CircuitBreaker(mount.breaker_failures, mount.breaker_reset)
        self.last_failure = "unreachable"  # the kind of the last failure the breaker counted
        self.metrics = ServiceMetrics(mount.name)
        self.in_flight = 0
        self._count_lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(mount.max_concurrency)
        self._base_path = urlsplit(mount.url).path.rstrip("/")
        # Meta: parsed, per action path, for the lifetime the service asked (at most an hour).
        self._meta = ExpiringLRU(maxsize=4096, clock=time.monotonic)  # values: (meta,)
        self._last_meta: LRUCache[str, protocol.ActionMeta] = LRUCache(maxsize=4096)
        self._meta_lock = threading.Lock()
        self._flight: SingleFlight[Any] = SingleFlight()
        self.compatible: bool | None = None  # set by check_version
        # Dev mode keeps no meta: an edited template (a new tag) shows on the next reload.
        self.cache_meta = cache_meta
        self._warned_name = False

    # -- low level --------------------------------------------------------------------------------

    @contextlib.contextmanager
    def slot(self) -> Iterator[None]:
        """Hold one of the service's concurrency slots for work the proxy does on its behalf
        (rendering its template): a service's renders count against its cap like its calls.
        Fails fast, like :meth:`send`, when the cap is reached."""
        if not self._slots.acquire(timeout=0.05):
            self.metrics.observe(0.0, "busy")
            raise ServiceError(
                self.name, "busy", f"{self.mount.max_concurrency} calls already in progress"
            )
        with self._count_lock:
            self.in_flight += 1
        try:
            yield
        finally:
            with self._count_lock:
                self.in_flight -= 1
            self._slots.release()

    def send(self, upstream: UpstreamRequest, *, stream: bool = False) -> ServiceReply:
        """Send ``upstream`` (signed when the mount has a secret) and return the reply.

        The body is read into memory (up to ``max_response_size``), except for file replies
        (``EbuIo-PlugIt-ItAFile``) and when ``stream`` is set: those are streamed and hold their
        concurrency slot until the stream is closed.  Raises :class:`ServiceError` for a refused
        connection, a timeout, a full concurrency cap or an oversized reply; any HTTP status is
        a reply.
        """
        if not self.breaker.allow():
            self.metrics.observe(0.0, "circuit_open")
            raise ServiceError(
                self.name,
                "circuit_open",
                f"the service failed repeatedly (the last time: {self.last_failure}); "
                f"next try in {self.breaker.retry_in():.0f}s",
                cause=self.last_failure,
            )
        # A full cap fails fast: waiting for a slot would tie up the caller's thread, which
        # is what the cap is there to prevent.
        if not self._slots.acquire(timeout=0.05):
            self.metrics.observe(0.0, "busy")
            raise ServiceError(
                self.name, "busy", f"{self.mount.max_concurrency} calls already in progress"
            )
        started = time.monotonic()
        with self._count_lock:
            self.in_flight += 1
        try:
            reply = self._send(upstream, stream)
        except ServiceError as error:
            if error.kind in ("unreachable", "timeout"):
                self.last_failure = error.kind
                self.breaker.failure()
            self.metrics.observe(time.monotonic() - started, error.kind)
            raise
        finally:
            with self._count_lock:
                self.in_flight -= 1
        if reply.status >= 500:
            self.last_failure = "error"
            self.breaker.failure()
            self.metrics.observe(time.monotonic() - started, f"status_{reply.status}")
        else:
            self.breaker.success()
            self.metrics.observe(time.monotonic() - started)
        return reply

    def _send(self, upstream: UpstreamRequest, stream: bool) -> ServiceReply:
        """The HTTP exchange itself; the caller holds a concurrency slot, released here (or
        when a streamed reply is closed)."""
        released = False
        try:
            method, target, body, headers = self._prepare(upstream)
            exchange = self.transport.send(method, target, headers, body)
            if stream or protocol.H_FILE in exchange.headers:
                released = True
                finish = self._finisher(exchange)
                return ServiceReply(
                    exchange.status,
                    exchange.headers,
                    stream=self._stream(exchange, finish),
                    close=lambda: finish(complete=False),
                )
            complete = False
            try:
                body = exchange.read(self.mount.max_response_size)
                complete = True
            finally:
                exchange.close(complete=complete)
            return ServiceReply(exchange.status, exchange.headers, body)
        finally:
            if not released:
                self._slots.release()

    def _finisher(self, exchange: Exchange) -> Callable[..., None]:
        """Ends a streamed reply exactly once, however it ends: read to the end, closed unread
        (an error status, HEAD, a client gone), or both.  The connection is reused only when its
        body was read to the end, and the concurrency slot is given back."""
        lock = threading.Lock()
        done = False

        def finish(*, complete: bool) -> None:
            nonlocal done
            with lock:
                if done:
                    return
                done = True
            try:
                exchange.close(complete=complete)
            finally:
                self._slots.release()

        return finish

    def _stream(self, exchange: Exchange, finish: Callable[..., None]) -> Iterator[bytes]:
        complete = False
        try:
            yield from exchange.stream(64 * 1024)
            complete = True
        except ServiceError as exc:
            # Raised on, so the browser's transfer fails too instead of ending as if whole.
            log.warning("%s: %s", self.name, exc.message)
            raise
        finally:
            finish(complete=complete)

    def _prepare(self, upstream: UpstreamRequest) -> tuple[str, str, bytes | None, dict[str, str]]:
        """(method, URL path with query, body, headers) of the request, signed if need be."""
        # One slash between the base and the path: a service's server would fold a run of
        # leading slashes, and the signed path would no longer match.
        path = quote(f"{self._base_path}/{upstream.path.lstrip('/')}", safe="/:@!$&'()*+,;=-._~")
        query = urlencode(upstream.params) if upstream.params else ""
        headers = {**self._headers, **upstream.headers}
        body: bytes | None = None
        if upstream.files:
            fields: list[tuple[str, Any]] = list(upstream.form or [])
            for name, (filename, stream, mimetype) in upstream.files:
                fields.append((name, (filename, stream.read(), mimetype)))
            body, headers["Content-Type"] = urllib3.encode_multipart_formdata(fields)
        elif upstream.form is not None:
            body = urlencode(upstream.form).encode("ascii")
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        elif upstream.body is not None:
            body = upstream.body
            if upstream.content_type:
                headers["Content-Type"] = upstream.content_type
        if body is not None:
            headers["Content-Length"] = str(len(body))
        if self.mount.secret:
            headers.update(
                sign_request(
                    self.mount.secret,
                    method=upstream.method,
                    path=unquote(path),
                    query=query,
                    body=body,
                    headers=headers.items(),
                )
            )
        return upstream.method, f"{path}?{query}" if query else path, body, headers

    def get(self, path: str, params: list[tuple[str, str]] | None = None) -> ServiceReply:
        return self.send(UpstreamRequest("GET", path, params=params or []))

    # -- protocol calls ---------------------------------------------------------------------------

    def check_version(self) -> tuple[bool, str]:
        """Ask ``version``; True when the service speaks PlugIt protocol 1.

        Any protocol name is accepted with version ``1``: the original library's default name
        (``plugit-sample``), which its own example service kept, is common among original
        services and the original proxy never checked it.  A name other than ``EBUio-PlugIt``
        is logged as a warning once.
        """
        try:
            reply = self.get("version")
            data = reply.json() if reply.status == 200 else None
        except (ServiceError, ValueError) as exc:
            self.compatible = None
            return False, str(exc)
        ok = (
            isinstance(data, dict)
            and data.get("result") == "Ok"
            and str(data.get("version")) == protocol.PROTOCOL_VERSION
        )
        self.compatible = ok
        if not ok or not isinstance(data, dict):  # (ok says it is a dict)
            return False, f"version answered {reply.status} {reply.body[:200]!r}"
        name = str(data.get("protocol"))[:100]
        if name != protocol.PROTOCOL_NAME:
            if not self._warned_name:
                self._warned_name = True
                log.warning(
                    "service %s names its protocol %r, not %r: accepted (version 1)",
                    self.name,
                    name,
                    protocol.PROTOCOL_NAME,
                )
            return True, f"protocol {name!r} version 1 (accepted; the usual name is EBUio-PlugIt)"
        return True, "protocol EBUio-PlugIt version 1"

    def meta(self, path: str) -> protocol.ActionMeta | None:
        """The meta of the action at ``path`` (None: no such action), cached as the service asks.

        Concurrent cold requests for one path make a single call.
        """
        cached: tuple[protocol.ActionMeta | None] | None = self._meta.get(path)
        if cached is not None:
            return cached[0]
        try:
            meta: protocol.ActionMeta | None = self._flight.do(
                ("meta", path), lambda: self._fetch_meta(path)
            )
            return meta
        except ServiceError:
            with self._meta_lock:
                last = self._last_meta.get(path)
            if last is None:
                raise
            # The service is failing: its last known meta still lets the proxy apply the
            # access rules and find a stale page to show.
            return last

    def _fetch_meta(self, path: str) -> protocol.ActionMeta | None:
        reply = self.get("meta/" + path)
        if reply.status == 404:
            meta = None
        elif reply.status != 200:
            raise ServiceError(self.name, "error", f"meta/{path} answered {reply.status}")
        else:
            try:
                meta = protocol.parse_meta(reply.body)
            except protocol.ProtocolError as exc:
                raise ServiceError(self.name, "bad_reply", f"meta/{path}: {exc}") from None
        ttl = _meta_ttl(reply.headers, self.META_DEFAULT_TTL)
        with self._meta_lock:
            if ttl > 0 and self.cache_meta:
                self._meta.put(path, (meta,), time.monotonic() + ttl)
            if meta is not None:
                self._last_meta[path] = meta
        return meta

    def template(self, path: str) -> str | None:
        """Fetch the template of the action at ``path`` (None: no such template).

        Concurrent requests are joined by the pipeline, which fetches and compiles in one flight.
        """
        reply = self.get("template/" + path)
        if reply.status == 404:
            return None
        if reply.status != 200:
            raise ServiceError(self.name, "error", f"template/{path} answered {reply.status}")
        try:
            return reply.body.decode("utf-8")
        except UnicodeDecodeError:
            raise ServiceError(
                self.name, "bad_reply", f"template/{path} is not UTF-8 text"
            ) from None

    def close(self) -> None:
        self.transport.close()


def _meta_ttl(headers: Any, default: float) -> float:
    """Seconds to keep a meta: ``Cache-Control: max-age``, else ``Expire(s)``, else ``default``."""
    from werkzeug.http import parse_cache_control_header, parse_date

    control = headers.get("Cache-Control")
    if control:
        max_age = parse_cache_control_header(control).max_age
        if max_age is not None:
            return min(float(max_age), 3600.0)
    expires = headers.get("Expire") or headers.get("Expires")
    if expires:
        when = parse_date(expires)
        if when is None:
            return 0.0
        return min(when.timestamp() - time.time(), 3600.0)
    return default

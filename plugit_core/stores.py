"""Store calls that fail fast: a bounded wait, a cap on waiting threads, reconnection on demand.

Every backend that keeps state outside the process (the user directory, billing, the mail queue,
sessions and the page cache, in SQLite, PostgreSQL or Redis) runs each of its calls through a
:class:`StoreGuard`:

* **a bounded wait**: the backend sizes its own timeouts (pool wait, connect, socket, SQLite busy
  timeout) from :attr:`StoreGuard.wait` (2 s by default); a call that blocks anyway (a frozen
  server that accepted the connection) is cut by :meth:`StoreGuard.watch`, which runs a
  backend-given function (closing the socket) when the wait is over;
* **a cap on waiting threads**: at most ``max_waiters`` threads are inside the store's calls at
  once; one more is refused at once, so a hung store never holds every thread of the process and
  pages that do not need it are not queued behind it;
* **failing fast while down**: after a failure the store is *down*; calls are refused at once,
  except one trial call at a time, the first after a backoff that doubles from 50 ms up to
  ``max_backoff`` (1 s): the first request after the store is back reconnects and succeeds;
* **the truth for operators**: the state (:meth:`StoreGuard.status`), per-store latency and
  errors (:class:`StoreMetrics`, rendered at ``/_plugit/metrics``), and a warning when the store
  goes down (then at most once a minute) and when it answers again.

A refused or failed call raises :class:`StoreUnavailable`, carrying the store's name and a
sentence a visitor can read; the proxy turns it into a themed 503 naming what is unavailable
(no traceback: an outage is not a bug).  Errors that are not outages (a constraint violated, a
bad argument) pass through unchanged and count as answers.
"""

from __future__ import annotations

import bisect
import heapq
import itertools
import logging
import math
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from .settings import setting

__all__ = [
    "DEFAULT_MAX_BACKOFF",
    "DEFAULT_MAX_WAITERS",
    "DEFAULT_WAIT",
    "GuardSettings",
    "StoreGuard",
    "StoreMetrics",
    "StoreUnavailable",
    "WaitingGuardSettings",
    "guards_of",
    "sqlite_is_outage",
]

DEFAULT_WAIT = 2.0  # seconds a store call may take before the request gets its 503
DEFAULT_MAX_WAITERS = 8  # threads that may be inside one store's calls at once
DEFAULT_MAX_BACKOFF = 1.0  # at most this long between two trial calls while a store is down
FIRST_BACKOFF = 0.05
WARN_INTERVAL = 60.0
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)

log = logging.getLogger("plugit.stores")


class StoreUnavailable(Exception):  # noqa: N818 the name says what it is: an outage, not a bug
    """A store could not answer within its wait, refused, or is known to be down.

    ``store`` is the store's short name (``users_postgres``, ``session_redis``, ...), ``label``
    what a visitor reads (``the user directory``), ``reason`` what the operator reads
    (``no answer within 2s``, ``too many requests waiting``, ``down``, the driver's error).
    """

    def __init__(self, store: str, label: str, reason: str) -> None:
        super().__init__(f"{label} ({store}) is unavailable: {reason}")
        self.store = store
        self.label = label
        self.reason = reason

    @property
    def message(self) -> str:
        """The sentence shown on the 503 page."""
        label = self.label[:1].upper() + self.label[1:]
        return f"{label} is unavailable right now. Please try again in a moment."


class StoreMetrics:
    """Calls, errors by kind and a latency histogram of one store; thread-safe.

    Bound to a :class:`~plugit_core.metrics.MetricsBoard` (:meth:`bind`), every change is
    written through to it, so a scrape answered by another worker process counts it too.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.calls = 0
        self.errors: Counter[str] = Counter()
        self._buckets = [0] * (len(BUCKETS) + 1)
        self._sum = 0.0
        self._board: Any = None
        self._store = ""

    def observe(self, seconds: float, error: str | None = None) -> None:
        with self._lock:
            self.calls += 1
            self._sum += seconds
            index = bisect.bisect_left(BUCKETS, seconds)
            self._buckets[index] += 1
            if error is not None:
                self.errors[error] += 1
            board, store = self._board, self._store
            if board is not None:
                board.set(("c", "store_calls", store), self.calls)
                board.set(("c", "store_sum", store), self._sum)
                board.set(("c", "store_bucket", store, _LES[index]), self._buckets[index])
                if error is not None:
                    board.set(("c", "store_errors", store, error), self.errors[error])

    def refused(self, kind: str) -> None:
        """A call refused before it reached the store (``down``, ``busy``): no latency."""
        with self._lock:
            self.errors[kind] += 1
            if self._board is not None:
                self._board.set(("c", "store_errors", self._store, kind), self.errors[kind])

    def series(self, store: str) -> dict[tuple[str, ...], float]:
        """These counters as series of a :class:`~plugit_core.metrics.MetricsBoard`."""
        with self._lock:
            out: dict[tuple[str, ...], float] = {
                ("c", "store_calls", store): self.calls,
                ("c", "store_sum", store): self._sum,
            }
            for le, count in zip(_LES, self._buckets, strict=True):
                out[("c", "store_bucket", store, le)] = count
            for kind, count in self.errors.items():
                out[("c", "store_errors", store, kind)] = count
            return out

    def bind(self, board: Any, store: str) -> None:
        """Write every series to ``board`` (a MetricsBoard) now and each change from now on."""
        with self._lock:
            self._board, self._store = board, store
        for key, value in self.series(store).items():
            board.set(key, value)

    def snapshot(self) -> dict[str, Any]:
        """Cumulative buckets as (le, count), the sum, the count and the errors."""
        with self._lock:
            cumulative, total = [], 0
            for bound, count in zip(_LES, self._buckets, strict=True):
                total += count
                cumulative.append((bound, total))
            return {
                "buckets": cumulative,
                "sum": self._sum,
                "count": total,
                "errors": dict(self.errors),
            }


_LES = (*map(str, BUCKETS), "+Inf")


class _Watchdog:
    """One thread for the whole process that runs a function when a call overstays its wait."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int, list[Any]]] = []
        self._counter = itertools.count()
        self._thread: threading.Thread | None = None

    def watch(self, seconds: float, action: Callable[[], None]) -> list[Any]:
        entry: list[Any] = [action, False]  # [action or None when cancelled, fired]
        with self._cond:
            heapq.heappush(self._heap, (time.monotonic() + seconds, next(self._counter), entry))
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._run, name="plugit-store-watchdog", daemon=True
                )
                self._thread.start()
            self._cond.notify()
        return entry

    @staticmethod
    def cancel(entry: list[Any]) -> bool:
        """Cancel; True when the action already ran."""
        entry[0] = None
        return bool(entry[1])

    def _run(self) -> None:
        while True:
            with self._cond:
                while self._heap and self._heap[0][2][0] is None:
                    heapq.heappop(self._heap)
                if not self._heap:
                    self._cond.wait(30.0)
                    continue
                when, _, entry = self._heap[0]
                delay = when - time.monotonic()
                if delay > 0:
                    self._cond.wait(delay)
                    continue
                heapq.heappop(self._heap)
                action = entry[0]
                if action is None:
                    continue
                entry[1] = True
            try:
                action()
            except Exception:  # a socket already closed: nothing to cut
                log.debug("store watchdog action failed", exc_info=True)


_WATCHDOG = _Watchdog()


def _default_is_outage(exc: BaseException) -> bool:
    return isinstance(exc, (OSError, TimeoutError))


class StoreGuard:
    """Bounded, capped, fail-fast calls to one store.  Thread-safe.

    Use it around each call::

        with guard.call():
            ... the store's work ...

    ``is_outage(exc)`` says which errors mean the store is unavailable (they become
    :class:`StoreUnavailable`); other errors pass through and count as answers.  ``probe`` is a
    cheap call (a ping) that :meth:`check` runs for the readiness page.  ``required`` says
    whether the proxy is not ready without this store.
    """

    def __init__(
        self,
        store: str,
        label: str,
        *,
        wait: float = DEFAULT_WAIT,
        max_waiters: int = DEFAULT_MAX_WAITERS,
        max_backoff: float = DEFAULT_MAX_BACKOFF,
        is_outage: Callable[[BaseException], bool] = _default_is_outage,
        probe: Callable[[], Any] | None = None,
        required: bool = True,
        consequence: str = "requests that need it get a 503 meanwhile",
        on_recover: Callable[[], None] | None = None,
        logger: logging.Logger | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if wait <= 0:
            raise ValueError("a store's wait is a positive number of seconds")
        if max_waiters < 1:
            raise ValueError("a store needs room for at least one waiting thread")
        self.store = store
        self.label = label
        self.wait = float(wait)
        self.max_waiters = int(max_waiters)
        self.max_backoff = float(max_backoff)
        self.is_outage = is_outage
        self.probe = probe
        self.required = required
        self.consequence = consequence
        self.on_recover = on_recover
        self.failures = 0  # every failure since start (tests, logs)
        self.log = logger or log
        self.metrics = StoreMetrics()
        self._clock = clock
        self._lock = threading.Lock()
        self._inside = 0
        self._down = False
        self._probing = False
        self._backoff = 0.0
        self._retry_at = 0.0
        self._last_error = ""
        self._last_warning = -math.inf

    def __repr__(self) -> str:
        return f"<StoreGuard {self.store} {'down' if self._down else 'up'}>"

    # -- state ------------------------------------------------------------------------------------

    @property
    def down(self) -> bool:
        return self._down

    @property
    def in_flight(self) -> int:
        return self._inside

    def unavailable(self, reason: str) -> StoreUnavailable:
        return StoreUnavailable(self.store, self.label, reason)

    def status(self) -> dict[str, Any]:
        """What ``/_plugit/ready`` shows of this store."""
        with self._lock:
            state: dict[str, Any] = {
                "ready": not self._down,
                "required": self.required,
                "in_flight": self._inside,
                "max_waiters": self.max_waiters,
                "wait": self.wait,
            }
            if self._down:
                state["error"] = self._last_error
                state["retry_in"] = round(max(0.0, self._retry_at - self._clock()), 3)
        return state

    def check(self) -> dict[str, Any]:
        """Run the probe (if any) through the guard, then :meth:`status`."""
        if self.probe is not None:
            try:
                with self.call():
                    self.probe()
            except StoreUnavailable:
                pass
            except Exception as exc:  # the probe failed in a way the guard does not classify
                self._failed(exc)
        return self.status()

    # -- calls ------------------------------------------------------------------------------------

    def _admit(self) -> bool:
        """Let this thread in or raise; True when it is the trial call of a down store."""
        with self._lock:
            trial = False
            if self._down:
                if self._probing or self._clock() < self._retry_at:
                    self.metrics.refused("down")
                    raise self.unavailable(f"down ({self._last_error})")
                self._probing = trial = True
            if self._inside >= self.max_waiters:
                if trial:
                    self._probing = False
                self.metrics.refused("busy")
                raise self.unavailable(
                    f"{self._inside} requests are already waiting for it (max_waiters)"
                )
            self._inside += 1
            return trial

    @contextmanager
    def call(self) -> Iterator[None]:
        """One store call: admitted or refused at once, bounded, classified, measured."""
        trial = self._admit()
        start = self._clock()
        try:
            yield
        except StoreUnavailable as exc:
            self._leave(trial)
            if exc.store != self.store:  # another store's outage, met inside this call
                self.metrics.observe(self._clock() - start)
                raise
            kind = "timeout" if "no answer within" in exc.reason else "error"
            self.metrics.observe(self._clock() - start, kind)
            self._failed(exc, reason=exc.reason)
            raise
        except BaseException as exc:
            self._leave(trial)
            if not isinstance(exc, Exception) or not self.is_outage(exc):
                self.metrics.observe(self._clock() - start)
                self._succeeded()
                raise
            elapsed = self._clock() - start
            kind = "timeout" if elapsed >= self.wait * 0.95 else "error"
            self.metrics.observe(elapsed, kind)
            reason = self._failed(exc)
            raise self.unavailable(reason) from None
        self._leave(trial)
        self.metrics.observe(self._clock() - start)
        self._succeeded()

    def _leave(self, trial: bool) -> None:
        with self._lock:
            self._inside -= 1
            if trial:
                self._probing = False

    @contextmanager
    def watch(self, cut: Callable[[], None], seconds: float | None = None) -> Iterator[None]:
        """Run ``cut`` (close the connection's socket) if the block lasts longer than
        ``seconds`` (the wait by default).

        A block cut this way raises whatever the driver raises on a closed socket; the guard
        around it reports it as "no answer within <wait>s".
        """
        entry = _WATCHDOG.watch(max(0.01, self.wait if seconds is None else seconds), cut)
        try:
            yield
        except Exception as exc:
            if _WATCHDOG.cancel(entry):
                raise self.unavailable(f"no answer within {self.wait:g}s") from exc
            raise
        else:
            _WATCHDOG.cancel(entry)

    def _failed(self, exc: BaseException, reason: str | None = None) -> str:
        text = reason or _describe(exc)
        with self._lock:
            now = self._clock()
            first = not self._down
            self._down = True
            self._backoff = (
                FIRST_BACKOFF if first else min(self.max_backoff, max(self._backoff, 0.025) * 2)
            )
            self._retry_at = now + self._backoff
            self._last_error = text
            self.failures += 1
            warn = first or now - self._last_warning >= WARN_INTERVAL
            if warn:
                self._last_warning = now
        if warn:
            self.log.warning(
                "%s (%s) %s: %s; %s",
                self.label,
                self.store,
                "is unavailable" if first else "is still unavailable",
                text,
                self.consequence,
            )
        return text

    def warn(self, message: str, *args: Any) -> None:
        """A warning about a consequence of the outage, at most once a minute (shared with the
        outage's own warnings)."""
        with self._lock:
            now = self._clock()
            if now - self._last_warning < WARN_INTERVAL:
                return
            self._last_warning = now
        self.log.warning(message, *args)

    def _succeeded(self) -> None:
        if not self._down:
            return
        with self._lock:
            if not self._down:
                return
            self._down = False
            self._backoff = 0.0
            self._last_warning = -math.inf
        self.log.warning("%s (%s) answers again", self.label, self.store)
        if self.on_recover is not None:
            self.on_recover()


# redis-py names the failed command of a pipeline with its arguments (a session's key, its
# data): never in a log line or on the readiness page.
_PIPELINE_COMMAND = re.compile(r"^Command # \d+ \(.*\) of pipeline caused error: ", re.S)


def _describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    text = _PIPELINE_COMMAND.sub("", text)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


_SQLITE_OUTAGES = ("locked", "busy", "unable to open", "disk i/o", "disk is full", "readonly")


def sqlite_is_outage(exc: BaseException) -> bool:
    """A SQLite error that means the file cannot be used now (locked by another writer past
    the wait, unreadable, full), as opposed to a statement's mistake."""
    if isinstance(exc, OSError):
        return True
    if type(exc).__name__ != "OperationalError":
        return False
    text = str(exc).lower()
    return any(word in text for word in _SQLITE_OUTAGES)


def guards_of(*backends: Any) -> list[StoreGuard]:
    """The guards of these backends (their ``store_guards`` attribute), each once, in order."""
    found: list[StoreGuard] = []
    for backend in backends:
        for guard in getattr(backend, "store_guards", ()) or ():
            if isinstance(guard, StoreGuard) and guard not in found:
                found.append(guard)
    return found


@dataclass(frozen=True)
class GuardSettings:
    """The keys of a store backend's table that tune its :class:`StoreGuard`, flattened into
    the backend's settings: ``guard: GuardSettings = setting(flatten=True, ...)``."""

    max_waiters: int = setting(
        DEFAULT_MAX_WAITERS, minimum=1, text=True, help="requests waiting for the store at once"
    )
    required: bool | None = setting(
        None, help="the proxy is not ready without this store (default: the backend's)"
    )

    def options(self, *, required: bool = True) -> dict[str, Any]:
        """The guard's keyword arguments; ``required`` when the table does not say."""
        return {
            "max_waiters": self.max_waiters,
            "required": required if self.required is None else self.required,
        }


@dataclass(frozen=True)
class WaitingGuardSettings(GuardSettings):
    """:class:`GuardSettings` with ``wait``, for a backend that has no timeout of its own."""

    wait: float = setting(
        DEFAULT_WAIT, minimum=0.05, text=True, help="seconds a store call may take"
    )

    def options(self, *, required: bool = True) -> dict[str, Any]:
        return {**super().options(required=required), "wait": self.wait}

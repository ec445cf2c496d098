"""Keeping one bad service from hurting the rest, and saying how each one is doing.

* :class:`CircuitBreaker`: after ``failures`` failed calls in a row a service's circuit opens and
  calls fail at once (no thread waits for a dead service); after ``reset`` seconds one trial call
  is let through (half-open): a success closes the circuit, a failure opens it again.
* :class:`ServiceMetrics`: per service, requests and errors by kind, a latency histogram, the
  breaker state, rendered in the Prometheus text format at ``/_plugit/metrics``.
* :func:`render_store_metrics`: the same for the stores (users, billing, mail queue, sessions,
  cache: calls, errors by kind, latency, up or down, in flight) and the mail backlog.
* :func:`bind_metrics`: the proxy's metrics written to its
  :class:`~plugit_core.metrics.MetricsBoard`, so that with several worker processes every
  scrape gives the totals of all of them (:func:`render_services`, :func:`render_stores`
  render the merged series).
"""

from __future__ import annotations

import bisect
import math
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from ..metrics import COUNTER, GAUGE_MAX, GAUGE_MIN, GAUGE_SUM, MetricsBoard, SeriesKey

__all__ = [
    "CircuitBreaker",
    "ServiceMetrics",
    "bind_metrics",
    "render_prometheus",
    "render_services",
    "render_store_metrics",
    "render_stores",
]

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"
_STATE_VALUE = {CLOSED: 0, HALF_OPEN: 1, OPEN: 2}
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class CircuitBreaker:
    """A per-service circuit breaker; thread-safe."""

    def __init__(
        self, failures: int = 5, reset: float = 30.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.threshold = failures
        self.reset = reset
        self._clock = clock
        self._lock = threading.Lock()
        self._failures = 0
        self._opened_at = 0.0
        self._state = CLOSED
        self._trial = False

    @property
    def state(self) -> str:
        with self._lock:
            return self._current()

    def _current(self) -> str:
        if self._state == OPEN and self._clock() - self._opened_at >= self.reset:
            self._state = HALF_OPEN
            self._trial = False
        return self._state

    def allow(self) -> bool:
        """May a call go through now?  In half-open state, only one trial call at a time."""
        with self._lock:
            state = self._current()
            if state == CLOSED:
                return True
            if state == HALF_OPEN and not self._trial:
                self._trial = True
                return True
            return False

    def success(self) -> None:
        with self._lock:
            self._failures = 0
            self._state = CLOSED
            self._trial = False

    def failure(self) -> None:
        with self._lock:
            self._failures += 1
            if self._state == HALF_OPEN or self._failures >= self.threshold:
                self._state = OPEN
                self._opened_at = self._clock()
                self._trial = False

    def retry_in(self) -> float:
        """Seconds until the next trial call (0 when closed)."""
        with self._lock:
            if self._current() != OPEN:
                return 0.0
            return max(0.0, self.reset - (self._clock() - self._opened_at))


class ServiceMetrics:
    """Counters and a latency histogram for one service; thread-safe.

    Bound to a :class:`~plugit_core.metrics.MetricsBoard` (:meth:`bind`), every change is
    written through to it, so a scrape answered by another worker process counts it too.
    """

    def __init__(self, service: str) -> None:
        self.service = service
        self._lock = threading.Lock()
        self.requests = 0
        self.errors: Counter[str] = Counter()
        self._buckets = [0] * (len(BUCKETS) + 1)
        self._sum = 0.0
        self.in_flight = 0
        self._board: MetricsBoard | None = None

    def observe(self, seconds: float, error: str | None = None) -> None:
        with self._lock:
            self.requests += 1
            self._sum += seconds
            index = bisect.bisect_left(BUCKETS, seconds)
            self._buckets[index] += 1
            if error is not None:
                self.errors[error] += 1
            board = self._board
            if board is not None:
                name = self.service
                board.set((COUNTER, "service_requests", name), self.requests)
                board.set((COUNTER, "service_sum", name), self._sum)
                board.set((COUNTER, "service_bucket", name, _LES[index]), self._buckets[index])
                if error is not None:
                    board.set((COUNTER, "service_errors", name, error), self.errors[error])

    def series(self) -> dict[SeriesKey, float]:
        """This object's counters as series of a board."""
        with self._lock:
            name = self.service
            out: dict[SeriesKey, float] = {
                (COUNTER, "service_requests", name): self.requests,
                (COUNTER, "service_sum", name): self._sum,
            }
            for le, count in zip(_LES, self._buckets, strict=True):
                out[(COUNTER, "service_bucket", name, le)] = count
            for kind, count in self.errors.items():
                out[(COUNTER, "service_errors", name, kind)] = count
            return out

    def bind(self, board: MetricsBoard) -> None:
        """Write every series to ``board`` now and each change from now on."""
        with self._lock:
            self._board = board
        for key, value in self.series().items():
            board.set(key, value)

    def histogram(self) -> tuple[list[tuple[str, int]], float, int]:
        """Cumulative buckets as (le, count), the sum and the count."""
        with self._lock:
            cumulative, total = [], 0
            for bound, count in zip(_LES, self._buckets, strict=True):
                total += count
                cumulative.append((bound, total))
            return cumulative, self._sum, total


_LES = (*map(str, BUCKETS), "+Inf")


def service_gauges(service: str, breaker: CircuitBreaker, in_flight: int) -> dict[SeriesKey, float]:
    """A service's gauges in this process: its circuit's state and its calls in flight."""
    return {
        (GAUGE_MAX, "service_circuit", service): _STATE_VALUE[breaker.state],
        (GAUGE_SUM, "service_in_flight", service): in_flight,
    }


def store_gauges(guard: Any) -> dict[SeriesKey, float]:
    """A store's gauges in this process: up (1) or down (0), its calls in flight."""
    return {
        (GAUGE_MIN, "store_up", guard.store): 0 if guard.down else 1,
        (GAUGE_SUM, "store_in_flight", guard.store): guard.in_flight,
    }


def bind_metrics(
    board: MetricsBoard,
    clients: Iterable[Any],
    guards: Iterable[Any],
    gauges: Iterable[Callable[[], Mapping[SeriesKey, float]]] = (),
) -> None:
    """Write the counters of every service client and store guard to ``board`` as they change,
    and their gauges (and those ``gauges`` give, e.g. the SMTP server's ``smtp_up``) at each
    scrape (and once a second when the board is shared)."""
    clients, guards, gauges = list(clients), list(guards), list(gauges)
    for client in clients:
        client.metrics.bind(board)
    for guard in guards:
        guard.metrics.bind(board, guard.store)

    def publish() -> None:
        for client in clients:
            for key, value in service_gauges(
                client.metrics.service, client.breaker, client.in_flight
            ).items():
                board.set(key, value)
        for guard in guards:
            for key, value in store_gauges(guard).items():
                board.set(key, value)
        for more in gauges:
            for key, value in more().items():
                board.set(key, value)

    board.start(publish)


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:.6f}"


def _names(series: Mapping[SeriesKey, float], metric: str, first: Iterable[str]) -> list[str]:
    """The label values of ``metric`` in ``series``: those of ``first`` in its order, then the
    others (known to another process only) sorted."""
    found = {key[2] for key in series if key[1] == metric}
    ordered = [name for name in dict.fromkeys(first) if name in found]
    return ordered + sorted(found - set(ordered))


def _by_label(series: Mapping[SeriesKey, float], metric: str, name: str) -> dict[str, float]:
    return {key[3]: value for key, value in series.items() if key[1] == metric and key[2] == name}


def _le_order(le: str) -> float:
    return math.inf if le == "+Inf" else float(le)


def _histogram(
    out: list[str], series: Mapping[SeriesKey, float], prefix: str, label: str, name: str
) -> None:
    """Cumulative buckets, sum and count of ``prefix`` for one ``label="name"``."""
    buckets = _by_label(series, f"{prefix}_bucket", name)
    metric = f"plugit_{prefix}_latency_seconds"
    shown = _label(name)
    total = 0.0
    for le in sorted(buckets, key=_le_order):
        total += buckets[le]
        out.append(f'{metric}_bucket{{{label}="{shown}",le="{le}"}} {_number(total)}')
    total_sum = series.get((COUNTER, f"{prefix}_sum", name), 0.0)
    out.append(f'{metric}_sum{{{label}="{shown}"}} {total_sum:.6f}')
    out.append(f'{metric}_count{{{label}="{shown}"}} {_number(total)}')


def render_services(series: Mapping[SeriesKey, float], order: Iterable[str] = ()) -> str:
    """The services' series (of a :class:`~plugit_core.metrics.MetricsBoard`, merged or not)
    in the Prometheus text exposition format (0.0.4); ``order`` lists the services first."""
    order = list(order)
    names = _names(series, "service_requests", order)
    out = [
        "# HELP plugit_service_requests_total Calls from the proxy to the service.",
        "# TYPE plugit_service_requests_total counter",
    ]
    out += [
        f'plugit_service_requests_total{{service="{_label(name)}"}} '
        f"{_number(series[(COUNTER, 'service_requests', name)])}"
        for name in names
    ]
    out += [
        "# HELP plugit_service_errors_total Failed calls, by kind (timeout, unreachable, ...).",
        "# TYPE plugit_service_errors_total counter",
    ]
    for name in names:
        for kind, count in sorted(_by_label(series, "service_errors", name).items()):
            labels = f'service="{_label(name)}",kind="{_label(kind)}"'
            out.append(f"plugit_service_errors_total{{{labels}}} {_number(count)}")
    out += [
        "# HELP plugit_service_latency_seconds Time of the calls to the service.",
        "# TYPE plugit_service_latency_seconds histogram",
    ]
    for name in names:
        _histogram(out, series, "service", "service", name)
    gauges = (
        ("circuit_state", "service_circuit", "Circuit breaker: 0 closed, 1 half-open, 2 open."),
        ("in_flight", "service_in_flight", "Calls in progress to the service."),
    )
    for metric, key, text in gauges:
        out += [f"# HELP plugit_service_{metric} {text}", f"# TYPE plugit_service_{metric} gauge"]
        kind = GAUGE_MAX if key == "service_circuit" else GAUGE_SUM
        out += [
            f'plugit_service_{metric}{{service="{_label(name)}"}} '
            f"{_number(series[(kind, key, name)])}"
            for name in _names(series, key, order)
        ]
    return "\n".join(out) + "\n"


def render_stores(
    series: Mapping[SeriesKey, float],
    order: Iterable[str] = (),
    mail_backlog: Mapping[str, int] | None = None,
) -> str:
    """The stores' series (and the mail backlog) in the Prometheus text format; ``order``
    lists the stores first."""
    order = list(order)
    names = _names(series, "store_calls", order)
    out = [
        "# HELP plugit_store_calls_total Calls to each store (refused ones not counted).",
        "# TYPE plugit_store_calls_total counter",
    ]
    out += [
        f'plugit_store_calls_total{{store="{_label(name)}"}} '
        f"{_number(series[(COUNTER, 'store_calls', name)])}"
        for name in names
    ]
    out += [
        "# HELP plugit_store_errors_total Failed or refused store calls, by kind "
        "(timeout, error, down, busy).",
        "# TYPE plugit_store_errors_total counter",
    ]
    for name in names:
        for kind, count in sorted(_by_label(series, "store_errors", name).items()):
            labels = f'store="{_label(name)}",kind="{_label(kind)}"'
            out.append(f"plugit_store_errors_total{{{labels}}} {_number(count)}")
    out += [
        "# HELP plugit_store_latency_seconds Time of the calls to each store.",
        "# TYPE plugit_store_latency_seconds histogram",
    ]
    for name in names:
        _histogram(out, series, "store", "store", name)
    gauges = (
        ("up", GAUGE_MIN, "1 while the store answers, 0 while it is down."),
        ("in_flight", GAUGE_SUM, "Calls in progress to each store."),
    )
    for metric, kind, text in gauges:
        key = f"store_{metric}"
        out += [f"# HELP plugit_store_{metric} {text}", f"# TYPE plugit_store_{metric} gauge"]
        out += [
            f'plugit_store_{metric}{{store="{_label(name)}"}} {_number(series[(kind, key, name)])}'
            for name in _names(series, key, order)
        ]
    smtp = _names(series, "smtp_up", ())
    if smtp:
        out += [
            "# HELP plugit_smtp_up 1 while the SMTP server answers, 0 while it is down.",
            "# TYPE plugit_smtp_up gauge",
        ]
        out += [
            f'plugit_smtp_up{{server="{_label(name)}"}} '
            f"{_number(series[(GAUGE_MIN, 'smtp_up', name)])}"
            for name in smtp
        ]
    if mail_backlog is not None:
        out += [
            "# HELP plugit_mail_outbox Mails in the queue, by state.",
            "# TYPE plugit_mail_outbox gauge",
        ]
        out += [
            f'plugit_mail_outbox{{state="{_label(state)}"}} {count}'
            for state, count in sorted(mail_backlog.items())
        ]
    return "\n".join(out) + "\n"


def render_prometheus(services: Iterable[tuple[ServiceMetrics, CircuitBreaker, int]]) -> str:
    """The metrics of these services (this process's view) in the Prometheus text format."""
    series: dict[SeriesKey, float] = {}
    order = []
    for metrics, breaker, in_flight in services:
        order.append(metrics.service)
        series.update(metrics.series())
        series.update(service_gauges(metrics.service, breaker, in_flight))
    return render_services(series, order)


def render_store_metrics(
    guards: Iterable[Any], mail_backlog: Mapping[str, int] | None = None
) -> str:
    """The stores' series (this process's view) and the mail backlog in the Prometheus text
    format.

    ``guards`` are :class:`~plugit_core.stores.StoreGuard`; ``mail_backlog`` the outbox rows by
    state (``waiting``, ``sending``, ...), or None without a mail backend or when the queue
    cannot be read.
    """
    series: dict[SeriesKey, float] = {}
    order = []
    for guard in guards:
        order.append(guard.store)
        series.update(guard.metrics.series(guard.store))
        series.update(store_gauges(guard))
    return render_stores(series, order, mail_backlog)

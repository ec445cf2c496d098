"""Keeping one bad service from hurting the rest, and saying how each one is doing.

* :class:`CircuitBreaker`: after ``failures`` failed calls in a row a service's circuit opens and
  calls fail at once (no thread waits for a dead service); after ``reset`` seconds one trial call
  is let through (half-open): a success closes the circuit, a failure opens it again.
* :class:`ServiceMetrics`: per service, requests and errors by kind, a latency histogram, the
  breaker state, rendered in the Prometheus text format at ``/_plugit/metrics``.
* :func:`render_store_metrics`: the same for the stores (users, billing, mail queue, sessions,
  cache: calls, errors by kind, latency, up or down, in flight) and the mail backlog.
"""

from __future__ import annotations

import bisect
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from typing import Any

__all__ = ["CircuitBreaker", "ServiceMetrics", "render_prometheus", "render_store_metrics"]

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
    """Counters and a latency histogram for one service; thread-safe."""

    def __init__(self, service: str) -> None:
        self.service = service
        self._lock = threading.Lock()
        self.requests = 0
        self.errors: Counter[str] = Counter()
        self._buckets = [0] * (len(BUCKETS) + 1)
        self._sum = 0.0
        self.in_flight = 0

    def observe(self, seconds: float, error: str | None = None) -> None:
        with self._lock:
            self.requests += 1
            self._sum += seconds
            self._buckets[bisect.bisect_left(BUCKETS, seconds)] += 1
            if error is not None:
                self.errors[error] += 1

    def histogram(self) -> tuple[list[tuple[str, int]], float, int]:
        """Cumulative buckets as (le, count), the sum and the count."""
        with self._lock:
            cumulative, total = [], 0
            for bound, count in zip((*map(str, BUCKETS), "+Inf"), self._buckets, strict=True):
                total += count
                cumulative.append((bound, total))
            return cumulative, self._sum, total


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def render_prometheus(services: Iterable[tuple[ServiceMetrics, CircuitBreaker, int]]) -> str:
    """The metrics of every service in the Prometheus text exposition format (0.0.4)."""
    rows = list(services)
    out = [
        "# HELP plugit_service_requests_total Calls from the proxy to the service.",
        "# TYPE plugit_service_requests_total counter",
    ]
    out += [
        f'plugit_service_requests_total{{service="{_label(m.service)}"}} {m.requests}'
        for m, _, _ in rows
    ]
    out += [
        "# HELP plugit_service_errors_total Failed calls, by kind (timeout, unreachable, ...).",
        "# TYPE plugit_service_errors_total counter",
    ]
    for metrics, _, _ in rows:
        for kind, count in sorted(metrics.errors.items()):
            labels = f'service="{_label(metrics.service)}",kind="{kind}"'
            out.append(f"plugit_service_errors_total{{{labels}}} {count}")
    out += [
        "# HELP plugit_service_latency_seconds Time of the calls to the service.",
        "# TYPE plugit_service_latency_seconds histogram",
    ]
    for metrics, _, _ in rows:
        name = _label(metrics.service)
        buckets, total_sum, count = metrics.histogram()
        out += [
            f'plugit_service_latency_seconds_bucket{{service="{name}",le="{le}"}} {n}'
            for le, n in buckets
        ]
        out.append(f'plugit_service_latency_seconds_sum{{service="{name}"}} {total_sum:.6f}')
        out.append(f'plugit_service_latency_seconds_count{{service="{name}"}} {count}')
    out += [
        "# HELP plugit_service_circuit_state Circuit breaker: 0 closed, 1 half-open, 2 open.",
        "# TYPE plugit_service_circuit_state gauge",
    ]
    out += [
        f'plugit_service_circuit_state{{service="{_label(m.service)}"}} {_STATE_VALUE[b.state]}'
        for m, b, _ in rows
    ]
    out += [
        "# HELP plugit_service_in_flight Calls in progress to the service.",
        "# TYPE plugit_service_in_flight gauge",
    ]
    out += [f'plugit_service_in_flight{{service="{_label(m.service)}"}} {n}' for m, _, n in rows]
    return "\n".join(out) + "\n"


def render_store_metrics(
    guards: Iterable[Any], mail_backlog: Mapping[str, int] | None = None
) -> str:
    """The stores' series (and the mail backlog) in the Prometheus text format.

    ``guards`` are :class:`~plugit_core.stores.StoreGuard`; ``mail_backlog`` the outbox rows by
    state (``waiting``, ``sending``, ...), or None without a mail backend or when the queue
    cannot be read.
    """
    rows = list(guards)
    out = [
        "# HELP plugit_store_calls_total Calls to each store (refused ones not counted).",
        "# TYPE plugit_store_calls_total counter",
    ]
    snapshots = [(guard, guard.metrics.snapshot()) for guard in rows]
    out += [
        f'plugit_store_calls_total{{store="{_label(g.store)}"}} {snap["count"]}'
        for g, snap in snapshots
    ]
    out += [
        "# HELP plugit_store_errors_total Failed or refused store calls, by kind "
        "(timeout, error, down, busy).",
        "# TYPE plugit_store_errors_total counter",
    ]
    for guard, snap in snapshots:
        for kind, count in sorted(snap["errors"].items()):
            labels = f'store="{_label(guard.store)}",kind="{_label(kind)}"'
            out.append(f"plugit_store_errors_total{{{labels}}} {count}")
    out += [
        "# HELP plugit_store_latency_seconds Time of the calls to each store.",
        "# TYPE plugit_store_latency_seconds histogram",
    ]
    for guard, snap in snapshots:
        name = _label(guard.store)
        out += [
            f'plugit_store_latency_seconds_bucket{{store="{name}",le="{le}"}} {n}'
            for le, n in snap["buckets"]
        ]
        out.append(f'plugit_store_latency_seconds_sum{{store="{name}"}} {snap["sum"]:.6f}')
        out.append(f'plugit_store_latency_seconds_count{{store="{name}"}} {snap["count"]}')
    out += [
        "# HELP plugit_store_up 1 while the store answers, 0 while it is down.",
        "# TYPE plugit_store_up gauge",
    ]
    out += [f'plugit_store_up{{store="{_label(g.store)}"}} {0 if g.down else 1}' for g in rows]
    out += [
        "# HELP plugit_store_in_flight Calls in progress to each store.",
        "# TYPE plugit_store_in_flight gauge",
    ]
    out += [f'plugit_store_in_flight{{store="{_label(g.store)}"}} {g.in_flight}' for g in rows]
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

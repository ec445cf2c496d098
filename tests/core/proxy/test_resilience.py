"""Circuit breaker, stale pages and fallbacks, health, readiness, metrics, trace context."""

from __future__ import annotations

import contextlib
import re
import time

import proxy_service
import pytest
import requests
from proxy_helpers import SECRET, proxy_config

from plugit_core.proxy.app import ProxyApp
from plugit_core.proxy.health import CircuitBreaker
from plugit_core.testing import free_port, serve


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_breaker_opens_half_opens_and_closes():
    clock = FakeClock()
    breaker = CircuitBreaker(failures=3, reset=10, clock=clock)
    for _ in range(2):
        assert breaker.allow()
        breaker.failure()
    assert breaker.state == "closed"
    breaker.failure()
    assert breaker.state == "open" and not breaker.allow()
    clock.now += 10
    assert breaker.state == "half_open"
    assert breaker.allow() and not breaker.allow()  # one trial at a time
    breaker.failure()
    assert breaker.state == "open"
    clock.now += 10
    assert breaker.allow()
    breaker.success()
    assert breaker.state == "closed" and breaker.allow()


def test_breaker_stops_calling_a_dead_service_then_recovers(service_url):
    port = free_port()
    services = [
        {"name": "good", "url": service_url, "mount": "/good/", "secret": SECRET},
        {"name": "flaky", "url": f"http://127.0.0.1:{port}", "mount": "/flaky/", "secret": SECRET,
         "breaker_failures": 2, "breaker_reset": 0.5, "timeout": 1},
    ]  # fmt: skip
    proxy = ProxyApp(proxy_config(service_url, services=services), load_entry_points=False)
    with contextlib.ExitStack() as stack:
        stack.callback(proxy.close)
        base = stack.enter_context(serve(proxy))
        statuses = [requests.get(base + "/flaky/", timeout=10).status_code for _ in range(3)]
        assert statuses[0] == 502 and statuses[-1] == 503  # unreachable, then refused at once
        assert proxy.clients["flaky"].breaker.state == "open"
        errors = proxy.clients["flaky"].metrics.errors
        assert errors["circuit_open"] >= 1 and errors["unreachable"] == 2
        ready = requests.get(base + "/_plugit/ready", timeout=10).json()
        assert (
            ready["services"]["flaky"]["circuit"] == "open"
            and not ready["services"]["flaky"]["ready"]
        )
        assert ready["services"]["good"]["ready"]
        # the service comes back on its port: after the reset delay a trial call closes the circuit
        serve_on(port, proxy_service.make_app(secret=SECRET), stack)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if requests.get(base + "/flaky/", timeout=10).status_code == 200:
                break
        assert proxy.clients["flaky"].breaker.state == "closed"


def serve_on(port: int, app, stack: contextlib.ExitStack):
    """Serve ``app`` on a chosen port until ``stack`` closes; return a function that stops it."""
    import threading

    from werkzeug.serving import make_server

    server = make_server("127.0.0.1", port, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()

    def stop():
        if thread.is_alive():
            server.shutdown()
            server.server_close()
            thread.join(5)

    stack.callback(stop)
    return stop


def test_stale_page_is_shown_when_the_service_fails(service_url, monkeypatch):
    port = free_port()
    services = [
        {"name": "svc", "url": f"http://127.0.0.1:{port}", "mount": "/svc/", "secret": SECRET}
    ]
    proxy = ProxyApp(proxy_config(service_url, services=services), load_entry_points=False)
    with contextlib.ExitStack() as stack:
        stack.callback(proxy.close)
        stop_service = serve_on(port, proxy_service.make_app(secret=SECRET), stack)
        base = stack.enter_context(serve(proxy))
        fresh = requests.get(base + "/svc/cached", timeout=10)
        assert fresh.status_code == 200 and "plugit-notice" not in fresh.text
        stop_service()
        real_time = time.time
        monkeypatch.setattr(time, "time", lambda: real_time() + 120)  # the entry (60 s) expired
        stale = requests.get(base + "/svc/cached", timeout=10)
        assert stale.status_code == 200
        assert 'id="plugit-notice"' in stale.text and "may be out of date" in stale.text
        assert '<h1 id="title">Cached</h1>' in stale.text
        assert stale.headers["Cache-Control"] == "no-store"
        # a page never cached has nothing to fall back on
        assert requests.get(base + "/svc/", timeout=10).status_code == 502


def test_declared_fallback(service_url):
    port = free_port()
    services = [{"name": "down", "url": f"http://127.0.0.1:{port}", "mount": "/down/",
                 "fallback_html": "<p id='fallback'>Polls are resting.</p>"}]  # fmt: skip
    proxy = ProxyApp(proxy_config(service_url, services=services), load_entry_points=False)
    try:
        with serve(proxy) as base:
            response = requests.get(base + "/down/", timeout=10)
            assert response.status_code == 503
            assert "<p id='fallback'>Polls are resting.</p>" in response.text
            assert 'id="plugit-notice"' in response.text
            assert response.headers["Retry-After"] == "30"
    finally:
        proxy.close()


def test_health_and_metrics(browser):
    assert browser.get("/_plugit/health").json() == {"status": "ok"}
    browser.get("/svc/")
    browser.get("/svc/status/500")
    text = browser.get("/_plugit/metrics").text
    assert re.search(r'^plugit_service_requests_total\{service="svc"\} [1-9]\d*$', text, re.M)
    assert re.search(
        r'^plugit_service_errors_total\{service="svc",kind="status_500"\} 1$', text, re.M
    )
    assert 'plugit_service_latency_seconds_bucket{service="svc",le="+Inf"}' in text
    assert re.search(r'^plugit_service_circuit_state\{service="svc"\} 0$', text, re.M)
    count = int(
        re.search(r'plugit_service_latency_seconds_count\{service="svc"\} (\d+)', text).group(1)
    )
    requests_total = int(
        re.search(r'plugit_service_requests_total\{service="svc"\} (\d+)', text).group(1)
    )
    assert count == requests_total


@pytest.mark.parametrize(
    ("incoming", "same_trace"),
    [
        pytest.param(
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", True, id="continued"
        ),
        pytest.param(
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01", False, id="zero-trace"
        ),
        pytest.param("garbage", False, id="invalid"),
        pytest.param(None, False, id="absent"),
    ],
)
def test_traceparent_passed_on(browser, incoming, same_trace):
    headers = {"traceparent": incoming} if incoming else {}
    sent = browser.get("/svc/echo", headers=headers).json()["traceparent"]
    assert re.fullmatch(r"00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}", sent)
    if same_trace:
        assert sent.split("-")[1] == incoming.split("-")[1]
        assert sent.split("-")[2] != incoming.split("-")[2]  # the proxy's own span
    else:
        assert sent.split("-")[1] not in (incoming or "")  # a new trace

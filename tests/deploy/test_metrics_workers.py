"""``/_plugit/metrics`` gives one answer for all the worker processes of a server.

The board (plugit_core/metrics.py) is tested on its own first: two boards sharing a directory
(as two workers do), a board whose process ended, a file that is not one of ours.  Then a real
``plugit proxy --workers 2`` (granian) serves many requests: every scrape, whichever worker
answers it, gives the same totals, equal to what the service received, also after the workers
were replaced (SIGHUP).
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from plugit_core.metrics import (
    COUNTER,
    ENV_VAR,
    GAUGE_MAX,
    GAUGE_MIN,
    GAUGE_SUM,
    MetricsBoard,
    clear_ended,
    read_file,
    shared_directory,
)
from plugit_core.proxy.health import ServiceMetrics, render_services, render_stores
from plugit_core.service import PlugItService, action, json_only
from plugit_core.stores import StoreGuard
from plugit_core.testing import free_port, serve, wait_for_port

SECRET = "metrics-workers-secret-0123456789abcdef"

# -- the board ------------------------------------------------------------------------------------


def test_two_boards_sharing_a_directory_give_the_same_totals(tmp_path: Path) -> None:
    one, two = MetricsBoard(tmp_path), MetricsBoard(tmp_path)
    try:
        first, second = ServiceMetrics("polls"), ServiceMetrics("polls")
        first.bind(one)
        second.bind(two)
        for _ in range(3):
            first.observe(0.002)
        second.observe(0.2, "timeout")
        for board in (one, two):
            series = board.collect()
            assert series[(COUNTER, "service_requests", "polls")] == 4
            assert series[(COUNTER, "service_errors", "polls", "timeout")] == 1
            text = render_services(series, ["polls"])
            assert 'plugit_service_requests_total{service="polls"} 4' in text
            assert 'plugit_service_latency_seconds_bucket{service="polls",le="0.005"} 3' in text
            assert 'plugit_service_latency_seconds_bucket{service="polls",le="+Inf"} 4' in text
            assert 'plugit_service_latency_seconds_count{service="polls"} 4' in text
            assert 'plugit_service_errors_total{service="polls",kind="timeout"} 1' in text
        assert one.collect() == two.collect()
    finally:
        one.close()
        two.close()


def test_an_ended_process_keeps_its_counts_but_not_its_gauges(tmp_path: Path) -> None:
    ended, alive = MetricsBoard(tmp_path), MetricsBoard(tmp_path)
    try:
        for board, in_flight, up in ((ended, 5, 0), (alive, 2, 1)):
            board.set((COUNTER, "store_calls", "users_sqlite"), 10)
            board.set((GAUGE_SUM, "store_in_flight", "users_sqlite"), in_flight)
            board.set((GAUGE_MIN, "store_up", "users_sqlite"), up)
            board.set((GAUGE_MAX, "service_circuit", "polls"), 2 - up * 2)
        both = alive.collect()
        assert both[(COUNTER, "store_calls", "users_sqlite")] == 20
        assert both[(GAUGE_SUM, "store_in_flight", "users_sqlite")] == 7
        assert both[(GAUGE_MIN, "store_up", "users_sqlite")] == 0  # down in one process
        assert both[(GAUGE_MAX, "service_circuit", "polls")] == 2  # open in one process
        ended.close()  # its lock is gone: it reads as a process that ended
        after = alive.collect()
        assert after[(COUNTER, "store_calls", "users_sqlite")] == 20
        assert after[(GAUGE_SUM, "store_in_flight", "users_sqlite")] == 2
        assert after[(GAUGE_MIN, "store_up", "users_sqlite")] == 1
        assert after[(GAUGE_MAX, "service_circuit", "polls")] == 0
        assert clear_ended(tmp_path) == 1  # what plugit proxy does when it starts
        assert alive.collect()[(COUNTER, "store_calls", "users_sqlite")] == 10
    finally:
        alive.close()


def test_a_killed_process_counts_as_ended(tmp_path: Path) -> None:
    code = (
        "import sys, time\n"
        "from plugit_core.metrics import MetricsBoard\n"
        "board = MetricsBoard(sys.argv[1])\n"
        "board.set(('c', 'store_calls', 'x'), 7)\n"
        "board.set(('g+', 'store_in_flight', 'x'), 3)\n"
        "print('ready', flush=True)\n"
        "time.sleep(60)\n"
    )
    child = subprocess.Popen(
        [sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    with child:
        try:
            assert child.stdout is not None and child.stdout.readline().strip() == "ready"
            [path] = list(tmp_path.glob("proxy-*.metrics"))
            series, alive = read_file(path)
            assert alive and series[(GAUGE_SUM, "store_in_flight", "x")] == 3
        finally:
            child.kill()
            child.wait(10)
    series, alive = read_file(path)
    assert not alive and series[(COUNTER, "store_calls", "x")] == 7
    board = MetricsBoard(tmp_path)
    try:
        merged = board.collect()
        assert merged[(COUNTER, "store_calls", "x")] == 7
        assert (GAUGE_SUM, "store_in_flight", "x") not in merged
    finally:
        board.close()


def test_a_file_that_is_not_a_board_is_read_up_to_what_can_be_trusted(tmp_path: Path) -> None:
    board = MetricsBoard(tmp_path)
    try:
        board.set((COUNTER, "store_calls", "x"), 1)
        # a file cut short, one full of garbage, one claiming more bytes than it has
        (tmp_path / "proxy-1-0-cut.metrics").write_bytes(b"\x05")
        (tmp_path / "proxy-2-0-junk.metrics").write_bytes(b"\x40" + b"\x00" * 7 + b"\xff" * 56)
        (tmp_path / "proxy-3-0-long.metrics").write_bytes(b"\xff" * 8 + b"\x02\x00\x00\x00[]")
        # well-formed entries holding what is not a series: skipped, the next one read
        entries = [
            (b"[]", 1.0),
            (b'["x","store_calls","x"]', 1.0),
            (b'["c","store_calls",3]', 1.0),
            (b'{"c":1}', 1.0),
            (b'["c","store_calls","x"]', math.nan),
            (b'["c","store_calls","x"]', 2.0),
        ]
        body = b""
        for key, value in entries:
            entry = struct.pack("<I", len(key)) + key
            body += entry + b"\x00" * (-(8 + len(body) + len(entry)) % 8)
            body += struct.pack("<d", value)
        (tmp_path / "proxy-4-0-odd.metrics").write_bytes(struct.pack("<Q", 8 + len(body)) + body)
        assert board.collect()[(COUNTER, "store_calls", "x")] == 3
        assert render_stores(board.collect(), ["x"]).count("plugit_store_calls_total") == 3
    finally:
        board.close()


def test_many_series_grow_the_file(tmp_path: Path) -> None:
    board, other = MetricsBoard(tmp_path), MetricsBoard(tmp_path)
    try:
        for i in range(3000):  # about 150 KB of series: the file is grown while in use
            board.set((COUNTER, "service_errors", "polls", f"kind_{i}"), i)
        merged = other.collect()
        assert len([k for k in merged if k[1] == "service_errors"]) == 3000
        assert merged[(COUNTER, "service_errors", "polls", "kind_2999")] == 2999
    finally:
        board.close()
        other.close()


def test_store_guards_write_through(tmp_path: Path) -> None:
    board, other = MetricsBoard(tmp_path), MetricsBoard(tmp_path)
    guard = StoreGuard("users_sqlite", "the user directory")
    try:
        guard.metrics.bind(board, guard.store)
        with guard.call():
            pass
        with pytest.raises(Exception, match="unavailable"), guard.call():
            raise OSError("disk gone")
        with pytest.raises(Exception, match="down"), guard.call():
            pass
        merged = other.collect()
        assert merged[(COUNTER, "store_calls", "users_sqlite")] == 2
        assert merged[(COUNTER, "store_errors", "users_sqlite", "error")] == 1
        assert merged[(COUNTER, "store_errors", "users_sqlite", "down")] == 1
    finally:
        board.close()
        other.close()


def test_the_server_directory_is_private_and_removed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_VAR, raising=False)
    with shared_directory() as made:
        assert os.environ[ENV_VAR] == str(made)
        assert made.stat().st_mode & 0o777 == 0o700
        MetricsBoard.from_environment().close()
        assert list(made.glob("proxy-*.metrics"))
    assert not made.exists()
    assert ENV_VAR not in os.environ


# -- a real server with two workers ---------------------------------------------------------------

RECEIVED = {"calls": 0}
LOCK = threading.Lock()


@action("/", template="home.html")
def home(request):
    return {"hello": "hello"}


@action("/data")
@json_only()
def data(request):
    return {"ok": True}


def counting(app):
    def wsgi(environ, start_response):
        with LOCK:
            RECEIVED["calls"] += 1
        return app(environ, start_response)

    return wsgi


@contextlib.contextmanager
def proxy_process(config: Path, port: int, metrics_dir: Path) -> Iterator[subprocess.Popen]:
    with tempfile.NamedTemporaryFile(suffix=".log", delete=False) as log:
        log_path = Path(log.name)
        process = subprocess.Popen(
            [sys.executable, "-m", "plugit_core.cli", "proxy", "--config", str(config),
             "--port", str(port), "--workers", "2", "--threads", "4", "--no-access-log"],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, ENV_VAR: str(metrics_dir)},
        )  # fmt: skip
    try:
        try:
            wait_for_port("127.0.0.1", port, timeout=60)
        except TimeoutError:
            raise AssertionError(log_path.read_text(errors="replace")) from None
        yield process
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(20)
        log_path.unlink(missing_ok=True)


def requests_total(text: str) -> int:
    match = re.search(r'^plugit_service_requests_total\{service="hello"\} (\d+)$', text, re.M)
    assert match, text
    return int(match.group(1))


def scrape(base: str) -> str:
    response = requests.get(base + "/_plugit/metrics", timeout=10)  # a new connection each
    assert response.status_code == 200
    return response.text


def live_files(metrics_dir: Path) -> dict[Path, float]:
    """Requests counted by each live worker's file."""
    counted = {}
    for path in metrics_dir.glob("proxy-*.metrics"):
        series, alive = read_file(path)
        if alive:
            counted[path] = series.get((COUNTER, "service_requests", "hello"), 0.0)
    return counted


def wait_until(predicate, what: str, attempts: int = 300) -> None:
    for _ in range(attempts):
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"never true: {what}")


@pytest.mark.slow
def test_every_scrape_of_two_workers_gives_the_same_totals(tmp_path: Path) -> None:
    (tmp_path / "templates").mkdir()
    (tmp_path / "templates" / "home.html").write_text(
        '{% extends "plugit/base.html" %}{% block content %}<p>{{ hello }}</p>{% endblock %}'
    )
    metrics_dir = tmp_path / "metrics"
    service = PlugItService([home, data], root=str(tmp_path), secret=SECRET)
    with serve(counting(service)) as service_url:
        config = tmp_path / "plugit.toml"
        config.write_text(
            'secret_key = "metrics-workers-proxy-key-0123456789abcdefghijklmnop"\n'
            "[session_cookie]\nsecure = false\n"
            f'[[services]]\nname = "hello"\nurl = "{service_url}"\nsecret = "{SECRET}"\n'
        )
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        with proxy_process(config, port, metrics_dir) as process:
            wait_until(lambda: len(live_files(metrics_dir)) == 2, "two workers started")
            for i in range(120):  # new connections: spread over both workers by the kernel
                path = "/hello/" if i % 2 else "/hello/data"
                assert requests.get(base + path, timeout=10).status_code == 200
            # both workers served, so a single worker's view would be short
            counted = live_files(metrics_dir)
            assert len(counted) == 2 and all(n > 0 for n in counted.values()), counted
            scrapes = [requests_total(scrape(base)) for _ in range(12)]
            assert scrapes == [RECEIVED["calls"]] * 12, (scrapes, RECEIVED)
            assert RECEIVED["calls"] >= 120

            # new workers (SIGHUP): the ended ones' counts stay in the totals
            before = set(counted)
            process.send_signal(signal.SIGHUP)
            wait_until(
                lambda: (
                    len(live_files(metrics_dir)) == 2 and not before & set(live_files(metrics_dir))
                ),
                "two new workers",
            )
            for _ in range(20):
                assert requests.get(base + "/hello/data", timeout=10).status_code == 200
            scrapes = [requests_total(scrape(base)) for _ in range(8)]
            assert scrapes == [RECEIVED["calls"]] * 8, (scrapes, RECEIVED)
            assert RECEIVED["calls"] >= 140

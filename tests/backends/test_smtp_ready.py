"""The SMTP server in ``/_plugit/ready`` and ``/_plugit/metrics``: a real aiosmtpd server is
stopped and started while a real proxy serves over HTTP.

* Not required (the default): ready stays 200 and shows ``smtp`` down with the reason and since
  when, then up again once the server is back; ``plugit_smtp_up`` follows.
* ``smtp_required = true``: ready is 503 naming ``smtp`` while the server is down.
* The sender's own connections are reported too (with the background check off).
* A hostile SMTP server that accepts connections and never greets cannot make ready wait: the
  check runs in its own thread, ready answers while that connection is still held.
"""

from __future__ import annotations

import contextlib
import email.utils
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from plugit_core.proxy.app import ProxyApp
from plugit_core.testing import free_port, serve

REQUIRED = os.environ.get("PLUGIT_REQUIRE_SERVERS") == "1"

try:
    import aiosmtpd  # noqa: F401 (the SMTP server of these tests)
except ImportError as exc:  # aiosmtpd is in the test extra
    if REQUIRED:
        raise
    pytest.skip(f"aiosmtpd is not installed (pip install aiosmtpd): {exc}", allow_module_level=True)

from mail_servers import SMTPServer  # noqa: E402

KEY = "k3y-for-smtp-ready-tests-9f8e7d6c5b4a39281706f5e4a3"
SENDER = "PlugIt <no-reply@example.org>"
BOUND = 30.0  # every loop below ends within this (a loaded machine), or the test fails


def _eventually(check: Callable[[], Any], what: str, seconds: float = BOUND) -> Any:
    deadline = time.monotonic() + seconds
    while True:
        result = check()
        if result:
            return result
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


@contextlib.contextmanager
def _proxy(tmp_path: Path, port: int, **mail: Any) -> Iterator[tuple[str, ProxyApp]]:
    settings = {
        "sender": SENDER,
        "host": "127.0.0.1",
        "port": port,
        "helo_name": "localhost",
        "timeout": 5.0,
        "queue_path": str(tmp_path / "mail.sqlite3"),
        "send_in_background": False,
        "smtp_check_interval": 0.1,
        **mail,
    }
    config = {
        "secret_key": KEY,
        "session_cookie": {"secure": False},
        "mail": "smtp",
        "mail_smtp": settings,
    }
    proxy = ProxyApp(config, load_entry_points=False)
    try:
        with serve(proxy) as base:
            yield base, proxy
    finally:
        proxy.close()


def _ready(base: str) -> requests.Response:
    return requests.get(f"{base}/_plugit/ready", timeout=10)


def _smtp(base: str, state: str) -> dict[str, Any] | None:
    """The ``smtp`` entry of ready once it says ``state`` (None before)."""
    entry: dict[str, Any] = _ready(base).json()["smtp"]
    return entry if entry["state"] == state else None


def _smtp_up_metric(base: str) -> str | None:
    text = requests.get(f"{base}/_plugit/metrics", timeout=10).text
    lines = [line for line in text.splitlines() if line.startswith("plugit_smtp_up{")]
    return lines[0].rsplit(" ", 1)[1] if lines else None


def test_ready_reports_the_smtp_server_stopped_and_started(tmp_path: Path) -> None:
    smtp = SMTPServer(free_port()).start()
    try:
        with _proxy(tmp_path, smtp.port) as (base, _proxy_app):
            server = f"127.0.0.1:{smtp.port}"
            up = _eventually(lambda: _smtp(base, "up"), "ready never saw the SMTP server up")
            assert up["ready"] is True and up["required"] is False and up["server"] == server
            assert "error" not in up and up["since"].endswith("+00:00")
            assert _eventually(lambda: _smtp_up_metric(base) == "1", "no plugit_smtp_up 1")

            smtp.stop()
            down = _eventually(lambda: _smtp(base, "down"), "ready never saw the server down")
            assert down["ready"] is False and "ConnectionRefusedError" in down["error"]
            answer = _ready(base)
            assert answer.status_code == 200  # not required: the site still serves
            assert "smtp" not in answer.json().get("unavailable", [])
            assert _eventually(lambda: _smtp_up_metric(base) == "0", "no plugit_smtp_up 0")
            assert f'plugit_smtp_up{{server="{server}"}} 0' in (
                requests.get(f"{base}/_plugit/metrics", timeout=10).text
            )

            smtp.start()  # the same port
            again = _eventually(lambda: _smtp(base, "up"), "ready never saw the server back")
            assert again["since"] >= down["since"] and "error" not in again
            assert _eventually(lambda: _smtp_up_metric(base) == "1", "plugit_smtp_up stuck at 0")
    finally:
        smtp.stop()


def test_a_required_smtp_server_down_makes_ready_503(tmp_path: Path) -> None:
    smtp = SMTPServer(free_port()).start()
    try:
        with _proxy(tmp_path, smtp.port, smtp_required=True) as (base, _proxy_app):
            _eventually(lambda: _ready(base).status_code == 200, "never ready with SMTP up")
            smtp.stop()
            body = _eventually(
                lambda: (r := _ready(base)).status_code == 503 and r.json(), "ready stayed 200"
            )
            assert body["status"] == "unavailable" and body["unavailable"] == ["smtp"]
            assert body["smtp"]["required"] is True and body["smtp"]["state"] == "down"
            smtp.start()
            _eventually(lambda: _ready(base).status_code == 200, "still 503 with SMTP back")
    finally:
        smtp.stop()


def test_the_senders_own_attempts_are_reported(tmp_path: Path) -> None:
    """With the background check off, what the sender learns is what ready shows."""
    port = free_port()
    with _proxy(tmp_path, port, smtp_check_interval=0) as (base, proxy):
        assert _ready(base).json()["smtp"]["state"] == "unknown"  # nothing learnt yet
        proxy.mail.store.enqueue(
            service="one",
            sender=SENDER,
            recipients=["ops@staff.example.org"],
            subject="held",
            body="x",
            html=False,
            reply_to=None,
            message_id=email.utils.make_msgid(domain="example.org"),
            max_per_hour=0,
        )
        assert proxy.mail.flush(retry_now=True) == 0  # nobody listens on the port
        down = _ready(base).json()["smtp"]
        assert down["state"] == "down" and "ConnectionRefusedError" in down["error"]
        with SMTPServer(port) as smtp:
            assert proxy.mail.flush(retry_now=True) == 1
            smtp.wait_for(1)
            assert _ready(base).json()["smtp"]["state"] == "up"


class _Silent:
    """A hostile SMTP server: accepts connections and never says a word."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.held: list[socket.socket] = []
        self.closed = threading.Event()  # a client hung up on it
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        self.listener.settimeout(0.05)
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                conn, _ = self.listener.accept()
                conn.settimeout(0.05)
                self.held.append(conn)
            for conn in self.held:
                with contextlib.suppress(TimeoutError, OSError):
                    if conn.recv(1) == b"":
                        self.closed.set()

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        for conn in self.held:
            conn.close()
        self.listener.close()


def test_a_server_that_never_greets_cannot_make_ready_wait(tmp_path: Path) -> None:
    silent = _Silent()
    try:
        with _proxy(tmp_path, silent.port, timeout=30.0) as (base, proxy):
            first = _ready(base)  # starts the check, which hangs on the silent server
            _eventually(lambda: silent.held, "the check never connected")
            answers = [_ready(base) for _ in range(3)]
            # Every answer came while the check's connection was still held open by it.
            assert not silent.closed.is_set()
            for answer in (first, *answers):
                assert answer.status_code == 200
                assert answer.json()["smtp"]["state"] == "unknown"
            assert proxy.mail.smtp.checks == 1  # one check at a time, not one per request
            # The check gives up within its own bound and says why.
            down = _eventually(lambda: _smtp(base, "down"), "the check never gave up")
            assert "timed out" in down["error"]
            # ... and closed its connection (the server notices it a moment later).
            _eventually(silent.closed.is_set, "the check never closed its connection")
    finally:
        silent.close()

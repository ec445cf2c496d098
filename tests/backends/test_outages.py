"""Store outages while the proxy serves: fail fast and clearly, recover at once, report the truth.

PostgreSQL is reached through a loopback TCP relay the tests pause (the server looks frozen:
connections stay open, nothing answers), drop (connections cut, new ones refused) and resume.
The server is ``PLUGIT_TEST_POSTGRES_DSN`` (default ``postgresql://postgres@127.0.0.1:5432/
test``); each test works in a schema of its own.  Skipped without psycopg or a server, unless
``PLUGIT_REQUIRE_SERVERS=1``.
"""

from __future__ import annotations

import contextlib
import re
import select
import socket
import sqlite3
import threading
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
import requests
from postgres_schema import DSN, fresh_schema
from werkzeug.security import generate_password_hash

from plugit_backends.users_sqlite import SQLiteUserStore
from plugit_core.proxy.app import ProxyApp
from plugit_core.stores import StoreGuard, StoreUnavailable
from plugit_core.testing import serve

STRONG_KEY = "k3y-for-outage-tests-9f8e7d6c5b4a39281706f5e4d3c2b1a0"
WAIT = 1.0  # the stores' wait in these tests
SLACK = 1.5  # what a loaded machine may add to a wait (scheduling, not the store)


class Relay:
    """A loopback TCP relay in front of a real server, that a test pauses, drops or resumes."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._pairs: list[tuple[socket.socket, socket.socket]] = []
        self._paused = threading.Event()
        self._refusing = False
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if self._refusing:
                client.close()
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._pairs.append((client, upstream))
            threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()

    def _pump(self, client: socket.socket, upstream: socket.socket) -> None:
        peers = {client: upstream, upstream: client}
        try:
            while not self._closed:
                if self._paused.is_set():  # frozen: read nothing, forward nothing
                    time.sleep(0.02)
                    continue
                ready, _, _ = select.select(list(peers), [], [], 0.05)
                for sock in ready:
                    data = sock.recv(65536)
                    if not data:
                        return
                    peers[sock].sendall(data)
        except OSError:
            return
        finally:
            client.close()
            upstream.close()

    def pause(self) -> None:
        self._paused.set()

    def drop(self) -> None:
        """Cut every connection and refuse new ones (a stopped server)."""
        self._refusing = True
        with self._lock:
            pairs, self._pairs = self._pairs, []
        for client, upstream in pairs:
            for sock in (client, upstream):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def resume(self) -> None:
        self._refusing = False
        self._paused.clear()

    def close(self) -> None:
        self._closed = True
        self.resume()
        self.drop()
        self._listener.close()

    def dsn(self, dsn: str) -> str:
        parts = urlsplit(dsn)
        netloc = parts.netloc.rsplit("@", 1)
        host = f"127.0.0.1:{self.port}"
        return urlunsplit(
            parts._replace(netloc=f"{netloc[0]}@{host}" if len(netloc) == 2 else host)
        )


@pytest.fixture
def schema() -> Iterator[str]:
    with fresh_schema(DSN) as name:
        yield name


@pytest.fixture
def relay() -> Iterator[Relay]:
    parts = urlsplit(DSN)
    server = Relay((parts.hostname or "127.0.0.1", parts.port or 5432))
    yield server
    server.close()


def _users(relay: Relay, schema: str, **options: Any) -> Any:
    from plugit_backends.users_postgres import PostgresUserStore

    options.setdefault("pool_timeout", WAIT)
    return PostgresUserStore(relay.dsn(DSN), schema=schema, **options)


def _eventually(check: Any, seconds: float = 10.0) -> Any:
    """``check()`` until it returns without StoreUnavailable (a bounded loop)."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            return check()
        except StoreUnavailable:
            assert time.monotonic() < deadline, "the store never answered again"
            time.sleep(0.05)


# -- the guard on its own ---------------------------------------------------------------------


def test_a_guard_refuses_at_once_while_down_and_lets_one_trial_through():
    now = [0.0]
    guard = StoreGuard("s", "the thing", wait=1, is_outage=lambda e: True, clock=lambda: now[0])
    with pytest.raises(StoreUnavailable) as info, guard.call():
        raise ConnectionRefusedError("refused")
    assert info.value.store == "s" and "ConnectionRefusedError" in info.value.reason
    assert info.value.message == "The thing is unavailable right now. Please try again in a moment."
    ran = []
    with pytest.raises(StoreUnavailable, match="down"), guard.call():
        ran.append(1)  # refused before the block
    assert ran == [] and guard.metrics.snapshot()["errors"] == {"error": 1, "down": 1}
    for _ in range(20):  # the backoff grows, capped at max_backoff
        now[0] += guard.max_backoff
        with pytest.raises(StoreUnavailable), guard.call():
            raise OSError("still down")
    now[0] += guard.max_backoff
    with guard.call():  # the first call after the backoff is the trial: it succeeds
        pass
    assert not guard.down
    with guard.call():
        pass


def test_errors_that_are_not_outages_pass_through_and_count_as_answers():
    guard = StoreGuard("s", "the thing", is_outage=lambda e: isinstance(e, OSError))
    with pytest.raises(KeyError), guard.call():
        raise KeyError("no such user")
    assert not guard.down


# -- PostgreSQL frozen, stopped, back ---------------------------------------------------------


def test_a_frozen_database_fails_within_the_wait_then_at_once_then_recovers(relay, schema):
    store = _users(relay, schema)
    try:
        alice = store.create_user("alice")
        relay.pause()
        started = time.monotonic()
        with pytest.raises(StoreUnavailable) as info:
            store.get_user(alice.pk)
        assert time.monotonic() - started < WAIT + SLACK  # the wait, not a pool's 10-30 s
        assert info.value.store == "users_postgres"
        assert info.value.label == "the user directory"
        for _ in range(50):  # known down: refused at once, no thread waits
            with pytest.raises(StoreUnavailable):
                store.get_user(alice.pk)
        assert store.store_guards[0].metrics.snapshot()["errors"]["down"] >= 40
        relay.resume()
        assert _eventually(lambda: store.get_user(alice.pk)).username == "alice"
        for _ in range(20):  # back: every call answers
            assert store.get_user(alice.pk).username == "alice"
    finally:
        store.close()


def test_a_stopped_database_is_refused_and_the_first_call_after_it_is_back_reconnects(
    relay, schema
):
    store = _users(relay, schema)
    try:
        alice = store.create_user("alice")
        relay.drop()
        for _ in range(10):
            with pytest.raises(StoreUnavailable):
                store.get_user(alice.pk)
        relay.resume()
        assert _eventually(lambda: store.get_user(alice.pk)) is not None
        assert not store.store_guards[0].down
    finally:
        store.close()


def test_threads_beyond_max_waiters_are_refused_at_once(relay, schema):
    store = _users(relay, schema, pool_timeout=3.0, max_waiters=2, pool_size=10)
    try:
        alice = store.create_user("alice")
        relay.pause()
        results: list[str] = []
        lock = threading.Lock()

        def call() -> None:
            try:
                store.get_user(alice.pk)
                outcome = "answered"
            except StoreUnavailable as exc:
                outcome = exc.reason
            with lock:
                results.append(outcome)

        threads = [threading.Thread(target=call) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
        assert len(results) == 8 and "answered" not in results
        refused_at_once = [r for r in results if "waiting for it" in r or r.startswith("down")]
        assert len(refused_at_once) >= 6, results  # two waited, the others never queued
    finally:
        relay.resume()
        store.close()


# -- SQLite locked past the wait -------------------------------------------------------------


def test_a_sqlite_directory_locked_past_its_wait_is_unavailable_not_an_error(tmp_path):
    store = SQLiteUserStore(tmp_path / "users.sqlite3", wait=0.2)
    blocker = sqlite3.connect(tmp_path / "users.sqlite3", isolation_level=None)
    try:
        blocker.execute("BEGIN EXCLUSIVE")
        with pytest.raises(StoreUnavailable) as info:
            store.create_user("bob")
        assert info.value.store == "users_sqlite" and "locked" in info.value.reason
        blocker.execute("ROLLBACK")
        assert _eventually(lambda: store.create_user("bob")).username == "bob"
    finally:
        blocker.close()
        store.close()


# -- the proxy during an outage --------------------------------------------------------------


@pytest.fixture
def site(relay, schema, tmp_path) -> Iterator[tuple[str, ProxyApp]]:
    config = {
        "secret_key": STRONG_KEY,
        "auth": ["session"],
        "users": "postgres",
        "users_postgres": {
            "dsn": relay.dsn(DSN),
            "schema": schema,
            "pool_timeout": WAIT,
            "max_waiters": 4,
        },
        "session_cookie": {"secure": False},
        "services": [],
    }
    proxy = ProxyApp(config, load_entry_points=False)
    try:
        with serve(proxy) as base:
            yield base, proxy
    finally:
        relay.resume()
        proxy.close()


def _login(browser: requests.Session, base: str, username: str, password: str) -> Any:
    page = browser.get(base + "/_plugit/login", timeout=10)
    token = re.search(r'name="plugit-csrf-token" content="([^"]+)"', page.text)
    assert token is not None, page.text[:500]
    return browser.post(
        base + "/_plugit/login",
        data={"username": username, "password": password, "plugit_site_csrf": token.group(1)},
        allow_redirects=False,
        timeout=10,
    )


def test_the_proxy_answers_a_themed_503_naming_the_directory_and_serves_the_rest(site, relay):
    base, proxy = site
    proxy.users.create_user("alice", password_hash=generate_password_hash("correct horse battery"))
    browser = requests.Session()
    assert _login(browser, base, "alice", "correct horse battery").status_code == 303
    assert browser.get(base + "/", timeout=10).status_code == 200
    ready = requests.get(base + "/_plugit/ready", timeout=10)
    assert ready.status_code == 200 and ready.json()["stores"]["users_postgres"]["ready"]

    relay.pause()
    page = browser.get(base + "/", timeout=10)  # the logged-in user needs the directory
    assert page.status_code == 503
    assert "The user directory is unavailable right now" in page.text
    assert "Traceback" not in page.text
    for _ in range(5):  # at once from now on; anonymous pages and health are unaffected
        assert browser.get(base + "/", timeout=WAIT + SLACK).status_code == 503
        assert requests.get(base + "/", timeout=WAIT + SLACK).status_code == 200
        assert requests.get(base + "/_plugit/health", timeout=WAIT + SLACK).status_code == 200
    ready = requests.get(base + "/_plugit/ready", timeout=10)
    assert ready.status_code == 503
    assert ready.json()["unavailable"] == ["users_postgres"]
    assert not ready.json()["stores"]["users_postgres"]["ready"]
    metrics = requests.get(base + "/_plugit/metrics", timeout=10).text
    assert 'plugit_store_up{store="users_postgres"} 0' in metrics
    assert re.search(
        r'plugit_store_errors_total\{store="users_postgres",kind="down"\} [1-9]', metrics
    )
    refused = _login(requests.Session(), base, "alice", "correct horse battery")
    assert refused.status_code == 503 and "set-cookie" not in {k.lower() for k in refused.headers}

    relay.resume()
    deadline = time.monotonic() + 10
    while browser.get(base + "/", timeout=10).status_code != 200:  # still logged in
        assert time.monotonic() < deadline, "the directory never came back"
        time.sleep(0.05)
    assert requests.get(base + "/_plugit/ready", timeout=10).status_code == 200
    assert (
        'plugit_store_up{store="users_postgres"} 1'
        in requests.get(base + "/_plugit/metrics", timeout=10).text
    )

"""Billing and the mail queue on PostgreSQL failing while the proxy serves a service that calls
the callback API: the calls that need the store answer a JSON 503 naming it (within the store's
wait, then at once), everything else is served as usual, nothing accepted is lost, and the store
answers again as soon as it is back.

Real servers throughout: the proxy and a signed service (this library's ``PlugItService``, with an
API key, calling the proxy through ``PlugItAPI``) on loopback HTTP, the user directory in SQLite
(it stays up), billing or the mail queue in PostgreSQL behind the loopback relay of
``test_outages`` (paused: connections stay open, nothing answers), and aiosmtpd for the mail.
PostgreSQL is ``PLUGIT_TEST_POSTGRES_DSN``; without it (or psycopg, or aiosmtpd) the tests are
skipped, unless ``PLUGIT_REQUIRE_SERVERS=1``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests
from postgres_schema import fresh_schema
from werkzeug.security import generate_password_hash

from plugit_backends.sql import postgres as pg
from plugit_core.proxy.app import ProxyApp
from plugit_core.service import (
    PlugItAPI,
    PlugItAPIError,
    PlugItService,
    action,
    json_only,
    user_info,
)
from plugit_core.testing import free_port, serve

REQUIRED = os.environ.get("PLUGIT_REQUIRE_SERVERS") == "1"

try:
    import aiosmtpd  # noqa: F401 (the SMTP server of the mail test)
except ImportError as exc:  # aiosmtpd is in the test extra
    if REQUIRED:
        raise
    pytest.skip(f"aiosmtpd is not installed (pip install aiosmtpd): {exc}", allow_module_level=True)

from mail_servers import SMTPServer  # noqa: E402
from test_outages import DSN, Relay  # noqa: E402 (the loopback relay the outage tests pause)

STRONG_KEY = "k3y-for-billing-mail-outages-9f8e7d6c5b4a39281706f5e4"
SECRET = "billing-mail-outage-service-secret-0123456789"
API_KEY = "api-key-of-the-outage-service-0123456789"
PASSWORD = "correct horse battery"
STAFF = "ops@staff.example.org"
WAIT = 1.0  # billing's pool_timeout in these tests
MAIL_WAIT = pg.DEFAULT_POOL_TIMEOUT  # the mail queue's wait ([mail_smtp] has no setting for it)
SLACK = 2.0  # what a loaded machine may add to a wait (scheduling, not the store)
BOUND = 30.0  # every loop below ends within this (a loaded machine), or the test fails


class World:
    """The service's client of the callback API (set once the proxy serves)."""

    api: PlugItAPI | None = None


WORLD = World()


def _api() -> PlugItAPI:
    assert WORLD.api is not None
    return WORLD.api


@action("/", template="home.html")
def home(request: Any) -> dict[str, Any]:
    """A page that needs no store of the proxy's (but carries a form: the mount's CSRF cookie)."""
    return {}


@action("/labels")
@json_only()
@user_info(["username", "subscription_labels"])
def labels(request: Any) -> dict[str, Any]:
    return {
        "username": request.user_info.get("username"),
        "labels": request.args.getlist("ebuio_u_subscription_labels"),
    }


@action("/plans")
@json_only()
def plans(request: Any) -> dict[str, Any]:
    """The service reads its plans through the callback API and reports what it got."""
    try:
        return {"plans": [plan["code"] for plan in _api().get_plans()]}
    except PlugItAPIError as exc:
        return {"failed": {"status": exc.status, "message": str(exc)}}


@action("/subscribe", methods=["POST"])
@json_only()
@user_info(["pk"])
def subscribe(request: Any) -> dict[str, Any]:
    """The service subscribes the visitor to a plan of its own through the callback API."""
    try:
        granted = _api().grant_subscription(request.form["plan"], user=request.user_info["pk"])
    except PlugItAPIError as exc:
        return {"failed": {"status": exc.status, "message": str(exc)}}
    return {"granted": granted["id"]}


@action("/notify", methods=["POST"])
@json_only()
def notify(request: Any) -> dict[str, Any]:
    """The service asks the proxy to send a mail (the subject from the form)."""
    try:
        answer = _api().send_mail(None, request.form["subject"], [STAFF], "From the service.")
    except PlugItAPIError as exc:
        return {"failed": {"status": exc.status, "message": str(exc)}}
    return {"queued": answer.json()["queued"]}


ACTIONS = [home, labels, plans, subscribe, notify]


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


@dataclass
class Site:
    base: str
    proxy: ProxyApp
    alice: str  # her pk, as the API takes it

    def api(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        """A callback API call as the service makes it (its key), bounded by ``timeout``."""
        kwargs.setdefault("timeout", 10)
        headers = {"Authorization": f"Bearer {API_KEY}"}
        return requests.request(
            method, f"{self.base}/svc/ebuio_api/{path}", headers=headers, **kwargs
        )

    def guard(self, store: str) -> Any:
        (found,) = [g for g in self.proxy.store_guards() if g.store == store]
        return found


@contextlib.contextmanager
def _site(tmp_path: Path, **stores: Any) -> Iterator[Site]:
    global WORLD
    WORLD = World()
    (tmp_path / "templates").mkdir()
    (tmp_path / "templates" / "home.html").write_text(
        '{% extends "plugit/base.html" %}{% block content %}<p>No store needed.</p>'
        '<form method="post">{{ csrf_field }}</form>{% endblock %}'
    )
    with contextlib.ExitStack() as stack:
        service = PlugItService(ACTIONS, secret=SECRET, root=str(tmp_path))
        service_url = stack.enter_context(serve(service))
        config = {
            "secret_key": STRONG_KEY,
            "auth": ["session"],
            "users": "sqlite",
            "users_sqlite": {"path": str(tmp_path / "users.sqlite3")},
            "session_cookie": {"secure": False},
            "services": [{"name": "svc", "url": service_url, "secret": SECRET, "api_key": API_KEY}],
            **stores,
        }
        proxy = ProxyApp(config, load_entry_points=False)
        stack.callback(proxy.close)
        alice = proxy.users.create_user("alice", password_hash=generate_password_hash(PASSWORD))
        proxy.users.grant(alice.pk, "svc", "member")  # a service subscribes its members only
        base = stack.enter_context(serve(proxy))
        WORLD.api = stack.enter_context(PlugItAPI(f"{base}/svc/ebuio_api/", API_KEY))
        yield Site(base, proxy, str(alice.pk))


def _login(base: str) -> requests.Session:
    browser = requests.Session()
    page = browser.get(base + "/_plugit/login", timeout=10)
    token = re.search(r'name="plugit-csrf-token" content="([^"]+)"', page.text)
    assert token is not None, page.text[:500]
    answer = browser.post(
        base + "/_plugit/login",
        data={"username": "alice", "password": PASSWORD, "plugit_site_csrf": token.group(1)},
        allow_redirects=False,
        timeout=10,
    )
    assert answer.status_code == 303, answer.text[:500]
    home_page = browser.get(base + "/svc/", timeout=10)  # a page with a form: the CSRF cookie
    assert home_page.status_code == 200 and "No store needed." in home_page.text
    return browser


def _post(browser: requests.Session, base: str, path: str, **data: str) -> requests.Response:
    token = browser.cookies.get("csrftoken", path="/svc/")
    assert token, "the mount's csrftoken cookie"
    return browser.post(
        f"{base}/svc/{path}", data=data, headers={"X-CSRFToken": token}, timeout=BOUND
    )


def _eventually(check: Callable[[], Any], what: str, seconds: float = BOUND) -> Any:
    """``check()`` until it returns something true (a bounded loop, no fixed sleep)."""
    deadline = time.monotonic() + seconds
    while True:
        result = check()
        if result:
            return result
        assert time.monotonic() < deadline, what
        time.sleep(0.02)


def _timed(call: Callable[[], requests.Response]) -> tuple[requests.Response, float]:
    started = time.monotonic()
    answer = call()
    return answer, time.monotonic() - started


def _no_traceback(caplog: pytest.LogCaptureFixture) -> None:
    """An outage is a warning, never an error with a traceback."""
    bad = [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]
    assert not bad, [r.getMessage() for r in bad]


def _assert_unavailable(answer: requests.Response, label: str) -> None:
    assert answer.status_code == 503, answer.text
    assert answer.headers["Content-Type"].startswith("application/json")
    assert answer.headers["Retry-After"] == "1"
    assert answer.json() == {
        "error": "store_unavailable",
        "message": f"{label} is unavailable; retry later",
        "status": 503,
    }


# -- billing ---------------------------------------------------------------------------------------


@pytest.fixture
def billing_site(tmp_path: Path, relay: Relay, schema: str) -> Iterator[Site]:
    billing = {"dsn": relay.dsn(DSN), "schema": schema, "pool_timeout": WAIT, "max_waiters": 4}
    try:
        with _site(tmp_path, billing="postgres", billing_postgres=billing) as site:
            site.proxy.billing.create_plan("svc", "pro", "Pro", "Everything")
            yield site
    finally:
        relay.resume()


def test_billing_down_refuses_its_api_promptly_and_leaves_the_pages_without_paid_features(
    billing_site: Site, relay: Relay, caplog: pytest.LogCaptureFixture
) -> None:
    site, base = billing_site, billing_site.base
    caplog.set_level(logging.INFO)
    alice = _login(base)
    assert alice.get(f"{base}/svc/plans", timeout=10).json() == {"plans": ["pro"]}
    subscribed = _post(alice, base, "subscribe", plan="pro")
    assert subscribed.status_code == 200 and "granted" in subscribed.json(), subscribed.text
    assert alice.get(f"{base}/svc/labels", timeout=10).json() == {
        "username": "alice",
        "labels": ["Pro"],
    }
    ready = requests.get(base + "/_plugit/ready", timeout=10).json()
    assert ready["stores"]["billing_postgres"]["ready"] is True

    relay.pause()
    # The first call waits for the store, no longer than its wait; the service is told why.
    first, took = _timed(lambda: site.api("GET", "billing/plans/", timeout=BOUND))
    _assert_unavailable(first, "billing")
    assert took < WAIT + SLACK
    # From now on each billing call is refused at once (bounded by the wait in any case: one
    # trial call a second may wait for it); nothing else waits.
    for _ in range(3):
        for method, path, data in (
            ("GET", "billing/plans/", None),
            ("GET", "billing/subscriptions/", None),
            ("POST", "billing/subscriptions/", {"plan": "pro", "user": site.alice}),
            ("GET", f"subscriptions/{site.alice}", None),
        ):
            answer = site.api(method, path, data=data, timeout=WAIT + SLACK)
            _assert_unavailable(answer, "billing")
        seen = alice.get(f"{base}/svc/plans", timeout=WAIT + SLACK)  # through PlugItAPI
        assert seen.status_code == 200
        assert seen.json() == {
            "failed": {"status": 503, "message": "billing is unavailable; retry later"}
        }
        refused = _post(alice, base, "subscribe", plan="pro")
        assert refused.status_code == 200 and refused.json()["failed"]["status"] == 503
        # Pages that need no billing: as usual, anonymous or logged in.
        anonymous = requests.get(f"{base}/svc/", timeout=WAIT + SLACK)
        assert anonymous.status_code == 200 and "No store needed." in anonymous.text
        page = alice.get(f"{base}/svc/", timeout=WAIT + SLACK)
        assert page.status_code == 200 and "No store needed." in page.text
        # A logged-in visitor's page that shows paid features: rendered without them.
        mine = alice.get(f"{base}/svc/labels", timeout=WAIT + SLACK)
        assert mine.status_code == 200
        assert mine.json() == {"username": "alice", "labels": []}
        assert requests.get(base + "/_plugit/health", timeout=WAIT + SLACK).status_code == 200
    assert site.guard("billing_postgres").metrics.snapshot()["errors"].get("down", 0) >= 10

    # Ready names the store, without taking the process out (billing is not required).
    ready_answer = requests.get(base + "/_plugit/ready", timeout=WAIT + SLACK)
    assert ready_answer.status_code == 200
    state = ready_answer.json()["stores"]["billing_postgres"]
    assert state["ready"] is False and state["required"] is False and state["error"]
    metrics = requests.get(base + "/_plugit/metrics", timeout=10).text
    assert 'plugit_store_up{store="billing_postgres"} 0' in metrics

    relay.resume()
    guard = site.guard("billing_postgres")
    # Once the guard's short backoff is over (no call made meanwhile), the first call answers.
    _eventually(lambda: guard.status().get("retry_in", 0) == 0, "the backoff never ended")
    back = site.api("GET", "billing/plans/", timeout=BOUND)
    assert back.status_code == 200, back.text
    assert [p["code"] for p in back.json()["plans"]] == ["pro"]
    assert not guard.down
    assert alice.get(f"{base}/svc/labels", timeout=10).json()["labels"] == ["Pro"]
    assert site.api("GET", f"subscriptions/{site.alice}").json() == ["Pro"]
    again = _post(alice, base, "subscribe", plan="pro")
    assert again.status_code == 200 and "granted" in again.json(), again.text
    ready_answer = requests.get(base + "/_plugit/ready", timeout=10)
    assert ready_answer.json()["stores"]["billing_postgres"]["ready"] is True
    _no_traceback(caplog)
    assert any("billing_postgres" in r.getMessage() for r in caplog.records)


# -- the mail queue --------------------------------------------------------------------------------


@pytest.fixture
def mail_site(tmp_path: Path, relay: Relay, schema: str) -> Iterator[tuple[Site, SMTPServer]]:
    smtp = SMTPServer(free_port())
    mail = {
        "sender": "PlugIt <no-reply@example.org>",
        "host": "127.0.0.1",
        "port": smtp.port,
        "helo_name": "localhost",
        "timeout": 5.0,
        "queue": "postgres",
        "queue_dsn": relay.dsn(DSN),
        "queue_schema": schema,
        "retry_interval": 0.1,
        "max_retry_interval": 0.5,
        "allowed_recipient_domains": ["staff.example.org"],
    }
    try:
        with smtp, _site(tmp_path, mail="smtp", mail_smtp=mail) as site:
            yield site, smtp
    finally:
        relay.resume()


def _rows(schema: str) -> list[dict[str, Any]]:
    """The queue's rows, read straight from PostgreSQL (behind the relay)."""
    with pg.connect(DSN) as conn:
        query = pg.sql.SQL("SELECT subject, state, attempts FROM {}.mail_outbox ORDER BY id")
        return [dict(row) for row in conn.execute(query.format(pg.sql.Identifier(schema)))]


def _subjects(smtp: SMTPServer) -> list[str]:
    with smtp.lock:
        return [str(received.message["Subject"]) for received in smtp.messages]


def test_the_mail_queue_down_refuses_new_mail_promptly_and_loses_nothing(
    mail_site: tuple[Site, SMTPServer],
    relay: Relay,
    schema: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    site, smtp = mail_site
    base = site.base
    caplog.set_level(logging.INFO)
    alice = _login(base)
    sent = _post(alice, base, "notify", subject="before")
    assert sent.status_code == 200 and "queued" in sent.json(), sent.text
    _eventually(lambda: _subjects(smtp) == ["before"], "the first mail never arrived")

    # A mail accepted while the SMTP server is away waits in the queue for its next attempt...
    smtp.stop()
    held = _post(alice, base, "notify", subject="held")
    assert held.status_code == 200 and "queued" in held.json(), held.text
    _eventually(
        lambda: [r["attempts"] for r in _rows(schema) if r["subject"] == "held"] >= [1],
        "the sender never tried the held mail",
    )
    # ... then the queue goes away.
    relay.pause()
    first, took = _timed(lambda: site.api("POST", "mail/", data=_mail("direct"), timeout=BOUND))
    _assert_unavailable(first, "the mail queue")
    assert took < MAIL_WAIT + SLACK
    for attempt in range(3):
        answer = site.api("POST", "mail/", data=_mail("direct"), timeout=MAIL_WAIT + SLACK)
        _assert_unavailable(answer, "the mail queue")
        refused = _post(alice, base, "notify", subject=f"during {attempt}")  # via PlugItAPI
        assert refused.status_code == 200
        assert refused.json() == {
            "failed": {"status": 503, "message": "the mail queue is unavailable; retry later"}
        }
        page = alice.get(f"{base}/svc/", timeout=MAIL_WAIT + SLACK)  # needs no mail: as usual
        assert page.status_code == 200 and "No store needed." in page.text
        assert requests.get(base + "/_plugit/health", timeout=MAIL_WAIT + SLACK).ok
    ready = requests.get(base + "/_plugit/ready", timeout=BOUND)
    assert ready.status_code == 200  # the queue is not required: pages are still served
    assert ready.json()["stores"]["mail_postgres"]["ready"] is False
    assert ready.json()["mail"] == {"ready": False, "outbox": None}
    assert _subjects(smtp) == ["before"]

    smtp.start()  # the SMTP server is back first: the held mail waits for the queue
    relay.resume()
    # The service retries the refused mail (Retry-After: 1) until the queue takes it, once.
    accepted: list[int] = []

    def retried() -> bool:
        answer = _post(alice, base, "notify", subject="after")
        if "queued" in answer.json():
            accepted.append(answer.json()["queued"])
            return True
        assert answer.json()["failed"]["status"] == 503, answer.text
        time.sleep(0.2)
        return False

    _eventually(retried, "the mail queue never took a mail again")
    assert len(accepted) == 1
    # Everything accepted is delivered, once: the held mail and the one sent after the outage;
    # nothing refused during it was queued.
    _eventually(
        lambda: all(r["state"] == "sent" for r in _rows(schema)) and len(_rows(schema)) == 3,
        "the queue never emptied",
    )
    assert sorted(_subjects(smtp)) == ["after", "before", "held"]
    assert [r["subject"] for r in _rows(schema)] == ["before", "held", "after"]
    ready = requests.get(base + "/_plugit/ready", timeout=BOUND).json()
    assert ready["stores"]["mail_postgres"]["ready"] is True
    assert ready["mail"]["ready"] is True and ready["mail"]["outbox"] == {"sent": 3}
    _no_traceback(caplog)
    assert any("mail_postgres" in r.getMessage() for r in caplog.records)


def _mail(subject: str) -> dict[str, str]:
    return {"subject": subject, "dests": STAFF, "message": "Sent by the service itself."}

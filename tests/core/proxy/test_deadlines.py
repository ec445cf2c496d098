"""Deadlines travel: the proxy tells the service when it stops waiting, the service library does
not start work past it, and the callback API refuses calls made for a request already answered.

Real HTTP throughout: a signed service served on loopback, a proxy served on loopback with the
mail backend (its SQLite queue shows whether anything was done), and the service's own
``PlugItAPI`` calling the proxy's callback API.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from plugit_core import protocol
from plugit_core.proxy.app import ProxyApp
from plugit_core.service import (
    PlugItAPI,
    PlugItAPIDeadlineError,
    PlugItService,
    action,
    current_deadline,
    json_only,
)
from plugit_core.signing import sign_request
from plugit_core.testing import serve

SECRET = "deadline-service-secret-0123456789abcdef"
STRONG_KEY = "k3y-for-deadline-tests-9f8e7d6c5b4a39281706f5e4d3c2b1"
API_KEY = "api-key-of-the-deadline-service-0123"
TIMEOUT = 0.5  # the mount's timeout: the proxy's deadline is this far after its call
STAFF = "ops@staff.example.org"
BOUND = 20.0  # every wait below ends within this, or the test fails


class World:
    """What the service's actions saw and did, for the test to read."""

    def __init__(self) -> None:
        self.api: PlugItAPI | None = None
        self.seen: dict[str, Any] = {}
        self.finished = threading.Event()
        self.answered = threading.Event()  # the visitor has the proxy's answer
        self.runs = 0


WORLD = World()


@action("/quick")
@json_only()
def quick(request: Any) -> dict[str, Any]:
    WORLD.runs += 1
    WORLD.seen.update(deadline=request.deadline, left=request.time_left(), ctx=current_deadline())
    assert WORLD.api is not None
    response = WORLD.api.send_mail(None, "In time", [STAFF], "Sent while the proxy waits.")
    return {"queued": response.json()["queued"]}


@action("/slow")
@json_only()
def slow(request: Any) -> dict[str, Any]:
    """Long work: still running when the proxy gives up, then it asks for a mail."""
    WORLD.runs += 1
    try:
        deadline = time.monotonic() + BOUND
        while request.time_left() > 0:  # the proxy waits until then: outlive it
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert WORLD.api is not None
        try:
            WORLD.api.send_mail(None, "Too late", [STAFF], "The visitor was told it failed.")
        except PlugItAPIDeadlineError as exc:
            WORLD.seen["refused"] = exc
        else:
            WORLD.seen["refused"] = None
        WORLD.answered.wait(BOUND)  # answer only once the proxy has given up, however loaded
        return {}
    finally:
        WORLD.finished.set()


@pytest.fixture
def site(tmp_path: Path) -> Iterator[tuple[str, str, ProxyApp]]:
    """(proxy base, service base, proxy) with mail queued in a SQLite file, sent by nobody."""
    global WORLD
    WORLD = World()
    with contextlib.ExitStack() as stack:
        service = stack.enter_context(serve(PlugItService([quick, slow], secret=SECRET)))
        config = {
            "secret_key": STRONG_KEY,
            "services": [
                {
                    "name": "svc",
                    "url": service,
                    "secret": SECRET,
                    "api_key": API_KEY,
                    "timeout": TIMEOUT,
                }
            ],
            "session_cookie": {"secure": False},
            "users": "sqlite",
            "users_sqlite": {"path": str(tmp_path / "directory.sqlite3")},
            "mail": "smtp",
            "mail_smtp": {
                "sender": "PlugIt <no-reply@example.org>",
                "queue_path": str(tmp_path / "mail.sqlite3"),
                "send_in_background": False,
                "allowed_recipient_domains": ["staff.example.org"],
            },
        }
        proxy = ProxyApp(config, load_entry_points=False)
        stack.callback(proxy.close)
        base = stack.enter_context(serve(proxy))
        WORLD.api = PlugItAPI(f"{base}/svc/ebuio_api/", API_KEY)
        stack.callback(WORLD.api.close)
        yield base, service, proxy


def _outbox(proxy: ProxyApp) -> list[str]:
    return [row["subject"] for row in proxy.mail.store.outbox()]


def test_the_service_knows_when_the_proxy_stops_waiting(site: tuple[str, str, ProxyApp]) -> None:
    base, _, proxy = site
    before = time.time()
    page = requests.get(f"{base}/svc/quick", timeout=10)
    after = time.time()
    assert page.status_code == 200, page.text
    seen = WORLD.seen
    assert before + TIMEOUT <= seen["deadline"] <= after + TIMEOUT
    assert seen["ctx"] == seen["deadline"]  # what PlugItAPI forwards
    assert 0 < seen["left"] <= TIMEOUT
    assert current_deadline() is None  # only while the action runs
    assert _outbox(proxy) == ["In time"]  # a call within the deadline is served


def test_a_callback_call_after_the_proxy_gave_up_is_refused_and_does_nothing(
    site: tuple[str, str, ProxyApp],
) -> None:
    base, _, proxy = site
    page = requests.get(f"{base}/svc/slow", timeout=10)
    WORLD.answered.set()
    assert page.status_code == 504  # the visitor is told it failed ...
    assert WORLD.finished.wait(BOUND)
    refused = WORLD.seen["refused"]
    assert isinstance(refused, PlugItAPIDeadlineError)  # ... and nothing then happens
    assert (refused.status, refused.code) == (412, "deadline_passed")
    assert "nothing was done" in str(refused)
    assert _outbox(proxy) == []


def _signed(service: str, path: str, deadline: str) -> requests.Response:
    headers = {protocol.H_DEADLINE: deadline}
    headers.update(
        sign_request(SECRET, method="GET", path=path, query=b"", body=b"", headers=headers)
    )
    return requests.get(service + path, headers=headers, timeout=10)


def test_the_service_does_not_start_an_action_past_its_deadline(
    site: tuple[str, str, ProxyApp],
) -> None:
    _, service, proxy = site
    late = _signed(service, "/action/quick", protocol.format_deadline(time.time() - 1))
    assert late.status_code == 504
    assert late.json()["error"] == "deadline_passed"
    assert WORLD.runs == 0 and _outbox(proxy) == []
    in_time = _signed(service, "/action/quick", protocol.format_deadline(time.time() + 30))
    assert in_time.status_code == 200, in_time.text
    assert WORLD.runs == 1 and WORLD.seen["left"] > 0


def test_a_deadline_changed_on_the_way_breaks_the_signature(
    site: tuple[str, str, ProxyApp],
) -> None:
    _, service, _ = site
    path = "/action/quick"
    headers = {protocol.H_DEADLINE: protocol.format_deadline(time.time() - 1)}
    headers.update(
        sign_request(SECRET, method="GET", path=path, query=b"", body=b"", headers=headers)
    )
    headers[protocol.H_DEADLINE] = protocol.format_deadline(time.time() + 3600)  # extended
    forged = requests.get(service + path, headers=headers, timeout=10)
    assert forged.status_code == 403
    assert WORLD.runs == 0


def _api_mail(base: str, deadline: str | None, key: str = API_KEY) -> requests.Response:
    headers = {"Authorization": f"Bearer {key}"}
    if deadline is not None:
        headers[protocol.H_API_DEADLINE] = deadline
    return requests.post(
        f"{base}/svc/ebuio_api/mail/",
        data={"subject": "Direct", "message": "x", "dests": STAFF},
        headers=headers,
        timeout=10,
    )


@pytest.mark.parametrize(
    "value", ["1e99", "nan", "inf", "-5", "12.5.3", "0x10", "", "1²", "9" * 40, "12,5"]
)
def test_the_api_refuses_what_is_not_a_deadline(
    site: tuple[str, str, ProxyApp], value: str
) -> None:
    base, _, proxy = site
    answer = _api_mail(base, value)
    assert answer.status_code == 400
    assert answer.json()["error"] == "bad_deadline"
    assert _outbox(proxy) == []


def test_the_api_checks_the_key_before_the_deadline_and_serves_one_to_come(
    site: tuple[str, str, ProxyApp],
) -> None:
    base, _, proxy = site
    past = protocol.format_deadline(time.time() - 0.001)
    assert _api_mail(base, past, key="not-the-key").status_code == 403  # nothing learnt
    late = _api_mail(base, past)
    assert late.status_code == 412 and late.json()["error"] == "deadline_passed"
    assert _api_mail(base, protocol.format_deadline(time.time() + 30)).status_code == 202
    assert _api_mail(base, None).status_code == 202  # a call made outside any request
    assert _outbox(proxy) == ["Direct", "Direct"]


def test_parse_deadline() -> None:
    assert protocol.parse_deadline(None) is None
    assert protocol.parse_deadline(" 1700000000.250 ") == 1700000000.25
    assert protocol.parse_deadline("1700000000") == 1700000000.0
    assert protocol.parse_deadline(protocol.format_deadline(12.3456)) == 12.346
    for bad in ("", "1.", ".5", "+1", "1e3", "NaN"):
        with pytest.raises(ValueError, match="not a deadline"):
            protocol.parse_deadline(bad)

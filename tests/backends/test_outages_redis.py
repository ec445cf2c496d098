"""Redis sessions slow or out of memory while the proxy serves, on a Redis of the test's own.

Each test starts a private ``redis-server`` on a free port, then pauses it (SIGSTOP: the
connection stays open, nothing answers, as a Redis stuck on a slow disk or a long command) or
fills it past ``maxmemory`` with ``noeviction`` (it refuses writes, serves reads).  What must
hold: nobody is shown logged out and no form is refused as expired while sessions can be read;
a request that must write a session and cannot gets a 503 that says so; a login is reported
only once its session is stored; pages without a session are served as usual; the first
request after Redis is back succeeds.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from werkzeug.security import generate_password_hash

from plugit_core.proxy.app import ProxyApp
from plugit_core.service import PlugItService, action, json_only, user_info
from plugit_core.testing import free_port, serve, wait_for_port

redis = pytest.importorskip("redis")  # the ``redis`` extra

STRONG_KEY = "k3y-for-outage-tests-9f8e7d6c5b4a39281706f5e4d3c2b1a0"
WAIT = 0.5  # the session store's socket_timeout in these tests
SLACK = 2.0  # what a loaded machine may add to a wait (scheduling, not the store)
PASSWORD = "correct horse battery"
VOTES = {"n": 0}


@action("/", template="home.html")
def home(request):
    return {}


@action("/me")
@json_only()
@user_info(["username"])
def me(request):
    return {"username": request.user_info.get("username")}


@action("/vote", methods=["POST"])
@json_only()
def vote(request):
    VOTES["n"] += 1
    return {"votes": VOTES["n"]}


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[tuple[subprocess.Popen, redis.Redis]]:
    binary = shutil.which("redis-server")
    if binary is None:
        if os.environ.get("PLUGIT_REQUIRE_SERVERS") == "1":
            raise RuntimeError("redis-server is not installed")
        pytest.skip("redis-server is not installed")
    port = free_port()
    args = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
            "--appendonly", "no", "--dir", str(tmp_path)]  # fmt: skip
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = redis.Redis(port=port, socket_timeout=10)
    try:
        wait_for_port("127.0.0.1", port, timeout=30)
        yield process, client
    finally:
        process.send_signal(signal.SIGCONT)
        process.kill()
        process.wait(20)
        client.close()


@pytest.fixture
def site(redis_server, tmp_path) -> Iterator[tuple[str, ProxyApp]]:
    _process, client = redis_server
    port = client.connection_pool.connection_kwargs["port"]
    (tmp_path / "templates").mkdir()
    (tmp_path / "templates" / "home.html").write_text(
        '{% extends "plugit/base.html" %}{% block content %}'
        '<form method="post">{{ csrf_field }}</form>{% endblock %}'
    )
    with serve(PlugItService([home, me, vote], root=str(tmp_path))) as service_url:
        config = {
            "secret_key": STRONG_KEY,
            "auth": ["session"],
            "users": "sqlite",
            "users_sqlite": {"path": str(tmp_path / "users.db")},
            "session": "redis",
            "session_redis": {
                "url": f"redis://127.0.0.1:{port}/0",
                "socket_timeout": WAIT,
                "retry_interval": 0.2,
                "secure": False,
            },
            "services": [{"name": "svc", "url": service_url}],
        }
        proxy = ProxyApp(config, load_entry_points=False)
        proxy.users.create_user("alice", password_hash=generate_password_hash(PASSWORD))
        proxy.users.create_user("bob", password_hash=generate_password_hash(PASSWORD))
        try:
            with serve(proxy) as base:
                yield base, proxy
        finally:
            proxy.close()


def _login(browser: requests.Session, base: str, username: str) -> requests.Response:
    page = browser.get(base + "/_plugit/login", timeout=10)
    token = re.search(r'name="plugit-csrf-token" content="([^"]+)"', page.text)
    assert token is not None, page.text[:500]
    return browser.post(
        base + "/_plugit/login",
        data={"username": username, "password": PASSWORD, "plugit_site_csrf": token.group(1)},
        allow_redirects=False,
        timeout=10,
    )


def _me(browser: requests.Session, base: str, timeout: float = 10) -> requests.Response:
    return browser.get(base + "/svc/me", timeout=timeout)


def _vote(browser: requests.Session, base: str) -> requests.Response:
    token = browser.cookies.get("csrftoken", path="/svc/")
    assert token, "the mount's csrftoken cookie"
    return browser.post(base + "/svc/vote", headers={"X-CSRFToken": token}, timeout=10)


def _logged_in_alice(base: str) -> requests.Session:
    browser = requests.Session()
    assert _login(browser, base, "alice").status_code == 303
    answer = _me(browser, base)
    assert answer.status_code == 200 and answer.json()["username"] == "alice"
    assert browser.get(base + "/svc/", timeout=10).status_code == 200  # a page with a form
    assert _vote(browser, base).status_code == 200
    return browser


def _fill_past_maxmemory(client: Any) -> None:
    """Redis refuses writes from now on (noeviction, over maxmemory), reads still answer."""
    client.config_set("maxmemory-policy", "noeviction")
    client.set("plugit-test-ballast", b"x" * (2 * 1024 * 1024))
    client.config_set("maxmemory", "1mb")
    with pytest.raises(redis.exceptions.ResponseError, match="maxmemory"):
        client.set("plugit-test-probe", "1")


def test_a_paused_redis_is_a_prompt_503_not_a_logout_and_the_first_request_after_succeeds(
    site, redis_server
):
    base, _proxy = site
    process, _client = redis_server
    alice = _logged_in_alice(base)

    process.send_signal(signal.SIGSTOP)
    try:
        page = _me(alice, base, timeout=WAIT + SLACK)  # answers within its wait
        assert page.status_code == 503
        assert "The session store at redis://127.0.0.1:" in page.text
        assert "is unavailable right now" in page.text
        assert "Traceback" not in page.text
        for _ in range(5):  # at once while down; what needs no session is served
            refused = _me(alice, base, timeout=WAIT + SLACK)
            assert refused.status_code == 503 and "expired" not in refused.text
            voted = _vote(alice, base)  # a form: refused for the outage, never as expired
            assert voted.status_code == 503 and "expired" not in voted.text
            anonymous = requests.get(base + "/svc/me", timeout=WAIT + SLACK)
            assert anonymous.status_code == 200 and not anonymous.json()["username"]
            health = requests.get(base + "/_plugit/health", timeout=WAIT + SLACK)
            assert health.status_code == 200
        ready = requests.get(base + "/_plugit/ready", timeout=WAIT + SLACK)
        assert ready.status_code == 503 and "session_redis" in ready.json()["unavailable"]
    finally:
        process.send_signal(signal.SIGCONT)

    deadline = time.monotonic() + 10
    while (answer := _me(alice, base)).status_code != 200:  # at most retry_interval later
        assert time.monotonic() < deadline, "the session store never came back"
        time.sleep(0.05)
    assert answer.json()["username"] == "alice"  # still logged in
    assert _vote(alice, base).status_code == 200  # and the form of before is accepted
    assert requests.get(base + "/_plugit/ready", timeout=10).status_code == 200


def test_a_redis_out_of_memory_keeps_everyone_logged_in_and_refuses_only_writes(
    site, redis_server, caplog
):
    base, _proxy = site
    _process, client = redis_server
    alice = _logged_in_alice(base)
    bob = requests.Session()  # opened the login page before: his session (and token) is stored
    page = bob.get(base + "/_plugit/login", timeout=10)
    token = re.search(r'name="plugit-csrf-token" content="([^"]+)"', page.text)
    assert token is not None
    _fill_past_maxmemory(client)
    votes = VOTES["n"]

    caplog.set_level(logging.INFO)
    for _ in range(3):  # sessions are read: alice stays logged in, her forms are accepted
        answer = _me(alice, base)
        assert answer.status_code == 200 and answer.json()["username"] == "alice"
        assert _vote(alice, base).status_code == 200
    assert VOTES["n"] == votes + 3

    # bob's login must store a new session: a 503 that says so, and nobody says he logged in
    refused = bob.post(
        base + "/_plugit/login",
        data={"username": "bob", "password": PASSWORD, "plugit_site_csrf": token.group(1)},
        allow_redirects=False,
        timeout=10,
    )
    assert refused.status_code == 503
    assert "Your session could not be saved" in refused.text
    assert "plugit_session" not in refused.headers.get("Set-Cookie", "")
    assert not _me(bob, base).json()["username"]  # not logged in
    logged = [r.getMessage() for r in caplog.records]
    assert not [m for m in logged if "logged in" in m and "bob" in m], logged

    # a new visitor's form was served with a session that could not be stored: the answer is
    # the outage, not "the form has expired"
    carol = _login(requests.Session(), base, "bob")
    assert carol.status_code == 503
    assert "The session store at redis://127.0.0.1:" in carol.text
    assert "expired" not in carol.text
    anonymous = requests.get(base + "/svc/me", timeout=10)  # a first visit is served
    assert anonymous.status_code == 200
    metrics = requests.get(base + "/_plugit/metrics", timeout=10).text
    assert 'plugit_store_up{store="session_redis"} 1' in metrics
    assert 'plugit_store_up{store="session_redis_writes"} 0' in metrics
    ready = requests.get(base + "/_plugit/ready", timeout=10)  # no login can be stored
    assert ready.status_code == 503 and ready.json()["unavailable"] == ["session_redis_writes"]
    error = ready.json()["stores"]["session_redis_writes"]["error"]
    assert "maxmemory" in error
    assert "plugit:session:" not in ready.text  # no session key (the failed command) shown
    assert not [r for r in caplog.records if "plugit:session:" in r.getMessage()]

    client.config_set("maxmemory", "0")  # memory again: the next login is stored
    deadline = time.monotonic() + 10
    while _login(bob, base, "bob").status_code != 303:
        assert time.monotonic() < deadline, "logins never worked again"
        time.sleep(0.05)
    assert _me(bob, base).json()["username"] == "bob"
    assert _me(alice, base).json()["username"] == "alice"

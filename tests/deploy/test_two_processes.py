"""Two real proxy processes sharing Redis and PostgreSQL behave as one site.

A login made through one is valid on the other, a page cached by one is served by the other
without calling the service, and a subscription granted through one is seen by the other.
"""

from __future__ import annotations

import contextlib
import io
import os
import secrets
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator

import pytest
import requests

from plugit_core.cli import main
from plugit_core.service import PlugItService, action, cache, json_only, user_info
from plugit_core.testing import free_port, serve, wait_for_port

REDIS_URL = os.environ.get("PLUGIT_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
POSTGRES_DSN = os.environ.get(
    "PLUGIT_TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/postgres"
)
SECRET = "two-process-service-secret-0123456789"
API_KEY = "two-process-api-key-0123456789abcdef"
CALLS = {"page": 0}
LOCK = threading.Lock()

pytestmark = pytest.mark.slow


@action("/page", template="page.html")
@cache(time=300)
def page(request):
    with LOCK:
        CALLS["page"] += 1
    return {"n": CALLS["page"]}


@action("/me")
@json_only()
@user_info(["username", "subscription_labels", "ebuio_member"])
def me(request):
    return request.user_info


def servers_available() -> str | None:
    for host, port, name in (("127.0.0.1", 6379, "Redis"), ("127.0.0.1", 5432, "PostgreSQL")):
        with socket.socket() as sock:
            sock.settimeout(1)
            if sock.connect_ex((host, port)) != 0:
                return f"{name} is not running on {host}:{port}"
    try:
        import psycopg  # noqa: F401
        import redis  # noqa: F401
    except ImportError as exc:
        return f"{exc.name} is not installed (pip install 'plugit-wsgi[redis,postgres]')"
    return None


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    reason = servers_available()
    if reason:
        if os.environ.get("PLUGIT_REQUIRE_SERVERS") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    folder = tmp_path_factory.mktemp("two")
    (folder / "templates").mkdir()
    (folder / "templates" / "page.html").write_text(
        '{% extends "plugit/base.html" %}{% block content %}<p id="n">{{ n }}</p>{% endblock %}'
    )
    run = f"plugit_two_{secrets.token_hex(4)}"
    with contextlib.ExitStack() as stack:
        service_url = stack.enter_context(
            serve(PlugItService([page, me], root=str(folder), secret=SECRET))
        )
        config = folder / "plugit.toml"
        config.write_text(
            f'secret_key = "{secrets.token_urlsafe(48)}"\n'
            'cache = "redis"\nsession = "redis"\nusers = "postgres"\nbilling = "postgres"\n'
            'auth = ["session"]\n'
            f'[cache_redis]\nurl = "{REDIS_URL}"\nprefix = "{run}:cache:"\n'
            f'[session_redis]\nurl = "{REDIS_URL}"\nprefix = "{run}:session:"\nsecure = false\n'
            f'[users_postgres]\ndsn = "{POSTGRES_DSN}"\nschema = "{run}"\n'
            f'[billing_postgres]\ndsn = "{POSTGRES_DSN}"\nschema = "{run}"\n'
            f'[[services]]\nname = "svc"\nurl = "{service_url}"\nsecret = "{SECRET}"\n'
            f'api_key = "{API_KEY}"\n'
        )
        stack.callback(_cleanup, run)
        # the directory and the plan, through the administrators' commands
        stdin = sys.stdin
        try:
            sys.stdin = io.StringIO("correct horse battery staple\n")
            assert main(["users", "--config", str(config), "add", "alice", "--password-stdin"]) == 0
        finally:
            sys.stdin = stdin
        assert main(["users", "--config", str(config), "grant", "alice", "svc", "member"]) == 0
        assert main(["billing", "--config", str(config), "plan-add", "svc", "pro", "Pro"]) == 0
        bases = []
        for _ in range(2):
            port = free_port()
            process = subprocess.Popen(
                [sys.executable, "-m", "plugit_core.cli", "proxy", "--config", str(config),
                 "--port", str(port)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )  # fmt: skip
            stack.callback(process.wait, 20)
            stack.callback(process.terminate)
            bases.append(f"http://127.0.0.1:{port}")
        for base in bases:
            wait_for_port("127.0.0.1", int(base.rsplit(":", 1)[1]), timeout=60)
        yield bases[0], bases[1]


def _cleanup(run: str) -> None:
    import psycopg
    import redis

    with redis.Redis.from_url(REDIS_URL) as client:
        for key in client.scan_iter(match=f"{run}:*"):
            client.delete(key)
    with psycopg.connect(POSTGRES_DSN, autocommit=True) as db:
        db.execute(f'DROP SCHEMA IF EXISTS "{run}" CASCADE')


def log_in(session: requests.Session, base: str) -> None:
    form = session.get(base + "/_plugit/login", timeout=10).text
    token = form.split('name="csrfmiddlewaretoken" value="')[1].split('"')[0]
    response = session.post(
        base + "/_plugit/login",
        data={"csrfmiddlewaretoken": token, "username": "alice",
              "password": "correct horse battery staple", "next": "/svc/me"},
        allow_redirects=False,
        timeout=10,
    )  # fmt: skip
    assert response.status_code == 303, response.text[:500]


def test_a_login_on_one_is_valid_on_the_other(site):
    one, two = site
    with requests.Session() as browser:
        log_in(browser, one)
        on_two = browser.get(two + "/svc/me", timeout=10).json()
        assert on_two["username"] == "alice"
        assert on_two["ebuio_member"] == "True"


def test_a_page_cached_by_one_is_served_by_the_other(site):
    one, two = site
    first = requests.get(one + "/svc/page", timeout=10)
    calls = CALLS["page"]
    second = requests.get(two + "/svc/page", timeout=10)
    assert first.status_code == second.status_code == 200
    assert '<p id="n">' in second.text
    assert (
        second.text.split('<p id="n">')[1].split("<")[0]
        == first.text.split('<p id="n">')[1].split("<")[0]
    )
    assert CALLS["page"] == calls  # the service was not called again


def test_a_subscription_granted_through_one_is_seen_by_the_other(site):
    one, two = site
    with requests.Session() as browser:
        log_in(browser, two)
        assert browser.get(two + "/svc/me", timeout=10).json().get("subscription_labels") is None
        members = requests.get(
            one + "/svc/ebuio_api/members/",
            headers={"Authorization": f"Bearer {API_KEY}"},
            timeout=10,
        ).json()["members"]
        alice = next(m for m in members if m["username"] == "alice")
        granted = requests.post(
            one + "/svc/ebuio_api/billing/subscriptions/",
            data={"plan": "pro", "user": str(alice["pk"])},
            headers={"Authorization": f"Bearer {API_KEY}"},
            timeout=10,
        )
        assert granted.status_code == 201, granted.text
        assert browser.get(two + "/svc/me", timeout=10).json()["subscription_labels"] == "Pro"

"""Proxies sharing Redis behave as one site, and a Redis outage never fails a request.

Real HTTP throughout: one PlugIt service and proxies (``ProxyApp``) served on loopback ports,
with the Redis cache and session store.
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import re
import secrets
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import requests
from werkzeug.wrappers import Response

import plugit_backends.cache_redis
import plugit_backends.session_redis
from plugit_core.hookspecs import hookimpl
from plugit_core.identity import log_in
from plugit_core.plugins import BUILTIN_PLUGINS
from plugit_core.proxy.app import ProxyApp
from plugit_core.proxy.routes import Route
from plugit_core.service import PlugItService, action, cache
from plugit_core.testing import free_port, serve, wait_until
from plugit_core.testing.redis import delete_prefix, redis_for_tests, redis_server
from plugit_core.users import simulated_user

redis = pytest.importorskip("redis")  # the ``redis`` extra

SECRET = "redis-shared-service-secret-0123456789"
SECRET_KEY = "redis-shared-proxy-secret-key-0123456789abcdef"
PAGE = (
    '{% extends "plugit/base.html" %}{% block content %}<p id="count">{{ count }}</p>{% endblock %}'
)

calls: collections.Counter[str] = collections.Counter()
_lock = threading.Lock()


@action("/cached", template="page.html")
@cache(time=60)
def cached(request: Any) -> dict[str, Any]:
    with _lock:
        calls["cached"] += 1
        return {"count": calls["cached"]}


def count_of(html: str) -> int:
    found = re.search(r'<p id="count">(\d+)</p>', html)
    assert found, html
    return int(found.group(1))


class SessionRoutes:
    """Test routes on the proxy: show the session, log in (as ``log_in`` does for every backend)."""

    @hookimpl
    def plugit_extra_routes(self, proxy: ProxyApp) -> list[Route]:
        def show(request: Any) -> Response:
            return Response(json.dumps(dict(request.session)), mimetype="application/json")

        def put(request: Any) -> Response:
            request.session.update(request.args.to_dict())
            return Response("ok")

        def login(request: Any) -> Response:
            log_in(request, simulated_user("adm"), "test")
            return Response("logged in")

        return [Route("/t/session", show), Route("/t/put", put), Route("/t/login", login)]


# Until plugit_core.plugins lists them, the Redis backends come as extra plugins.
REDIS_PLUGINS = tuple(
    module
    for module in (plugit_backends.cache_redis, plugit_backends.session_redis)
    if module.__name__ not in BUILTIN_PLUGINS
)


@pytest.fixture(scope="module")
def service_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("service")
    (root / "templates").mkdir()
    (root / "templates" / "page.html").write_text(PAGE, encoding="utf-8")
    with serve(PlugItService([cached], root=str(root), secret=SECRET)) as url:
        yield url


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    with redis_for_tests() as url:
        yield url


@pytest.fixture
def prefix(redis_url: str) -> Iterator[str]:
    prefix = f"plugit-test:{secrets.token_hex(8)}:"
    yield prefix
    delete_prefix(redis_url, prefix)


@pytest.fixture(autouse=True)
def _reset_calls() -> None:
    calls.clear()


@pytest.fixture
def start_proxy(service_url: str, redis_url: str, prefix: str) -> Iterator[Callable[..., str]]:
    """``start_proxy(url=..., **tables)``: a proxy on its own port using Redis; its base URL."""
    with contextlib.ExitStack() as stack:

        def start(url: str = redis_url, **tables: Any) -> str:
            cache_table = {"url": url, "prefix": prefix + "cache:", "retry_interval": 0.2}
            session_table = {"url": url, "prefix": prefix + "session:", "retry_interval": 0.2}
            cache_table.update(tables.get("cache_redis", {}))
            session_table.update(tables.get("session_redis", {}))
            config = {
                "dev_mode": True,
                "secret_key": SECRET_KEY,
                "cache": "redis",
                "session": "redis",
                "cache_redis": cache_table,
                "session_redis": session_table,
                "services": [
                    {"name": "svc", "url": service_url, "mount": "/svc/", "secret": SECRET}
                ],
            }
            proxy = ProxyApp(
                config, plugins=(*REDIS_PLUGINS, SessionRoutes()), load_entry_points=False
            )
            stack.callback(proxy.close)
            stack.callback(proxy.cache.close)
            stack.callback(proxy.sessions.close)
            return stack.enter_context(serve(proxy))

        yield start


@pytest.fixture
def browser() -> Iterator[Callable[[], requests.Session]]:
    with contextlib.ExitStack() as stack:

        def make() -> requests.Session:
            return stack.enter_context(requests.Session())

        yield make


def get(session: requests.Session, url: str, **kwargs: Any) -> requests.Response:
    response = session.get(url, allow_redirects=False, timeout=10, **kwargs)
    assert response.status_code == 200, (url, response.status_code, response.text[:500])
    return response


# -- two proxies, one site ---------------------------------------------------------------------


def test_a_page_cached_through_one_proxy_is_served_by_the_other(start_proxy, browser):
    one, two = start_proxy(), start_proxy()
    visitor = browser()
    assert count_of(get(visitor, one + "/svc/cached").text) == 1
    assert count_of(get(browser(), two + "/svc/cached").text) == 1
    assert calls["cached"] == 1  # the second proxy did not call the service


def test_a_session_created_through_one_proxy_is_read_by_the_other(start_proxy, browser):
    one, two = start_proxy(), start_proxy()
    first = browser()
    get(first, one + "/t/put", params={"colour": "green"})
    get(first, one + "/svc/ebuio_setUser", params={"mode": "adm"})
    second = browser()  # another client holding the same cookie, talking to the other proxy
    second.cookies.set("plugit_session", first.cookies["plugit_session"])
    assert get(second, two + "/t/session").json() == {"colour": "green", "dev_user_mode": "adm"}
    assert "Admin Charles" in get(second, two + "/svc/cached").text


def test_a_login_on_one_proxy_is_valid_on_the_other_and_the_old_id_is_dead(start_proxy, browser):
    one, two = start_proxy(), start_proxy()
    visitor = browser()
    get(visitor, one + "/t/put", params={"before": "login"})
    old_cookie = visitor.cookies["plugit_session"]
    get(visitor, one + "/t/login")
    new_cookie = visitor.cookies["plugit_session"]
    assert new_cookie != old_cookie
    other = browser()
    other.cookies.set("plugit_session", new_cookie)
    assert get(other, two + "/t/session").json() == {
        "uid": simulated_user("adm").pk,
        "auth": "test",
    }
    stale = browser()
    stale.cookies.set("plugit_session", old_cookie)
    assert get(stale, two + "/t/session").json() == {}


# -- Redis away --------------------------------------------------------------------------------


def warnings_of(caplog: pytest.LogCaptureFixture, logger: str) -> list[str]:
    return [
        r.getMessage() for r in caplog.records if r.name == logger and r.levelno == logging.WARNING
    ]


def test_unreachable_redis_still_serves_pages(start_proxy, browser, caplog):
    caplog.set_level(logging.WARNING)
    base = start_proxy(url=f"redis://127.0.0.1:{free_port()}/0")
    visitor = browser()
    for _ in range(3):
        assert count_of(get(visitor, base + "/svc/cached").text) == 1
    assert calls["cached"] == 1  # the in-process fallback cache answered
    get(visitor, base + "/svc/ebuio_setUser", params={"mode": "adm"})  # not saved, no error
    page = get(visitor, base + "/svc/cached?again=1").text
    assert "Admin Charles" not in page  # anonymous: no session without Redis
    assert len(warnings_of(caplog, "plugit.cache.redis")) == 1
    session_warnings = warnings_of(caplog, "plugit.session.redis")
    assert len(session_warnings) == 1
    assert "(session_redis_writes) is unavailable" in session_warnings[0]


def test_redis_stopping_mid_test_and_coming_back(start_proxy, browser, caplog):
    caplog.set_level(logging.WARNING)
    with redis_server() as server:
        base = start_proxy(url=server.url)
        visitor = browser()
        get(visitor, base + "/svc/ebuio_setUser", params={"mode": "adm"})
        assert "Admin Charles" in get(visitor, base + "/svc/cached").text
        assert calls["cached"] == 1

        server.stop()
        for _ in range(5):  # the session cannot be read: a 503 saying so, never a logout
            refused = visitor.get(base + "/svc/cached?during=outage", timeout=10)
            assert refused.status_code == 503
            assert "The session store at redis://127.0.0.1:" in refused.text
            assert "Admin Charles" not in refused.text
        newcomer = browser()  # no session: served, the in-process cache standing in for Redis
        page = get(newcomer, base + "/svc/cached?during=outage").text
        assert count_of(page) == 2  # a page the fallback does not have: the service answered
        for _ in range(5):
            assert count_of(get(newcomer, base + "/svc/cached?during=outage").text) == 2
        assert calls["cached"] == 2  # ...and the in-process fallback kept its answer
        assert len(warnings_of(caplog, "plugit.cache.redis")) == 1
        assert len(warnings_of(caplog, "plugit.session.redis")) >= 1

        server.start()  # a new, empty Redis on the same port
        client = redis.Redis.from_url(server.url)
        try:
            tries = iter(range(1000))

            def cache_in_redis_again() -> bool:
                # a new page each time: a page already shown is kept wrapped in the process
                get(visitor, base + f"/svc/cached?after={next(tries)}")
                return bool(list(client.scan_iter(match="*cache:*")))

            wait_until(cache_in_redis_again, timeout=5, interval=0.1)
        finally:
            client.close()
            client.connection_pool.disconnect()
        logins = iter(range(1000))

        def logged_in_again() -> bool:  # the session store is retried on its own schedule
            get(visitor, base + "/svc/ebuio_setUser", params={"mode": "adm"})
            return "Admin Charles" in get(visitor, base + f"/svc/cached?login={next(logins)}").text

        wait_until(logged_in_again, timeout=5, interval=0.1)
        assert any("answers again" in m for m in warnings_of(caplog, "plugit.cache.redis"))

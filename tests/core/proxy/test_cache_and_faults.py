"""Page cache, single-flight fetches, and a broken service harming no one else."""

from __future__ import annotations

import concurrent.futures
import re
import threading
import time

import pytest
import requests
from proxy_helpers import SECRET, STRONG_KEY, proxy_config
from werkzeug.wrappers import Request, Response

from plugit_core.proxy.app import ProxyApp
from plugit_core.service import PlugItService, action, json_only
from plugit_core.testing import free_port, serve


def count_of(html: str) -> int:
    return int(re.search(r'<p id="count">(\d+)</p>', html).group(1))


def test_shared_page_cache_serves_every_user_without_calling_the_service(browser, calls):
    first = browser.get("/svc/cached")
    assert first.status_code == 200
    browser.as_user("adm")
    second = browser.get("/svc/cached")
    assert count_of(second.text) == count_of(first.text) == 1
    assert calls["cached"] == 1
    # the layout is still the current user's, and the CSRF token too
    assert "Admin Charles" in second.text
    assert "{~__PLUGIT_CSRF_TOKEN__~}" not in second.text


def test_restricted_page_cache_is_per_user(browser, calls):
    browser.as_user("log")
    assert count_of(browser.get("/svc/cached_user").text) == 1
    assert count_of(browser.get("/svc/cached_user").text) == 1  # hit for the same user
    browser.as_user("mem")
    assert count_of(browser.get("/svc/cached_user").text) == 2  # never another user's page
    assert calls["cached_user"] == 2


def test_query_string_is_part_of_the_key(browser, calls):
    browser.get("/svc/cached?a=1")
    browser.get("/svc/cached?a=2")
    browser.get("/svc/cached?a=1")
    assert calls["cached"] == 2


def test_post_is_never_answered_from_the_cache(browser, calls):
    browser.get("/svc/cached")
    token = browser.csrf()
    response = browser.post("/svc/cached", data={"csrfmiddlewaretoken": token})
    # the action only accepts GET: the POST reached the service, which refused it
    assert response.status_code == 405
    assert calls["cached"] == 1


def test_cache_hit_still_checks_access(browser, calls):
    browser.as_user("log")
    assert browser.get("/svc/cached_user").status_code == 200
    browser.as_user("ano")
    assert browser.get("/svc/cached_user").status_code == 403


class CountingService:
    """Wraps a service and counts the meta and template fetches it receives."""

    def __init__(self, app):
        self.app = app
        self.meta = 0
        self.template = 0
        self.lock = threading.Lock()

    def __call__(self, environ, start_response):
        path = environ["PATH_INFO"]
        with self.lock:
            if path.startswith("/meta/"):
                self.meta += 1
            elif path.startswith("/template/"):
                self.template += 1
        if path.startswith(("/meta/", "/template/")):
            time.sleep(0.2)  # a slow-ish service makes the burst overlap for sure
        return self.app(environ, start_response)


def test_burst_of_cold_requests_fetches_meta_and_template_once():
    import proxy_service

    counting = CountingService(proxy_service.make_app(secret=SECRET))
    with serve(counting) as url:
        # Outside dev mode: dev mode keeps no meta at all (an edited template shows at once).
        config = proxy_config(
            url,
            mount_options={"max_concurrency": 250, "timeout": 30},
            dev_mode=False,
            secret_key=STRONG_KEY,
        )
        proxy = ProxyApp(config, load_entry_points=False)
        try:
            with serve(proxy) as base:
                with requests.Session() as warm:
                    warm.get(base + "/")  # the home page does not touch the service
                counting.meta = counting.template = 0

                def fetch(_):
                    return requests.get(base + "/svc/", timeout=60).status_code

                with concurrent.futures.ThreadPoolExecutor(max_workers=200) as pool:
                    statuses = list(pool.map(fetch, range(200)))
        finally:
            proxy.close()
    assert statuses == [200] * 200
    assert counting.meta == 1
    assert counting.template == 1


def garbage_app(environ, start_response):
    request = Request(environ)
    if request.path == "/version":
        response = Response(
            '{"result": "Ok", "version": "1", "protocol": "EBUio-PlugIt"}',
            mimetype="application/json",
        )
    else:
        response = Response(b"\x00\xffthis is not the PlugIt protocol", mimetype="application/json")
    return response(environ, start_response)


def version_2_app(environ, start_response):
    body = '{"result": "Ok", "version": "2", "protocol": "EBUio-PlugIt", "template_tag": ""}'
    return Response(body, mimetype="application/json")(environ, start_response)


def slow_app(environ, start_response):
    request = Request(environ)
    if request.path != "/version":
        time.sleep(3)
    response = Response(
        '{"result": "Ok", "version": "1", "protocol": "EBUio-PlugIt", "template_tag": ""}',
        mimetype="application/json",
    )
    return response(environ, start_response)


@pytest.mark.parametrize(
    ("kind", "status"),
    [
        pytest.param("unreachable", 502, id="unreachable"),
        pytest.param("garbage", 502, id="garbage"),
        pytest.param("slow", 504, id="slow"),
        pytest.param("wrong-protocol", 502, id="wrong-protocol"),
    ],
)
def test_broken_service_gets_its_own_error_page_and_others_keep_serving(service_url, kind, status):
    import contextlib

    with contextlib.ExitStack() as stack:
        if kind == "unreachable":
            broken_url = f"http://127.0.0.1:{free_port()}"
        elif kind == "garbage":
            broken_url = stack.enter_context(serve(garbage_app))
        elif kind == "slow":
            broken_url = stack.enter_context(serve(slow_app))
        else:  # another protocol version (any name with version 1 is accepted)
            broken_url = stack.enter_context(serve(version_2_app))
        services = [
            {"name": "good", "url": service_url, "mount": "/good/", "secret": SECRET},
            {
                "name": "broken",
                "url": broken_url,
                "mount": "/broken/",
                "timeout": 0.5,
                "title": "Broken One",
            },
        ]
        proxy = ProxyApp(proxy_config(service_url, services=services), load_entry_points=False)
        stack.callback(proxy.close)
        base = stack.enter_context(serve(proxy))
        started = time.monotonic()
        response = requests.get(base + "/broken/", timeout=10)
        elapsed = time.monotonic() - started
        assert response.status_code == status
        assert "Broken One" in response.text  # the page names the service
        assert 'id="plugit-error"' in response.text
        assert elapsed < 5  # bounded by the service's timeout, not hanging
        assert requests.get(base + "/good/", timeout=10).status_code == 200


def test_hanging_service_cannot_take_every_thread(service_url):
    """Concurrency cap: calls beyond ``max_concurrency`` are refused at once with 503."""
    release = threading.Event()
    entered = threading.Semaphore(0)

    @action("/")
    @json_only()
    def hang(request):
        entered.release()
        release.wait(10)
        return {}

    import contextlib

    with contextlib.ExitStack() as stack:
        stack.callback(release.set)
        hanging_url = stack.enter_context(serve(PlugItService([hang])))
        services = [
            {"name": "good", "url": service_url, "mount": "/good/", "secret": SECRET},
            {
                "name": "hang",
                "url": hanging_url,
                "mount": "/hang/",
                "timeout": 10,
                "max_concurrency": 2,
            },
        ]
        proxy = ProxyApp(proxy_config(service_url, services=services), load_entry_points=False)
        stack.callback(proxy.close)
        base = stack.enter_context(serve(proxy))
        pool = stack.enter_context(concurrent.futures.ThreadPoolExecutor(max_workers=4))
        stuck = [pool.submit(requests.get, base + "/hang/", timeout=20) for _ in range(2)]
        assert entered.acquire(timeout=10) and entered.acquire(timeout=10)  # both slots taken
        busy = requests.get(base + "/hang/", timeout=10)
        assert busy.status_code == 503
        assert requests.get(base + "/good/", timeout=10).status_code == 200
        release.set()
        assert all(f.result().status_code == 200 for f in stuck)


def test_a_shared_cached_page_never_shows_its_first_visitors_identity(browser):
    browser.as_user("adm")
    first = browser.get("/svc/cached")
    assert '<p id="user">None|None</p>' in first.text  # rendered for nobody: everyone gets it
    browser.as_user("ano")
    assert "Admin" not in browser.get("/svc/cached").text.split('id="plugit-content"')[1]


def test_streamed_replies_give_their_slot_back(make_browser, service_url):
    """Media misses, HEAD on files and media: none may keep a concurrency slot."""
    browser = make_browser(proxy_config(service_url, mount_options={"max_concurrency": 3}))
    for _ in range(4):
        assert browser.get("/svc/media/missing.css").status_code == 404
        assert browser.head("/svc/file").status_code == 200
        assert browser.head("/svc/media/site.css").status_code == 200
    assert browser.get("/svc/").status_code == 200
    client = browser.proxy.clients["svc"]
    assert client.in_flight == 0
    assert client._slots._value == 3  # every slot is free again

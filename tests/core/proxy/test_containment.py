"""A service's HTML stays in its pages: trust levels, CSP, headers, per-mount CSRF tokens, media
paths and render budgets, through a real proxy and a scripted service over HTTP."""

from __future__ import annotations

import http.client
import re
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest
from proxy_helpers import SECRET, Browser, ScriptedService

from plugit_core.proxy.app import ProxyApp
from plugit_core.testing import serve

HOSTILE_HTML = (
    '<p id="intro" onclick="steal()">Hello<script>steal()</script></p>'
    '<a id="js" href="javascript:steal()">js</a>'
    '<a id="away" href="https://evil.example/">away</a>'
    '<a id="slashes" href="//evil.example/">slashes</a>'
    '<a id="backslash" href="/\\evil.example/">backslash</a>'
    '<a id="local" href="{{ ebuio_baseUrl }}other">local</a>'
    '<img id="pixel" src="https://evil.example/p.gif">'
    '<iframe src="/"></iframe><style>input[value^=a]{background:url(/x)}</style>'
    '<form id="f" method="post" action="{{ ebuio_baseUrl }}vote">{{ csrf_field }}'
    '<button onclick="steal()">Vote</button></form>'
)


@pytest.fixture
def scripted() -> Iterator[tuple[ScriptedService, str]]:
    service = ScriptedService()
    with serve(service) as url:
        yield service, url


def _site(service_url: str, healthy_url: str, **first: Any) -> dict[str, Any]:
    return {
        "dev_mode": True,
        "services": [
            {"name": "hostile", "url": service_url, "mount": "/hostile/", **first},
            {"name": "other", "url": healthy_url, "mount": "/other/", "secret": SECRET},
        ],
    }


@pytest.fixture
def site(scripted, service_url) -> Iterator[Any]:
    """``site(**mount_options)``: a proxy mounting the scripted service and the test service."""
    browsers: list[tuple[ProxyApp, Any]] = []
    import contextlib

    with contextlib.ExitStack() as stack:

        def make(**options: Any) -> Browser:
            proxy = ProxyApp(_site(scripted[1], service_url, **options), load_entry_points=False)
            stack.callback(proxy.close)
            browser = Browser(stack.enter_context(serve(proxy)), proxy)
            stack.callback(browser.close)
            browsers.append((proxy, browser))
            return browser

        yield make


def _element(html: str, element_id: str) -> str:
    match = re.search(rf'<[a-z]+ id="{element_id}"[^>]*>', html)
    return match.group(0) if match else ""


def test_a_sandboxed_service_runs_no_script_and_links_only_to_the_site(scripted, site) -> None:
    service, _ = scripted
    service.page("", HOSTILE_HTML)
    browser = site()
    page = browser.get("/hostile/")
    assert page.status_code == 200
    html = page.text
    assert "steal()" not in html
    assert "<iframe" not in html and "background:url" not in html
    assert "href" not in _element(html, "js")
    assert "href" not in _element(html, "away")
    assert "href" not in _element(html, "slashes")
    assert "href" not in _element(html, "backslash")
    assert 'href="/hostile/other"' in _element(html, "local")
    assert "src" not in _element(html, "pixel")
    assert 'action="/hostile/vote"' in _element(html, "f")
    assert "Hello" in html and ">Vote</button>" in html
    policy = page.headers["Content-Security-Policy"]
    nonce = re.search(r"script-src 'nonce-([^']+)'", policy).group(1)
    assert f'<script nonce="{nonce}" src="/_plugit/static/' in html  # the theme's script runs
    assert "form-action 'self'" in policy and "object-src 'none'" in policy
    second = browser.get("/hostile/").headers["Content-Security-Policy"]
    assert second != policy  # a nonce per response


def test_a_fully_trusted_service_is_served_as_written(scripted, site) -> None:
    service, _ = scripted
    service.page("", HOSTILE_HTML)
    page = site(trust="full").get("/hostile/")
    assert "<script>steal()</script>" in page.text
    assert 'href="javascript:steal()"' in page.text
    assert page.headers["Content-Security-Policy"] == "frame-ancestors 'self'"


def test_raw_replies_of_a_sandboxed_service_are_sandboxed_documents(scripted, site) -> None:
    service, _ = scripted
    service.page("data", None, {"html": "<script>steal()</script>"}, json_only=True)
    service.page("bare", "<script>steal()</script>", no_template=True)
    browser = site()
    for path in ("/hostile/data", "/hostile/bare", "/hostile/media/page.html"):
        response = browser.get(path)
        assert response.status_code == 200, path
        assert response.headers["Content-Security-Policy"].startswith("sandbox;"), path
    full = site(trust="full")
    assert "sandbox" not in full.get("/hostile/media/page.html").headers.get(
        "Content-Security-Policy", ""
    )


@pytest.mark.parametrize("path", ["/hostile/", "/_plugit/health", "/nowhere", "/other/"])
def test_every_response_carries_the_common_headers(scripted, site, path: str) -> None:
    scripted[0].page("", "<p>hi</p>")
    response = site().get(path)
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["Referrer-Policy"] == "strict-origin-when-cross-origin"
    assert response.headers["X-Frame-Options"] == "SAMEORIGIN"
    assert "frame-ancestors 'self'" in response.headers["Content-Security-Policy"]
    assert "Strict-Transport-Security" not in response.headers  # dev mode: cookies not secure


def test_csrf_tokens_are_per_mount(scripted, site, calls) -> None:
    service, _ = scripted
    service.page("", "<form method=post>{{ csrf_field }}</form>")
    browser = site(trust="full")
    hostile_token = browser.csrf("/hostile/")
    other_token = browser.csrf("/other/")
    assert hostile_token and other_token and hostile_token != other_token
    # The hostile service's token (what its scripts can read) is refused by the other mount...
    stolen = browser.post("/other/echo", data={"csrfmiddlewaretoken": hostile_token, "x": "1"})
    assert stolen.status_code == 403
    stolen = browser.post("/other/echo", headers={"X-CSRFToken": hostile_token})
    assert stolen.status_code == 403
    # ...and by the site's own forms (here the organisation switch).
    switch = browser.post(
        "/other/ebuio_setOrga", data={"pk": "2", "csrfmiddlewaretoken": hostile_token}
    )
    assert switch.status_code == 403
    # The other mount's own token works there.
    own = browser.post("/other/echo", data={"csrfmiddlewaretoken": other_token, "x": "1"})
    assert own.status_code == 200


def test_media_paths_that_climb_never_reach_the_service(scripted, site) -> None:
    service, _ = scripted
    browser = site()
    parts = urlsplit(browser.base)
    for path in (
        "/hostile/media/../version",
        "/hostile/media/a/../../action/",
        "/hostile/media/%2e%2e/version",
        "/hostile/media/a%5c..%5c..%5cversion",
    ):
        connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
        try:
            connection.request("GET", path)
            response = connection.getresponse()
            response.read()
        finally:
            connection.close()
        assert response.status == 404, path
    assert [p for p in service.seen if p.startswith("/media")] == []
    assert browser.get("/hostile/media/a/./b/../c.css").text == "media a/c.css"


def test_a_template_over_its_budget_is_its_own_error_page_only(scripted, site) -> None:
    service, _ = scripted
    service.page(
        "bomb", "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"
    )
    service.page("big", "{{ 'x' * 400000000 }}")
    browser = site(render_max_iterations=1000)
    for path, what in (("/hostile/bomb", "iterations"), ("/hostile/big", "size")):
        page = browser.get(path)
        assert page.status_code == 502
        assert "over_budget" in page.text and what in page.text  # dev mode names it
    assert browser.get("/other/").status_code == 200
    client = browser.proxy.clients["hostile"]
    assert client.in_flight == 0  # the render's concurrency slot was given back


def test_plugin_template_variables_are_data_or_opaque_functions(scripted, caplog) -> None:
    from plugit_core.hookspecs import hookimpl

    class Plugin:
        @hookimpl
        def plugit_template_context(self, page, context):
            return {
                "proxy_object": page,  # an object: dropped, never handed to the template
                "shout": lambda text: str(text).upper(),
                "stats": {"rows": (1, 2)},
            }

    service, url = scripted
    service.page(
        "",
        "[{{ shout('hi') }}|{{ stats.rows[1] }}|{{ proxy_object is defined }}|"
        "{{ shout.__globals__ }}{{ shout.__closure__ }}]",
    )
    proxy = ProxyApp(
        {"dev_mode": True, "services": [{"name": "s", "url": url, "mount": "/s/"}]},
        plugins=[Plugin()],
        load_entry_points=False,
    )
    try:
        with serve(proxy) as base, Browser(base, proxy) as browser:
            page = browser.get("/s/")
    finally:
        proxy.close()
    assert page.status_code == 200
    assert "[HI|2|False|]" in page.text
    assert "proxy_object: a PageRequest is not template data" in caplog.text


def test_secure_cookies_bring_strict_transport_security(scripted, service_url) -> None:
    service, url = scripted
    service.page("", "<p>hi</p>")
    config = _site(url, service_url)
    config["session_cookie"] = {"secure": True}
    proxy = ProxyApp(config, load_entry_points=False)
    try:
        with serve(proxy) as base, Browser(base, proxy) as browser:
            for path in ("/hostile/", "/_plugit/health", "/nowhere"):
                headers = browser.get(path).headers
                assert headers["Strict-Transport-Security"] == "max-age=31536000", path
    finally:
        proxy.close()


def test_a_sandboxed_page_never_lets_another_site_read_it(scripted, site) -> None:
    service, _ = scripted
    service.page("", "<p>hi</p>")
    service.page("data", None, {"a": 1}, json_only=True)
    for trust, page_cors in (("sandboxed", False), ("full", True)):
        browser = site(trust=trust)
        # The test service answers CORS headers the way a hostile one would, on every reply.
        service.reply_headers = {
            "Access-Control-Allow-Origin": "https://evil.example",
            "Access-Control-Allow-Credentials": "true",
        }
        page = browser.get("/hostile/")
        assert ("Access-Control-Allow-Origin" in page.headers) is page_cors, trust
        assert ("Access-Control-Allow-Credentials" in page.headers) is page_cors, trust
        # Raw replies keep them (a cross-domain JSON action is what they are for).
        assert browser.get("/hostile/data").headers["Access-Control-Allow-Origin"] == (
            "https://evil.example"
        )


def test_a_page_without_forms_makes_no_session_for_a_visitor(scripted, service_url) -> None:
    from proxy_helpers import STRONG_KEY

    service, url = scripted
    service.page("", "<p>no form here</p>")
    service.page("form", "<form method=post>{{ csrf_field }}</form>")
    config = _site(url, service_url)
    config.update(dev_mode=False, secret_key=STRONG_KEY, session_cookie={"secure": False})
    proxy = ProxyApp(config, load_entry_points=False)
    try:
        with serve(proxy) as base, Browser(base, proxy) as browser:
            plain = browser.get("/hostile/")
            assert plain.status_code == 200
            assert "Set-Cookie" not in plain.headers  # cacheable by anyone, no session made
            assert '<meta name="plugit-csrf-token" content="">' in plain.text
            form = browser.get("/hostile/form")
            assert "Set-Cookie" in form.headers
            token = browser.csrf("/hostile/form")
            assert token and f'value="{token}"' in form.text  # the meta and the form agree
    finally:
        proxy.close()

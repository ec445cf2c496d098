"""The proxy below a path prefix (WSGI ``SCRIPT_NAME``): mounts are matched on ``PATH_INFO``,
every URL given to the browser carries the prefix.

Through werkzeug's test client (``base_url=".../portal"`` sets ``SCRIPT_NAME``) against real
proxies calling real services on loopback ports, and once over real HTTP behind werkzeug's
``DispatcherMiddleware``.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from proxy_helpers import SECRET
from werkzeug.middleware.dispatcher import DispatcherMiddleware
from werkzeug.test import Client as _Client
from werkzeug.test import TestResponse
from werkzeug.wrappers import Request, Response

from plugit_core.proxy.app import PlugItMiddleware, ProxyApp
from plugit_core.service import PlugItRedirect, PlugItService, action, cache
from plugit_core.testing import serve

PORTAL = "http://localhost/portal"


class Client(_Client):
    """werkzeug's test client, as a loopback peer (in dev mode the proxy answers no other)."""

    def open(self, *args: Any, **kwargs: Any) -> TestResponse:  # type: ignore[override]
        kwargs.setdefault("environ_base", {"REMOTE_ADDR": "127.0.0.1"})
        return super().open(*args, **kwargs)


ROOT = "http://localhost"
URLS = (
    '{% extends "plugit/base.html" %}'
    '{% block menubar %}<a id="menu-link" href="{{ ebuio_baseUrl }}">menu</a>{% endblock %}'
    '{% block content %}<p id="base">{{ ebuio_baseUrl }}</p><p id="media">{{ MEDIA_URL }}</p>'
    '<p id="static">{{ STATIC_URL }}</p><p id="count">{{ count }}</p>{% endblock %}'
)
CALLS: dict[str, int] = {}


def _count(name: str) -> int:
    CALLS[name] = CALLS.get(name, 0) + 1
    return CALLS[name]


@action("/", template="urls.html")
def home(request: Any) -> dict[str, Any]:
    return {"count": _count("home")}


@action("/cached", template="urls.html")
@cache(time=60)
def cached(request: Any) -> dict[str, Any]:
    return {"count": _count("cached")}


@action("/redirect")
def redirect(request: Any) -> PlugItRedirect:
    return PlugItRedirect(request.args.get("to", "cached"), no_prefix=request.args.get("np") == "1")


def proxy_mode_service(environ: dict[str, Any], start_response: Any) -> Any:
    """A proxy-mode service showing the base URL the proxy gave it."""
    request = Request(environ)
    if request.path == "/version":
        response = Response(
            '{"result":"Ok","version":"1","protocol":"EBUio-PlugIt"}', mimetype="application/json"
        )
    else:
        base = request.headers.get("X-Plugit-Base-Url", "")
        response = Response(f'<p id="pm-base">{base}</p>', mimetype="text/html")
    return response(environ, start_response)


@pytest.fixture(scope="module")
def service_urls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    templates = tmp_path_factory.mktemp("script_name_templates")
    (templates / "urls.html").write_text(URLS)
    service = PlugItService([home, cached, redirect], templates=str(templates), secret=SECRET)
    with serve(service) as url, serve(proxy_mode_service) as pm_url:
        yield url, pm_url


def config(service_urls: tuple[str, str], **top: Any) -> dict[str, Any]:
    url, pm_url = service_urls
    return {
        "dev_mode": True,
        "allowed_redirect_hosts": ["trusted.example"],
        "services": [
            {"name": "svc", "title": "Service", "url": url, "mount": "/svc/", "secret": SECRET},
            {"name": "pm", "title": "Proxied", "url": pm_url, "mount": "/pm/", "proxy_mode": True},
        ],
        **top,
    }


@pytest.fixture
def proxy(service_urls: tuple[str, str]) -> Iterator[ProxyApp]:
    app = ProxyApp(config(service_urls), load_entry_points=False)
    yield app
    app.close()


def text(response: TestResponse) -> str:
    return response.get_data(as_text=True)


def by_id(html: str, element_id: str) -> str:
    match = re.search(rf'id="{element_id}"[^>]*>([^<]*)<', html)
    assert match, f"no #{element_id} in the page"
    return match.group(1)


def hrefs(html: str) -> list[str]:
    return re.findall(r'(?:href|src|action)="([^"]*)"', html)


def form(html: str, action_suffix: str, value: str) -> tuple[str, dict[str, str]]:
    """The action and hidden fields of the first form posting to ``...action_suffix`` whose
    submit button has ``data-plugit-mode=value`` (the dev bar's)."""
    for match in re.finditer(r'<form method="post" action="([^"]*)"[^>]*>(.*?)</form>', html, re.S):
        action_url, body = match.groups()
        if action_url.endswith(action_suffix) and f'data-plugit-mode="{value}"' in body:
            fields = dict(re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)"', body))
            return action_url, fields
    raise AssertionError(f"no form to {action_suffix} for {value}")


def test_every_url_of_a_page_carries_the_prefix(proxy: ProxyApp) -> None:
    client = Client(proxy)
    response = client.get("/svc/", base_url=PORTAL)
    assert response.status_code == 200
    html = text(response)
    assert by_id(html, "base") == "/portal/svc/"  # ebuio_baseUrl
    assert by_id(html, "media") == "/portal/svc/media/"  # MEDIA_URL
    assert by_id(html, "static") == "/portal/_plugit/static/"  # STATIC_URL
    links = hrefs(html)
    assert 'href="/portal/svc/"' in html and 'href="/portal/pm/"' in html  # the services menu
    assert 'class="navbar-brand" href="/portal/"' in html  # home
    assert any(u.startswith("/portal/_plugit/static/bootstrap/") for u in links)
    assert 'action="/portal/svc/ebuio_setUser"' in html  # the dev bar
    assert '<input type="hidden" name="next" value="/portal/svc/">' in html
    local = [u for u in links if u.startswith("/")]
    assert local and all(u.startswith("/portal/") for u in local), local


def test_the_same_proxy_at_the_root_is_unchanged(proxy: ProxyApp) -> None:
    client = Client(proxy)
    for base, prefix in ((PORTAL, "/portal"), (ROOT, ""), (PORTAL, "/portal"), (ROOT, "")):
        html = text(client.get("/svc/", base_url=base))
        assert by_id(html, "base") == f"{prefix}/svc/"
        assert f'href="{prefix}/pm/"' in html  # the layout skeleton is kept per prefix
        assert f'action="{prefix}/svc/ebuio_setUser"' in html
    assert "/portal" not in text(client.get("/svc/", base_url=ROOT))


def test_cached_pages_are_kept_per_prefix(proxy: ProxyApp) -> None:
    client = Client(proxy)
    first = text(client.get("/svc/cached", base_url=PORTAL))
    assert by_id(first, "base") == "/portal/svc/"
    at_root = text(client.get("/svc/cached", base_url=ROOT))
    assert by_id(at_root, "base") == "/svc/"  # not the page rendered for /portal
    assert "/portal" not in at_root
    elsewhere = text(client.get("/svc/cached", base_url="http://localhost/other"))
    assert by_id(elsewhere, "base") == "/other/svc/"
    again = text(client.get("/svc/cached", base_url=PORTAL))
    assert by_id(again, "base") == "/portal/svc/"
    assert by_id(again, "count") == by_id(first, "count")  # a page-cache hit
    again_root = text(client.get("/svc/cached", base_url=ROOT))
    assert by_id(again_root, "count") == by_id(at_root, "count")


def test_redirects_carry_the_prefix(proxy: ProxyApp) -> None:
    client = Client(proxy)

    def location(path: str, **args: str) -> str:
        response = client.get(path, query_string=args, base_url=PORTAL)
        assert response.status_code in (302, 303, 308), text(response)
        return response.headers["Location"]

    assert location("/svc") == "/portal/svc/"  # the mount without its slash
    assert location("/svc/redirect") == "/portal/svc/cached"  # below prefix + mount
    assert location("/svc/redirect", to="/deeper/page") == "/portal/svc/deeper/page"
    # NoPrefix: a local path is a path of the site the proxy serves, so below its prefix...
    assert location("/svc/redirect", to="/pm/x", np="1") == "/portal/pm/x"
    # ...and an absolute URL to an allowed host is left alone
    assert (
        location("/svc/redirect", to="https://trusted.example/a", np="1")
        == "https://trusted.example/a"
    )
    assert client.get("/svc/redirect?np=1&to=//evil.example/", base_url=PORTAL).status_code == 502


def test_dev_mode_switch_follows_the_prefixed_forms(proxy: ProxyApp) -> None:
    client = Client(proxy)
    page = text(client.get("/svc/cached?x=1", base_url=PORTAL))
    action_url, fields = form(page, "ebuio_setUser", "adm")
    assert action_url == "/portal/svc/ebuio_setUser"
    assert fields["next"] == "/portal/svc/cached?x=1"
    assert action_url.startswith("/portal/")
    response = client.post(action_url[len("/portal") :], data=fields, base_url=PORTAL)
    assert response.status_code == 303
    assert response.headers["Location"] == "/portal/svc/cached?x=1"
    after = text(client.get("/svc/cached?x=1", base_url=PORTAL))
    assert 'data-plugit-mode="adm" aria-current="true"' in after


def test_error_pages_and_site_pages_carry_the_prefix(proxy: ProxyApp) -> None:
    client = Client(proxy)
    missing = client.get("/nowhere", base_url=PORTAL)
    assert missing.status_code == 404
    assert 'href="/portal/"' in text(missing)
    assert "/portal/_plugit/static/plugit.css" in text(missing)
    home_page = text(client.get("/", base_url=PORTAL))
    assert 'href="/portal/svc/"' in home_page and 'href="/portal/pm/"' in home_page
    no_action = client.get("/svc/does-not-exist", base_url=PORTAL)
    assert no_action.status_code == 404
    assert 'href="/portal/svc/">Back to Service' in text(no_action)
    with client.get("/_plugit/static/plugit.css", base_url=PORTAL) as css:  # on PATH_INFO
        assert css.status_code == 200


def test_proxy_mode_services_get_the_prefixed_base_url(proxy: ProxyApp) -> None:
    client = Client(proxy)
    assert by_id(text(client.get("/pm/page", base_url=PORTAL)), "pm-base") == "/portal/pm/"
    assert by_id(text(client.get("/pm/page", base_url=ROOT)), "pm-base") == "/pm/"


def test_login_and_logout_urls_carry_the_prefix(proxy: ProxyApp) -> None:
    proxy.links.login_url = "/accounts/login"
    proxy.links.logout_url = "https://sso.example/logout"  # absolute: left alone
    client = Client(proxy)
    html = text(client.get("/svc/", base_url=PORTAL))
    assert 'id="plugit-login" class="btn btn-sm btn-light" href="/portal/accounts/login"' in html


def test_an_odd_script_name_never_makes_a_protocol_relative_url(proxy: ProxyApp) -> None:
    client = Client(proxy)
    html = text(client.get("/svc/", base_url="http://localhost//evil.example"))
    assert by_id(html, "base") == "/evil.example/svc/"
    assert 'href="//' not in html and 'action="//' not in html
    quoted = text(client.get("/svc/", base_url="http://localhost/a%20b%22c"))
    assert by_id(quoted, "base") == "/a%20b%22c/svc/"


def host_app(environ: dict[str, Any], start_response: Any) -> Any:
    request = Request(environ)
    body = f"host:{request.script_root}|{request.path}"
    return Response(body, mimetype="text/plain")(environ, start_response)


def test_middleware_below_a_prefix(service_urls: tuple[str, str]) -> None:
    middleware = PlugItMiddleware(
        host_app, config(service_urls), login_url="/login", load_entry_points=False
    )
    try:
        client = Client(middleware)
        assert text(client.get("/elsewhere", base_url=PORTAL)) == "host:/portal|/elsewhere"
        page = text(client.get("/svc/", base_url=PORTAL))
        assert by_id(page, "base") == "/portal/svc/"
        assert 'href="/portal/login"' in page  # the host's login, below the prefix too
        assert "/portal/_plugit/static/plugit.css" in page
        with client.get("/_plugit/static/plugit.css", base_url=PORTAL) as css:
            assert css.status_code == 200
        response = client.get("/svc/redirect", base_url=PORTAL)
        assert response.headers["Location"] == "/portal/svc/cached"
    finally:
        middleware.proxy.close()


def test_over_http_behind_a_dispatcher(service_urls: tuple[str, str]) -> None:
    """A browser following the links of a proxy mounted at /portal by a real WSGI server."""
    proxy = ProxyApp(config(service_urls), load_entry_points=False)
    site = DispatcherMiddleware(Response("root site", mimetype="text/plain"), {"/portal": proxy})
    with contextlib.ExitStack() as stack:
        stack.callback(proxy.close)
        base = stack.enter_context(serve(site))
        browser = stack.enter_context(requests.Session())
        home_page = browser.get(base + "/portal/", timeout=10)
        assert home_page.status_code == 200
        service_link = re.findall(r'href="([^"]*)" data-plugit-service="svc"', home_page.text)[0]
        assert service_link == "/portal/svc/"
        page = browser.get(base + service_link, timeout=10)
        assert page.status_code == 200
        assert by_id(page.text, "base") == "/portal/svc/"
        for url in hrefs(page.text):
            if url.startswith("/portal/_plugit/static/"):
                assert browser.get(base + url, timeout=10).status_code == 200
        followed = browser.get(base + "/portal/svc/redirect", timeout=10)
        assert followed.status_code == 200
        assert followed.url == base + "/portal/svc/cached"

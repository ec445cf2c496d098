"""Proxy mode, orga mode and dev mode."""

from __future__ import annotations

import contextlib

import pytest
import requests
from proxy_helpers import SECRET, STRONG_KEY, proxy_config
from werkzeug.wrappers import Request, Response

from plugit_core.hookspecs import hookimpl
from plugit_core.proxy.app import ProxyApp
from plugit_core.testing import serve
from plugit_core.users import Orga, PlugItUser


def proxy_mode_service(environ, start_response):
    """A proxy-mode service: answers finished HTML at its own paths."""
    request = Request(environ)
    if request.path == "/version":
        response = Response(
            '{"result":"Ok","version":"1","protocol":"EBUio-PlugIt"}', mimetype="application/json"
        )
    elif request.path == "/no_template":
        response = Response(
            "<p>raw {~__PLUGIT_CSRF_TOKEN__~}</p>", headers={"EbuIo-PlugIt-NoTemplate": "1"}
        )
    elif request.path == "/redirect_me":
        response = Response(b"", headers={"EbuIo-PlugIt-Redirect": "/"})
    else:
        headers = "".join(
            f"<li>{k}={v}</li>"
            for k, v in sorted(request.headers.items())
            if k.lower().startswith("x-plugit-")
        )
        response = Response(
            f'<ul id="headers">{headers}</ul><form method="post"><input name="csrfmiddlewaretoken" '
            f'value="{{~__PLUGIT_CSRF_TOKEN__~}}"></form><p id="method">{request.method}</p>'
            f'<p id="args">{request.values.get("ebuio_orgapk", "")}</p>',
            mimetype="text/html",
        )
    return response(environ, start_response)


@pytest.fixture
def proxy_mode(make_browser):
    with serve(proxy_mode_service) as url:
        browser = make_browser(
            proxy_config(
                url,
                services=[
                    {
                        "name": "pm",
                        "url": url,
                        "mount": "/pm/",
                        "proxy_mode": True,
                        "orga_mode": True,
                    }
                ],
            )
        )
        browser.as_user("adm", mount="/pm/")
        yield browser


def test_proxy_mode_wraps_html_and_sends_identity_headers(proxy_mode):
    response = proxy_mode.get("/pm/some/page")
    assert response.status_code == 200
    html = response.text
    assert 'id="plugit-content"' in html
    assert "<li>X-Plugit-User-Username=Admin</li>" in html
    assert "<li>X-Plugit-Orga-Pk=-1</li>" in html
    assert "<li>X-Plugit-Orga-Name=EBU</li>" in html
    assert "<li>X-Plugit-Base-Url=/pm/</li>" in html
    assert '<p id="args">-1</p>' in html
    assert "{~__PLUGIT_CSRF_TOKEN__~}" not in html


def test_identity_headers_carry_no_control_characters(proxy_mode):
    # A simulated organisation's name comes from the query string: line breaks and NULs in it
    # become spaces in the header, never a broken request or an error page.
    switched = proxy_mode.get("/pm/ebuio_setOrga", params={"pk": "-9", "name": "A\x00B\r\nX: y"})
    assert switched.status_code == 200
    response = proxy_mode.get("/pm/some/page")
    assert response.status_code == 200
    assert "<li>X-Plugit-Orga-Name=A B  X: y</li>" in response.text


def test_proxy_mode_no_template_and_redirect(proxy_mode):
    raw = proxy_mode.get("/pm/no_template")
    assert raw.text.startswith("<p>raw ")
    assert "plugit-content" not in raw.text
    assert "{~__PLUGIT_CSRF_TOKEN__~}" not in raw.text
    redirect = proxy_mode.get("/pm/redirect_me")
    assert redirect.status_code == 302
    assert redirect.headers["Location"] == "/pm/"


def test_proxy_mode_post_with_csrf(proxy_mode):
    page = proxy_mode.get("/pm/form").text
    # The service's form (the layout's own forms carry the site's token under another name).
    token = page.split('name="csrfmiddlewaretoken" value="')[1].split('"')[0]
    assert proxy_mode.csrf("/pm/form") == token
    response = proxy_mode.post("/pm/form", data={"csrfmiddlewaretoken": token, "x": "1"})
    assert response.status_code == 200
    assert '<p id="method">POST</p>' in response.text
    assert proxy_mode.post("/pm/form", data={"x": "1"}).status_code == 403


class Directory:
    """Identifies users from an ``X-Test-User`` header (a stand-in for a login backend)."""

    USERS = {
        "carol": PlugItUser(
            pk=11,
            username="carol",
            is_authenticated=True,
            member_of=frozenset({"svc"}),
            orgas=(Orga(1, "Acme", "acme", is_admin=True), Orga(2, "Globex", "globex")),
        ),
        "dave": PlugItUser(pk=12, username="dave", is_authenticated=True),
    }

    @hookimpl
    def plugit_identify_user(self, request, proxy):
        return self.USERS.get(request.headers.get("X-Test-User", ""))


@pytest.fixture
def orga_site(service_url):
    config = proxy_config(
        service_url,
        dev_mode=False,
        secret_key=STRONG_KEY,
        session_cookie={"secure": False},
        mount_options={"orga_mode": True},
    )
    proxy = ProxyApp(config, plugins=[Directory()], load_entry_points=False)
    with contextlib.ExitStack() as stack:
        stack.callback(proxy.close)
        base = stack.enter_context(serve(proxy))
        yield base


def test_orga_mode_with_real_organisations(orga_site):
    with requests.Session() as carol:
        carol.headers["X-Test-User"] = "carol"
        echo = carol.get(orga_site + "/svc/echo", timeout=10).json()
        assert ["ebuio_orgapk", "1"] in echo["args"]  # the first organisation by default
        assert carol.get(orga_site + "/svc/orga_admin", timeout=10).status_code == 200
        token = (
            carol.get(orga_site + "/svc/", timeout=10)
            .text.split('name="plugit_site_csrf" value="')[1]
            .split('"')[0]
        )
        switched = carol.post(
            orga_site + "/svc/ebuio_setOrga",
            data={"pk": "2", "next": "/svc/echo", "csrfmiddlewaretoken": token},
            allow_redirects=False,
            timeout=10,
        )
        assert switched.status_code == 303
        assert switched.headers["Location"] == "/svc/echo"
        echo = carol.get(orga_site + "/svc/echo", timeout=10).json()
        assert ["ebuio_orgapk", "2"] in echo["args"]
        assert (
            carol.get(orga_site + "/svc/orga_admin", timeout=10).status_code == 403
        )  # member only there
        assert carol.get(orga_site + "/svc/orga_member", timeout=10).status_code == 200
        # an organisation she does not belong to is refused
        refused = carol.post(
            orga_site + "/svc/ebuio_setOrga",
            data={"pk": "3", "csrfmiddlewaretoken": token},
            timeout=10,
        )
        assert refused.status_code == 403


def test_orga_mode_without_organisation_needs_a_public_page(orga_site):
    headers = {"X-Test-User": "dave"}
    assert requests.get(orga_site + "/svc/", headers=headers, timeout=10).status_code == 403
    assert (
        requests.get(orga_site + "/svc/public_page", headers=headers, timeout=10).status_code == 200
    )


def test_dev_endpoints_are_404_outside_dev_mode(orga_site):
    assert requests.get(orga_site + "/svc/ebuio_setUser?mode=adm", timeout=10).status_code == 404


def test_dev_user_switch_redirects_only_to_local_paths(browser):
    local = browser.get("/svc/ebuio_setUser", params={"mode": "mem", "next": "/svc/member"})
    assert local.status_code == 303 and local.headers["Location"] == "/svc/member"
    foreign = browser.get("/svc/ebuio_setUser", params={"mode": "mem", "next": "//evil.example/"})
    assert foreign.status_code == 200 and "Location" not in foreign.headers
    assert browser.get("/svc/ebuio_setUser", params={"mode": "root"}).status_code == 400


def test_dev_orga_switch(make_browser, service_url):
    browser = make_browser(proxy_config(service_url, mount_options={"orga_mode": True}))
    browser.as_user("mem")
    assert ["ebuio_orgapk", "-1"] in browser.get("/svc/echo").json()["args"]
    assert browser.get("/svc/ebuio_setOrga", params={"pk": "-3", "name": "BBC"}).status_code == 200
    assert ["ebuio_orgapk", "-3"] in browser.get("/svc/echo").json()["args"]


def test_proxy_refuses_unsigned_access_to_a_signed_service(service_url):
    """The service only trusts the proxy: a direct call without the signature is refused."""
    direct = requests.get(service_url + "/action/echo?ebuio_u_username=admin", timeout=10)
    assert direct.status_code == 403
    assert direct.json()["error"] == "signature"
    assert SECRET not in direct.text


def test_menu_only_invocation(browser):
    response = browser.get("/svc/ebuio_menu/cached")
    assert response.status_code == 200
    assert response.text == '<a id="menu-link" href="/svc/">Menu of Cached</a>'
    # the full page afterwards is still the full page (not the menu from the same cache entry)
    page = browser.get("/svc/cached")
    assert 'id="plugit-content"' in page.text


def test_client_address_behind_trusted_proxies(make_browser, service_url):
    browser = make_browser(proxy_config(service_url, trusted_proxies=["127.0.0.0/8"]))
    forwarded = {"X-Forwarded-For": "203.0.113.9, 10.0.0.7, 127.0.0.1"}
    data = browser.get("/svc/echo", headers=forwarded).json()
    # the right-most address that is not a trusted proxy
    assert data["headers"]["X-Plugit-Remote-Addr"] == "10.0.0.7"
    assert browser.get("/svc/local_only", headers=forwarded).status_code == 200  # 10.0.0.0/8


def test_forwarded_for_ignored_without_trusted_proxies(browser):
    data = browser.get("/svc/echo", headers={"X-Forwarded-For": "10.0.0.7"}).json()
    assert data["headers"]["X-Plugit-Remote-Addr"] == "127.0.0.1"

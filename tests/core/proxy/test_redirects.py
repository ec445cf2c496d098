"""Redirect targets are read the way browsers read them before the allow-list decides.

The expected values of ``BROWSER`` are what the WHATWG URL Standard (every current browser)
makes of each target on a page of ``http://site.example:8000``.  The decisions are then attacked
with the same tricks, first on the pure functions, then end to end: a service answering
``EbuIo-PlugIt-Redirect`` (with and without ``EbuIo-PlugIt-Redirect-NoPrefix``) behind a real
proxy, and ``ebuio_setOrga?next=``.
"""

# ruff: noqa: RUF001 (full-width letters and digits in hosts are the point of some tests)

from __future__ import annotations

import contextlib

import pytest
import requests
from proxy_helpers import SECRET, proxy_config
from werkzeug.wrappers import Response

from plugit_core.proxy.app import ProxyApp
from plugit_core.proxy.redirects import (
    BrowserURL,
    HostPort,
    browser_url,
    canonical_host,
    clean,
    is_local_path,
    parse_host_port,
    redirect_allowed,
)
from plugit_core.service import PlugItService, action
from plugit_core.testing import serve

ALLOWED = ("trusted.example", "ports.example:8443", "[2001:db8::1]", "xn--bcher-kva.example")


def _url(scheme, host, port=None, userinfo=False):
    return BrowserURL(scheme, HostPort(host, port), userinfo)


LOCAL = BrowserURL("http", None)

# -- how browsers read a target -------------------------------------------------------------------

BROWSER = [
    pytest.param("/x", LOCAL, id="path"),
    pytest.param("x", LOCAL, id="relative-path"),
    pytest.param("?q=1", LOCAL, id="query"),
    pytest.param("", LOCAL, id="empty"),
    pytest.param("\\x", LOCAL, id="backslash-path"),
    pytest.param("//evil.example/", _url("http", "evil.example"), id="protocol-relative"),
    pytest.param("\\\\evil.example", _url("http", "evil.example"), id="two-backslashes"),
    pytest.param("/\\evil.example", _url("http", "evil.example"), id="slash-backslash"),
    pytest.param("\\/evil.example", _url("http", "evil.example"), id="backslash-slash"),
    pytest.param("////\\evil.example", _url("http", "evil.example"), id="many-slashes"),
    pytest.param("/\t/evil.example", _url("http", "evil.example"), id="tab-between-slashes"),
    pytest.param("/\n/evil.example", _url("http", "evil.example"), id="newline-between-slashes"),
    pytest.param("/\r/evil.example", _url("http", "evil.example"), id="cr-between-slashes"),
    pytest.param("\x00 //evil.example", _url("http", "evil.example"), id="leading-nul-space"),
    pytest.param("\x1f//evil.example\x00 ", _url("http", "evil.example"), id="c0-both-ends"),
    pytest.param("/ /evil.example", LOCAL, id="space-between-slashes-is-a-path"),
    pytest.param("/\x0b/evil.example", LOCAL, id="vertical-tab-is-a-path"),
    pytest.param("http:evil.example", LOCAL, id="same-scheme-no-slashes-is-relative"),
    pytest.param("http:/evil.example", LOCAL, id="same-scheme-one-slash-is-relative"),
    pytest.param("http:\\\\evil.example", _url("http", "evil.example"), id="same-scheme-bs"),
    pytest.param("http:/\\evil.example", _url("http", "evil.example"), id="same-scheme-mixed"),
    pytest.param("https:evil.example", _url("https", "evil.example"), id="other-scheme-no-slash"),
    pytest.param("https:/evil.example", _url("https", "evil.example"), id="other-scheme-1-slash"),
    pytest.param("http:///evil.example", _url("http", "evil.example"), id="three-slashes"),
    pytest.param("HtTp://EVIL.example", _url("http", "evil.example"), id="upper-case"),
    pytest.param("h\tt\ntp://evil.example", _url("http", "evil.example"), id="tab-in-scheme"),
    pytest.param("java\tscript:alert(1)", BrowserURL("javascript", None), id="tab-javascript"),
    pytest.param(" JAVASCRIPT:alert(1)", BrowserURL("javascript", None), id="javascript"),
    pytest.param("data:text/html,x", BrowserURL("data", None), id="data"),
    pytest.param(
        "http://evil.example\\@site.example:8000/",
        _url("http", "evil.example"),
        id="backslash-before-userinfo",
    ),
    pytest.param(
        "http://site.example:8000\\@evil.example/",
        _url("http", "site.example", 8000),
        id="backslash-hides-at",
    ),
    pytest.param(
        "http://site.example:8000@evil.example/",
        _url("http", "evil.example", userinfo=True),
        id="userinfo",
    ),
    pytest.param(
        "http://a@b@evil.example/", _url("http", "evil.example", userinfo=True), id="two-ats"
    ),
    pytest.param("http://site.example:80/", _url("http", "site.example"), id="default-port"),
    pytest.param("https://site.example:443/", _url("https", "site.example"), id="default-tls"),
    pytest.param("https://site.example:80/", _url("https", "site.example", 80), id="cross-port"),
    pytest.param("http://site.example:/", _url("http", "site.example"), id="empty-port"),
    pytest.param("http://site.example:08000/", _url("http", "site.example", 8000), id="port-0"),
    pytest.param("http://site.example:99999/", None, id="port-too-large"),
    pytest.param("http://site.example:8000:1/", None, id="two-ports"),
    pytest.param("http://site.example:8x/", None, id="port-letters"),
    pytest.param("http://%73ite.example:8000/", _url("http", "site.example", 8000), id="pct-host"),
    pytest.param("http://site%2eexample/", _url("http", "site.example"), id="pct-dot"),
    pytest.param("http://evil.example%2f.site.example/", None, id="pct-slash-in-host"),
    pytest.param("http://site.example%40evil.example/", None, id="pct-at-in-host"),
    pytest.param("http://site.example%00/", None, id="pct-nul-in-host"),
    pytest.param("http://site.example%zz/", None, id="bad-pct"),
    pytest.param("http://ＳＩＴＥ．example/", _url("http", "site.example"), id="fullwidth"),
    pytest.param("http://site。example/", _url("http", "site.example"), id="ideographic-dot"),
    pytest.param("http://si\u00adte.example/", _url("http", "site.example"), id="soft-hyphen"),
    pytest.param("http://bücher.example/", _url("http", "xn--bcher-kva.example"), id="idna"),
    pytest.param("http://BÜCHER.example/", _url("http", "xn--bcher-kva.example"), id="idna-up"),
    pytest.param("http://a_b.example/", _url("http", "a_b.example"), id="underscore"),
    pytest.param("http://0x7f.1/", _url("http", "127.0.0.1"), id="ipv4-hex"),
    pytest.param("http://0177.0.0.1/", _url("http", "127.0.0.1"), id="ipv4-octal"),
    pytest.param("http://2130706433/", _url("http", "127.0.0.1"), id="ipv4-number"),
    pytest.param("http://127.1/", _url("http", "127.0.0.1"), id="ipv4-short"),
    pytest.param("http://１２７.０.０.１/", _url("http", "127.0.0.1"), id="ipv4-fullwidth"),
    pytest.param("http://127.0.0.1./", _url("http", "127.0.0.1"), id="ipv4-trailing-dot"),
    pytest.param("http://256.1.1.1/", None, id="ipv4-too-large"),
    pytest.param("http://1.2.3.4.5/", None, id="ipv4-five-parts"),
    pytest.param("http://0x7g.example/", _url("http", "0x7g.example"), id="not-a-number"),
    pytest.param("http://0x7g.1/", None, id="ends-in-a-bad-number"),
    pytest.param("http://[::1]:8000/", _url("http", "[::1]", 8000), id="ipv6"),
    pytest.param("http://[0:0:0::1]/", _url("http", "[::1]"), id="ipv6-long"),
    pytest.param("http://[::1/", None, id="ipv6-unclosed"),
    pytest.param("http://[::1]x/", None, id="ipv6-junk"),
    pytest.param("http://[::1%25eth0]/", None, id="ipv6-zone"),
    pytest.param("http://exa mple/", None, id="space-in-host"),
    pytest.param("http://exa<mple/", None, id="forbidden-in-host"),
    pytest.param("http:///", None, id="no-host"),
    pytest.param("http://user@/", None, id="userinfo-no-host"),
]


@pytest.mark.parametrize(("target", "expected"), BROWSER)
def test_browser_reading(target, expected):
    assert browser_url(target, "http") == expected


def test_clean_strips_and_removes_like_a_browser():
    assert clean("\x00\x1f \t/a\tb\nc\rd \x01") == "/abcd"
    assert clean(" /a b ") == "/a b"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("Site.Example", "site.example", id="case"),
        pytest.param("xn--BCHER-kva.example", "xn--bcher-kva.example", id="punycode-case"),
        pytest.param("[::FFFF:127.0.0.1]", "[::ffff:7f00:1]", id="mapped-ipv6"),
        pytest.param("0x7F.0.0.1", "127.0.0.1", id="hex-ipv4"),
        pytest.param("", None, id="empty"),
        pytest.param("a|b", None, id="pipe"),
        pytest.param("a^b", None, id="caret"),
        pytest.param("%25", None, id="percent"),
        pytest.param("℀.example", None, id="maps-to-slash"),
        pytest.param("ex＠mple", None, id="fullwidth-at"),
    ],
)
def test_canonical_host(text, expected):
    assert canonical_host(text) == expected


# -- is_local_path ---------------------------------------------------------------------------------

LOCAL_PATHS = [
    pytest.param("/", True, id="root"),
    pytest.param("/polls/show/1?x=1#top", True, id="path-query-fragment"),
    pytest.param("/café", True, id="unicode"),
    pytest.param("/a:b@c", True, id="colon-and-at-in-path"),
    pytest.param("/http://evil.example", True, id="url-in-path"),
    pytest.param("/%2F%2Fevil.example", True, id="encoded-slashes-stay-a-path"),
    pytest.param("//evil.example", False, id="protocol-relative"),
    pytest.param("///evil.example", False, id="three-slashes"),
    pytest.param("/\\evil.example", False, id="slash-backslash"),
    pytest.param("\\/evil.example", False, id="backslash-slash"),
    pytest.param("\\\\evil.example", False, id="two-backslashes"),
    pytest.param("\\evil", False, id="backslash"),
    pytest.param("/x\\y", False, id="backslash-inside"),
    pytest.param("/\t/evil.example", False, id="tab"),
    pytest.param("/\n/evil.example", False, id="newline"),
    pytest.param("/\r\n/evil.example", False, id="crlf"),
    pytest.param("/\x00/evil.example", False, id="nul"),
    pytest.param("/\x0b/evil.example", False, id="vertical-tab"),
    pytest.param("/\x7f/evil.example", False, id="del"),
    pytest.param("/ /evil.example", False, id="space"),
    pytest.param(" //evil.example", False, id="leading-space"),
    pytest.param("\t//evil.example", False, id="leading-tab"),
    pytest.param("\x00/x", False, id="leading-nul"),
    pytest.param("/x ", False, id="trailing-space"),
    pytest.param("x", False, id="relative"),
    pytest.param("", False, id="empty"),
    pytest.param("?next=/", False, id="query-only"),
    pytest.param("http://site.example/", False, id="absolute"),
    pytest.param("http:/x", False, id="scheme-and-path"),
    pytest.param("javascript:alert(1)", False, id="javascript"),
    pytest.param("data:text/html,<script>", False, id="data"),
]


@pytest.mark.parametrize(("target", "local"), LOCAL_PATHS)
def test_is_local_path(target, local):
    assert is_local_path(target) is local


# -- redirect_allowed ------------------------------------------------------------------------------

# On a page of http://site.example:8000 with ALLOWED as allowed_redirect_hosts.
ABSOLUTE = [
    pytest.param("http://site.example:8000/x", True, id="own"),
    pytest.param("https://site.example:8000/x", True, id="own-other-scheme"),
    pytest.param("HTTP://SITE.EXAMPLE:8000/x", True, id="own-upper-case"),
    pytest.param("http://%73ite.example:8000/", True, id="own-pct-encoded"),
    pytest.param("http://site.example:08000/", True, id="own-leading-zero-port"),
    pytest.param("http://site.example/x", False, id="own-host-other-port"),
    pytest.param("http://site.example:8001/x", False, id="own-host-port-plus-one"),
    pytest.param("http://site.example:80/x", False, id="own-host-default-port"),
    pytest.param("https://trusted.example/a", True, id="allowed"),
    pytest.param("http://trusted.example:80/a", True, id="allowed-default-port"),
    pytest.param("https://trusted.example:443/a", True, id="allowed-default-tls-port"),
    pytest.param("https://TRUSTED.example./a", False, id="allowed-trailing-dot"),
    pytest.param("https://trusted.example:8443/a", False, id="allowed-other-port"),
    pytest.param("http://trusted.example:443/a", False, id="allowed-443-on-http"),
    pytest.param("https://ports.example:8443/", True, id="allowed-with-port"),
    pytest.param("https://ports.example/", False, id="allowed-with-port-default"),
    pytest.param("http://[2001:db8:0::1]/", True, id="allowed-ipv6"),
    pytest.param("http://[2001:db8::2]/", False, id="other-ipv6"),
    pytest.param("https://bücher.example/", True, id="allowed-idna"),
    pytest.param("https://BÜCHER.example/", True, id="allowed-idna-upper"),
    pytest.param("https://trusted.example.evil.example/", False, id="suffix"),
    pytest.param("https://eviltrusted.example/", False, id="prefix"),
    pytest.param("https://evil.example/", False, id="foreign"),
    pytest.param("http://evil.example\\@site.example:8000/", False, id="backslash-userinfo"),
    pytest.param("http://site.example:8000\\@evil.example/", False, id="backslash-hides-at"),
    pytest.param("http://evil.example\\.site.example:8000/", False, id="backslash-dot"),
    pytest.param("http://site.example:8000@evil.example/", False, id="userinfo-to-evil"),
    pytest.param("http://evil.example@site.example:8000/", False, id="userinfo-to-own"),
    pytest.param("http://user:pass@trusted.example/", False, id="credentials-to-allowed"),
    pytest.param("http://@trusted.example/", False, id="empty-userinfo"),
    pytest.param("http://trusted.example%2f@evil.example/", False, id="pct-slash-userinfo"),
    pytest.param("http://trusted.example%40evil.example/", False, id="pct-at"),
    pytest.param("http://evil.example%23@trusted.example/", False, id="pct-hash-userinfo"),
    pytest.param("http://evil.example#@trusted.example/", False, id="fragment-at"),
    pytest.param("http://evil.example?@trusted.example/", False, id="query-at"),
    pytest.param("http://evil.example/@trusted.example/", False, id="path-at"),
    pytest.param("http:\\\\evil.example/", False, id="same-scheme-backslashes"),
    pytest.param("https:evil.example/", False, id="other-scheme-no-slashes"),
    pytest.param("https:/\\evil.example/", False, id="other-scheme-mixed"),
    pytest.param("http:///evil.example/", False, id="three-slashes"),
    pytest.param("http:///site.example:8000/", True, id="three-slashes-own"),
    pytest.param("http:site.example:8000/", False, id="no-slashes"),
    pytest.param("//site.example:8000/", False, id="protocol-relative-own"),
    pytest.param("//evil.example/", False, id="protocol-relative"),
    pytest.param(" http://evil.example/", False, id="leading-space"),
    pytest.param("\x00http://site.example:8000/", False, id="leading-nul"),
    pytest.param("http://site.example:8000/\t", False, id="trailing-tab"),
    pytest.param("ht\ttp://site.example:8000/", False, id="tab-in-scheme"),
    pytest.param("http://evil\t.example/", False, id="tab-in-host"),
    pytest.param("http://site.example:8000\n/", False, id="newline"),
    pytest.param("http://0x7f.1/", False, id="ipv4-hex-not-own"),
    pytest.param("http://site.example:99999/", False, id="port-too-large"),
    pytest.param("http://site.example:8000:8000/", False, id="two-ports"),
    pytest.param("http://[::1/", False, id="ipv6-unclosed"),
    pytest.param("http://evil.example%2f.trusted.example/", False, id="pct-slash-host"),
    pytest.param("http://ＥＶＩＬ．example/", False, id="fullwidth-foreign"),
    pytest.param("http://ｔｒｕｓｔｅｄ．example/", True, id="fullwidth-allowed"),
    pytest.param("javascript://site.example:8000/%0aalert(1)", False, id="javascript-authority"),
    pytest.param("javascript:alert(1)", False, id="javascript"),
    pytest.param("JaVaScRiPt:alert(1)", False, id="javascript-case"),
    pytest.param("data:text/html;base64,PHNjcmlwdD4=", False, id="data"),
    pytest.param("ftp://trusted.example/", False, id="ftp"),
    pytest.param("ws://site.example:8000/", False, id="websocket"),
    pytest.param("file:///etc/passwd", False, id="file"),
    pytest.param("/x", False, id="path-is-not-absolute"),
]


@pytest.mark.parametrize(("target", "allowed"), ABSOLUTE)
def test_redirect_allowed(target, allowed):
    assert (
        redirect_allowed(
            target,
            request_scheme="http",
            request_host="site.example:8000",
            allowed_hosts=ALLOWED,
        )
        is allowed
    )


@pytest.mark.parametrize(
    ("scheme", "host", "target", "allowed"),
    [
        pytest.param("http", "site.example", "http://site.example/", True, id="no-port"),
        pytest.param("http", "site.example", "https://site.example/", True, id="no-port-tls"),
        pytest.param("http", "site.example:80", "http://site.example/", True, id="explicit-80"),
        pytest.param("https", "site.example:443", "https://site.example/", True, id="443"),
        pytest.param("https", "site.example", "http://site.example:443/", False, id="443-http"),
        pytest.param("http", "site.example", "http://site.example:8000/", False, id="other"),
        pytest.param("http", "[::1]:8000", "http://[0::1]:8000/", True, id="ipv6"),
        pytest.param("http", "[::1]:8000", "http://[::2]:8000/", False, id="ipv6-other"),
        pytest.param("http", "SITE.example", "http://site.example/", True, id="case"),
        pytest.param("http", "", "http://site.example/", False, id="no-host-header"),
        pytest.param("http", "a b", "http://a b/", False, id="bad-host-header"),
    ],
)
def test_redirect_allowed_to_the_requests_own_host(scheme, host, target, allowed):
    assert redirect_allowed(target, request_scheme=scheme, request_host=host) is allowed


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        pytest.param("Docs.Example.com", HostPort("docs.example.com", None), id="host"),
        pytest.param("docs.example.com:443", HostPort("docs.example.com", None), id="443"),
        pytest.param("docs.example.com:80", HostPort("docs.example.com", None), id="80"),
        pytest.param("docs.example.com:8443", HostPort("docs.example.com", 8443), id="port"),
        pytest.param("[::1]:8080", HostPort("[::1]", 8080), id="ipv6"),
        pytest.param("docs.example.com:x", None, id="bad-port"),
        pytest.param("https://docs.example.com", None, id="url"),
    ],
)
def test_allow_list_entries(entry, expected):
    assert parse_host_port(entry, (80, 443)) == expected


def test_a_malformed_allow_list_entry_allows_nothing():
    for entry in ("https://evil.example", "evil.example/x", "a b", "*"):
        assert not redirect_allowed(
            "https://evil.example/x",
            request_scheme="http",
            request_host="site.example",
            allowed_hosts=(entry,),
        )


# -- end to end: a service's redirect through a real proxy ----------------------------------------


@action("/go")
def go(request):
    """Answers the redirect headers the test asks for, as a hostile service would."""
    response = Response(b"", mimetype="application/json")
    response.headers["EbuIo-PlugIt-Redirect"] = request.args["to"]
    if "np" in request.args:
        response.headers["EbuIo-PlugIt-Redirect-NoPrefix"] = request.args["np"]
    return response


@pytest.fixture(scope="module")
def site():
    """A proxy (with ``ALLOWED`` as allowed_redirect_hosts) in front of the ``go`` service;
    yields a ``get(path, **params)`` that does not follow redirects."""
    with contextlib.ExitStack() as stack:
        service_url = stack.enter_context(serve(PlugItService([go], secret=SECRET)))
        proxy = ProxyApp(
            proxy_config(service_url, allowed_redirect_hosts=list(ALLOWED)),
            load_entry_points=False,
        )
        stack.callback(proxy.close)
        base = stack.enter_context(serve(proxy))
        session = stack.enter_context(requests.Session())
        # The site's name, as a front server would pass it on: the tables' own host.
        session.headers["Host"] = "site.example:8000"

        def get(path, **params):
            return session.get(base + path, params=params, allow_redirects=False, timeout=10)

        yield get


def _expect_redirect(response, location):
    assert response.status_code == 302, response.text[:300]
    assert response.headers["Location"] == location


def _expect_refused(response):
    assert response.status_code == 502, response.text[:300]
    assert "Location" not in response.headers


def _sendable(target):
    """Whether the test service can put ``target`` in a header: werkzeug refuses CR and LF, HTTP
    headers are Latin-1."""
    try:
        target.encode("latin-1")
    except UnicodeEncodeError:
        return False
    return bool(target) and not any(c in target for c in "\r\n")


# Every target of both tables the service can send, as its NoPrefix redirect.
_THROUGH_PROXY = [
    p
    for p in [*LOCAL_PATHS, *ABSOLUTE]
    if _sendable(p.values[0]) and p.id != "path-is-not-absolute"
]


@pytest.mark.parametrize(("target", "allowed"), _THROUGH_PROXY)
def test_no_prefix_redirect_through_the_proxy(site, target, allowed):
    response = site("/svc/go", to=target, np="True")
    if allowed:
        location = response.headers.get("Location", "")
        assert response.status_code == 302, response.text[:300]
        # werkzeug sends the Location as a URI (IRIs encoded, host and port normalised): the
        # browser's destination is the one that was checked
        assert browser_url(location, "http") == browser_url(target, "http")
        if target.startswith("/") and target.isascii():
            assert location == target
    else:
        _expect_refused(response)


@pytest.mark.parametrize(
    "target",
    [
        pytest.param("http://evil.example\\@site.example:8000/", id="backslash-userinfo"),
        pytest.param("http://site.example:8000\\@evil.example/", id="backslash-hides-at"),
        pytest.param("http://site.example:1/", id="own-host-other-port"),
        pytest.param("http://evil.example@site.example:8000/", id="userinfo"),
        pytest.param("http:\\\\evil.example/", id="same-scheme-backslashes"),
        pytest.param("/\t/evil.example/", id="tab"),
        pytest.param("\t//evil.example/", id="leading-tab"),
        pytest.param(" //evil.example/", id="leading-space"),
        pytest.param("/\x00/evil.example/", id="nul"),
        pytest.param("java\tscript:alert(1)", id="tab-javascript"),
    ],
)
def test_no_prefix_redirect_tricks_are_refused(site, target):
    _expect_refused(site("/svc/go", to=target, np="True"))


def test_a_host_werkzeug_would_send_elsewhere_is_refused():
    """``ß`` stays in the host for browsers (xn--strae-oqa) but werkzeug's IDNA 2003 sends
    ``strasse``: another domain than the one allowed."""
    target = "https://straße.example/"
    assert browser_url(target).authority == HostPort("xn--strae-oqa.example", None)
    assert not redirect_allowed(
        target,
        request_scheme="https",
        request_host="site.example",
        allowed_hosts=("xn--strae-oqa.example",),
    )
    assert redirect_allowed(
        "https://xn--strae-oqa.example/",
        request_scheme="https",
        request_host="site.example",
        allowed_hosts=("xn--strae-oqa.example",),
    )


@pytest.mark.parametrize(
    "flag",
    [
        pytest.param("true", id="lower-case"),
        pytest.param("1", id="one"),
        pytest.param("False", id="false"),
    ],
)
def test_only_no_prefix_true_drops_the_prefix(site, flag):
    response = site("/svc/go", to="//evil.example/x", np=flag)
    _expect_redirect(response, "/svc/evil.example/x")


@pytest.mark.parametrize(
    "target",
    [
        pytest.param("//evil.example/x", id="protocol-relative"),
        pytest.param("\\\\evil.example/x", id="backslashes"),
        pytest.param("/\\evil.example/x", id="slash-backslash"),
        pytest.param("https://evil.example/x", id="absolute"),
        pytest.param("\t//evil.example/x", id="leading-tab"),
        pytest.param("javascript:alert(1)", id="javascript"),
        pytest.param("show/1?x=1", id="plain"),
    ],
)
def test_prefixed_redirect_stays_below_the_mount(site, target):
    """Without NoPrefix the target is a path below the mount, whatever it looks like."""
    response = site("/svc/go", to=target)
    assert response.status_code == 302
    location = response.headers["Location"]
    assert location.startswith("/svc/")
    assert browser_url(location, "http") == BrowserURL("http", None)


@pytest.mark.parametrize(("target", "local"), [p for p in LOCAL_PATHS if p.values[0]])
def test_set_orga_next_is_followed_only_to_a_local_path(site, target, local):
    response = site("/svc/ebuio_setOrga", pk="1", next=target)
    if local:
        assert response.status_code == 303
        assert browser_url(response.headers["Location"], "http") == BrowserURL("http", None)
        if target.isascii():
            assert response.headers["Location"] == target
    else:
        assert response.status_code == 200
        assert "Location" not in response.headers


# -- the login pages' `next` -----------------------------------------------------------------------


@pytest.mark.parametrize(("target", "local"), LOCAL_PATHS)
def test_login_next_is_a_local_path_or_home(target, local):
    from plugit_backends.auth_oidc import _safe_next as oidc_next
    from plugit_backends.login import _safe_next as login_next

    assert login_next(target) == (target if local else "/")
    assert login_next(target, "/portal") == (target if local else "/portal/")
    assert oidc_next(target) == (target if local else "/")

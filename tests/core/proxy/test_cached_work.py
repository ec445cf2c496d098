"""Work the proxy does once instead of per page (benchmarks/README.md) keeps every defence: a
text cleaned recently is not cleaned again, and what the cache gives back is exactly what
cleaning gives; cookies are read as werkzeug reads them; every response keeps its headers."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator

import pytest
from proxy_helpers import Browser, ScriptedService
from werkzeug.test import EnvironBuilder
from werkzeug.wrappers import Request

from plugit_core.proxy import containment
from plugit_core.proxy.app import ProxyApp, ProxyRequest
from plugit_core.proxy.containment import sanitize_html
from plugit_core.testing import serve

HOSTILE = (
    '<p id="intro" onclick="steal()">Hello<script>steal()</script></p>'
    '<a id="js" href="javascript:steal()">js</a>'
    '<a id="away" href="//evil.example/">away</a>'
    '<img id="pixel" src="https://evil.example/p.gif">'
)


@pytest.fixture
def two_trusts() -> Iterator[Browser]:
    """One scripted service mounted twice: ``/full/`` trusted, ``/boxed/`` sandboxed."""
    service = ScriptedService()
    service.page("", HOSTILE)  # not cacheable: rendered (and cleaned) for every request
    with contextlib.ExitStack() as stack:
        url = stack.enter_context(serve(service))
        proxy = ProxyApp(
            {
                "dev_mode": True,
                "services": [
                    {"name": "full", "url": url, "mount": "/full/", "trust": "full"},
                    {"name": "boxed", "url": url, "mount": "/boxed/"},
                ],
            },
            load_entry_points=False,
        )
        stack.callback(proxy.close)
        browser = Browser(stack.enter_context(serve(proxy)), proxy)
        stack.callback(browser.close)
        yield browser


def test_a_page_rendered_again_is_cleaned_again_whatever_was_served_before(two_trusts) -> None:
    # The same HTML goes out as written under the trusted mount first, then several times
    # under the sandboxed one: every sandboxed copy is cleaned, none is the trusted one.
    full = two_trusts.get("/full/")
    assert "<script>steal()</script>" in full.text
    for _ in range(3):
        boxed = two_trusts.get("/boxed/")
        assert boxed.status_code == 200
        assert "steal()" not in boxed.text
        assert 'href="javascript' not in boxed.text and "//evil.example" not in boxed.text
        assert re.search(r'<p id="intro">Hello</p>', boxed.text)
    assert "<script>steal()</script>" in two_trusts.get("/full/").text


@pytest.mark.parametrize(
    ("safe", "hostile"),
    [
        ('<a href="/x">x</a>', '<a href="//x">x</a>'),
        ('<a href="/x">x</a>', '<a href="/x" onclick="steal()">x</a>'),
        ("<p>x</p>", "<p>x</p><script>steal()</script>"),
        ('<img src="/p.gif">', '<img src="/p.gif" onerror="steal()">'),
    ],
)
def test_a_text_near_a_cleaned_one_is_cleaned_on_its_own(safe: str, hostile: str) -> None:
    # A service cannot get a hostile text through by making it look like one already cleaned.
    assert sanitize_html(safe) == sanitize_html(safe)
    cleaned = sanitize_html(hostile)
    assert "steal()" not in cleaned and "//x" not in cleaned
    assert cleaned == containment._CLEANER.clean(hostile)


def test_a_text_over_the_cache_limit_is_cleaned_every_time() -> None:
    big = "<p>" + "x" * containment._CLEANED_MAX_INPUT + "</p><script>steal()</script>"
    assert "steal()" not in sanitize_html(big)
    assert big not in containment._cleaned
    assert sanitize_html("") == ""


def test_the_cache_of_cleaned_texts_stays_bounded() -> None:
    # A service rendering a new page each time only turns the cache over.
    for i in range(400):
        sanitize_html(f"<p>{i}</p>" + "y" * 16_000)
    assert containment._cleaned.currsize <= containment._cleaned.maxsize


@pytest.mark.parametrize(
    "header",
    [
        "plugit_session=abc; csrftoken=t1",
        'a="quoted; value"; b=2; a=3',
        "  spaced = v ;;; =novalue; noequals",
        "",
    ],
)
def test_cookies_are_read_as_werkzeug_reads_them(header: str) -> None:
    environ = EnvironBuilder(path="/", headers={"Cookie": header} if header else {}).get_environ()
    ours = ProxyRequest(environ).cookies
    theirs = Request(environ).cookies
    assert list(ours.items(multi=True)) == list(theirs.items(multi=True))

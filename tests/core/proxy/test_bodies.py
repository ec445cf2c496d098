"""Request bodies through the page pipeline: over the limit is a 413 page whatever the framing,
and a body within it reaches the service whole, never cut.

A browser (or a hostile client) sends each kind of body, with a declared length and chunked, to
a real proxy over HTTP; a second service records what it received.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from proxy_helpers import SECRET, Browser, proxy_config
from urllib3 import encode_multipart_formdata

from plugit_core.proxy.app import ProxyApp
from plugit_core.service import PlugItService, action, json_only
from plugit_core.testing import serve

LIMIT = 64 * 1024
received: list[dict[str, int | str]] = []
_lock = threading.Lock()


@action("/upload", methods=["POST", "PUT", "PATCH", "DELETE"])
@json_only()
def upload(request):
    got: dict[str, int | str] = {"method": request.method}
    for name, value in request.form.items():
        if not name.startswith("ebuio_"):
            got[f"form:{name}"] = len(value)
    for name, storage in request.files.items():
        got[f"file:{name}"] = len(storage.read())
    if not request.form and not request.files:
        got["body"] = len(request.get_data())
    with _lock:
        received.append(got)
    return got


@action("/", template="page.html")
def page(request):
    return {"title": "Uploads"}


@pytest.fixture(scope="module")
def upload_url() -> Iterator[str]:
    service = PlugItService([upload, page], secret=SECRET, root=str(Path(__file__).parent))
    with serve(service) as url:
        yield url


def _site(upload_url: str, wrap=None, **top) -> Iterator[Browser]:
    """A proxy mounting the upload service at /up/, served over HTTP (through ``wrap``, a WSGI
    wrapper, when given), and a logged-in browser sending the mount's CSRF token."""
    services = [{"name": "up", "url": upload_url, "mount": "/up/", "secret": SECRET}]
    proxy = ProxyApp(proxy_config(upload_url, services=services, **top), load_entry_points=False)
    try:
        with serve(wrap(proxy) if wrap else proxy) as base, Browser(base, proxy) as browser:
            browser.as_user("log", mount="/up/")
            html = browser.get("/up/").text
            marker = 'name="csrfmiddlewaretoken" value="'
            start = html.index(marker) + len(marker)
            browser.headers["X-CSRFToken"] = html[start : html.index('"', start)]
            received.clear()
            yield browser
    finally:
        proxy.close()


@pytest.fixture
def site(upload_url) -> Iterator[Browser]:
    yield from _site(upload_url, max_upload_size=LIMIT)


def _chunked(body: bytes) -> Iterator[bytes]:
    """The body as a generator: requests sends it with Transfer-Encoding: chunked, no length."""
    for start in range(0, len(body), 16 * 1024):
        yield body[start : start + 16 * 1024]


FORM_TYPE = "application/x-www-form-urlencoded"


def _urlencoded(size: int) -> tuple[bytes, str, str, int]:
    """``(body, content type, what the service reports, the size it should report)``."""
    return b"a=" + b"x" * (size - 2), FORM_TYPE, "form:a", size - 2


def _multipart(size: int) -> tuple[bytes, str, str, int]:
    envelope, content_type = encode_multipart_formdata(
        {"doc": ("doc.txt", b"", "text/plain")}, boundary="b0undary"
    )
    content = b"y" * (size - len(envelope))
    body, _ = encode_multipart_formdata(
        {"doc": ("doc.txt", content, "text/plain")}, boundary="b0undary"
    )
    assert len(body) == size
    return body, content_type, "file:doc", len(content)


def _raw(size: int) -> tuple[bytes, str, str, int]:
    return b"z" * size, "application/octet-stream", "body", size


KINDS = {
    "POST-urlencoded": ("POST", _urlencoded),
    "POST-multipart": ("POST", _multipart),
    "POST-raw": ("POST", _raw),
    "PUT-raw": ("PUT", _raw),
    "PATCH-raw": ("PATCH", _raw),
    "DELETE-raw": ("DELETE", _raw),
    "PUT-urlencoded": ("PUT", _urlencoded),
}
FRAMINGS = ("content-length", "chunked")


def _send(browser: Browser, method: str, body: bytes, content_type: str, framing: str):
    data = body if framing == "content-length" else _chunked(body)
    return browser.request(method, "/up/upload", data=data, headers={"Content-Type": content_type})


@pytest.mark.parametrize("framing", FRAMINGS)
@pytest.mark.parametrize("kind", KINDS)
def test_a_body_at_the_limit_arrives_whole(site, kind, framing):
    method, make = KINDS[kind]
    body, content_type, field, size = make(LIMIT)
    response = _send(site, method, body, content_type, framing)
    assert response.status_code == 200, response.text
    got = response.json()
    assert got["method"] == method and got[field] == size
    assert received == [got]


@pytest.mark.parametrize("framing", FRAMINGS)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("over", [1, 3 * LIMIT])
def test_a_body_over_the_limit_is_a_413_page_and_never_forwarded(site, kind, framing, over):
    method, make = KINDS[kind]
    body, content_type, _, _ = make(LIMIT + over)
    response = _send(site, method, body, content_type, framing)
    assert response.status_code == 413, response.text
    assert response.headers["Content-Type"].startswith("text/html")
    assert "Too large" in response.text
    assert received == []  # nothing reached the service, cut or not


def test_the_reported_upload_a_chunked_20_mib_body_over_the_default_limit(upload_url):
    for browser in _site(upload_url):  # the default max_upload_size: 16 MiB
        body, content_type, _, _ = _urlencoded(20 * 1024 * 1024)
        response = _send(browser, "POST", body, content_type, "chunked")
        assert response.status_code == 413
        assert received == []
        small, content_type, _, _ = _urlencoded(1024 * 1024)
        assert _send(browser, "POST", small, content_type, "chunked").json()["form:a"] == (
            1024 * 1024 - 2
        )


def test_the_site_limit_holds_for_the_callback_api_too(site):
    """The API has its own limit (1 MiB), within the site's: a chunked API body over the site's
    smaller ``max_upload_size`` is refused, as JSON, before any endpoint reads it."""
    response = site.post(
        "/up/ebuio_api/mail/",
        data=_chunked(b"subject=" + b"s" * (2 * LIMIT)),
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert response.status_code == 413
    assert response.json()["error"] == "too_large"


def test_a_body_the_server_cannot_decode_is_refused_not_forwarded_empty(upload_url):
    """Under a WSGI server that does not decode chunked bodies (no ``wsgi.input_terminated``)
    werkzeug would read the body as empty: the proxy answers 411 instead of forwarding that."""

    def undecoding(app):
        def server(environ, start_response):
            if environ.pop("wsgi.input_terminated", None):
                environ["wsgi.input"] = environ["wsgi.input"]._rfile  # the raw chunked bytes
            return app(environ, start_response)

        return server

    for browser in _site(upload_url, wrap=undecoding):
        for method, make in (("PUT", _raw), ("POST", _urlencoded)):
            body, content_type, _, _ = make(1000)
            response = _send(browser, method, body, content_type, "chunked")
            assert response.status_code == 411, response.text
            assert "send it with its length" in response.text
        body, content_type, field, size = _raw(1000)
        sized = _send(browser, "PUT", body, content_type, "content-length")
        assert sized.json()[field] == size
        assert received == [sized.json()]


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        pytest.param(FORM_TYPE, b"a=\xff\xfe&b=1", id="urlencoded-not-utf8"),
        pytest.param("multipart/form-data", b"--x\r\na\r\n--x--\r\n", id="multipart-no-boundary"),
        pytest.param(
            "multipart/form-data; boundary=zz",
            b'--zz\r\nContent-Disposition: form-data; name="a"; filename="p"\r\n\r\ncut',
            id="multipart-cut-short",
        ),
    ],
)
@pytest.mark.parametrize("framing", FRAMINGS)
def test_a_form_that_cannot_be_read_is_refused_not_forwarded_empty(
    site, content_type, body, framing
):
    """werkzeug reads these as empty forms; the service would get a request with no fields."""
    response = _send(site, "POST", body, content_type, framing)
    assert response.status_code == 400, response.text
    assert "The form sent could not be read." in response.text
    assert received == []
    empty = _send(site, "POST", b"", "multipart/form-data", "content-length")
    assert empty.status_code == 200 and received == [{"method": "POST", "body": 0}]

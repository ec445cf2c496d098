"""Who may call a service: network allow-lists (IPv4, IPv6, trusted proxies) and request
signatures (weaknesses W1, W9 and W10 fixed), over real HTTP."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import pytest
import requests

from plugit_core.service import PlugItService, ServiceRequest, action
from plugit_core.signing import NONCE_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER, sign_request
from plugit_core.testing import serve

SECRET = "service-security-secret-0123456789"


@action("/", template="home.html", methods=["GET", "POST"])
def home(request: ServiceRequest) -> dict[str, Any]:
    return {
        "user": request.user_info,
        "remote": request.headers.get("X-Plugit-Remote-Addr"),
        "files": sorted(request.files),
        "body": request.form.to_dict(),
    }


@action("/show/<name>")
def show(request: ServiceRequest, name: str) -> dict[str, Any]:
    return {"name": name}


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("security")
    (root / "templates").mkdir()
    (root / "templates" / "home.html").write_text("home_template\n")
    (root / "media").mkdir()
    (root / "media" / "logo.txt").write_text("logo")
    return root


def ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


ENDPOINTS = [
    pytest.param("GET", "/ping", id="ping"),
    pytest.param("GET", "/version", id="version"),
    pytest.param("POST", "/mail", id="mail"),
    pytest.param("GET", "/meta/", id="meta"),
    pytest.param("GET", "/template/", id="template"),
    pytest.param("GET", "/action/", id="action"),
    pytest.param("GET", "/media/logo.txt", id="media"),
]


# -- network allow-list ----------------------------------------------------------------------------


@pytest.mark.parametrize(("method", "path"), ENDPOINTS)
def test_every_endpoint_refuses_callers_outside_the_allow_list(
    root: Path, served: Callable[..., str], http: requests.Session, method: str, path: str
) -> None:
    allowed = served(PlugItService([home], root=root))
    refused = served(PlugItService([home], root=root, allowed_networks=["10.0.0.0/8"]))
    assert http.request(method, allowed + path, data={"response_id": "1"}).status_code == 200
    response = http.request(method, refused + path, data={"response_id": "1"})
    assert response.status_code == 404  # looks non-existent, as in the original
    assert response.json()["error"] == "not_found"


@pytest.mark.skipif(not ipv6_loopback(), reason="no IPv6 loopback on this machine")
@pytest.mark.parametrize(
    ("host", "allowed", "status"),
    [
        pytest.param("::1", None, 200, id="ipv6-default-allow-list"),
        pytest.param("::1", ["::1/128"], 200, id="ipv6-host"),
        pytest.param("::1", ["::/0"], 200, id="ipv6-everything"),
        pytest.param("::1", ["127.0.0.0/8"], 404, id="ipv6-refused-by-ipv4-list"),
        pytest.param("::1", ["2001:db8::/32"], 404, id="ipv6-other-network"),
        pytest.param("127.0.0.1", ["::1/128"], 404, id="ipv4-refused-by-ipv6-list"),
    ],
)
def test_ipv6(
    root: Path,
    served: Callable[..., str],
    http: requests.Session,
    host: str,
    allowed: list[str] | None,
    status: int,
) -> None:
    settings = {} if allowed is None else {"allowed_networks": allowed}
    url = served(PlugItService([home], root=root, **settings), host=host)
    assert http.get(f"{url}/ping", params={"data": "v6"}).status_code == status


@pytest.mark.parametrize(
    ("settings", "forwarded", "status"),
    [
        pytest.param({}, "10.1.2.3", 404, id="header-ignored-without-use_proxy_ip"),
        pytest.param({"use_proxy_ip": True}, "10.1.2.3", 200, id="trusted-proxy-forwards"),
        pytest.param(
            {"use_proxy_ip": True}, "192.0.2.1, 10.1.2.3", 200, id="right-most-entry-counts"
        ),
        pytest.param(
            {"use_proxy_ip": True}, "10.1.2.3, 192.0.2.1", 404, id="spoofed-left-entry-ignored"
        ),
        pytest.param({"use_proxy_ip": True}, None, 404, id="no-header-uses-peer"),
        pytest.param({"use_proxy_ip": True}, "not-an-address", 404, id="garbage-header"),
        pytest.param({"use_proxy_ip": True}, "2001:db8::5", 200, id="forwarded-ipv6"),
        pytest.param(
            {"use_proxy_ip": True, "trusted_proxies": ["192.0.2.0/24"]},
            "10.1.2.3",
            404,
            id="untrusted-peer-cannot-forward",
        ),
    ],
)
def test_use_proxy_ip(
    root: Path,
    served: Callable[..., str],
    http: requests.Session,
    settings: dict[str, Any],
    forwarded: str | None,
    status: int,
) -> None:
    allowed = ["10.1.0.0/16", "2001:db8::/32"]
    url = served(PlugItService([home], root=root, allowed_networks=allowed, **settings))
    headers = {} if forwarded is None else {"X-Forwarded-For": forwarded}
    assert http.get(f"{url}/ping", headers=headers).status_code == status


# -- signatures ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def signed_url(root: Path) -> Iterator[str]:
    service = PlugItService([home, show], root=root, secret=SECRET, base_url="/svc/")
    with serve(service) as url:
        yield url + "/svc"


def prepare(
    method: str,
    url: str,
    *,
    secret: str | None = SECRET,
    now: float | None = None,
    **kwargs: Any,
) -> requests.PreparedRequest:
    """A request signed the way the proxy signs it (over the prepared, final bytes)."""
    prepared = requests.Request(method, url, **kwargs).prepare()
    if secret is not None:
        split = urlsplit(prepared.url)
        body = prepared.body.encode() if isinstance(prepared.body, str) else prepared.body
        prepared.headers.update(
            sign_request(
                secret,
                method=method,
                path=unquote(split.path),
                query=split.query,
                body=body,
                headers=prepared.headers,
                now=now,
            )
        )
    return prepared


def set_header(name: str, value: str) -> Callable[[requests.PreparedRequest], None]:
    def tamper(prepared: requests.PreparedRequest) -> None:
        prepared.headers[name] = value

    return tamper


def replace_in(attribute: str, old: str, new: str) -> Callable[[requests.PreparedRequest], None]:
    def tamper(prepared: requests.PreparedRequest) -> None:
        value = getattr(prepared, attribute)
        if isinstance(value, bytes):
            setattr(prepared, attribute, value.replace(old.encode(), new.encode()))
        else:
            setattr(prepared, attribute, value.replace(old, new))

    return tamper


FORM = {"ebuio_u_username": "alice", "vote": "1"}
PLUGIT_HEADERS = {"X-Plugit-Remote-Addr": "192.0.2.10"}


@pytest.mark.parametrize(
    ("sign", "tamper", "code"),
    [
        pytest.param({"secret": None}, None, "missing", id="missing"),
        pytest.param({}, set_header(SIGNATURE_HEADER, "v1=xyz"), "malformed", id="bad-signature"),
        pytest.param({}, set_header(SIGNATURE_HEADER, "sha1=abc"), "malformed", id="bad-scheme"),
        pytest.param({}, set_header(TIMESTAMP_HEADER, "1²"), "malformed", id="bad-timestamp"),
        pytest.param({}, set_header(NONCE_HEADER, "n" * 200), "malformed", id="bad-nonce"),
        pytest.param({"now": time.time() - 3600}, None, "stale", id="stale"),
        pytest.param({"now": time.time() + 3600}, None, "stale", id="from-the-future"),
        pytest.param({"secret": "another-secret-0123456789"}, None, "mismatch", id="wrong-secret"),
        pytest.param({}, replace_in("body", "alice", "admin"), "mismatch", id="tampered-body"),
        pytest.param({}, replace_in("url", "page=1", "page=2"), "mismatch", id="tampered-query"),
        pytest.param({}, replace_in("url", "/action/", "/mail"), "mismatch", id="tampered-path"),
        pytest.param(
            {}, set_header("X-Plugit-Remote-Addr", "10.0.0.1"), "mismatch", id="tampered-header"
        ),
        pytest.param(
            {}, set_header("X-Plugit-User-Username", "admin"), "mismatch", id="added-header"
        ),
        pytest.param(
            {}, set_header("X-Plugitsession-Role", "admin"), "mismatch", id="added-session"
        ),
    ],
)
def test_bad_signatures_are_refused(
    signed_url: str,
    http: requests.Session,
    sign: dict[str, Any],
    tamper: Callable[[requests.PreparedRequest], None] | None,
    code: str,
) -> None:
    prepared = prepare(
        "POST",
        f"{signed_url}/action/",
        params={"page": "1"},
        data=FORM,
        headers=PLUGIT_HEADERS,
        **sign,
    )
    if tamper is not None:
        tamper(prepared)
    response = http.send(prepared)
    assert response.status_code == 403
    assert response.headers["Content-Type"] == "application/json"
    assert response.json() == {
        "error": "signature",
        "code": code,
        "status": 403,
        "message": response.json()["message"],
    }
    assert SECRET not in response.text


def test_replayed_request_is_refused(signed_url: str, http: requests.Session) -> None:
    prepared = prepare("POST", f"{signed_url}/action/", data=FORM, headers=PLUGIT_HEADERS)
    assert http.send(prepared).status_code == 200
    again = http.send(prepared)
    assert again.status_code == 403
    assert again.json()["code"] == "replayed"


def test_signed_request_passes_with_user_fields(signed_url: str, http: requests.Session) -> None:
    prepared = prepare(
        "POST",
        f"{signed_url}/action/",
        params={"page": "1"},
        data=FORM,
        headers=PLUGIT_HEADERS,
    )
    response = http.send(prepared)
    assert response.status_code == 200
    assert response.json() == {
        "user": {"username": "alice"},
        "remote": "192.0.2.10",
        "files": [],
        "body": FORM,
    }


@pytest.mark.parametrize(
    ("method", "path", "kwargs"),
    [
        pytest.param("GET", "/ping", {"params": {"data": "x"}}, id="ping"),
        pytest.param("GET", "/version", {}, id="version"),
        pytest.param("POST", "/mail", {"data": {"response_id": "1"}}, id="mail"),
        pytest.param("GET", "/meta/show/x", {}, id="meta"),
        pytest.param("GET", "/template/", {}, id="template"),
        pytest.param("GET", "/media/logo.txt", {}, id="media"),
        pytest.param("GET", "/action/show/%C3%A9t%C3%A9%2F", {}, id="utf8-and-encoded-slash"),
        pytest.param(
            "POST",
            "/action/",
            {"files": {"doc": ("a.txt", b"abc")}, "data": {"k": "v"}},
            id="multipart",
        ),
        pytest.param("GET", "/action/", {"params": [("a", "1"), ("a", "2")]}, id="repeated-arg"),
    ],
)
def test_signed_requests_pass_on_every_endpoint(
    signed_url: str, http: requests.Session, method: str, path: str, kwargs: dict[str, Any]
) -> None:
    response = http.send(prepare(method, signed_url + path, **kwargs))
    assert response.status_code == 200, response.text
    unsigned = http.send(prepare(method, signed_url + path, secret=None, **kwargs))
    assert unsigned.status_code == 403


def test_chunked_body_is_verified(signed_url: str, http: requests.Session) -> None:
    body = b"ebuio_u_username=alice"
    url = f"{signed_url}/action/"
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    headers.update(
        sign_request(SECRET, method="POST", path="/svc/action/", body=body, headers=headers)
    )
    response = http.post(url, data=iter([body[:5], body[5:]]), headers=headers)
    assert response.status_code == 200
    assert response.json()["user"] == {"username": "alice"}


def test_signature_is_checked_before_routing(signed_url: str, http: requests.Session) -> None:
    # Unsigned callers learn nothing about the routes: every answer is the same 403.
    for method, path in (("GET", "/nothing"), ("DELETE", "/meta/"), ("GET", "/media/x")):
        response = http.request(method, f"{signed_url}{path}")
        assert response.status_code == 403, path
        assert response.json()["error"] == "signature"
    # Signed, the routing answers as usual.
    assert http.send(prepare("GET", f"{signed_url}/nothing")).status_code == 404
    assert http.send(prepare("DELETE", f"{signed_url}/meta/")).status_code == 405
    assert http.send(prepare("GET", f"{signed_url}/media/x")).status_code == 404


def test_content_type_is_signed(signed_url: str, http: requests.Session) -> None:
    request = prepare("POST", f"{signed_url}/action/", data={"a": "1"})
    request.headers["Content-Type"] = "text/plain"  # the same bytes, read another way
    response = http.send(request)
    assert response.status_code == 403
    assert response.json()["code"] == "mismatch"


def test_allow_list_applies_before_signature(
    root: Path, served: Callable[..., str], http: requests.Session
) -> None:
    service = PlugItService([home], root=root, secret=SECRET, allowed_networks=["10.0.0.0/8"])
    url = served(service)
    assert http.send(prepare("GET", f"{url}/ping")).status_code == 404
    assert http.get(f"{url}/ping").status_code == 404


def test_oversized_signed_body_is_413(
    root: Path, served: Callable[..., str], http: requests.Session
) -> None:
    url = served(PlugItService([home], root=root, secret=SECRET, max_content_length=100))
    response = http.send(prepare("POST", f"{url}/action/", data={"x": "y" * 1000}))
    assert response.status_code == 413

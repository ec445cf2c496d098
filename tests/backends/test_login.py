"""The login and logout pages (``plugit_backends.login``) over real HTTP: the form, CSRF, clear
refusals, throttling of failed logins, safe redirects and the session cookie's flags."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
import requests
import test_auth_session as shared
from test_auth_session import PASSWORD, STRONG_KEY, FakeBackendPlugin, Site
from urllib3 import encode_multipart_formdata

from plugit_backends.login import MAX_WINDOW, _settings
from plugit_core.config import ConfigError, ProxyConfig
from plugit_core.identity import AuthError

WRONG = "Wrong user name or password."

# The site fixtures of test_auth_session: a service, a proxy with local accounts, a directory.
service_url = shared.service_url
make_site = shared.make_site
site = shared.site


def _no_traceback(response: requests.Response) -> None:
    assert "Traceback" not in response.text and "Error:" not in response.text


# -- the page --------------------------------------------------------------------------------------


def test_the_login_page_has_the_form_and_a_csrf_field(site: Site) -> None:
    page = site.browser().get("/_plugit/login", params={"next": "/svc/logged"})
    assert page.status_code == 200 and page.headers["Content-Type"].startswith("text/html")
    assert page.headers["Cache-Control"] == "no-store"
    text = page.text
    assert 'id="plugit-login-form" method="post" action="/_plugit/login"' in text
    assert 'name="username"' in text and 'type="password" name="password"' in text
    token = text.split('name="csrfmiddlewaretoken" value="', 1)[1].split('"', 1)[0]
    assert len(token) >= 32
    assert 'name="next" value="/svc/logged"' in text
    assert "Checked against" not in text  # one method only
    assert site.browser().head("/_plugit/login").status_code == 200


def test_the_page_says_who_is_logged_in(site: Site) -> None:
    site.add_user("alice", first_name="Alice", last_name="Liddell")
    browser = site.browser()
    browser.login("alice")
    assert "You are logged in as Alice Liddell." in browser.get("/_plugit/login").text


def test_the_site_layout_offers_login_then_logout(site: Site) -> None:
    site.add_user("alice")
    browser = site.browser()
    assert 'id="plugit-login"' in browser.get("/").text
    browser.login("alice")
    home = browser.get("/").text
    assert 'id="plugit-logout" method="post" action="/_plugit/logout"' in home


@pytest.mark.parametrize(
    "target",
    [
        "//evil.example/",
        "https://evil.example/",
        "/\\evil.example",
        "svc/logged",
        "/_plugit/logout",
        "/x\r\nSet-Cookie: a=b",
    ],
)
def test_login_never_sends_the_browser_elsewhere(site: Site, target: str) -> None:
    site.add_user("alice")
    browser = site.browser()
    page = browser.get("/_plugit/login", params={"next": target})
    assert 'name="next" value="/"' in page.text
    response = browser.login("alice", next=target)
    assert response.status_code == 303 and response.headers["Location"] == "/"


def test_the_referring_page_is_where_the_login_goes_back(site: Site) -> None:
    browser = site.browser()
    page = browser.get("/_plugit/login", headers={"Referer": site.base + "/svc/logged?x=1"})
    assert 'name="next" value="/svc/logged?x=1"' in page.text
    other = browser.get("/_plugit/login", headers={"Referer": "https://evil.example/svc/"})
    assert 'name="next" value="/"' in other.text


# -- refusals --------------------------------------------------------------------------------------


def test_a_login_without_the_csrf_token_is_refused(site: Site) -> None:
    site.add_user("alice")
    browser = site.browser()
    browser.csrf()  # a session exists, but the form does not carry its token
    form = {"username": "alice", "password": PASSWORD}
    for extra in ({}, {"csrfmiddlewaretoken": "forged-token-" + "x" * 40}):
        response = browser.post("/_plugit/login", data={**form, **extra})
        assert response.status_code == 403 and "The form has expired" in response.text
        _no_traceback(response)
    assert browser.get("/svc/logged").status_code == 403
    assert site.store.count_failures("login:user:alice", 60) == 0


def test_a_wrong_password_gets_a_clear_page(site: Site) -> None:
    site.add_user("alice")
    browser = site.browser()
    for username in ("alice", "nobody"):
        response = browser.login(username, "not the password")
        assert response.status_code == 401
        assert f'id="plugit-login-error" class="alert alert-danger" role="alert">{WRONG}' in (
            response.text
        )
        assert f'name="username" value="{username}"' in response.text  # kept for a new try
        assert 'name="csrfmiddlewaretoken" value="' in response.text  # and a form to retry
        _no_traceback(response)
    assert browser.get("/svc/logged").status_code == 403


def test_a_missing_field_gets_a_clear_page(site: Site) -> None:
    response = site.browser().login("alice", "")
    assert response.status_code == 400 and "Enter your user name and password." in response.text


def test_a_disabled_account_gets_a_clear_page(site: Site) -> None:
    alice = site.add_user("alice")
    site.store.set_active(alice.pk, False)
    browser = site.browser()
    response = browser.login("alice")
    assert response.status_code == 403
    assert "This account is disabled. Ask an administrator." in response.text
    _no_traceback(response)
    wrong = browser.login("alice", "not the password")  # no hint without the password
    assert wrong.status_code == 401 and "disabled" not in wrong.text
    assert browser.get("/svc/logged").status_code == 403


def test_a_backend_that_says_nothing_useful_gets_a_clear_page(
    make_site: Callable[..., Site],
) -> None:
    down = FakeBackendPlugin("down", AuthError("unavailable", "LDAP is down"))
    site = make_site(plugins=(down,), auth=["down"])
    response = site.browser().login("alice")
    assert response.status_code == 503 and "unavailable right now" in response.text
    assert site.store.count_failures("login:user:alice", 60) == 0  # not the user's fault


# -- malformed and oversized bodies ----------------------------------------------------------------

TWENTY_MIB = 20 * 1024 * 1024


def _chunked(body: bytes) -> Iterator[bytes]:
    """The body as a generator: requests sends it chunked, without Content-Length."""
    for start in range(0, len(body), 256 * 1024):
        yield body[start : start + 256 * 1024]


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
@pytest.mark.parametrize("path", ["/_plugit/login", "/_plugit/logout"])
@pytest.mark.parametrize("content_type", ["application/x-www-form-urlencoded", "multipart"])
def test_a_20_mib_post_gets_413(site: Site, framing: str, path: str, content_type: str) -> None:
    site.add_user("alice")
    browser = site.browser()
    token = browser.csrf()
    if content_type == "multipart":
        body, content_type = encode_multipart_formdata(
            {"csrfmiddlewaretoken": token, "username": "alice", "password": "x" * TWENTY_MIB}
        )
    else:
        body = f"csrfmiddlewaretoken={token}&username=alice&password=".encode() + b"x" * TWENTY_MIB
    data = body if framing == "content-length" else _chunked(body)
    response = browser.post(path, data=data, headers={"Content-Type": content_type})
    assert response.status_code == 413, response.text[:500]
    assert response.headers["Content-Type"].startswith("text/html")
    _no_traceback(response)
    assert site.store.count_failures("login:user:alice", 60) == 0
    assert browser.login("alice").status_code == 303  # the site still works, for this browser too


MALFORMED: dict[str, tuple[bytes | Callable[[str], bytes], str]] = {
    "invalid-utf8": (
        lambda t: f"csrfmiddlewaretoken={t}&username=".encode() + b"%ff%fe\xff&password=\xc3(",
        "application/x-www-form-urlencoded",
    ),
    "raw-invalid-utf8": (
        lambda t: f"csrfmiddlewaretoken={t}&username=".encode() + b"\xff\xfe&password=p",
        "application/x-www-form-urlencoded; charset=utf-8",
    ),
    "unknown-charset": (
        lambda t: f"csrfmiddlewaretoken={t}&username=alice&password=x".encode(),
        "application/x-www-form-urlencoded; charset=no-such-charset",
    ),
    "json": (b'{"username": "alice", "password": "correct horse battery"}', "application/json"),
    "text": (b"username=alice&password=correct horse battery", "text/plain"),
    "no-content-type": (b"username=alice&password=correct horse battery", ""),
    "repeated-username": (
        lambda t: f"csrfmiddlewaretoken={t}&username=alice&username=bob&password=p".encode(),
        "application/x-www-form-urlencoded",
    ),
    "repeated-password": (
        lambda t: f"csrfmiddlewaretoken={t}&username=alice&password=a&password=b".encode(),
        "application/x-www-form-urlencoded",
    ),
    "repeated-token": (
        lambda t: f"csrfmiddlewaretoken={t}&csrfmiddlewaretoken=x&username=a&password=p".encode(),
        "application/x-www-form-urlencoded",
    ),
    "missing-username": (
        lambda t: f"csrfmiddlewaretoken={t}&password=p".encode(),
        "application/x-www-form-urlencoded",
    ),
    "missing-password": (
        lambda t: f"csrfmiddlewaretoken={t}&username=alice".encode(),
        "application/x-www-form-urlencoded",
    ),
    "empty": (b"", "application/x-www-form-urlencoded"),
    "nul-username": (
        lambda t: f"csrfmiddlewaretoken={t}&username=ali%00ce&password=p".encode(),
        "application/x-www-form-urlencoded",
    ),
    "nul-password": (
        lambda t: f"csrfmiddlewaretoken={t}&username=alice&password=p%00q".encode(),
        "application/x-www-form-urlencoded",
    ),
    "control-username": (
        lambda t: f"csrfmiddlewaretoken={t}&username=ali%0D%0Ace&password=p".encode(),
        "application/x-www-form-urlencoded",
    ),
    "huge-username": (
        lambda t: f"csrfmiddlewaretoken={t}&password=p&username=".encode() + b"u" * 60000,
        "application/x-www-form-urlencoded",
    ),
    "huge-password": (
        lambda t: f"csrfmiddlewaretoken={t}&username=alice&password=".encode() + b"p" * 60000,
        "application/x-www-form-urlencoded",
    ),
    "bad-escapes": (
        lambda t: f"csrfmiddlewaretoken={t}&username=%zz%&password=%".encode(),
        "application/x-www-form-urlencoded",
    ),
    "no-equals": (
        lambda t: f"csrfmiddlewaretoken={t}&username&password&&&".encode(),
        "application/x-www-form-urlencoded",
    ),
    "multipart-no-boundary": (b"--x\r\nbroken", "multipart/form-data"),
    "multipart-broken": (
        b'--b\r\nContent-Disposition: form-data; name="username"\r\n\r\nalice',
        "multipart/form-data; boundary=b",
    ),
    "multipart-garbage-headers": (
        b"--b\r\n\x00\xff: \xfe\r\n\r\nx\r\n--b--\r\n",
        "multipart/form-data; boundary=b",
    ),
}


@pytest.mark.parametrize("case", MALFORMED)
def test_malformed_login_bodies_get_a_4xx_page(site: Site, case: str) -> None:
    alice = site.add_user("alice")
    browser = site.browser()
    token = browser.csrf()
    make, content_type = MALFORMED[case]
    body = make(token) if callable(make) else make
    headers = {"Content-Type": content_type, "X-CSRFToken": token}
    response = browser.post("/_plugit/login", data=body, headers=headers)
    assert 400 <= response.status_code < 500, (response.status_code, response.text[:500])
    assert response.status_code != 429
    assert response.headers["Content-Type"].startswith("text/html")
    _no_traceback(response)
    assert "\x00" not in response.text
    assert browser.get("/svc/logged").status_code == 403  # nobody was logged in
    assert site.store.count_failures("login:user:alice", 60) <= 1
    assert site.store.get_user(alice.pk) is not None
    assert browser.login("alice").status_code == 303  # and the form still works afterwards


def test_what_each_malformed_form_is_told(site: Site) -> None:
    browser = site.browser()
    token = browser.csrf()
    expectations = {
        "repeated-username": (400, "This form could not be read."),
        "nul-password": (400, "A password cannot contain NUL characters."),
        "huge-password": (400, "A password has at most 4096 characters."),
        "missing-password": (400, "Enter your user name and password."),
        # user names no account can have: refused as wrong, without asking any backend
        "huge-username": (401, WRONG),
        "nul-username": (401, WRONG),
        "control-username": (401, WRONG),
    }
    for case, (status, words) in expectations.items():
        make, content_type = MALFORMED[case]
        body = make(token)  # type: ignore[operator]
        response = browser.post("/_plugit/login", data=body, headers={"Content-Type": content_type})
        assert response.status_code == status, case
        assert words in response.text, case
        assert "u" * 300 not in response.text  # a huge user name is not sent back


# -- throttling ------------------------------------------------------------------------------------


def test_failed_logins_per_account_are_throttled(make_site: Callable[..., Site]) -> None:
    site = make_site(login_default={"max_failures": 3, "window": 60, "max_address_failures": 50})
    clock = site.clock()
    site.add_user("alice")
    site.add_user("bob")
    browser = site.browser()
    for _ in range(3):
        assert browser.login("alice", "guess").status_code == 401
    refused = browser.login("alice")  # even the right password, without checking it
    assert refused.status_code == 429 and refused.headers["Retry-After"] == "60"
    assert "Too many failed attempts" in refused.text
    _no_traceback(refused)
    assert browser.login("ALICE").status_code == 429  # the same account, whatever the case
    assert site.store.count_failures("login:user:alice", 60) == 3  # refusals are not counted
    assert site.browser().login("bob").status_code == 303  # other accounts are not affected
    clock.advance(30)
    assert browser.login("alice").status_code == 429
    clock.advance(31)  # the failures left the window
    assert browser.login("alice").status_code == 303
    assert site.store.count_failures("login:user:alice", 60) == 0  # forgotten after success


def test_failed_logins_per_address_are_throttled(make_site: Callable[..., Site]) -> None:
    site = make_site(login_default={"max_failures": 50, "window": 60, "max_address_failures": 3})
    clock = site.clock()
    site.add_user("alice")
    browser = site.browser()
    assert browser.login("mallory", "guess").status_code == 401
    assert browser.login("alice").status_code == 303
    assert site.store.count_failures("login:addr:127.0.0.1", 60) == 1  # not reset by a success
    for name in ("bob", "carol"):
        assert browser.login(name, "guess").status_code == 401
    refused = site.browser().login("alice")  # the same address, another session
    assert refused.status_code == 429
    clock.advance(61)
    assert site.browser().login("alice").status_code == 303


def test_login_settings() -> None:
    config = ProxyConfig.from_mapping({"secret_key": STRONG_KEY})
    settings = _settings(config, {})
    assert (settings.max_failures, settings.max_address_failures, settings.window) == (5, 20, 900)
    settings = _settings(config, {"max_failures": 2, "window": 30})
    assert (settings.max_failures, settings.max_address_failures, settings.window) == (2, 8, 30)
    for section, key in (
        ({"max_failures": 0}, "login_default.max_failures"),
        ({"max_failures": True}, "login_default.max_failures"),
        ({"max_address_failures": "9"}, "login_default.max_address_failures"),
        ({"window": 0}, "login_default.window"),
        ({"window": MAX_WINDOW + 1}, "login_default.window"),
        ({"delay": 3}, "login_default.delay"),
    ):
        with pytest.raises(ConfigError) as error:
            _settings(config, section)
        assert error.value.key == key


# -- the session cookie ----------------------------------------------------------------------------


def test_the_session_cookie_after_login_with_the_default_settings(
    make_site: Callable[..., Site],
) -> None:
    """The default cookie (secure = true, scrypt hashes): inspected by hand over plain HTTP."""
    site = make_site(session_cookie=None, auth_session=None)
    auth = site.proxy.auth[0]
    assert auth.password_method == "scrypt"
    site.store.create_user("alice", password_hash=auth.hash_password(PASSWORD))
    with requests.Session() as http:
        page = http.get(site.base + "/_plugit/login", timeout=10)
        anonymous = page.cookies["plugit_session"]
        token = page.text.split('name="csrfmiddlewaretoken" value="', 1)[1].split('"', 1)[0]
        response = http.post(
            site.base + "/_plugit/login",
            data={"csrfmiddlewaretoken": token, "username": "alice", "password": PASSWORD},
            headers={"Cookie": f"plugit_session={anonymous}"},
            allow_redirects=False,
            timeout=10,
        )
    assert response.status_code == 303
    header = response.headers["Set-Cookie"]
    attributes = [part.strip() for part in header.split(";")]
    name, value = attributes[0].split("=", 1)
    assert name == "plugit_session" and value and value != anonymous
    assert "Secure" in attributes and "HttpOnly" in attributes
    assert "SameSite=Lax" in attributes and "Path=/" in attributes
    assert "Max-Age=1209600" in attributes
    assert response.headers["Cache-Control"] == "no-store"

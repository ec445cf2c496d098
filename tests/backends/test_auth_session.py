"""Local accounts end to end: a real proxy with ``auth = ["session"]`` in front of a real
service, both over HTTP, and the SQLite directory behind them.

The site helpers here (:func:`make_site`, :class:`Browser`) are used by ``test_login.py`` too.
"""

from __future__ import annotations

import contextlib
import re
import secrets
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import requests
from werkzeug.security import generate_password_hash

from plugit_backends.auth_session import SessionAuth, _factory
from plugit_core.config import ConfigError, ProxyConfig
from plugit_core.hookspecs import hookimpl
from plugit_core.identity import AuthError
from plugit_core.kinds.auth.testing import AuthBackendConformance, LogIn
from plugit_core.proxy.app import ProxyApp
from plugit_core.service import (
    PlugItService,
    action,
    json_only,
    only_admin_user,
    only_logged_user,
    only_member_user,
    only_orga_admin_user,
    only_orga_member_user,
    user_info,
)
from plugit_core.testing import FakeClock, serve
from plugit_core.testing.redis import delete_prefix, redis_for_tests
from plugit_core.users import DEFAULT_USER_DATA

SECRET = "service-secret-for-auth-tests-0123456789"
STRONG_KEY = "k3y-for-tests-9f8e7d6c5b4a39281706f5e4d3c2b1a0"
FAST_HASH = "pbkdf2:sha256:1000"  # keeps the tests quick; the default scrypt is tested apart
PASSWORD = "correct horse battery"
USER_DATA = [*DEFAULT_USER_DATA, "gravatar"]

# -- the service -----------------------------------------------------------------------------------


@action("/logged")
@json_only()
@only_logged_user()
def logged(request):
    return {"page": "logged"}


@action("/member")
@json_only()
@only_member_user()
def member(request):
    return {"page": "member"}


@action("/admin")
@json_only()
@only_admin_user()
def admin(request):
    return {"page": "admin"}


@action("/orga_member")
@json_only()
@only_orga_member_user()
def orga_member(request):
    return {"page": "orga_member"}


@action("/orga_admin")
@json_only()
@only_orga_admin_user()
def orga_admin(request):
    return {"page": "orga_admin"}


@action("/echo", methods=["GET", "POST"])
@json_only()
@user_info(USER_DATA)
def echo(request):
    values = request.form if request.method == "POST" else request.args
    return {key: values.getlist(key) for key in values}


def make_service() -> PlugItService:
    return PlugItService(
        [logged, member, admin, orga_member, orga_admin, echo], secret=SECRET, root="."
    )


# -- the site --------------------------------------------------------------------------------------

_CSRF = re.compile(r'name="csrfmiddlewaretoken" value="([^"]+)"')


class Browser(requests.Session):
    """A client of one proxy: relative URLs, no redirects followed."""

    def __init__(self, base: str) -> None:
        super().__init__()
        self.base = base

    def request(self, method: str, url: str, *args: Any, **kwargs: Any) -> requests.Response:  # type: ignore[override]
        kwargs.setdefault("allow_redirects", False)
        kwargs.setdefault("timeout", 10)
        return super().request(method, self.base + url, *args, **kwargs)

    def csrf(self) -> str:
        """The CSRF token of the session (the login page always holds one)."""
        page = self.get("/_plugit/login")
        assert page.status_code == 200, page.text
        return _CSRF.search(page.text).group(1)

    def login(self, username: str, password: str = PASSWORD, **extra: str) -> requests.Response:
        data = {"csrfmiddlewaretoken": self.csrf(), "username": username, "password": password}
        return self.post("/_plugit/login", data={**data, **extra})

    def logout(self) -> requests.Response:
        return self.post("/_plugit/logout", data={"csrfmiddlewaretoken": self.csrf()})

    def echo(self, mount: str = "/svc/") -> dict[str, Any]:
        response = self.get(f"{mount}echo")
        assert response.status_code == 200, response.text
        return {k: v[0] if len(v) == 1 else v for k, v in response.json().items()}

    @property
    def session_cookie(self) -> str | None:
        return self.cookies.get("plugit_session")


class Site:
    def __init__(self, proxy: ProxyApp, base: str, stack: contextlib.ExitStack) -> None:
        self.proxy = proxy
        self.base = base
        self.store = proxy.users
        self._stack = stack

    def browser(self) -> Browser:
        browser = Browser(self.base)
        self._stack.callback(browser.close)
        return browser

    def add_user(self, username: str, password: str = PASSWORD, **fields: Any) -> Any:
        return self.store.create_user(
            username, password_hash=generate_password_hash(password, FAST_HASH), **fields
        )

    def clock(self) -> FakeClock:
        clock = FakeClock()
        self.store.clock = clock
        return clock


def site_config(service_url: str, tmp_path: Any, **overrides: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "dev_mode": False,
        "secret_key": STRONG_KEY,
        "auth": ["session"],
        "user_data": USER_DATA,
        "session_cookie": {"secure": False},
        "users_sqlite": {"path": str(tmp_path / "directory.sqlite3")},
        "auth_session": {"password_method": FAST_HASH},
        "services": [
            {"name": "svc", "url": service_url, "mount": "/svc/", "secret": SECRET},
            {
                "name": "org",
                "url": service_url,
                "mount": "/org/",
                "secret": SECRET,
                "orga_mode": True,
            },
        ],
    }
    for key, value in overrides.items():
        if value is None:
            config.pop(key, None)
        elif isinstance(value, dict) and isinstance(config.get(key), dict):
            config[key] = {**config[key], **value}
        else:
            config[key] = value
    return config


@pytest.fixture(scope="module")
def service_url() -> Iterator[str]:
    with serve(make_service()) as url:
        yield url


@pytest.fixture
def make_site(service_url: str, tmp_path: Any) -> Iterator[Callable[..., Site]]:
    """``make_site(plugins=(), **config_overrides)``: a proxy served over HTTP, its directory."""
    with contextlib.ExitStack() as stack:

        def factory(plugins: tuple[Any, ...] = (), **overrides: Any) -> Site:
            config = site_config(service_url, tmp_path, **overrides)
            proxy = ProxyApp(config, plugins=plugins, load_entry_points=False)
            stack.callback(proxy.close)
            stack.callback(proxy.users.close)
            base = stack.enter_context(serve(proxy))
            return Site(proxy, base, stack)

        yield factory


@pytest.fixture
def site(make_site: Callable[..., Site]) -> Site:
    return make_site()


class FakeBackendPlugin:
    """A password backend named ``name`` that fails the way it is told (an AuthError or a bug)."""

    def __init__(self, name: str, error: Exception, label: str = "Staff directory") -> None:
        self.name = name
        self.error = error
        self.label = label
        self.calls = 0

    @hookimpl
    def plugit_register_backends(self, register: Any) -> None:
        register("auth", self.name, lambda config, section: self)

    def authenticate(self, username: str, password: str, request: Any) -> Any:
        self.calls += 1
        raise self.error


# -- logging in and what services see ------------------------------------------------------------


def test_anonymous_visitors_are_refused_logged_users_pass(site: Site) -> None:
    site.add_user("alice")
    browser = site.browser()
    assert browser.get("/svc/logged").status_code == 403
    response = browser.login("alice", next="/svc/logged")
    assert response.status_code == 303 and response.headers["Location"] == "/svc/logged"
    assert browser.get("/svc/logged").json() == {"page": "logged"}


def test_user_names_are_case_insensitive(site: Site) -> None:
    site.add_user("Alice")
    browser = site.browser()
    assert browser.login("  aLICE ").status_code == 303
    assert browser.echo()["ebuio_u_username"] == "Alice"


def test_granted_roles_open_member_and_admin_pages(site: Site) -> None:
    alice = site.add_user("alice")
    browser = site.browser()
    browser.login("alice")
    assert browser.get("/svc/member").status_code == 403
    assert browser.get("/svc/admin").status_code == 403
    site.store.grant(alice.pk, "svc", "member")
    assert browser.get("/svc/member").json() == {"page": "member"}
    assert browser.get("/svc/admin").status_code == 403
    assert browser.get("/org/member").status_code == 403  # another service
    site.store.grant(alice.pk, "svc", "admin")
    assert browser.get("/svc/admin").json() == {"page": "admin"}
    site.store.revoke(alice.pk, "svc")
    assert browser.get("/svc/member").status_code == 403


def test_user_info_reaches_the_service(site: Site) -> None:
    alice = site.add_user(
        "alice", email="alice@example.org", first_name="Alice", last_name="Liddell"
    )
    site.store.grant(alice.pk, "svc", "member")
    browser = site.browser()
    anonymous = browser.echo()
    assert anonymous.get("ebuio_u_username", "") == "" and "ebuio_u_pk" not in anonymous
    browser.login("alice")
    seen = browser.echo()
    assert seen["ebuio_u_username"] == "alice"
    assert seen["ebuio_u_pk"] == seen["ebuio_u_id"] == str(alice.pk)
    assert seen["ebuio_u_email"] == "alice@example.org"
    assert (seen["ebuio_u_first_name"], seen["ebuio_u_last_name"]) == ("Alice", "Liddell")
    assert seen["ebuio_u_ebuio_member"] == "True"
    assert seen["ebuio_u_ebuio_admin"] == "False"
    assert seen["ebuio_u_ebuio_orga_member"] == "False"  # no orga mode on this mount
    assert seen["ebuio_u_gravatar"].startswith("https://www.gravatar.com/avatar/")
    assert "ebuio_u_subscription_labels" not in seen  # none: nothing sent
    assert "ebuio_orgapk" not in seen
    forged = browser.get("/svc/echo", params={"ebuio_u_username": "root", "ebuio_orgapk": "1"})
    assert forged.json()["ebuio_u_username"] == ["alice"] and "ebuio_orgapk" not in forged.json()


def test_orga_mode_with_real_organisations(site: Site) -> None:
    alice = site.add_user("alice")
    ebu = site.store.create_orga("EBU", "zzebu")
    rts = site.store.create_orga("RTS", "chrts")
    other = site.store.create_orga("Other", "zzoth")
    site.store.add_to_orga(alice.pk, ebu.pk)
    site.store.add_to_orga(alice.pk, rts.pk, admin=True)
    browser = site.browser()
    assert browser.get("/org/logged").status_code == 403
    browser.login("alice")
    seen = browser.echo("/org/")
    assert seen["ebuio_orgapk"] == str(ebu.pk)  # the first by name
    assert seen["ebuio_u_ebuio_orga_member"] == "True"
    assert seen["ebuio_u_ebuio_orga_admin"] == "False"
    assert browser.get("/org/orga_member").status_code == 200
    assert browser.get("/org/orga_admin").status_code == 403
    switch = browser.post(
        "/org/ebuio_setOrga", data={"pk": str(rts.pk), "csrfmiddlewaretoken": browser.csrf()}
    )
    assert switch.status_code == 200
    seen = browser.echo("/org/")
    assert seen["ebuio_orgapk"] == str(rts.pk)
    assert seen["ebuio_u_ebuio_orga_admin"] == "True"
    assert browser.get("/org/orga_admin").json() == {"page": "orga_admin"}
    refused = browser.post(
        "/org/ebuio_setOrga", data={"pk": str(other.pk), "csrfmiddlewaretoken": browser.csrf()}
    )
    assert refused.status_code == 403 and "not a member of this organisation" in refused.text
    no_csrf = browser.post("/org/ebuio_setOrga", data={"pk": str(ebu.pk)})
    assert no_csrf.status_code == 403
    assert browser.echo("/org/")["ebuio_orgapk"] == str(rts.pk)  # unchanged by the refusals
    site.store.remove_from_orga(alice.pk, rts.pk)  # the stored choice is no longer available
    assert browser.echo("/org/")["ebuio_orgapk"] == str(ebu.pk)


def test_orga_mode_without_organisations_is_refused(site: Site) -> None:
    site.add_user("alice")
    browser = site.browser()
    browser.login("alice")
    response = browser.get("/org/logged")
    assert response.status_code == 403 and "members of an organisation" in response.text


# -- sessions --------------------------------------------------------------------------------------


def test_login_rotates_the_session(site: Site) -> None:
    site.add_user("alice")
    browser = site.browser()
    browser.csrf()
    before = browser.session_cookie
    assert before
    assert browser.login("alice").status_code == 303
    after = browser.session_cookie
    assert after and after != before
    assert browser.get("/svc/logged").status_code == 200
    # a cookie captured before the login (planted by an attacker) does not carry it
    planted = site.browser()
    planted.cookies.set("plugit_session", before)
    assert planted.get("/svc/logged").status_code == 403
    assert planted.echo().get("ebuio_u_username", "") == ""


def test_logout_ends_the_session(site: Site) -> None:
    site.add_user("alice")
    browser = site.browser()
    browser.login("alice")
    assert browser.post("/_plugit/logout").status_code == 403  # no CSRF token
    assert browser.get("/_plugit/logout").status_code == 405
    assert browser.get("/svc/logged").status_code == 200
    response = browser.logout()
    assert response.status_code == 303 and response.headers["Location"] == "/"
    assert browser.get("/svc/logged").status_code == 403
    assert browser.echo().get("ebuio_u_username", "") == ""


def test_a_user_disabled_while_logged_in_becomes_anonymous(site: Site) -> None:
    alice = site.add_user("alice")
    browser = site.browser()
    browser.login("alice")
    assert browser.get("/svc/logged").status_code == 200
    site.store.set_active(alice.pk, False)
    assert browser.get("/svc/logged").status_code == 403
    site.store.set_active(alice.pk, True)  # the session was not destroyed, only refused
    assert browser.get("/svc/logged").status_code == 200


def test_a_new_password_ends_the_sessions_opened_with_the_old_one(site: Site) -> None:
    alice = site.add_user("alice")
    browser, other = site.browser(), site.browser()
    browser.login("alice")
    other.login("alice")
    site.store.set_password_hash(alice.pk, generate_password_hash("a new password!", FAST_HASH))
    assert browser.get("/svc/logged").status_code == 403
    assert other.get("/svc/logged").status_code == 403
    assert browser.login("alice", "a new password!").status_code == 303
    assert browser.get("/svc/logged").status_code == 200


def test_a_session_of_a_removed_login_method_is_anonymous(make_site: Callable[..., Site]) -> None:
    site = make_site()
    site.add_user("alice")
    browser = site.browser()
    browser.login("alice")
    stub = FakeBackendPlugin("stub", AuthError("unavailable", "down"))
    # the same directory and secret key, but local accounts are no longer a login method
    other = make_site(plugins=(stub,), auth=["stub"])
    visitor = other.browser()
    visitor.cookies.set("plugit_session", browser.session_cookie)
    assert visitor.get("/svc/logged").status_code == 403
    assert browser.get("/svc/logged").status_code == 200


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    pytest.importorskip("redis")
    with redis_for_tests() as url:
        yield url


@pytest.fixture(params=["cookie", "redis"])
def backend_site(request: Any, make_site: Callable[..., Site]) -> Iterator[Callable[..., Site]]:
    """``backend_site(**overrides)``: a site whose sessions are in signed cookies, or in Redis
    (one prefix per test; sites made by one test share it, as processes of one site would)."""
    if request.param == "cookie":
        yield lambda **overrides: make_site(session="cookie", session_redis=None, **overrides)
        return
    url = request.getfixturevalue("redis_url")
    prefix = f"plugit-test:{secrets.token_hex(8)}:session:"
    section = {"url": url, "prefix": prefix, "secure": False}
    try:
        yield lambda **overrides: make_site(session="redis", session_redis=section, **overrides)
    finally:
        delete_prefix(url, prefix)


def _post_with_token(browser: Browser, token: str) -> requests.Response:
    """A login form carrying ``token`` (and a wrong password): 401 when the token is accepted,
    403 when it is refused."""
    form = {"csrfmiddlewaretoken": token, "username": "alice", "password": "not the password"}
    return browser.post("/_plugit/login", data=form)


def test_a_cookie_copied_before_logout_is_dead_after_it(
    backend_site: Callable[..., Site],
) -> None:
    site = backend_site()
    site.add_user("alice")
    browser = site.browser()
    assert browser.login("alice").status_code == 303
    token = browser.csrf()
    copied = browser.session_cookie
    assert copied

    def thief() -> Browser:
        """A browser holding the copy."""
        other = site.browser()
        other.cookies.set("plugit_session", copied)
        return other

    assert thief().get("/svc/logged").status_code == 200  # the copy works while the user is in
    assert _post_with_token(thief(), token).status_code == 401  # and so does its token

    assert browser.logout().status_code == 303

    replay = thief().get("/svc/logged")
    assert replay.status_code == 403
    # never given back: deleted (signed cookies) or pointing to nothing any more (Redis)
    assert copied not in replay.headers.get("Set-Cookie", "")
    assert thief().echo().get("ebuio_u_username", "") == ""
    refused = _post_with_token(thief(), token)  # its CSRF token went with it
    assert refused.status_code == 403 and "The form has expired" in refused.text
    logout = thief().post("/_plugit/logout", data={"csrfmiddlewaretoken": token})
    assert logout.status_code == 403 and "The form has expired" in logout.text
    # the user logs in again as usual; the old copy stays dead
    assert browser.login("alice").status_code == 303
    assert browser.get("/svc/logged").status_code == 200
    assert thief().get("/svc/logged").status_code == 403


def test_a_logout_ends_the_users_sessions_on_every_device(
    backend_site: Callable[..., Site],
) -> None:
    site = backend_site()
    site.add_user("alice")
    site.add_user("bob")
    laptop, phone, bob = site.browser(), site.browser(), site.browser()
    for browser, name in ((laptop, "alice"), (phone, "alice"), (bob, "bob")):
        assert browser.login(name).status_code == 303
    assert laptop.logout().status_code == 303
    assert phone.get("/svc/logged").status_code == 403
    assert bob.get("/svc/logged").status_code == 200  # another user's sessions are untouched


@pytest.mark.embedded_backends  # the two proxies share the directory's SQLite file
def test_a_logout_on_one_proxy_process_ends_the_copy_on_another(
    backend_site: Callable[..., Site],
) -> None:
    """Two proxies sharing the directory and the secret key (two processes of one site)."""
    one, two = backend_site(), backend_site()
    one.add_user("alice")
    browser = one.browser()
    assert browser.login("alice").status_code == 303
    token = browser.csrf()
    copied = browser.session_cookie
    on_two = two.browser()
    on_two.cookies.set("plugit_session", copied)
    assert on_two.get("/svc/logged").status_code == 200  # the session is the site's
    assert on_two.post("/_plugit/logout", data={"csrfmiddlewaretoken": token}).status_code == 303
    thief = one.browser()
    thief.cookies.set("plugit_session", copied)
    assert thief.get("/svc/logged").status_code == 403
    assert browser.get("/svc/logged").status_code == 403


def test_a_logout_the_directory_cannot_record_fails_visibly(
    site: Site, monkeypatch: pytest.MonkeyPatch
) -> None:
    site.add_user("alice")
    browser = site.browser()
    assert browser.login("alice").status_code == 303

    def broken(pk: Any) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(site.store, "end_sessions", broken)
    response = browser.logout()
    assert response.status_code == 503 and "Logging out failed" in response.text
    assert "disk full" not in response.text
    assert browser.get("/svc/logged").status_code == 200  # still in: the user can try again
    monkeypatch.undo()
    assert browser.logout().status_code == 303
    assert browser.get("/svc/logged").status_code == 403


def test_external_users_cannot_log_in_with_a_local_password(site: Site) -> None:
    dana = site.store.sync_external_user("ldap", "uid=dana", {"username": "dana"})
    site.store.set_password_hash(dana.pk, generate_password_hash(PASSWORD, FAST_HASH))
    response = site.browser().login("dana")
    assert response.status_code == 401 and "Wrong user name or password" in response.text


# -- several login methods -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "error",
    [
        pytest.param(AuthError("unavailable", "LDAP is down"), id="unavailable"),
        pytest.param(RuntimeError("a bug in the plugin"), id="broken"),
    ],
)
def test_local_login_works_beside_a_failing_backend(
    make_site: Callable[..., Site], error: Exception
) -> None:
    down = FakeBackendPlugin("down", error)
    site = make_site(plugins=(down,), auth=["down", "session"])
    site.add_user("alice")
    browser = site.browser()
    page = browser.get("/_plugit/login")
    assert "Checked against: Staff directory, Local account." in page.text
    assert browser.login("alice").status_code == 303
    assert down.calls == 1
    assert browser.echo()["ebuio_u_username"] == "alice"
    wrong = site.browser().login("alice", "not the password")
    assert wrong.status_code == 401 and "Wrong user name or password." in wrong.text
    assert "Traceback" not in wrong.text and "a bug" not in wrong.text


# -- the backend itself ----------------------------------------------------------------------------


class _Proxy:
    def __init__(self, users: Any) -> None:
        self.users = users


class _Request:
    def __init__(self, users: Any) -> None:
        self.proxy = _Proxy(users)


@pytest.fixture
def store(tmp_path: Any) -> Iterator[Any]:
    from plugit_backends.users_sqlite import SQLiteUserStore

    store = SQLiteUserStore(tmp_path / "unit.sqlite3")
    yield store
    store.close()


def test_authenticate(store: Any) -> None:
    auth = SessionAuth(FAST_HASH)
    alice = store.create_user("alice", password_hash=auth.hash_password(PASSWORD))
    request = _Request(store)
    assert auth.authenticate("alice", PASSWORD, request).pk == alice.pk
    for username, password in (("alice", "wrong password"), ("nobody", PASSWORD), ("", "")):
        with pytest.raises(AuthError) as refused:
            auth.authenticate(username, password, request)
        assert refused.value.code == "bad_credentials"
    store.set_active(alice.pk, False)
    with pytest.raises(AuthError) as refused:
        auth.authenticate("alice", PASSWORD, request)
    assert refused.value.code == "disabled"
    with pytest.raises(AuthError) as refused:  # a wrong password never says "disabled"
        auth.authenticate("alice", "wrong password", request)
    assert refused.value.code == "bad_credentials"
    with pytest.raises(AuthError) as refused:
        auth.authenticate("alice", PASSWORD, _Request(None))
    assert refused.value.code == "unavailable"


def test_unknown_users_cost_a_hash_check(store: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    import plugit_backends.auth_session as module

    auth = SessionAuth(FAST_HASH)
    store.create_user("bob")  # no password: local accounts without one cannot log in
    checked = []
    real = module.check_password_hash
    monkeypatch.setattr(module, "check_password_hash", lambda h, p: checked.append(h) or real(h, p))
    for username in ("nobody", "bob"):
        with pytest.raises(AuthError):
            auth.authenticate(username, PASSWORD, _Request(store))
    assert len(checked) == 2 and all(h.startswith("pbkdf2:sha256:1000$") for h in checked)


def test_hashes_of_another_method_are_upgraded_at_login(store: Any) -> None:
    old = generate_password_hash(PASSWORD, "pbkdf2:sha256:1000")
    alice = store.create_user("alice", password_hash=old)
    auth = SessionAuth("pbkdf2:sha256:2000")
    auth.authenticate("alice", PASSWORD, _Request(store))
    new = store.password_hash(alice.pk)
    assert new != old and new.startswith("pbkdf2:sha256:2000$")
    auth.authenticate("alice", PASSWORD, _Request(store))
    assert store.password_hash(alice.pk) == new  # the same method: left alone


def test_a_malformed_stored_hash_refuses_without_error(store: Any) -> None:
    store.create_user("alice", password_hash="md5$x$y")
    with pytest.raises(AuthError) as refused:
        SessionAuth(FAST_HASH).authenticate("alice", PASSWORD, _Request(store))
    assert refused.value.code == "bad_credentials"


def test_the_default_method_is_scrypt_and_the_password_rules() -> None:
    auth = SessionAuth()
    assert auth.hash_password("ten chars!").startswith("scrypt:")
    assert auth.password_problem("short") == "a password needs at least 10 characters"
    with pytest.raises(ValueError, match="at least 10"):
        auth.hash_password("short")
    with pytest.raises(ValueError, match="at most"):
        auth.hash_password("x" * 5000)


def _config(**sections: Any) -> ProxyConfig:
    return ProxyConfig.from_mapping({"secret_key": STRONG_KEY, **sections})


def test_settings() -> None:
    auth = _factory(_config(), {"password_method": "pbkdf2", "min_password_length": 12})
    assert auth.password_method == "pbkdf2" and auth.min_password_length == 12
    assert _factory(_config(), {}).password_method == "scrypt"
    for section, key in (
        ({"colour": "blue"}, "auth_session.colour"),
        ({"password_method": "md5"}, "auth_session.password_method"),
        ({"password_method": "scrypt:1"}, "auth_session.password_method"),
        ({"password_method": 5}, "auth_session.password_method"),
        ({"min_password_length": 0}, "auth_session.min_password_length"),
        ({"min_password_length": True}, "auth_session.min_password_length"),
        ({"min_password_length": "10"}, "auth_session.min_password_length"),
    ):
        with pytest.raises(ConfigError) as error:
            _factory(_config(), section)
        assert error.value.key == key


def test_a_proxy_with_local_accounts_but_no_directory_does_not_start(
    service_url: str, tmp_path: Any
) -> None:
    config = site_config(service_url, tmp_path, users="", users_sqlite=None)
    with pytest.raises(ConfigError, match="local accounts need a directory"):
        ProxyApp(config, load_entry_points=False, check_services=False)


def test_the_login_page_text_is_escaped(site: Site) -> None:
    response = site.browser().login("<b>x</b>", "wrong")
    assert response.status_code == 401
    assert "<b>x</b>" not in response.text and "&lt;b&gt;x&lt;/b&gt;" in response.text


# -- the auth kind's shared suite ------------------------------------------------------------------


class TestSessionAuthConformance(AuthBackendConformance):
    name = "session"
    source = "local"

    @pytest.fixture
    def auth_backend(self) -> SessionAuth:
        return SessionAuth(FAST_HASH)

    @pytest.fixture
    def directory(self, store: Any) -> Any:
        return store

    @pytest.fixture
    def account(self, auth_backend: SessionAuth, store: Any) -> tuple[str, str]:
        store.create_user("alice", password_hash=auth_backend.hash_password(PASSWORD))
        return "alice", PASSWORD

    @pytest.fixture
    def log_in(self, auth_backend: SessionAuth, store: Any) -> LogIn:
        request = _Request(store)
        return lambda username, password: auth_backend.authenticate(username, password, request)

    @pytest.fixture
    def log_in_while_down(self, auth_backend: SessionAuth) -> LogIn:
        request = _Request(None)  # no directory to read the accounts from
        return lambda username, password: auth_backend.authenticate(username, password, request)

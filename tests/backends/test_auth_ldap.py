"""The LDAP auth backend against a real OpenLDAP slapd, through a real proxy and service.

slapd is started by :mod:`ldap_server` with its own configuration on free loopback ports.  When
slapd is missing the set-up installs it if root (``scripts/install-slapd.sh``); otherwise the
tests are skipped, or fail when ``PLUGIT_REQUIRE_SERVERS=1`` (CI).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import html
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import requests
from ldap_server import ADMIN_DN, BASE, PASSWORDS, READER_DN, READER_PASSWORD, Slapd, find_tool

from plugit_backends import auth_ldap  # loads without ldap3 (the `ldap` extra)
from plugit_backends.users_sqlite import SQLiteUserStore
from plugit_core.config import ConfigError, ProxyConfig, load_config
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
from plugit_core.testing import serve
from plugit_core.users import PlugItUser

if auth_ldap.LDAP3_MISSING is not None:
    if os.environ.get("PLUGIT_REQUIRE_SERVERS") == "1":
        raise auth_ldap.LDAP3_MISSING
    pytest.skip("ldap3 is not installed: pip install 'plugit-wsgi[ldap]'", allow_module_level=True)

REQUIRED = os.environ.get("PLUGIT_REQUIRE_SERVERS") == "1"
ROOT = Path(__file__).resolve().parents[2]
SECRET = "ldap-service-secret-for-tests-0123456789"
STRONG_KEY = "k3y-for-ldap-tests-9f8e7d6c5b4a39281706f5e4d3c2b1a0"
PEOPLE = f"ou=people,{BASE}"
GROUPS = f"ou=groups,{BASE}"
STAFF = f"cn=staff,{GROUPS}"
OPS = f"cn=ops,{GROUPS}"
ODD = "o(*)\\brien"  # a real user name full of filter metacharacters
LOCAL_USER, LOCAL_PASSWORD = "localuser", "local-password-1"

WRONG = "Wrong user name or password."
UNAVAILABLE = "The login service is unavailable right now. Please try again later."
DISABLED = "This account is disabled. Ask an administrator."


# -- slapd ----------------------------------------------------------------------------------------


def _need_slapd() -> None:
    if find_tool("slapd") and find_tool("slapadd"):
        return
    if os.geteuid() == 0:
        subprocess.run(
            ["bash", str(ROOT / "scripts" / "install-slapd.sh")], check=False, timeout=600
        )
        if find_tool("slapd") and find_tool("slapadd"):
            return
    message = "OpenLDAP slapd is not installed: run scripts/install-slapd.sh as root"
    if REQUIRED:
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="session")
def slapd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Slapd]:
    """The directory most tests use: ppolicy enforced, TLS on a second port."""
    _need_slapd()
    with Slapd(tmp_path_factory.mktemp("slapd") / "main") as server:
        yield server


@contextlib.contextmanager
def group_without(slapd: Slapd, group: str, member: str) -> Iterator[None]:
    """Remove ``member`` from the groupOfNames ``group`` for the block, then put it back."""
    with slapd.admin() as admin:
        admin.modify(group, {"member": [("MODIFY_DELETE", [member])]})
    try:
        yield
    finally:
        with slapd.admin() as admin:
            admin.modify(group, {"member": [("MODIFY_ADD", [member])]})


# -- the service ----------------------------------------------------------------------------------


@action("/whoami")
@json_only()
@only_logged_user()
@user_info(["username", "email", "first_name", "last_name"])
def whoami(request):
    return request.user_info


@action("/member")
@json_only()
@only_member_user()
def member_page(request):
    return {"page": "member"}


@action("/admin")
@json_only()
@only_admin_user()
def admin_page(request):
    return {"page": "admin"}


@action("/orga_member")
@json_only()
@only_orga_member_user()
def orga_member_page(request):
    return {"page": "orga_member"}


@action("/orga_admin")
@json_only()
@only_orga_admin_user()
def orga_admin_page(request):
    return {"page": "orga_admin"}


@pytest.fixture(scope="session")
def service_url() -> Iterator[str]:
    app = PlugItService(
        [whoami, member_page, admin_page, orga_member_page, orga_admin_page], secret=SECRET
    )
    with serve(app) as url:
        yield url


# -- a local password backend, to be listed after ldap --------------------------------------------


class LocalPasswords:
    """The smallest PasswordBackend: one account, kept in the proxy's directory."""

    name = "localpw"
    label = "Local accounts"

    def authenticate(self, username: str, password: str, request: Any) -> PlugItUser:
        if username != LOCAL_USER or password != LOCAL_PASSWORD:
            raise AuthError("bad_credentials", "Wrong user name or password.")
        return request.proxy.users.sync_external_user("test-local", "1", {"username": username})


class LocalPlugin:
    @hookimpl
    def plugit_register_backends(self, register: Any) -> None:
        register("auth", "localpw", lambda config, section: LocalPasswords())


# -- proxies --------------------------------------------------------------------------------------


def ldap_section(slapd: Slapd, **overrides: Any) -> dict[str, Any]:
    section: dict[str, Any] = {
        "server": slapd.url,
        "label": "Example directory",
        "timeout": 2,
        "bind_dn": READER_DN,
        "bind_password": READER_PASSWORD,
        "user_search_base": PEOPLE,
        "group_search_base": GROUPS,
        "superuser_groups": [OPS],
        "groups": {
            STAFF: {"services": {"svc": "member"}, "orgas": {"Acme": "member"}},
            # Spelt unlike the server's DN (cn=admins,ou=groups,...): DNs are compared normalised.
            "CN=Admins, OU=Groups, DC=example, DC=org": {
                "services": {"svc": "admin"},
                "orgas": {"Acme": "admin"},
            },
        },
    }
    section.update(overrides)
    return {key: value for key, value in section.items() if value is not None}


def proxy_config(
    service_url: str, directory: Path, ldap: dict[str, Any], auth: tuple[str, ...] = ("ldap",)
) -> dict[str, Any]:
    return {
        "dev_mode": False,
        "secret_key": STRONG_KEY,
        "auth": list(auth),
        "services": [
            {"name": "svc", "url": service_url, "mount": "/svc/", "secret": SECRET},
            {
                "name": "orgsvc",
                "url": service_url,
                "mount": "/orga/",
                "secret": SECRET,
                "orga_mode": True,
            },
        ],
        "session_cookie": {"secure": False},
        "users_sqlite": {"path": str(directory / "users.sqlite3")},
        "login_default": {"max_failures": 10_000},  # the tests fail many logins on purpose
        "auth_ldap": ldap,
    }


class Browser(requests.Session):
    """A client of one proxy: never follows redirects, knows the login form."""

    def __init__(self, base: str, proxy: ProxyApp) -> None:
        super().__init__()
        self.base = base
        self.proxy = proxy

    def request(self, method: str, url: str, *args: Any, **kwargs: Any) -> requests.Response:  # type: ignore[override]
        kwargs["allow_redirects"] = False
        kwargs.setdefault("timeout", 30)
        return super().request(method, self.base + url, *args, **kwargs)

    def csrf(self) -> str:
        page = self.get("/_plugit/login")
        assert page.status_code == 200, page.text
        match = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text)
        assert match, page.text
        return match.group(1)

    def submit(
        self, token: str, username: str, password: str, next_path: str = "/svc/whoami"
    ) -> requests.Response:
        """POST the login form (``token`` from :meth:`csrf`)."""
        return self.post(
            "/_plugit/login",
            data={
                "csrfmiddlewaretoken": token,
                "username": username,
                "password": password,
                "next": next_path,
            },
        )

    def login(
        self, username: str, password: str, next_path: str = "/svc/whoami"
    ) -> requests.Response:
        return self.submit(self.csrf(), username, password, next_path)

    def logged_in_as(self, username: str, password: str) -> Browser:
        response = self.login(username, password)
        assert response.status_code == 303, login_error(response)
        return self


def login_error(response: requests.Response) -> str | None:
    match = re.search(r'id="plugit-login-error"[^>]*>([^<]*)<', response.text)
    return html.unescape(match.group(1)) if match else None


@pytest.fixture(scope="module")
def make_browser(
    service_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[..., Browser]]:
    """``make_browser(ldap_section, auth=("ldap",))``: a proxy over HTTP, and a client of it."""
    with contextlib.ExitStack() as stack:
        proxies: dict[tuple[Any, ...], tuple[str, ProxyApp]] = {}

        def factory(ldap: dict[str, Any], auth: tuple[str, ...] = ("ldap",)) -> Browser:
            key = (repr(sorted(ldap.items())), auth)
            if key not in proxies:
                directory = tmp_path_factory.mktemp("proxy")
                proxy = ProxyApp(
                    proxy_config(service_url, directory, ldap, auth),
                    plugins=[auth_ldap, LocalPlugin()],
                    load_entry_points=False,
                )
                stack.callback(proxy.close)
                proxies[key] = (stack.enter_context(serve(proxy)), proxy)
            base, proxy = proxies[key]
            browser = Browser(base, proxy)
            stack.callback(browser.close)
            return browser

        yield factory


@pytest.fixture
def browser(slapd: Slapd, make_browser: Callable[..., Browser]) -> Browser:
    """A fresh client of the proxy with ``auth = ["ldap", "localpw"]``, group search mode."""
    return make_browser(ldap_section(slapd), auth=("ldap", "localpw"))


def backend(slapd: Slapd | None = None, **overrides: Any) -> auth_ldap.LDAPAuth:
    """The backend alone, built from a section like the proxy's."""
    section = ldap_section(slapd, **overrides) if slapd is not None else overrides
    config = ProxyConfig.from_mapping(
        {
            "dev_mode": True,
            "services": [{"name": "svc", "url": "http://127.0.0.1:9/", "mount": "/svc/"}],
            "auth_ldap": section,
        }
    )
    return auth_ldap.LDAPAuth(auth_ldap.settings_from_config(config, config.section("auth_ldap")))


@pytest.fixture
def request_for(tmp_path: Path) -> Iterator[Any]:
    """A stand-in for the login request: what the backend uses of it is ``proxy.users``."""
    store = SQLiteUserStore(tmp_path / "users.sqlite3")
    yield SimpleNamespace(proxy=SimpleNamespace(users=store))
    store.close()


def auth_code(ldap: auth_ldap.LDAPAuth, username: str, password: str, request: Any) -> str:
    with pytest.raises(AuthError) as info:
        ldap.authenticate(username, password, request)
    return info.value.code


# -- logging in through the proxy -----------------------------------------------------------------


def test_the_service_receives_the_ldap_user(browser: Browser) -> None:
    response = browser.login("alice", PASSWORDS["alice"])
    assert response.status_code == 303
    assert response.headers["Location"] == "/svc/whoami"
    info = browser.get("/svc/whoami").json()
    assert info["username"] == "alice"
    assert info["email"] == "alice@example.org"
    assert (info["first_name"], info["last_name"]) == ("Alice", "Archer")


def test_the_login_page_offers_the_directory_by_its_label(browser: Browser) -> None:
    page = browser.get("/_plugit/login").text
    assert "Example directory" in page and "Local accounts" in page


def test_group_mapping_gives_member_admin_and_orga_rights(browser: Browser) -> None:
    alice = browser.logged_in_as("alice", PASSWORDS["alice"])  # staff
    assert alice.get("/svc/member").status_code == 200
    assert alice.get("/svc/admin").status_code == 403
    assert alice.get("/orga/orga_member").status_code == 200
    assert alice.get("/orga/orga_admin").status_code == 403

    bob = Browser(browser.base, browser.proxy).logged_in_as("bob", PASSWORDS["bob"])  # + admins
    assert bob.get("/svc/admin").status_code == 200
    assert bob.get("/orga/orga_admin").status_code == 200
    user = bob.proxy.users.get_user(bob.proxy.users.get_by_username("bob").pk)
    assert [(o.name, o.is_admin) for o in user.orgas] == [("Acme", True)]
    assert user.admin_of == frozenset({"svc"})

    carol = Browser(browser.base, browser.proxy).logged_in_as("carol", PASSWORDS["carol"])
    assert carol.get("/svc/whoami").json()["username"] == "carol"
    assert carol.get("/svc/member").status_code == 403
    assert carol.get("/orga/orga_member").status_code == 403


def test_a_superuser_group_gives_admin_of_every_service(browser: Browser) -> None:
    erin = browser.logged_in_as("erin", PASSWORDS["erin"])  # ops: a groupOfUniqueNames
    assert erin.get("/svc/admin").status_code == 200
    assert erin.get("/svc/member").status_code == 200


def test_a_user_name_with_filter_characters_logs_in_as_itself(browser: Browser) -> None:
    odd = browser.logged_in_as(ODD, PASSWORDS["odd"])
    assert odd.get("/svc/whoami").json()["username"] == ODD
    assert odd.get("/svc/member").status_code == 200  # found by a group search on its DN


def test_wrong_password_and_unknown_user_get_the_same_401_page(browser: Browser) -> None:
    wrong = browser.login("alice", "not-her-password")
    unknown = browser.login("nobody", "whatever-password")
    assert wrong.status_code == unknown.status_code == 401
    assert login_error(wrong) == login_error(unknown) == WRONG
    assert browser.get("/svc/whoami").status_code != 200


def test_an_empty_password_is_refused(browser: Browser, slapd: Slapd, request_for: Any) -> None:
    assert browser.login("alice", "").status_code == 400
    # The backend refuses it on its own, before any network traffic: a closed port is not
    # even tried (else the answer would be "unavailable").
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = f"ldap://127.0.0.1:{sock.getsockname()[1]}"
    assert auth_code(backend(slapd, server=closed), "alice", "", request_for) == "bad_credentials"
    assert auth_code(backend(slapd), "alice", "", request_for) == "bad_credentials"


INJECTIONS = [
    "*",
    "al*",
    "alice*",
    "*ice",
    "alice)(uid=*",
    "*)(|(uid=*",
    "alice)(|(objectClass=*)",
    "*)(uid=*))(|(uid=*",
    "alice\\",
    "alice\\2a",
    "\\2a",
    "alice\x00",
    "alice\x00)(uid=*",
    "(",
    ")",
    "\\",
    "alice)",
    "uid=alice",
    "alice,ou=people,dc=example,dc=org",
    "a" * 300,
]


@pytest.mark.parametrize("username", INJECTIONS)
def test_injection_attempts_never_log_in_and_never_error(
    browser: Browser, slapd: Slapd, request_for: Any, username: str
) -> None:
    # With alice's password: an unescaped filter would find alice and log in as her.
    ldap = backend(slapd)
    assert auth_code(ldap, username, PASSWORDS["alice"], request_for) == "bad_credentials"
    response = browser.login(username, PASSWORDS["alice"])
    assert response.status_code == 401
    assert login_error(response) == WRONG
    assert "Traceback" not in response.text


def test_a_filter_matching_several_entries_logs_nobody_in(slapd: Slapd, request_for: Any) -> None:
    ldap = backend(slapd, user_filter="(mail={username})")
    assert auth_code(ldap, "twins@example.org", PASSWORDS["twin"], request_for) == (
        "bad_credentials"
    )
    user = ldap.authenticate("alice@example.org", PASSWORDS["alice"], request_for)
    assert user.username == "alice"


def test_a_locked_account_says_nothing_more_than_a_wrong_password(browser: Browser) -> None:
    """ppolicy refuses dave's bind whatever the password: no proof the password is right, so
    nothing tells the visitor that the account exists and is locked."""
    locked = browser.login("dave", PASSWORDS["dave"])
    wrong = browser.login("dave", "not-his-password")
    assert locked.status_code == wrong.status_code == 401
    assert login_error(locked) == login_error(wrong) == WRONG


def test_removed_from_staff_loses_member_rights_at_next_login(
    browser: Browser, slapd: Slapd
) -> None:
    alice = browser.logged_in_as("alice", PASSWORDS["alice"])
    assert alice.get("/svc/member").status_code == 200
    with group_without(slapd, STAFF, f"uid=alice,{PEOPLE}"):
        again = Browser(browser.base, browser.proxy).logged_in_as("alice", PASSWORDS["alice"])
        assert again.get("/svc/member").status_code == 403
        assert again.get("/orga/orga_member").status_code == 403  # no organisation any more
        user = again.proxy.users.get_by_username("alice")
        assert user.member_of == frozenset() and user.orgas == ()
    back = Browser(browser.base, browser.proxy).logged_in_as("alice", PASSWORDS["alice"])
    assert back.get("/svc/member").status_code == 200


def test_member_of_mode(slapd: Slapd, request_for: Any) -> None:
    """Groups from the entry's memberOf values (kept by the overlay), without a group search."""
    ldap = backend(slapd, group_search_base=None)
    users = request_for.proxy.users
    bob = ldap.authenticate("bob", PASSWORDS["bob"], request_for)
    assert bob.admin_of == frozenset({"svc"})
    assert [(o.name, o.is_admin) for o in bob.orgas] == [("Acme", True)]
    alice = ldap.authenticate("alice", PASSWORDS["alice"], request_for)
    assert alice.member_of == frozenset({"svc"}) and alice.admin_of == frozenset()
    with group_without(slapd, STAFF, f"uid=alice,{PEOPLE}"):
        alice = ldap.authenticate("alice", PASSWORDS["alice"], request_for)
        assert alice.member_of == frozenset() and alice.orgas == ()
    assert users.get_user(alice.pk).username == "alice"
    # erin's ops group is a groupOfUniqueNames: no memberOf, so no superuser in this mode.
    assert ldap.authenticate("erin", PASSWORDS["erin"], request_for).admin_of == frozenset()


def test_the_same_entry_is_the_same_user_at_every_login(slapd: Slapd, request_for: Any) -> None:
    ldap = backend(slapd)
    first = ldap.authenticate("alice", PASSWORDS["alice"], request_for)
    second = ldap.authenticate("ALICE", PASSWORDS["alice"], request_for)
    assert first.pk == second.pk and second.username == "alice"
    # Another id for the same entry is another user, who never takes over alice's name.
    by_dn = backend(slapd, id_attribute="dn")
    other = by_dn.authenticate("alice", PASSWORDS["alice"], request_for)
    assert other.pk != first.pk and other.username != "alice"
    assert by_dn.authenticate("alice", PASSWORDS["alice"], request_for).pk == other.pk


def test_concurrent_logins(slapd: Slapd, request_for: Any) -> None:
    """One backend serves many request threads at once, each on its own connections."""
    ldap = backend(slapd)
    names = ["alice", "bob", "carol", "erin"] * 6

    def one(name: str) -> str:
        return ldap.authenticate(name, PASSWORDS[name], request_for).username

    with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
        assert list(pool.map(one, names)) == names


# -- the directory down ---------------------------------------------------------------------------


def test_a_stopped_directory_gives_a_clear_page_and_local_logins_still_work(
    tmp_path: Path, make_browser: Callable[..., Browser]
) -> None:
    second = Slapd(tmp_path / "second", ppolicy=False, tls=False)
    second.start()
    try:
        only_ldap = make_browser(ldap_section(second))
        both = make_browser(ldap_section(second), auth=("ldap", "localpw"))
        assert only_ldap.login("carol", PASSWORDS["carol"]).status_code == 303
    finally:
        second.stop()

    token = only_ldap.csrf()
    started = time.monotonic()
    response = only_ldap.submit(token, "carol", PASSWORDS["carol"])
    assert time.monotonic() - started < 2  # refused at once, within the 2 s timeout
    assert response.status_code == 503
    assert login_error(response) == UNAVAILABLE
    assert "Traceback" not in response.text

    local = both.login(LOCAL_USER, LOCAL_PASSWORD)
    assert local.status_code == 303
    assert both.get("/svc/whoami").json()["username"] == LOCAL_USER
    ldap_user = Browser(both.base, both.proxy).login("carol", PASSWORDS["carol"])
    assert ldap_user.status_code == 401 and "Traceback" not in ldap_user.text


def test_a_directory_that_never_answers_times_out(
    slapd: Slapd, make_browser: Callable[..., Browser]
) -> None:
    with socket.socket() as silent:  # accepts connections (the kernel does), never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        browser = make_browser(
            ldap_section(slapd, server=f"ldap://127.0.0.1:{silent.getsockname()[1]}", timeout=1)
        )
        token = browser.csrf()
        started = time.monotonic()
        response = browser.submit(token, "alice", PASSWORDS["alice"])
        elapsed = time.monotonic() - started
    assert response.status_code == 503
    assert login_error(response) == UNAVAILABLE
    assert 0.9 < elapsed < 2.5  # the 1 s timeout, once


def test_a_wrong_service_account_password_is_unavailable_not_bad_credentials(
    slapd: Slapd, request_for: Any
) -> None:
    ldap = backend(slapd, bind_password="not-the-reader-password")
    assert auth_code(ldap, "alice", PASSWORDS["alice"], request_for) == "unavailable"


def test_a_right_password_on_a_locked_account_is_disabled(
    tmp_path: Path, request_for: Any, make_browser: Callable[..., Browser]
) -> None:
    """Without the ppolicy overlay the bind succeeds: the password is right, and the entry's
    lock attribute makes the login "disabled"."""
    with Slapd(tmp_path / "plain", ppolicy=False, tls=False) as plain:
        ldap = backend(plain)
        assert auth_code(ldap, "dave", PASSWORDS["dave"], request_for) == "disabled"
        assert auth_code(ldap, "dave", "wrong-password", request_for) == "bad_credentials"
        assert ldap.authenticate("carol", PASSWORDS["carol"], request_for).username == "carol"
        response = make_browser(ldap_section(plain)).login("dave", PASSWORDS["dave"])
        assert response.status_code == 403
        assert login_error(response) == DISABLED


# -- TLS ------------------------------------------------------------------------------------------


def test_ldaps_with_the_ca_file(slapd: Slapd, request_for: Any) -> None:
    ldap = backend(slapd, server=slapd.ldaps_url, ca_file=str(slapd.ca_file))
    assert ldap.authenticate("alice", PASSWORDS["alice"], request_for).username == "alice"


def test_start_tls_with_the_ca_file(slapd: Slapd, request_for: Any) -> None:
    ldap = backend(slapd, start_tls=True, ca_file=str(slapd.ca_file))
    assert ldap.authenticate("alice", PASSWORDS["alice"], request_for).username == "alice"


def test_an_untrusted_certificate_is_unavailable(slapd: Slapd, request_for: Any) -> None:
    ldap = backend(slapd, server=slapd.ldaps_url)  # the system CAs do not know the test CA
    assert auth_code(ldap, "alice", PASSWORDS["alice"], request_for) == "unavailable"
    ldap = backend(slapd, start_tls=True)
    assert auth_code(ldap, "alice", PASSWORDS["alice"], request_for) == "unavailable"


def test_a_certificate_for_another_name_is_unavailable(slapd: Slapd, request_for: Any) -> None:
    wrong_name = slapd.ldaps_url.replace("127.0.0.1", "localhost")  # the cert is for the IP only
    ldap = backend(slapd, server=wrong_name, ca_file=str(slapd.ca_file))
    assert auth_code(ldap, "alice", PASSWORDS["alice"], request_for) == "unavailable"


def test_validate_none_accepts_any_certificate(slapd: Slapd, request_for: Any) -> None:
    ldap = backend(slapd, server=slapd.ldaps_url, validate="none")
    assert ldap.authenticate("alice", PASSWORDS["alice"], request_for).username == "alice"


# -- configuration --------------------------------------------------------------------------------


def config_error(**section: Any) -> str:
    base = {"server": "ldap://127.0.0.1:389", "user_search_base": PEOPLE}
    base.update(section)
    with pytest.raises(ConfigError) as info:
        backend(**{k: v for k, v in base.items() if v is not None})
    return info.value.key


@pytest.mark.parametrize(
    ("section", "key"),
    [
        ({"server": None}, "auth_ldap.server"),
        ({"server": "http://ldap.example.org"}, "auth_ldap.server"),
        ({"server": "ldap://"}, "auth_ldap.server"),
        ({"server": "ldap://ldap.example.org/dc=example"}, "auth_ldap.server"),
        ({"server": "ldap://ldap.example.org"}, "auth_ldap.server"),  # clear text on a network
        ({"server": "ldaps://ldap.example.org", "start_tls": True}, "auth_ldap.start_tls"),
        ({"ca_file": "/nonexistent/ca.pem", "start_tls": True}, "auth_ldap.ca_file"),
        ({"ca_file": "/etc/hostname"}, "auth_ldap.ca_file"),  # without TLS
        ({"validate": "maybe", "start_tls": True}, "auth_ldap.validate"),
        ({"timeout": 0}, "auth_ldap.timeout"),
        ({"timeout": "5"}, "auth_ldap.timeout"),
        ({"bind_dn": READER_DN}, "auth_ldap.bind_password"),
        ({"bind_dn": READER_DN, "bind_password": ""}, "auth_ldap.bind_password"),
        ({"bind_password": "x"}, "auth_ldap.bind_password"),
        ({"bind_dn": "not a dn", "bind_password": "x"}, "auth_ldap.bind_dn"),
        ({"user_search_base": None}, "auth_ldap.user_search_base"),
        ({"user_filter": "(uid=alice)"}, "auth_ldap.user_filter"),
        ({"user_filter": "(uid={username}"}, "auth_ldap.user_filter"),
        ({"user_filter": "(&(uid={username})(x={other}))"}, "auth_ldap.user_filter"),
        ({"group_filter": "(member={dn})"}, "auth_ldap.group_filter"),  # no group_search_base
        ({"username_attribute": "u id"}, "auth_ldap.username_attribute"),
        ({"superuser_groups": "nonsense"}, "auth_ldap.superuser_groups[0]"),
        (
            {"groups": {STAFF: {"services": {"svc": "owner"}}}},
            f'auth_ldap.groups."{STAFF}".services.svc',
        ),
        (
            {"groups": {STAFF: {"services": {"nope": "member"}}}},
            f'auth_ldap.groups."{STAFF}".services.nope',
        ),
        ({"groups": {STAFF: {"roles": {}}}}, f'auth_ldap.groups."{STAFF}".roles'),
        ({"groups": {"x": {}}}, 'auth_ldap.groups."x"'),
        ({"bind_pasword": "typo"}, "auth_ldap.bind_pasword"),
    ],
)
def test_configuration_errors_name_the_key(section: dict[str, Any], key: str) -> None:
    assert config_error(**section) == key


def test_secrets_may_come_from_the_environment(
    slapd: Slapd, request_for: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TEST_LDAP_READER_PASSWORD", READER_PASSWORD)
    ldap = backend(slapd, bind_password={"env": "TEST_LDAP_READER_PASSWORD"})
    assert ldap.authenticate("alice", PASSWORDS["alice"], request_for).username == "alice"
    monkeypatch.delenv("TEST_LDAP_READER_PASSWORD")
    with pytest.raises(ConfigError, match="TEST_LDAP_READER_PASSWORD"):
        backend(slapd, bind_password={"env": "TEST_LDAP_READER_PASSWORD"})


def test_plain_ldap_on_a_network_needs_allow_plaintext() -> None:
    ldap = backend(server="ldap://ldap.example.org", user_search_base=PEOPLE, allow_plaintext=True)
    assert ldap.settings.port == 389 and not ldap.settings.tls
    assert backend(server="ldaps://ldap.example.org", user_search_base=PEOPLE).settings.port == 636


def test_the_proxy_refuses_a_bad_table_at_start_up(service_url: str, tmp_path: Path) -> None:
    config = proxy_config(service_url, tmp_path, {"server": "ldap://127.0.0.1"})
    with pytest.raises(ConfigError) as info:
        ProxyApp(config, plugins=[auth_ldap], load_entry_points=False, check_services=False)
    assert info.value.key == "auth_ldap.user_search_base"


def test_distinguished_names_compare_normalised() -> None:
    assert auth_ldap.dn_key(f"cn=admins,{GROUPS}") == auth_ldap.dn_key(
        "CN=Admins, OU=Groups, DC=Example, DC=ORG"
    )
    escaped = auth_ldap.dn_key(f"uid=o(*)\\5Cbrien,{PEOPLE}")
    assert escaped == auth_ldap.dn_key(f"uid=o(*)\\\\brien,{PEOPLE}")
    assert escaped[0] == ("uid", ODD)
    assert auth_ldap.dn_key(f"cn=a\\,b,{GROUPS}") != auth_ldap.dn_key(f"cn=a,cn=b,{GROUPS}")


def test_without_ldap3_the_plugin_loads_and_the_configuration_says_what_to_install() -> None:
    script = """
import sys
sys.modules["ldap3"] = None  # as if the `ldap` extra were not installed
from plugit_backends import auth_ldap
from plugit_core.config import ConfigError, ProxyConfig
from plugit_core.proxy.app import ProxyApp
config = {"dev_mode": True, "auth": ["ldap"], "users_sqlite": {"path": sys.argv[1]},
          "auth_ldap": {"server": "ldap://127.0.0.1", "user_search_base": "dc=example"}}
try:
    ProxyApp(config, plugins=[auth_ldap], load_entry_points=False)
except ConfigError as exc:
    print(exc.key, exc)
"""
    with contextlib.ExitStack() as stack:
        directory = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        result = subprocess.run(
            [sys.executable, "-c", script, str(directory / "users.sqlite3")],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("auth_ldap "), result.stdout
    assert "pip install 'plugit-wsgi[ldap]'" in result.stdout


def test_the_admin_is_not_a_user(slapd: Slapd, request_for: Any) -> None:
    """The root DN is outside user_search_base: its password logs nobody in."""
    assert ADMIN_DN not in PEOPLE
    ldap = backend(slapd)
    assert auth_code(ldap, "admin", "admin-secret-for-tests", request_for) == "bad_credentials"


def test_the_documented_configurations_are_valid(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every complete example of docs/auth-ldap.md passes the start-up checks."""
    for name in ("SECRET_KEY", "POLLS_SECRET", "NEWSROOM_SECRET", "LDAP_PASSWORD"):
        monkeypatch.setenv(f"PLUGIT_{name}", f"{name.lower()}-{STRONG_KEY}")
    ca_file = tmp_path / "ca.pem"
    ca_file.write_text("only checked to be readable at start-up\n")
    text = (ROOT / "docs" / "auth-ldap.md").read_text(encoding="utf-8")
    examples = [
        block
        for block in re.findall(r"```toml\n(.*?)```", text, re.DOTALL)
        if "[auth_ldap]" in block
    ]
    assert len(examples) == 2
    for i, block in enumerate(examples):
        path = tmp_path / f"example{i}.toml"
        path.write_text(re.sub(r'(?m)^ca_file = "[^"]*"', f'ca_file = "{ca_file}"', block))
        config = load_config(path)
        settings = auth_ldap.settings_from_config(config, config.section("auth_ldap"))
        assert settings.tls and settings.validate and settings.groups and settings.bind_password


# -- the auth kind's shared suite -----------------------------------------------------------------


class TestLDAPAuthConformance(AuthBackendConformance):
    name = "ldap"
    source = "ldap"

    @pytest.fixture
    def auth_backend(self, slapd: Slapd) -> auth_ldap.LDAPAuth:
        return backend(slapd)

    @pytest.fixture
    def directory(self, request_for: Any) -> Any:
        return request_for.proxy.users

    @pytest.fixture
    def account(self) -> tuple[str, str]:
        return "alice", PASSWORDS["alice"]

    @pytest.fixture
    def log_in(self, auth_backend: auth_ldap.LDAPAuth, request_for: Any) -> LogIn:
        return lambda username, password: auth_backend.authenticate(username, password, request_for)

    @pytest.fixture
    def log_in_while_down(self, slapd: Slapd, request_for: Any) -> LogIn:
        with socket.socket() as sock:  # a port nothing listens on
            sock.bind(("127.0.0.1", 0))
            closed = f"ldap://127.0.0.1:{sock.getsockname()[1]}"
        down = backend(slapd, server=closed)
        return lambda username, password: down.authenticate(username, password, request_for)

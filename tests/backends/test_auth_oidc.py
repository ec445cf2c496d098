"""The OpenID Connect backend against a real provider, through a real proxy and service.

The provider is the certified npm package ``oidc-provider``, started by
``oidc_provider/provider.mjs`` on a free loopback port (``scripts/install-oidc-provider.sh``
installs it); the login is driven over HTTP as a browser would: the proxy's start URL, the
provider's login and consent forms, the callback on the proxy.  Without Node.js the tests are
skipped, or fail when ``PLUGIT_REQUIRE_SERVERS=1`` (CI).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import html
import json
import logging
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from urllib.parse import parse_qs, urlencode, urljoin, urlsplit, urlunsplit

import pytest
import requests
from authlib.integrations.requests_client import OAuth2Session
from joserfc import jws, jwt
from joserfc.jwk import RSAKey, import_key

from plugit_backends import auth_oidc
from plugit_backends.auth_oidc import CALLBACK_PATH, START_PATH, OIDCAuth
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
from plugit_core.testing import free_port, serve
from plugit_core.users import PlugItUser

REQUIRED = os.environ.get("PLUGIT_REQUIRE_SERVERS") == "1"
ROOT = Path(__file__).resolve().parents[2]
PROVIDER_DIR = Path(__file__).resolve().parent / "oidc_provider"
SECRET = "oidc-service-secret-for-tests-0123456789"
STRONG_KEY = "k3y-for-oidc-tests-9f8e7d6c5b4a39281706f5e4d3c2b1a0"
CLIENT_ID = "plugit-tests"
CLIENT_SECRET = "client-secret-for-the-oidc-tests-0123456789"
SECRET_ENV = "PLUGIT_TEST_OIDC_CLIENT_SECRET"
ID_TOKEN_TTL = 600
PASSWORDS = {"alice": "alice-password", "bob": "bob-password", "carol": "carol-password"}
SUBS = {"alice": "alice-0001", "bob": "bob-0002", "carol": "carol-0003"}
LOCAL_USER, LOCAL_PASSWORD = "localuser", "local-password-1"

UNAVAILABLE = "The single sign-on service is unavailable right now. Please try again later."
UNKNOWN_STATE = "This login was not started here or took too long. Please log in again."
INVALID = "The answer of the single sign-on service could not be verified. Please log in again."
CANCELLED = "The single sign-on service did not log you in."
DISABLED = "This account is disabled. Ask an administrator."


# -- the provider ---------------------------------------------------------------------------------


def _unavailable(message: str) -> None:
    if REQUIRED:
        pytest.fail(message)
    pytest.skip(message)


@dataclass
class Provider:
    """A running ``provider.mjs``."""

    issuer: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def metadata(self) -> dict[str, Any]:
        url = self.issuer + "/.well-known/openid-configuration"
        return requests.get(url, timeout=5).json()

    def update_account(self, sub: str, **claims: Any) -> None:
        response = requests.patch(f"{self.issuer}/_test/accounts/{sub}", json=claims, timeout=5)
        assert response.status_code == 204

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@contextlib.contextmanager
def run_provider(
    tmp: Path, redirect_uris: list[str], post_logout_uris: list[str]
) -> Iterator[Provider]:
    node = shutil.which("node")
    if node is None:
        _unavailable("Node.js is not installed: the OpenID provider of these tests needs it")
    install = subprocess.run(
        ["bash", str(ROOT / "scripts" / "install-oidc-provider.sh")],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if install.returncode != 0:
        _unavailable(f"scripts/install-oidc-provider.sh failed: {install.stderr.strip()}")
    port = free_port()
    issuer = f"http://127.0.0.1:{port}"
    env = {
        **os.environ,
        "OIDC_PORT": str(port),
        "OIDC_ISSUER": issuer,
        "OIDC_CLIENT_ID": CLIENT_ID,
        "OIDC_CLIENT_SECRET": CLIENT_SECRET,
        "OIDC_REDIRECT_URIS": ",".join(redirect_uris),
        "OIDC_POST_LOGOUT_URIS": ",".join(post_logout_uris),
        "OIDC_ID_TOKEN_TTL": str(ID_TOKEN_TTL),
    }
    log_path = tmp / "provider.log"
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [node, str(PROVIDER_DIR / "provider.mjs")],
            cwd=PROVIDER_DIR,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    provider = Provider(issuer, process, log_path)
    try:
        deadline = time.monotonic() + 30
        while True:  # poll the port until the provider listens (or dies)
            if process.poll() is not None:
                pytest.fail(f"the OpenID provider exited at start:\n{provider.log()}")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(f"the OpenID provider does not listen:\n{provider.log()}")
                time.sleep(0.05)
        yield provider
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


# -- the service ----------------------------------------------------------------------------------


@action("/whoami")
@json_only()
@only_logged_user()
@user_info(["username", "email", "first_name", "last_name"])
def whoami(request):
    return {"ebuio_u_username": request.args.get("ebuio_u_username"), **request.user_info}


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


# -- a local password backend, active next to oidc ------------------------------------------------


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


class Deferred:
    """A WSGI app served before it exists: the proxy's URL must be known to register it at the
    provider, and the provider's URL to configure the proxy."""

    app: Any = None

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        return self.app(environ, start_response)


def oidc_section(issuer: str, **overrides: Any) -> dict[str, Any]:
    section: dict[str, Any] = {
        "issuer": issuer,
        "client_id": CLIENT_ID,
        "client_secret": {"env": SECRET_ENV},
        "label": "Example SSO",
        "scopes": "openid email profile groups",
        "post_logout_redirect_uri": "/",
        "timeout": 3,
        "superuser_groups": ["ops"],
        "groups": {
            "staff": {"services": {"svc": "member"}, "orgas": {"Acme": "member"}},
            "managers": {"services": {"svc": "admin"}, "orgas": {"Acme": "admin"}},
        },
    }
    section.update(overrides)
    return {key: value for key, value in section.items() if value is not None}


def proxy_config(service_url: str, directory: Path, oidc: dict[str, Any]) -> dict[str, Any]:
    return {
        "dev_mode": False,
        "secret_key": STRONG_KEY,
        "auth": ["oidc", "localpw"],
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
        "login_default": {"max_failures": 10_000},
        "auth_oidc": oidc,
    }


class Browser(requests.Session):
    """A browser: never follows redirects by itself; paths are the proxy's."""

    def __init__(self, base: str) -> None:
        super().__init__()
        self.base = base

    def request(self, method: str, url: str, *args: Any, **kwargs: Any) -> requests.Response:  # type: ignore[override]
        kwargs["allow_redirects"] = False
        kwargs.setdefault("timeout", 15)
        if not url.startswith("http"):
            url = self.base + url
        return super().request(method, url, *args, **kwargs)


@dataclass
class Site:
    base: str
    proxy: ProxyApp
    provider: Provider
    browsers: list[Browser] = field(default_factory=list)

    @property
    def backend(self) -> OIDCAuth:
        return next(b for b in self.proxy.auth if isinstance(b, OIDCAuth))

    def browser(self) -> Browser:
        browser = Browser(self.base)
        self.browsers.append(browser)
        return browser

    def user(self, username: str) -> PlugItUser:
        user = self.proxy.users.get_by_username(username)
        assert user is not None
        return self.proxy.users.get_user(user.pk)


@contextlib.contextmanager
def serve_proxy() -> Iterator[tuple[str, Deferred]]:
    deferred = Deferred()
    with serve(deferred) as base:
        yield base, deferred
        if deferred.app is not None:
            deferred.app.close()


def build_proxy(deferred: Deferred, service_url: str, directory: Path, oidc: dict[str, Any]) -> Any:
    proxy = ProxyApp(
        proxy_config(service_url, directory, oidc),
        plugins=[auth_oidc, LocalPlugin()],
        load_entry_points=False,
    )
    deferred.app = proxy
    return proxy


@pytest.fixture(scope="session")
def service_url() -> Iterator[str]:
    app = PlugItService(
        [whoami, member_page, admin_page, orga_member_page, orga_admin_page], secret=SECRET
    )
    with serve(app) as url:
        yield url


@pytest.fixture(scope="session")
def client_secret_env() -> Iterator[None]:
    old = os.environ.get(SECRET_ENV)
    os.environ[SECRET_ENV] = CLIENT_SECRET
    yield
    if old is None:
        os.environ.pop(SECRET_ENV, None)
    else:
        os.environ[SECRET_ENV] = old


@dataclass
class World:
    """The provider, and the address where the proxy registered at it is served."""

    base: str
    deferred: Deferred
    provider: Provider
    directory: Path
    service_url: str
    site: Site | None = None


@pytest.fixture(scope="session")
def world(
    service_url: str, client_secret_env: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[World]:
    directory = tmp_path_factory.mktemp("oidc")
    with serve_proxy() as (base, deferred):
        with run_provider(directory, [base + CALLBACK_PATH], [base + "/"]) as provider:
            world = World(base, deferred, provider, directory, service_url)
            try:
                yield world
            finally:
                for browser in world.site.browsers if world.site else ():
                    browser.close()


@pytest.fixture
def site(world: World) -> Site:
    """A proxy with ``auth = ["oidc", "localpw"]``, registered at the provider.  Built by the
    first test that needs it, so that the backend matrix of ``tests/conftest.py`` (swapped in
    for each test) applies to it too."""
    if world.site is None:
        oidc = oidc_section(world.provider.issuer)
        proxy = build_proxy(world.deferred, world.service_url, world.directory, oidc)
        world.site = Site(world.base, proxy, world.provider)
    return world.site


# -- driving the login ----------------------------------------------------------------------------


def _form_action(page: str) -> str:
    match = re.search(r'<form[^>]*method="post"[^>]*action="([^"]+)"', page)
    assert match, page
    return html.unescape(match.group(1))


def through_provider(
    browser: Browser, url: str, stop: str, username: str, *, cancel: bool = False
) -> str:
    """Follow the provider's pages from ``url`` (its authorization URL): log in as
    ``username`` (or cancel), consent, until the redirect to ``stop``; return that URL."""
    for _ in range(12):
        if url.startswith(stop):
            return url
        response = browser.get(url)
        if response.status_code in (302, 303):
            url = urljoin(url, response.headers["Location"])
            continue
        assert response.status_code == 200, response.text
        action = _form_action(response.text)
        if action.endswith("/login"):
            if cancel:
                url = urljoin(url, action[: -len("/login")] + "/abort")
                continue
            data = {"login": username, "password": PASSWORDS[username]}
        else:
            data = {}
        response = browser.post(urljoin(url, action), data=data)
        assert response.status_code == 303, response.text
        url = urljoin(url, response.headers["Location"])
    raise AssertionError(f"the provider never sent the browser to {stop}")


def start(browser: Browser, next_path: str = "/svc/whoami") -> str:
    """The proxy's redirect to the provider."""
    response = browser.get(START_PATH, params={"next": next_path})
    assert response.status_code == 303, response.text
    return response.headers["Location"]


def callback_url(
    site: Site,
    browser: Browser,
    username: str,
    *,
    next_path: str = "/svc/whoami",
    tamper: Callable[[str], str] = lambda url: url,
    cancel: bool = False,
) -> str:
    """Start a login at the proxy and go through the provider; the callback URL, not visited."""
    authorize = tamper(start(browser, next_path))
    return through_provider(browser, authorize, site.base + CALLBACK_PATH, username, cancel=cancel)


def login(site: Site, username: str, next_path: str = "/svc/whoami") -> Browser:
    browser = site.browser()
    response = browser.get(callback_url(site, browser, username, next_path=next_path))
    assert response.status_code == 303, login_error(response)
    assert response.headers["Location"] == next_path
    return browser


def login_error(response: requests.Response) -> str | None:
    match = re.search(r'id="plugit-login-error"[^>]*>([^<]*)<', response.text)
    return html.unescape(match.group(1)) if match else None


def with_param(url: str, **changes: str) -> str:
    split = urlsplit(url)
    query = {k: v[0] for k, v in parse_qs(split.query).items()}
    query.update(changes)
    return urlunsplit(split._replace(query=urlencode(query)))


def anonymous(browser: Browser) -> bool:
    return browser.get("/svc/whoami").status_code != 200


def refused(response: requests.Response, status: int, message: str) -> None:
    assert response.status_code == status, response.text
    assert login_error(response) == message
    assert "Traceback" not in response.text
    assert response.headers["Cache-Control"] == "no-store"


# -- logging in -----------------------------------------------------------------------------------


def test_the_login_page_offers_the_provider_by_its_label(site: Site) -> None:
    page = site.browser().get("/_plugit/login", params={"next": "/svc/member"})
    assert page.status_code == 200
    assert "Example SSO" in page.text and 'id="plugit-login-form"' in page.text  # both methods
    assert f'href="{START_PATH}?next=/svc/member"' in page.text


def test_the_start_url_sends_a_pkce_s256_request_with_state_and_nonce(site: Site) -> None:
    location = start(site.browser())
    assert location.startswith(site.provider.metadata()["authorization_endpoint"] + "?")
    query = {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}
    assert query["response_type"] == "code"
    assert query["client_id"] == CLIENT_ID
    assert query["redirect_uri"] == site.base + CALLBACK_PATH
    assert query["scope"] == "openid email profile groups"
    assert query["code_challenge_method"] == "S256"
    assert len(query["code_challenge"]) == 43
    assert len(query["state"]) >= 32 and len(query["nonce"]) >= 32


def test_the_service_receives_the_provider_user(site: Site) -> None:
    browser = login(site, "alice")
    info = browser.get("/svc/whoami").json()
    assert info["ebuio_u_username"] == info["username"] == "alice"
    assert info["email"] == "alice@example.org"
    assert (info["first_name"], info["last_name"]) == ("Alice", "Archer")
    user = site.user("alice")
    assert user.extra["source"] == f"oidc:{site.provider.issuer}"


def test_next_is_a_local_path_only(site: Site) -> None:
    browser = site.browser()
    response = browser.get(callback_url(site, browser, "alice", next_path="https://evil.test/x"))
    assert response.status_code == 303
    assert response.headers["Location"] == "/"


def test_groups_map_to_member_admin_and_orga_rights(site: Site) -> None:
    alice = login(site, "alice")  # staff
    assert alice.get("/svc/member").status_code == 200
    assert alice.get("/svc/admin").status_code == 403
    assert alice.get("/orga/orga_member").status_code == 200
    assert alice.get("/orga/orga_admin").status_code == 403

    bob = login(site, "bob")  # staff + managers
    assert bob.get("/svc/admin").status_code == 200
    assert bob.get("/orga/orga_admin").status_code == 200
    user = site.user("bob")
    assert user.admin_of == frozenset({"svc"})
    assert [(o.name, o.is_admin) for o in user.orgas] == [("Acme", True)]


def test_a_superuser_group_gives_admin_of_every_service(site: Site) -> None:
    carol = login(site, "carol")  # ops
    assert carol.get("/svc/admin").status_code == 200
    assert carol.get("/svc/member").status_code == 200
    assert site.user("carol").admin_of == frozenset({"*"})


def test_the_next_login_updates_the_profile_and_the_groups(site: Site) -> None:
    first = login(site, "alice")
    pk = site.user("alice").pk
    assert first.get("/svc/member").status_code == 200
    provider = site.provider
    provider.update_account(
        SUBS["alice"], email="alice@new.example", family_name="Smith", groups=[]
    )
    try:
        again = login(site, "alice")
        info = again.get("/svc/whoami").json()
        assert (info["email"], info["last_name"]) == ("alice@new.example", "Smith")
        assert again.get("/svc/member").status_code == 403  # out of staff: no rights any more
        user = site.user("alice")
        assert user.pk == pk and user.orgas == ()
    finally:
        provider.update_account(
            SUBS["alice"], email="alice@example.org", family_name="Archer", groups=["staff"]
        )
    assert login(site, "alice").get("/svc/member").status_code == 200


def test_a_disabled_account_is_refused(site: Site) -> None:
    login(site, "alice")
    store = site.proxy.users
    store.set_active(site.user("alice").pk, False)
    try:
        browser = site.browser()
        refused(browser.get(callback_url(site, browser, "alice")), 403, DISABLED)
        assert anonymous(browser)
    finally:
        store.set_active(site.user("alice").pk, True)


# -- refusals -------------------------------------------------------------------------------------


def test_a_wrong_state_is_refused(site: Site, caplog: pytest.LogCaptureFixture) -> None:
    browser = site.browser()
    url = callback_url(site, browser, "alice")
    with caplog.at_level(logging.WARNING, logger="plugit.auth.oidc"):
        refused(browser.get(with_param(url, state=secrets.token_urlsafe(32))), 400, UNKNOWN_STATE)
        refused(browser.get(with_param(url, state="")), 400, UNKNOWN_STATE)
    assert "no login started with this state" in caplog.text
    assert anonymous(browser)
    # The login this session did start is still waiting, and works.
    assert browser.get(url).status_code == 303
    assert browser.get("/svc/whoami").json()["username"] == "alice"


def test_a_callback_replayed_in_another_session_is_refused(site: Site) -> None:
    browser = site.browser()
    url = callback_url(site, browser, "alice")
    assert browser.get(url).status_code == 303
    thief = site.browser()
    refused(thief.get(url), 400, UNKNOWN_STATE)
    assert anonymous(thief)
    refused(browser.get(url), 400, UNKNOWN_STATE)  # a state is used once


def test_a_replayed_code_is_refused_by_the_provider(
    site: Site, caplog: pytest.LogCaptureFixture
) -> None:
    """The stolen code with a state the thief's own session started: the proxy exchanges it,
    and the provider refuses a code that was already used."""
    browser = site.browser()
    url = callback_url(site, browser, "alice")
    assert browser.get(url).status_code == 303
    thief = site.browser()
    state = parse_qs(urlsplit(start(thief)).query)["state"][0]
    with caplog.at_level(logging.WARNING, logger="plugit.auth.oidc"):
        refused(thief.get(with_param(url, state=state)), 403, INVALID)
    assert "invalid_grant" in caplog.text
    assert anonymous(thief)


def test_a_nonce_mismatch_is_refused(site: Site, caplog: pytest.LogCaptureFixture) -> None:
    browser = site.browser()
    url = callback_url(site, browser, "alice", tamper=lambda u: with_param(u, nonce="forged"))
    with caplog.at_level(logging.WARNING, logger="plugit.auth.oidc"):
        refused(browser.get(url), 403, INVALID)
    assert "nonce" in caplog.text
    assert anonymous(browser)


def test_an_expired_id_token_is_refused(site: Site, caplog: pytest.LogCaptureFixture) -> None:
    backend = site.backend
    browser = site.browser()
    url = callback_url(site, browser, "alice")
    backend.clock = lambda: time.time() + ID_TOKEN_TTL + 120  # past exp and the leeway
    try:
        with caplog.at_level(logging.WARNING, logger="plugit.auth.oidc"):
            refused(browser.get(url), 403, INVALID)
    finally:
        backend.clock = time.time
    assert "expired" in caplog.text
    assert anonymous(browser)


def test_a_login_cancelled_at_the_provider_is_refused(
    site: Site, caplog: pytest.LogCaptureFixture
) -> None:
    browser = site.browser()
    url = callback_url(site, browser, "alice", cancel=True)
    assert parse_qs(urlsplit(url).query)["error"] == ["access_denied"]
    with caplog.at_level(logging.INFO, logger="plugit.auth.oidc"):
        refused(browser.get(url), 403, CANCELLED)
    assert "access_denied" in caplog.text
    assert anonymous(browser)


def test_an_answer_from_another_issuer_is_refused(site: Site) -> None:
    browser = site.browser()
    url = callback_url(site, browser, "alice")
    refused(browser.get(with_param(url, iss="https://other.example")), 403, INVALID)
    assert anonymous(browser)


# -- the ID token, checked on its own -------------------------------------------------------------


@pytest.fixture(scope="session")
def real_tokens(world: World) -> dict[str, Any]:
    """A real token response of the provider for alice, with the nonce it was asked with."""
    nonce, verifier = secrets.token_urlsafe(16), secrets.token_urlsafe(48)
    redirect_uri = world.base + CALLBACK_PATH
    with (
        Browser(world.base) as browser,
        OAuth2Session(
            CLIENT_ID,
            CLIENT_SECRET,
            scope="openid email profile groups",
            redirect_uri=redirect_uri,
            code_challenge_method="S256",
        ) as client,
    ):
        metadata = world.provider.metadata()
        url, _ = client.create_authorization_url(
            metadata["authorization_endpoint"], code_verifier=verifier, nonce=nonce
        )
        back = through_provider(browser, url, redirect_uri, "alice")
        code = parse_qs(urlsplit(back).query)["code"][0]
        token = client.fetch_token(
            metadata["token_endpoint"], code=code, code_verifier=verifier, timeout=5
        )
    return {**token, "nonce": nonce}


def _decode(part: str) -> dict[str, Any]:
    return json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))


def _encode(data: dict[str, Any]) -> str:
    raw = json.dumps(data, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def fresh_backend(issuer: str, **overrides: Any) -> OIDCAuth:
    """A backend alone, built from a section like the proxy's."""
    config = ProxyConfig.from_mapping(
        {
            "dev_mode": True,
            "services": [{"name": "svc", "url": "http://127.0.0.1:9/", "mount": "/svc/"}],
            "auth_oidc": oidc_section(issuer, **overrides),
        }
    )
    return auth_oidc._factory(config, config.section("auth_oidc"))


def reason(backend: OIDCAuth, token: str, nonce: str, caplog: pytest.LogCaptureFixture) -> str:
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="plugit.auth.oidc"):
        with pytest.raises(AuthError) as info:
            backend.validate_id_token(token, nonce=nonce)
    assert info.value.code == "invalid"
    return caplog.text


def test_a_real_id_token_is_valid(site: Site, real_tokens: dict[str, Any]) -> None:
    claims = fresh_backend(site.provider.issuer).validate_id_token(
        real_tokens["id_token"],
        nonce=real_tokens["nonce"],
        access_token=real_tokens["access_token"],
    )
    assert claims["sub"] == SUBS["alice"] and claims["aud"] == CLIENT_ID


def test_a_tampered_or_foreign_signature_is_refused(
    site: Site, real_tokens: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    backend = fresh_backend(site.provider.issuer)
    token, nonce = real_tokens["id_token"], real_tokens["nonce"]
    header, payload, signature = token.split(".")
    claims = _decode(payload)

    tampered = ".".join((header, _encode({**claims, "sub": SUBS["bob"]}), signature))
    assert "bad signature" in reason(backend, tampered, nonce, caplog)

    # The same claims and key id, signed by another key.
    other = RSAKey.generate_key(2048)
    forged = jwt.encode(_decode(header), claims, other, algorithms=["RS256"])
    assert "bad signature" in reason(backend, forged, nonce, caplog)

    # A key id the provider does not have (even after reading its keys again).
    unknown = jwt.encode({**_decode(header), "kid": "not-theirs"}, claims, other, ["RS256"])
    assert "no key of the provider" in reason(backend, unknown, nonce, caplog)

    # No signature at all, and a MAC keyed with the client secret.
    none = ".".join((_encode({"alg": "none", "typ": "JWT"}), payload, ""))
    assert "not allowed" in reason(backend, none, nonce, caplog)
    mac = jws.serialize_compact(
        {"alg": "HS256", "kid": _decode(header)["kid"]},
        json.dumps(claims).encode(),
        import_key({"kty": "oct", "k": _encode_secret(CLIENT_SECRET)}),
        algorithms=["HS256"],
    )
    assert "not allowed" in reason(backend, mac, nonce, caplog)
    assert "Traceback" not in caplog.text


def _encode_secret(secret: str) -> str:
    return base64.urlsafe_b64encode(secret.encode()).rstrip(b"=").decode()


def test_claims_are_checked(
    site: Site, real_tokens: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    """Tokens signed by a key the backend trusts, each with one claim wrong."""
    backend = fresh_backend(site.provider.issuer)
    key = RSAKey.generate_key(2048, parameters={"kid": "trusted"})
    backend._signing_keys = lambda kid: [key]  # type: ignore[method-assign]
    now = int(time.time())
    good = {
        "iss": site.provider.issuer,
        "sub": "someone",
        "aud": CLIENT_ID,
        "exp": now + 300,
        "iat": now,
        "nonce": "n-1",
    }

    def token(**changes: Any) -> str:
        claims = {k: v for k, v in {**good, **changes}.items() if v is not None}
        return jwt.encode({"alg": "RS256", "kid": "trusted"}, claims, key, algorithms=["RS256"])

    assert backend.validate_id_token(token(), nonce="n-1")["sub"] == "someone"
    assert backend.validate_id_token(token(aud=[CLIENT_ID, "x"], azp=CLIENT_ID), nonce="n-1")
    assert "nonce" in reason(backend, token(), "n-2", caplog)
    assert "nonce" in reason(backend, token(nonce=None), "n-1", caplog)
    assert "issuer" in reason(backend, token(iss="https://evil.example"), "n-1", caplog)
    assert "audience" in reason(backend, token(aud="someone-else"), "n-1", caplog)
    assert "authorized party" in reason(backend, token(aud=[CLIENT_ID, "x"]), "n-1", caplog)
    assert "expired" in reason(backend, token(exp=now - 120), "n-1", caplog)
    assert "exp is missing" in reason(backend, token(exp=None), "n-1", caplog)
    assert "future" in reason(backend, token(iat=now + 3600), "n-1", caplog)
    assert "sub" in reason(backend, token(sub=""), "n-1", caplog)
    assert "not finite" in reason(backend, token(exp=float("nan")), "n-1", caplog)
    assert "not a number" in reason(backend, token(iat="yesterday"), "n-1", caplog)
    for wrong in ("AAAAAAAAAAAAAAAAAAAAAA", "é-not-ascii", 42):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="plugit.auth.oidc"):
            with pytest.raises(AuthError):
                backend.validate_id_token(token(at_hash=wrong), nonce="n-1", access_token="t")
        assert "at_hash" in caplog.text
    right = hashlib.sha256(b"the-token").digest()[:16]
    at_hash = base64.urlsafe_b64encode(right).rstrip(b"=").decode()
    assert backend.validate_id_token(token(at_hash=at_hash), nonce="n-1", access_token="the-token")
    # Within the leeway (60 s by default), a little clock skew is accepted.
    assert backend.validate_id_token(token(exp=now - 30, iat=now + 30), nonce="n-1")
    strict = fresh_backend(site.provider.issuer, leeway=0)
    strict._signing_keys = lambda kid: [key]  # type: ignore[method-assign]
    assert "expired" in reason(strict, token(exp=now - 1), "n-1", caplog)


def test_an_unknown_key_id_reads_the_keys_again(site: Site, real_tokens: dict[str, Any]) -> None:
    """After a key rotation, the first token signed with the new key refetches the key set."""
    backend = fresh_backend(site.provider.issuer)
    backend.metadata()
    stale = RSAKey.generate_key(2048, parameters={"kid": "old-key"})
    backend._keys = [({"kid": "old-key"}, stale)]
    backend._keys_at = 0.0
    claims = backend.validate_id_token(real_tokens["id_token"], nonce=real_tokens["nonce"])
    assert claims["sub"] == SUBS["alice"]
    assert [data.get("kid") for data, _ in backend._keys] != ["old-key"]


# -- the provider down ----------------------------------------------------------------------------


def test_an_unreachable_provider_gives_a_clear_page_and_local_logins_still_work(
    service_url: str, client_secret_env: None, tmp_path: Path
) -> None:
    closed = f"http://127.0.0.1:{free_port()}"
    with serve_proxy() as (base, deferred):
        build_proxy(deferred, service_url, tmp_path, oidc_section(closed, timeout=2))
        with Browser(base) as browser:
            started = time.monotonic()
            response = browser.get(START_PATH, params={"next": "/svc/whoami"})
            assert time.monotonic() - started < 2
            refused(response, 503, UNAVAILABLE)
            assert 'id="plugit-login-form"' in response.text  # the other method is offered
            assert anonymous(browser)
            again = browser.get(START_PATH)  # asked again only after a few seconds
            refused(again, 503, UNAVAILABLE)

            page = browser.get("/_plugit/login")
            assert page.status_code == 200 and "Example SSO" in page.text
            token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text)
            assert token
            local = browser.post(
                "/_plugit/login",
                data={
                    "csrfmiddlewaretoken": token.group(1),
                    "username": LOCAL_USER,
                    "password": LOCAL_PASSWORD,
                    "next": "/svc/whoami",
                },
            )
            assert local.status_code == 303
            assert browser.get("/svc/whoami").json()["username"] == LOCAL_USER


def test_a_provider_that_never_answers_times_out(
    service_url: str, client_secret_env: None, tmp_path: Path
) -> None:
    with socket.socket() as silent:  # accepts connections (the kernel does), never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        issuer = f"http://127.0.0.1:{silent.getsockname()[1]}"
        with serve_proxy() as (base, deferred):
            build_proxy(deferred, service_url, tmp_path, oidc_section(issuer, timeout=0.5))
            with Browser(base) as browser:
                started = time.monotonic()
                response = browser.get(START_PATH)
                assert time.monotonic() - started < 3
                refused(response, 503, UNAVAILABLE)


def test_a_discovery_document_of_another_issuer_is_unavailable(
    site: Site, caplog: pytest.LogCaptureFixture
) -> None:
    # The same server, named differently: its document says it is another issuer.
    backend = fresh_backend(site.provider.issuer.replace("127.0.0.1", "localhost"))
    with caplog.at_level(logging.ERROR, logger="plugit.auth.oidc"):
        with pytest.raises(AuthError) as info:
            backend.metadata()
    assert info.value.code == "unavailable"
    assert "its issuer is" in caplog.text


# -- logout ---------------------------------------------------------------------------------------


def test_logout_ends_the_provider_session_too(site: Site) -> None:
    browser = login(site, "alice")
    page = browser.get("/_plugit/login").text
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page)
    assert token
    response = browser.post("/_plugit/logout", data={"csrfmiddlewaretoken": token.group(1)})
    assert response.status_code == 303
    location = response.headers["Location"]
    end_session = site.provider.metadata()["end_session_endpoint"]
    assert location.startswith(end_session + "?")
    query = {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}
    assert query["post_logout_redirect_uri"] == site.base + "/"
    assert query["client_id"] == CLIENT_ID
    assert _decode(query["id_token_hint"].split(".")[1])["sub"] == SUBS["alice"]
    assert anonymous(browser)  # logged out here at once

    confirm = browser.get(location)  # the provider asks; say yes
    assert confirm.status_code == 200, confirm.text
    xsrf = re.search(r'name="xsrf" value="([^"]+)"', confirm.text)
    assert xsrf
    back = browser.post(
        urljoin(location, _form_action(confirm.text)),
        data={"xsrf": xsrf.group(1), "logout": "yes"},
    )
    assert back.status_code == 303
    assert back.headers["Location"] == site.base + "/"
    # The provider's session is over: the next login asks for the password again.
    again = browser.get(start(browser))
    assert urlsplit(again.headers["Location"]).path.startswith("/interaction/")
    assert "password" in browser.get(urljoin(location, again.headers["Location"])).text


def test_the_logout_redirect_carries_the_id_token_hint(site: Site) -> None:
    backend = fresh_backend(site.provider.issuer)
    end_session = site.provider.metadata()["end_session_endpoint"]
    request = SimpleNamespace(
        session={"oidc": {"id_token": "a.b.c"}}, scheme="https", host="site.example:8443"
    )
    response = backend.logout_redirect(request)
    assert response is not None and response.status_code == 303
    location = response.headers["Location"]
    assert location.startswith(end_session + "?")
    assert parse_qs(urlsplit(location).query) == {
        "client_id": [CLIENT_ID],
        "id_token_hint": ["a.b.c"],
        "post_logout_redirect_uri": ["https://site.example:8443/"],
    }
    request.session = {}  # no ID token kept: the provider is asked by client_id alone
    location = backend.logout_redirect(request).headers["Location"]
    assert "id_token_hint" not in parse_qs(urlsplit(location).query)


def test_no_provider_logout_when_disabled(client_secret_env: None) -> None:
    backend = fresh_backend("https://sso.example.org", provider_logout=False)
    request = SimpleNamespace(session={}, scheme="http", host="127.0.0.1")
    assert backend.logout_redirect(request) is None


# -- configuration --------------------------------------------------------------------------------


def config_error(**section: Any) -> str:
    base = {"issuer": "https://sso.example.org", "client_id": "plugit", "client_secret": "s"}
    base.update(section)
    config = ProxyConfig.from_mapping(
        {
            "dev_mode": True,
            "services": [{"name": "svc", "url": "http://127.0.0.1:9/", "mount": "/svc/"}],
            "auth_oidc": {k: v for k, v in base.items() if v is not None},
        }
    )
    with pytest.raises(ConfigError) as info:
        auth_oidc._factory(config, config.section("auth_oidc"))
    return info.value.key


@pytest.mark.parametrize(
    ("section", "key"),
    [
        ({"issuer": None}, "auth_oidc.issuer"),
        ({"issuer": "sso.example.org"}, "auth_oidc.issuer"),
        ({"issuer": "http://sso.example.org"}, "auth_oidc.issuer"),
        ({"client_id": None}, "auth_oidc.client_id"),
        (
            {"client_secret": None, "token_endpoint_auth_method": "client_secret_post"},
            "auth_oidc.client_secret",
        ),
        ({"client_secret": {"env": "PLUGIT_TEST_UNSET_VARIABLE"}}, "auth_oidc.client_secret"),
        ({"token_endpoint_auth_method": "private_key_jwt"}, "auth_oidc.token_endpoint_auth_method"),
        ({"scopes": "email profile"}, "auth_oidc.scopes"),
        ({"redirect_uri": "https://site.example/callback"}, "auth_oidc.redirect_uri"),
        ({"post_logout_redirect_uri": "//evil.example/"}, "auth_oidc.post_logout_redirect_uri"),
        ({"timeout": 0}, "auth_oidc.timeout"),
        ({"algorithms": ["HS256"]}, "auth_oidc.algorithms"),
        ({"groups": {"staff": {"services": {"nope": "member"}}}}, 'auth_oidc.groups."staff"'),
        ({"groups": {"staff": {"orgas": {"Acme": "owner"}}}}, 'auth_oidc.groups."staff"'),
        ({"groups": {"staff": {"roles": {}}}}, 'auth_oidc.groups."staff".roles'),
        ({"clientid": "typo"}, "auth_oidc.clientid"),
    ],
)
def test_configuration_errors_name_the_key(section: dict[str, Any], key: str) -> None:
    assert config_error(**section).startswith(key)


def test_a_complete_configuration_is_accepted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PLUGIT_TEST_OIDC_SECRET", "from-the-environment")
    config = ProxyConfig.from_mapping(
        {
            "dev_mode": True,
            "services": [{"name": "polls", "url": "http://127.0.0.1:9/", "mount": "/polls/"}],
            "auth_oidc": {
                "issuer": "http://keycloak:8080/realms/staff",
                "allow_http": True,
                "client_id": "plugit",
                "client_secret": {"env": "PLUGIT_TEST_OIDC_SECRET"},
                "scopes": ["openid", "email", "profile"],
                "redirect_uri": "https://site.example/_plugit/login/oidc/callback",
                "post_logout_redirect_uri": "https://site.example/",
                "groups_claim": "realm_access.roles",
                "groups": {"staff": {"services": {"polls": "member", "*": "member"}}},
            },
        }
    )
    backend = auth_oidc._factory(config, config.section("auth_oidc"))
    assert backend.settings.client_secret == "from-the-environment"
    assert "from-the-environment" not in repr(backend.settings)
    assert backend.start_url() == backend.start_url == START_PATH
    fields = backend.fields_from_claims(
        {"sub": "1", "email": "e@x.org", "realm_access": {"roles": ["staff", "other"]}}
    )
    assert fields["username"] == "e@x.org"  # no preferred_username: the email
    assert fields["services"] == {"polls": "member", "*": "member"} and fields["orgas"] == {}


def test_oidc_logins_need_a_directory(client_secret_env: None) -> None:
    with pytest.raises(ConfigError) as info:
        ProxyApp(
            {
                "dev_mode": True,
                "auth": ["oidc"],
                "users": "",
                "auth_oidc": oidc_section("https://sso.example.org", groups={}),
            },
            plugins=[auth_oidc],
            load_entry_points=False,
        )
    assert info.value.key == "users"


def test_the_provider_script_refuses_to_start_without_a_redirect_uri(site: Site) -> None:
    result = subprocess.run(
        [shutil.which("node") or "node", str(PROVIDER_DIR / "provider.mjs"), "--port=0"],
        cwd=PROVIDER_DIR,
        env={k: v for k, v in os.environ.items() if not k.startswith("OIDC_")},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode != 0 and "redirect URI" in result.stderr


def test_the_documented_configurations_are_valid(monkeypatch: pytest.MonkeyPatch) -> None:
    from plugit_core.config import tomllib

    for name in ("PLUGIT_SECRET_KEY", "PLUGIT_OIDC_SECRET"):
        monkeypatch.setenv(name, STRONG_KEY)
    for name in ("PLUGIT_POLLS_SECRET", "PLUGIT_NEWSROOM_SECRET", "PLUGIT_WIKI_SECRET"):
        monkeypatch.setenv(name, SECRET)
    doc = (ROOT / "docs" / "auth-oidc.md").read_text(encoding="utf-8")
    blocks = [b for b in re.findall(r"```toml\n(.*?)```", doc, re.DOTALL) if "[auth_oidc]" in b]
    assert len(blocks) == 2
    for block in blocks:
        config = ProxyConfig.from_mapping(tomllib.loads(block))
        assert config.auth[0] == "oidc"
        settings = auth_oidc.settings_from_config(config, config.section("auth_oidc"))
        assert settings.groups and settings.redirect_uri


def test_without_joserfc_the_plugin_loads_and_the_configuration_says_what_to_install(
    tmp_path: Path,
) -> None:
    script = """
import sys
sys.modules["joserfc"] = None  # as if the `oidc` extra were not installed
from plugit_backends import auth_oidc
from plugit_core.config import ConfigError
from plugit_core.proxy.app import ProxyApp
config = {"dev_mode": True, "auth": ["oidc"], "users_sqlite": {"path": sys.argv[1]},
          "auth_oidc": {"issuer": "https://sso.example.org", "client_id": "c"}}
try:
    ProxyApp(config, plugins=[auth_oidc], load_entry_points=False)
except ConfigError as exc:
    print(exc.key, exc)
"""
    result = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "users.sqlite3")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("auth_oidc "), result.stdout
    assert "pip install 'plugit-wsgi[oidc]'" in result.stdout


# -- the auth kind's shared suite -----------------------------------------------------------------


class TestOIDCAuthConformance(AuthBackendConformance):
    name = "oidc"
    source = "oidc"
    threads = 3

    @pytest.fixture
    def auth_backend(self, site: Site) -> OIDCAuth:
        return site.backend

    @pytest.fixture
    def directory(self, site: Site) -> Any:
        return site.proxy.users

    @pytest.fixture
    def account(self) -> tuple[str, str]:
        return "alice", PASSWORDS["alice"]

    @pytest.fixture
    def log_in(self, site: Site) -> LogIn:
        """The browser's round trip: the proxy's start URL, the provider's login form (where
        the password is typed), the callback; then the user the session holds."""

        def log_in(username: str, password: str) -> PlugItUser:
            assert password == PASSWORDS[username]  # what the provider's form is given
            browser = login(site, username)
            assert browser.get("/svc/whoami").json()["username"] == username
            return site.user(username)

        return log_in

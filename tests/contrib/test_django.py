"""Django integration over real HTTP: the example Django project (``django_host``) hosting a
PlugIt service, its users seen by the service (:mod:`plugit_contrib.django`)."""

from __future__ import annotations

import contextlib
import importlib
import secrets
import threading
from collections.abc import Iterator
from typing import Any

import django
import pytest
import requests
from django.conf import settings
from django.core.management import call_command
from django.db import connections
from layout_controls import logout_control

from plugit_contrib.django import PlugItDjangoMiddleware, plugit_identity_from_django
from plugit_contrib.examples.django_host import settings as example_settings
from plugit_core.service import (
    PlugItService,
    action,
    json_only,
    only_admin_user,
    only_logged_user,
    only_member_user,
    user_info,
)
from plugit_core.testing import serve

SERVICE_SECRET = "django-tests-service-secret-0123456789"
PASSWORD = "correct horse battery staple"
PAGE = (
    '{% extends "plugit/base.html" %}{% block content %}'
    '<h1 id="title">{{ title }}</h1><p id="user">{{ ebuio_u.username }}</p>{% endblock %}'
)
WSGI_MODULE = "plugit_contrib.examples.django_host.wsgi"


# -- Django, configured once per process ----------------------------------------------------------

_configure_lock = threading.Lock()


def configure_django(database: str) -> None:
    """Configure Django with the example's settings module and ``database``, once per process.

    Django cannot be configured twice: when it already is (by an earlier use in this process),
    it must be with the example's settings, which are then kept as they are.
    """
    with _configure_lock:
        if settings.configured:
            if settings.ROOT_URLCONF != example_settings.ROOT_URLCONF:
                pytest.fail("Django is already configured in this process with other settings")
            return
        values = {name: getattr(example_settings, name) for name in dir(example_settings)}
        values = {name: value for name, value in values.items() if name.isupper()}
        default_db = {**example_settings.DATABASES["default"], "NAME": database}
        values["DATABASES"] = {"default": default_db}
        # Fast hashing: these tests log in often; the hasher is not what they are about.
        values["PASSWORD_HASHERS"] = ["django.contrib.auth.hashers.MD5PasswordHasher"]
        settings.configure(**values)
        django.setup()


@pytest.fixture(scope="session")
def django_db(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    configure_django(str(tmp_path_factory.mktemp("django_host") / "db.sqlite3"))
    try:
        call_command("migrate", verbosity=0, interactive=False)
        yield
    finally:
        connections.close_all()


def make_user(username: str, **flags: Any) -> Any:
    from django.contrib.auth import get_user_model

    model = get_user_model()
    try:
        model.objects.filter(username=username).delete()
        user = model.objects.create_user(
            username,
            email=f"{username}@example.org",
            password=PASSWORD,
            first_name=username.title(),
            last_name="Tester",
            **flags,
        )
    finally:
        connections.close_all()
    return user


@pytest.fixture(scope="module")
def users(django_db: None) -> dict[str, Any]:
    return {
        "staff": make_user("staffer", is_staff=True),
        "plain": make_user("plain"),
        "boss": make_user("boss", is_staff=True, is_superuser=True),
    }


# -- a tiny PlugIt service ------------------------------------------------------------------------


@action("/", template="page.html")
def home(request):
    return {"title": "Polls home"}


@action("/whoami")
@json_only()
@user_info(["username", "pk", "email", "first_name", "ebuio_member", "ebuio_admin"])
def whoami(request):
    return request.user_info


@action("/logged", template="page.html")
@only_logged_user()
def logged(request):
    return {"title": "Logged"}


@action("/member", template="page.html")
@only_member_user()
def member(request):
    return {"title": "Member"}


@action("/admin", template="page.html")
@only_admin_user()
def admin(request):
    return {"title": "Admin"}


@pytest.fixture(scope="module")
def service_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    templates = tmp_path_factory.mktemp("django_host_templates")
    (templates / "page.html").write_text(PAGE)
    service = PlugItService(
        [home, whoami, logged, member, admin], templates=str(templates), secret=SERVICE_SECRET
    )
    with serve(service) as url:
        yield url


# -- the site -------------------------------------------------------------------------------------


class Browser(requests.Session):
    """A requests session on one base URL that never follows redirects."""

    def __init__(self, base: str) -> None:
        super().__init__()
        self.base = base

    def request(self, method: str, url: str, *args: Any, **kwargs: Any) -> requests.Response:  # type: ignore[override]
        kwargs["allow_redirects"] = False
        kwargs.setdefault("timeout", 10)
        return super().request(method, self.base + url, *args, **kwargs)

    def csrf(self) -> str:
        """Django's CSRF token, from its ``csrftoken`` cookie (set by any page with a form; the
        proxy's own, for its mounts' scripts, has the mount's path)."""
        if self.cookies.get("csrftoken", path="/") is None:
            assert self.get("/login/").status_code == 200
        return self.cookies.get("csrftoken", path="/")

    def log_in(self, username: str, password: str = PASSWORD) -> requests.Response:
        return self.post(
            "/login/",
            data={
                "csrfmiddlewaretoken": self.csrf(),
                "username": username,
                "password": password,
                "next": "/polls/",
            },
        )


@pytest.fixture(scope="module")
def site(django_db: None, service_url: str) -> Iterator[str]:
    """The example's WSGI application (Django behind the proxy) on a real port."""
    config = {
        "dev_mode": False,
        "secret_key": secrets.token_urlsafe(36),  # 48 random characters
        "session_cookie": {"secure": False},
        "services": [
            {"name": "polls", "url": service_url, "mount": "/polls/", "secret": SERVICE_SECRET}
        ],
    }
    with pytest.MonkeyPatch.context() as env:  # the module sets it up for WSGI servers
        env.setenv("DJANGO_SETTINGS_MODULE", "plugit_contrib.examples.django_host.settings")
        wsgi = importlib.import_module(WSGI_MODULE)
    application = wsgi.create_application(config)
    assert isinstance(application, PlugItDjangoMiddleware)
    with contextlib.ExitStack() as stack:
        stack.callback(application.proxy.close)
        yield stack.enter_context(serve(application))


@pytest.fixture
def browser(site: str, users: dict[str, Any]) -> Iterator[Browser]:
    with Browser(site) as browser:
        yield browser


def test_site_pages_proxy_pages_and_proxy_files(browser: Browser) -> None:
    home_page = browser.get("/")
    assert home_page.status_code == 200
    assert "<h1>Django host</h1>" in home_page.text
    assert "Hello, visitor." in home_page.text

    polls = browser.get("/polls/")
    assert polls.status_code == 200
    assert '<h1 id="title">Polls home</h1>' in polls.text
    assert 'id="plugit-content"' in polls.text  # inside the PlugIt layout
    assert 'href="/login/"' in polls.text  # the proxy's login link is the site's

    css = browser.get("/_plugit/static/plugit.css")
    assert css.status_code == 200
    assert css.headers["Content-Type"].startswith("text/css")
    assert browser.get("/nowhere/").status_code == 404  # Django's


def test_staff_user_is_a_member_of_the_service(browser: Browser, users: dict[str, Any]) -> None:
    response = browser.log_in("staffer")
    assert response.status_code == 303, response.text
    assert response.headers["Location"] == "/polls/"
    assert "Hello, Staffer Tester (staffer)." in browser.get("/").text

    info = browser.get("/polls/whoami").json()
    assert info["username"] == "staffer"
    assert info["pk"] == str(users["staff"].pk)
    assert info["email"] == "staffer@example.org"
    assert info["first_name"] == "Staffer"
    assert info["ebuio_member"] == "True" or info["ebuio_member"] is True
    page = browser.get("/polls/")
    assert 'data-authenticated="true"' in page.text
    assert "Staffer Tester" in page.text
    assert '<p id="user">staffer</p>' in page.text
    assert browser.get("/polls/logged").status_code == 200
    assert browser.get("/polls/member").status_code == 200
    assert browser.get("/polls/admin").status_code == 403  # staff, not superuser


def test_superuser_administers_every_service(browser: Browser) -> None:
    assert browser.log_in("boss").status_code == 303
    assert browser.get("/polls/member").status_code == 200
    assert browser.get("/polls/admin").status_code == 200


def test_non_staff_user_is_logged_in_but_no_member(browser: Browser) -> None:
    assert browser.log_in("plain").status_code == 303
    assert browser.get("/polls/whoami").json()["username"] == "plain"
    assert browser.get("/polls/logged").status_code == 200
    assert browser.get("/polls/member").status_code == 403
    assert browser.get("/polls/admin").status_code == 403


def test_anonymous_visitors(browser: Browser) -> None:
    assert browser.get("/polls/whoami").json().get("username") in (None, "")
    assert browser.get("/polls/logged").status_code == 403
    assert browser.get("/polls/member").status_code == 403


def test_failed_login_logout_and_forged_sessions(browser: Browser) -> None:
    assert browser.log_in("staffer", "wrong password").status_code == 401
    assert browser.get("/polls/logged").status_code == 403
    # Django's CSRF protection guards the login form
    refused = browser.post("/login/", data={"username": "staffer", "password": PASSWORD})
    assert refused.status_code == 403
    assert browser.get("/polls/logged").status_code == 403

    assert browser.log_in("staffer").status_code == 303
    assert browser.get("/polls/logged").status_code == 200
    assert browser.post("/logout/", data={"csrfmiddlewaretoken": browser.csrf()}).status_code == 303
    assert browser.get("/polls/logged").status_code == 403

    browser.cookies.set("sessionid", "forged-session-key-0123456789abcdef")
    assert browser.get("/polls/logged").status_code == 403


def test_password_change_or_deactivation_ends_the_plugit_login(browser: Browser) -> None:
    user = make_user("changer", is_staff=True)
    assert browser.log_in("changer").status_code == 303
    assert browser.get("/polls/member").status_code == 200
    try:
        user.set_password("another password entirely")
        user.save()
    finally:
        connections.close_all()
    assert browser.get("/polls/member").status_code == 403  # the session hash no longer matches

    make_user("changer", is_staff=True, is_active=False)
    assert browser.log_in("changer").status_code == 401  # Django refuses inactive users


def test_identify_maps_the_user_and_closes_its_connections(browser: Browser) -> None:
    assert browser.log_in("boss").status_code == 303
    cookie = f"other=1; {settings.SESSION_COOKIE_NAME}={browser.cookies['sessionid']}"
    identify = plugit_identity_from_django()
    user = identify({"HTTP_COOKIE": cookie})
    assert user is not None
    assert (user.username, user.is_authenticated, user.is_superuser) == ("boss", True, True)
    assert user.member_of == frozenset({"*"}) and user.admin_of == frozenset({"*"})
    assert user.is_member("any-service") and user.is_admin("any-service")
    assert connections["default"].connection is None  # closed after use (CONN_MAX_AGE = 0)
    assert identify({}) is None
    assert identify({"HTTP_COOKIE": f"{settings.SESSION_COOKIE_NAME}=nope"}) is None
    assert connections["default"].connection is None


def test_logout_with_the_layouts_control_on_a_service_page(browser: Browser) -> None:
    assert browser.log_in("staffer").status_code == 303
    page = browser.get("/polls/")
    assert 'data-authenticated="true"' in page.text
    method, action_url, fields = logout_control(page.text)
    assert (method, action_url) == ("POST", "/logout/")  # Django's own logout view
    assert set(fields) == {"csrfmiddlewaretoken"}  # a Django token for this visitor
    assert fields["csrfmiddlewaretoken"] != browser.cookies.get("csrftoken", path="/")  # masked

    # Django's CSRF check still guards the logout
    refused = browser.post(action_url, data={"csrfmiddlewaretoken": "x" * 64})
    assert refused.status_code == 403
    assert browser.get("/polls/logged").status_code == 200

    response = browser.post(action_url, data=fields)  # what the browser sends
    assert response.status_code == 303, response.text
    assert browser.get("/polls/logged").status_code == 403
    assert 'data-authenticated="false"' in browser.get("/polls/").text
    assert "Hello, visitor." in browser.get("/").text


def test_no_logout_fields_without_a_csrf_cookie(browser: Browser) -> None:
    assert browser.log_in("plain").status_code == 303
    for cookie in [c for c in browser.cookies if c.name == "csrftoken"]:
        browser.cookies.clear(cookie.domain, cookie.path, cookie.name)
    page = browser.get("/polls/")
    method, action_url, fields = logout_control(page.text)
    assert (method, action_url, fields) == ("POST", "/logout/", {})

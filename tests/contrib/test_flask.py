"""Flask integration over real HTTP: a Flask site hosting a PlugIt service, and a PlugIt service
written with Flask (:mod:`plugit_contrib.flask`)."""

from __future__ import annotations

import contextlib
import re
import secrets
import types
from collections.abc import Iterator
from typing import Any

import flask
import pytest
import requests
from layout_controls import logout_control
from werkzeug.test import Client

from plugit_contrib.examples.flask_host import app as flask_host
from plugit_contrib.flask import make_flask_service
from plugit_core.proxy.app import ProxyApp
from plugit_core.service import (
    PlugItService,
    action,
    json_only,
    only_logged_user,
    only_member_user,
    user_info,
)
from plugit_core.testing import serve

SERVICE_SECRET = "flask-tests-service-secret-0123456789"
PAGE = (
    '{% extends "plugit/base.html" %}{% block content %}'
    '<h1 id="title">{{ title }}</h1><p id="user">{{ ebuio_u.username }}</p>{% endblock %}'
)


def strong_key() -> str:
    return secrets.token_urlsafe(36)  # 48 random characters


def proxy_config(service_url: str, mount: str = "/polls/") -> dict[str, Any]:
    return {
        "dev_mode": False,
        "secret_key": strong_key(),
        "session_cookie": {"secure": False},
        "services": [
            {"name": "polls", "url": service_url, "mount": mount, "secret": SERVICE_SECRET}
        ],
    }


class Browser(requests.Session):
    """A requests session on one base URL that never follows redirects."""

    def __init__(self, base: str) -> None:
        super().__init__()
        self.base = base

    def request(self, method: str, url: str, *args: Any, **kwargs: Any) -> requests.Response:  # type: ignore[override]
        kwargs["allow_redirects"] = False
        kwargs.setdefault("timeout", 10)
        return super().request(method, self.base + url, *args, **kwargs)


def field(html: str, name: str) -> str:
    match = re.search(rf'name="{name}" value="([^"]*)"', html)
    assert match, f"no {name} field in the page"
    return match.group(1)


# -- a tiny PlugIt service for the Flask host -----------------------------------------------------


@action("/", template="page.html")
def home(request):
    return {"title": "Polls home"}


@action("/whoami")
@json_only()
@user_info(["username", "pk"])
def whoami(request):
    return {
        "username": request.user_info.get("username"),
        "pk": request.user_info.get("pk"),
        "remote_addr": request.headers.get("X-Plugit-Remote-Addr"),
        "plugit_headers": sorted(
            k.lower() for k in request.headers.keys() if k.lower().startswith("x-plugit")
        ),
    }


@action("/logged", template="page.html")
@only_logged_user()
def logged(request):
    return {"title": "Logged"}


@action("/member", template="page.html")
@only_member_user()
def member(request):
    return {"title": "Member"}


@pytest.fixture(scope="module")
def service_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    templates = tmp_path_factory.mktemp("flask_host_templates")
    (templates / "page.html").write_text(PAGE)
    service = PlugItService(
        [home, whoami, logged, member], templates=str(templates), secret=SERVICE_SECRET
    )
    with serve(service) as url:
        yield url


@pytest.fixture
def host(service_url: str) -> Iterator[Browser]:
    """The example Flask site, with a test-only view showing the X-Plugit headers Flask got."""
    app = flask_host.create_app(proxy_config(service_url))

    @app.get("/seen_headers")
    def seen_headers() -> Any:
        return {"headers": sorted(k for k in flask.request.headers.keys() if "plugit" in k.lower())}

    with contextlib.ExitStack() as stack:
        stack.callback(app.extensions["plugit"].proxy.close)
        browser = Browser(stack.enter_context(serve(app)))
        stack.callback(browser.close)
        yield browser


def log_in(browser: Browser, username: str, password: str) -> requests.Response:
    form = browser.get("/login")
    assert form.status_code == 200
    return browser.post(
        "/login",
        data={
            "csrf_token": field(form.text, "csrf_token"),
            "next": "/polls/",
            "username": username,
            "password": password,
        },
    )


# -- the Flask host --------------------------------------------------------------------------------


def test_site_pages_proxy_pages_and_proxy_files(host: Browser) -> None:
    home_page = host.get("/")
    assert home_page.status_code == 200
    assert "<h1>Flask host</h1>" in home_page.text
    assert "Hello, visitor." in home_page.text

    polls = host.get("/polls/")
    assert polls.status_code == 200
    assert '<h1 id="title">Polls home</h1>' in polls.text
    assert 'id="plugit-content"' in polls.text  # inside the PlugIt layout
    assert 'data-authenticated="false"' in polls.text
    assert 'id="plugit-login" class="btn btn-sm btn-light" href="/login"' in polls.text

    css = host.get("/_plugit/static/plugit.css")
    assert css.status_code == 200
    assert css.headers["Content-Type"].startswith("text/css")

    assert host.get("/polls").status_code == 308  # the mount without its slash
    assert host.get("/nowhere").status_code == 404  # Flask's


def test_logged_in_flask_user_is_the_services_user(host: Browser) -> None:
    response = log_in(host, "alice", "alice-password")
    assert response.status_code == 303
    assert response.headers["Location"] == "/polls/"
    assert "Hello, Alice (alice)." in host.get("/").text

    data = host.get("/polls/whoami").json()
    assert (data["username"], data["pk"]) == ("alice", "1")
    page = host.get("/polls/")
    assert 'data-authenticated="true"' in page.text
    assert "Alice Martin" in page.text  # the layout shows the user
    assert '<p id="user">alice</p>' in page.text
    assert host.get("/polls/logged").status_code == 200
    assert host.get("/polls/member").status_code == 200

    home_page = host.get("/")
    logout = host.post("/logout", data={"csrf_token": field(home_page.text, "csrf_token")})
    assert logout.status_code == 303
    assert host.get("/polls/whoami").json()["username"] in (None, "")


def test_user_rights_come_from_load_user(host: Browser) -> None:
    assert log_in(host, "bob", "bob-password").status_code == 303
    assert host.get("/polls/whoami").json()["username"] == "bob"
    assert host.get("/polls/logged").status_code == 200
    assert host.get("/polls/member").status_code == 403  # bob is no member of the polls


def test_anonymous_visitors(host: Browser) -> None:
    data = host.get("/polls/whoami").json()
    assert data["username"] in (None, "") and data["pk"] in (None, "")
    assert host.get("/polls/logged").status_code == 403
    assert host.get("/polls/member").status_code == 403


def test_failed_login_and_forged_sessions_stay_anonymous(host: Browser) -> None:
    assert log_in(host, "alice", "wrong").status_code == 401
    assert host.get("/polls/whoami").json()["username"] in (None, "")
    # a Flask session cookie signed with another key is no session
    other = flask.Flask("forger")
    other.secret_key = strong_key()
    serializer = other.session_interface.get_signing_serializer(other)
    assert serializer is not None
    host.cookies.set("session", serializer.dumps({"user_id": 1}))
    assert host.get("/polls/whoami").json()["username"] in (None, "")
    assert "Hello, visitor." in host.get("/").text
    # a login form without its CSRF token is refused
    response = host.post("/login", data={"username": "alice", "password": "alice-password"})
    assert response.status_code == 400


def test_client_plugit_headers_are_stripped_everywhere(host: Browser) -> None:
    log_in(host, "bob", "bob-password")
    forged = {
        "X-Plugit-User-Username": "alice",
        "X-Plugit-Remote-Addr": "10.0.0.1",
        "X-PlugItSession-color": "red",
    }
    seen = host.get("/seen_headers", headers=forged)
    assert seen.status_code == 200
    assert seen.json() == {"headers": []}  # even on Flask's own routes
    data = host.get("/polls/whoami", headers=forged).json()
    assert data["username"] == "bob"
    assert data["remote_addr"] == "127.0.0.1"
    # only the proxy's own headers reach the service (its address, not the forged one)
    assert set(data["plugit_headers"]) == {
        "x-plugit-remote-addr",
        "x-plugit-deadline",  # when the proxy stops waiting, signed like the rest
        "x-plugit-nonce",
        "x-plugit-signature",
        "x-plugit-timestamp",
    }


def test_open_redirects_after_login_are_refused(host: Browser) -> None:
    form = host.get("/login")
    response = host.post(
        "/login",
        data={
            "csrf_token": field(form.text, "csrf_token"),
            "next": "//evil.example/",
            "username": "alice",
            "password": "alice-password",
        },
    )
    assert response.status_code == 303
    assert response.headers["Location"] == "/"


def test_logout_with_the_layouts_control_on_a_service_page(host: Browser) -> None:
    assert log_in(host, "alice", "alice-password").status_code == 303
    page = host.get("/polls/")
    assert 'data-authenticated="true"' in page.text
    method, action_url, fields = logout_control(page.text)
    assert (method, action_url) == ("POST", "/logout")  # the site's own logout view
    assert set(fields) == {"csrf_token"}  # the site's CSRF token, not the proxy's
    assert "csrfmiddlewaretoken" not in fields

    # the site's CSRF check still guards its logout
    assert host.post(action_url, data={}).status_code == 400
    assert host.post(action_url, data={"csrf_token": "forged"}).status_code == 400
    assert host.get("/polls/whoami").json()["username"] == "alice"

    response = host.post(action_url, data=fields)  # what the browser sends
    assert response.status_code == 303
    assert response.headers["Location"] == "/"
    assert host.get("/polls/whoami").json()["username"] in (None, "")
    assert 'data-authenticated="false"' in host.get("/polls/").text
    assert "Hello, visitor." in host.get("/").text


def test_logout_control_is_a_link_without_logout_fields(service_url: str) -> None:
    app = flask_host.create_app(proxy_config(service_url), logout_fields=None)
    try:
        client = Client(app)
        form = client.get("/login").get_data(as_text=True)
        response = client.post(
            "/login",
            data={
                "csrf_token": field(form, "csrf_token"),
                "username": "alice",
                "password": "alice-password",
            },
        )
        assert response.status_code == 303
        page = client.get("/polls/").get_data(as_text=True)
        assert logout_control(page) == ("GET", "/logout", {})
        assert "csrfmiddlewaretoken" not in page  # prod mode: no form carries the proxy's token
    finally:
        app.extensions["plugit"].proxy.close()


def test_host_below_a_prefix_login_pages_and_logout(service_url: str) -> None:
    """The Flask site served at /portal (SCRIPT_NAME): links, redirects and the logout form."""
    portal = "http://localhost/portal"
    app = flask_host.create_app(proxy_config(service_url))
    try:
        client = Client(app)
        home_page = client.get("/", base_url=portal).get_data(as_text=True)
        assert 'id="polls-link" href="/portal/polls/"' in home_page
        polls = client.get("/polls/", base_url=portal).get_data(as_text=True)
        assert 'id="plugit-login" class="btn btn-sm btn-light" href="/portal/login"' in polls
        assert 'href="/portal/polls/" data-plugit-service="polls"' in polls
        assert "/portal/_plugit/static/plugit.css" in polls

        form = client.get("/login", base_url=portal).get_data(as_text=True)
        assert 'action="/portal/login"' in form
        response = client.post(
            "/login",
            base_url=portal,
            data={
                "csrf_token": field(form, "csrf_token"),
                "next": "/portal/polls/",
                "username": "alice",
                "password": "alice-password",
            },
        )
        assert response.headers["Location"] == "/portal/polls/"
        page = client.get("/polls/", base_url=portal).get_data(as_text=True)
        assert '<p id="user">alice</p>' in page
        method, action_url, fields = logout_control(page)
        assert (method, action_url) == ("POST", "/portal/logout")
        assert action_url.startswith("/portal/")
        response = client.post(action_url[len("/portal") :], base_url=portal, data=fields)
        assert response.status_code == 303
        assert response.headers["Location"] == "/portal/"
        whoami = client.get("/polls/whoami", base_url=portal).get_json()
        assert whoami["username"] in (None, "")
    finally:
        app.extensions["plugit"].proxy.close()


# -- a PlugIt service written with Flask ----------------------------------------------------------


def _flask_actions() -> types.ModuleType:
    """A module of actions that use Flask's globals (the shape of a service author's module)."""
    module = types.ModuleType("flask_service_actions")
    teardowns: list[str] = []

    @action("/hello")
    @json_only()
    @user_info(["username"])
    def hello(request):
        flask.g.greeting = "Hello"
        return {
            "same_request": flask.request._get_current_object() is request,
            "text": f"{flask.g.greeting}, {flask.request.args.get('name', 'nobody')}",
            "app": flask.current_app.name,
            "endpoint": flask.request.endpoint,
            "username": request.user_info.get("username"),
        }

    @action("/item/<int:pk>")
    @json_only()
    def item(request, pk):
        if pk != 1:
            flask.abort(404)
        return {"pk": pk}

    @action("/form", methods=["POST"])
    @json_only()
    def form(request):
        return {
            "flask": flask.request.form.getlist("x"),
            "argument": request.form.getlist("x"),
            "file": flask.request.files["f"].read().decode(),
        }

    module.hello = hello
    module.item = item
    module.form = form
    module.teardowns = teardowns
    return module


def make_service_app(**settings: Any) -> flask.Flask:
    module = _flask_actions()
    app = make_flask_service(module, **settings)

    @app.get("/health")
    def health() -> Any:
        return {"ok": True, "same_app": flask.current_app.name}

    @app.teardown_request
    def note(exc: BaseException | None) -> None:
        module.teardowns.append(flask.request.path)

    app.config["plugit_module"] = module
    return app


@pytest.fixture
def flask_service() -> Iterator[tuple[Browser, flask.Flask]]:
    app = make_service_app()
    with serve(app) as url, Browser(url) as browser:
        yield browser, app


def test_protocol_endpoints(flask_service: tuple[Browser, flask.Flask]) -> None:
    browser, _ = flask_service
    assert browser.get("/ping", params={"data": "abc"}).json() == {"data": "abc"}
    version = browser.get("/version").json()
    assert version["result"] == "Ok" and str(version["version"]) == "1"
    meta = browser.get("/meta/hello").json()
    assert meta["json_only"] is True
    assert meta["user_info"] == ["username"]
    assert browser.get("/meta/item/5").status_code == 200


def test_actions_use_flask_request_g_and_current_app(
    flask_service: tuple[Browser, flask.Flask],
) -> None:
    browser, app = flask_service
    data = browser.get("/action/hello", params={"name": "Ada", "ebuio_u_username": "ada"}).json()
    assert data == {
        "same_request": True,
        "text": "Hello, Ada",
        "app": "flask_service_actions",
        "endpoint": None,  # no Flask view: the service answered
        "username": "ada",
    }
    assert "/action/hello" in app.config["plugit_module"].teardowns  # Flask's teardown ran


def test_flask_request_sees_the_posted_form(flask_service: tuple[Browser, flask.Flask]) -> None:
    browser, _ = flask_service
    response = browser.post(
        "/action/form", data={"x": ["1", "2"]}, files={"f": ("f.txt", b"file body")}
    )
    assert response.status_code == 200, response.text
    assert response.json() == {"flask": ["1", "2"], "argument": ["1", "2"], "file": "file body"}


def test_flask_abort_is_the_services_answer(flask_service: tuple[Browser, flask.Flask]) -> None:
    browser, _ = flask_service
    assert browser.get("/action/item/1").json() == {"pk": 1}
    missing = browser.get("/action/item/2")
    assert missing.status_code == 404
    assert missing.headers["Content-Type"] == "application/json"
    assert missing.json()["status"] == 404


def test_flask_routes_beside_the_actions(flask_service: tuple[Browser, flask.Flask]) -> None:
    browser, _ = flask_service
    health = browser.get("/health")
    assert health.status_code == 200
    assert health.json() == {"ok": True, "same_app": "flask_service_actions"}
    assert browser.post("/health").status_code == 405  # Flask's answer for its own URL
    nowhere = browser.get("/nowhere")
    assert nowhere.status_code == 404
    assert nowhere.json()["status"] == 404  # the service's answer: no Flask route there
    assert browser.put("/action/form").status_code == 405  # the service's rules still apply


def test_flask_routes_follow_allowed_networks() -> None:
    app = make_service_app(allowed_networks=["10.0.0.0/8"])
    with serve(app) as url, Browser(url) as browser:
        assert browser.get("/health").status_code == 404
        assert browser.get("/ping").status_code == 404


def test_flask_service_behind_the_proxy() -> None:
    app = make_service_app(secret=SERVICE_SECRET)
    with contextlib.ExitStack() as stack:
        service_url = stack.enter_context(serve(app))
        unsigned = stack.enter_context(Browser(service_url))
        assert unsigned.get("/action/hello").status_code == 403  # the proxy's signature needed
        proxy = ProxyApp(proxy_config(service_url, mount="/svc/"), load_entry_points=False)
        stack.callback(proxy.close)
        browser = stack.enter_context(Browser(stack.enter_context(serve(proxy))))
        data = browser.get("/svc/hello", params={"name": "Grace"}).json()
        assert data["same_request"] is True
        assert data["text"] == "Hello, Grace"
        assert data["username"] in (None, "")
        missing = browser.get("/svc/item/2")
        assert missing.status_code == 404
        assert missing.headers["Content-Type"].startswith("text/html")  # the themed error page
        assert "Page not found" in missing.text

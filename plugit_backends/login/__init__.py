"""Login and logout pages, and the session-to-user hook, for every auth backend.

Active when the configuration names auth backends (``auth = ["session", "oidc"]``).  It serves
``/_plugit/login`` (a form for the password backends, a button per redirect backend) and
``/_plugit/logout`` (POST), and turns the session's user id into a user through the directory.

Failed logins are counted per account and per client address; after ``max_failures`` within
``window`` seconds, further attempts are refused without checking the password until the window
has passed.

Configuration (all optional)::

    [login_default]
    max_failures = 5       # per account and per address
    window = 900           # seconds
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from werkzeug.wrappers import Response

from plugit_core.config import ConfigError, ProxyConfig
from plugit_core.hookspecs import hookimpl
from plugit_core.identity import SESSION_BACKEND_KEY, SESSION_USER_KEY, AuthError, log_in, log_out
from plugit_core.proxy.routes import Route
from plugit_core.users import PlugItUser

__all__ = ["LoginSettings"]

log = logging.getLogger("plugit.login")

LOGIN_PATH = "/_plugit/login"
LOGOUT_PATH = "/_plugit/logout"


class LoginSettings:
    """The ``[login_default]`` table."""

    def __init__(self, max_failures: int = 5, window: float = 900) -> None:
        self.max_failures = max_failures
        self.window = window


def _settings(config: ProxyConfig, section: Mapping[str, Any]) -> LoginSettings:
    unknown = set(section) - {"max_failures", "window"}
    if unknown:
        raise ConfigError(f"login_default.{sorted(unknown)[0]}", "unknown setting", config.source)
    max_failures = section.get("max_failures", 5)
    window = section.get("window", 900)
    if isinstance(max_failures, bool) or not isinstance(max_failures, int) or max_failures < 1:
        raise ConfigError(
            "login_default.max_failures", "expected a whole number >= 1", config.source
        )
    if isinstance(window, bool) or not isinstance(window, (int, float)) or window <= 0:
        raise ConfigError("login_default.window", "expected a number of seconds > 0", config.source)
    return LoginSettings(max_failures, float(window))


def _safe_next(value: str | None) -> str:
    """A local path to go back to after login (never another site)."""
    if not value:
        return "/"
    split = urlsplit(value)
    if split.scheme or split.netloc:
        return "/"
    if (
        not value.startswith("/")
        or value.startswith(("//", "/\\"))
        or any(c in value for c in "\r\n\\")
    ):
        return "/"
    return value


def _backends(proxy: Any) -> tuple[list[Any], list[Any]]:
    password = [b for b in proxy.auth if hasattr(b, "authenticate")]
    redirect = [b for b in proxy.auth if hasattr(b, "start_url")]
    return password, redirect


def _login_page(
    request: Any,
    *,
    status: int = 200,
    error: str | None = None,
    username: str = "",
    next_path: str = "/",
) -> Response:
    proxy = request.proxy
    password, redirect = _backends(proxy)
    return proxy.render_site_page(
        request,
        "plugit/login.html",
        status=status,
        password_backends=password,
        redirect_backends=redirect,
        login_action=LOGIN_PATH,
        next=next_path,
        username=username,
        error=error,
        notice=None,
        page_title="Log in",
    )


def login_view(request: Any) -> Response:
    proxy = request.proxy
    if request.method == "GET":
        referrer = request.headers.get("Referer", "")
        own = f"{request.scheme}://{request.host}"
        fallback = referrer[len(own) :] if referrer.startswith(own + "/") else None
        return _login_page(request, next_path=_safe_next(request.args.get("next") or fallback))
    username = request.form.get("username", "").strip()
    password = request.form.get("password", "")
    next_path = _safe_next(request.form.get("next"))
    if not username or not password:
        return _login_page(
            request,
            status=400,
            error="Enter your user name and password.",
            username=username,
            next_path=next_path,
        )
    settings: LoginSettings = proxy.login_settings
    keys = (f"login:user:{username.lower()}", f"login:addr:{proxy.client_address(request)}")
    store = proxy.users
    if any(store.count_failures(key, settings.window) >= settings.max_failures for key in keys):
        log.warning("login throttled for %r from %s", username, proxy.client_address(request))
        return _login_page(
            request,
            status=429,
            error="Too many failed attempts. Wait a few minutes before trying again.",
            username=username,
            next_path=next_path,
        )
    password_backends, _ = _backends(proxy)
    codes = []
    for backend in password_backends:
        try:
            user = backend.authenticate(username, password, request)
        except AuthError as exc:
            codes.append((backend.name, exc))
            continue
        for key in keys:
            store.clear_failures(key)
        log_in(request, user, backend.name)
        log.info("%s logged in through %s", user.username, backend.name)
        return Response(b"", status=303, headers={"Location": next_path})
    for key in keys:
        store.record_failure(key)
    # Say why only when no backend could even check (a directory down, an account disabled).
    messages = [exc for _, exc in codes if exc.code not in ("bad_credentials",)]
    if codes and all(exc.code == "unavailable" for _, exc in codes):
        error = "The login service is unavailable right now. Please try again later."
    elif any(exc.code == "disabled" for exc in messages):
        error = "This account is disabled. Ask an administrator."
    else:
        error = "Wrong user name or password."
    for name, exc in codes:
        log.info("login of %r refused by %s: %s", username, name, exc.code)
    return _login_page(request, status=401, error=error, username=username, next_path=next_path)


def logout_view(request: Any) -> Response:
    proxy = request.proxy
    backend_name = request.session.get(SESSION_BACKEND_KEY)
    log_out(request)
    for backend in proxy.auth:
        if getattr(backend, "name", None) == backend_name and hasattr(backend, "logout_redirect"):
            redirect = backend.logout_redirect(request)
            if redirect is not None:
                return redirect
    return Response(b"", status=303, headers={"Location": "/"})


@hookimpl(trylast=True)
def plugit_register_backends(register: Any) -> None:
    register("login", "default", _settings)


@hookimpl
def plugit_extra_routes(proxy: Any) -> list[Route] | None:
    if not proxy.auth:
        return None
    proxy.login_settings = proxy.backends.build("login", "default", proxy.config)
    routes = [
        Route(LOGIN_PATH, login_view, methods=("GET", "POST")),
        Route(LOGOUT_PATH, logout_view, methods=("POST",)),
    ]
    for backend in proxy.auth:
        if hasattr(backend, "routes"):
            routes.extend(backend.routes(proxy))
    return routes


@hookimpl
def plugit_startup(proxy: Any) -> None:
    if proxy.auth:
        proxy.login_url = LOGIN_PATH
        proxy.logout_url = LOGOUT_PATH


@hookimpl
def plugit_identify_user(request: Any, proxy: Any) -> PlugItUser | None:
    if proxy.users is None or not proxy.auth:
        return None
    pk = request.session.get(SESSION_USER_KEY)
    if pk is None:
        return None
    user = proxy.users.get_user(pk)
    if user is None or not proxy.users.is_active(pk):
        return None  # deleted or disabled since the login: anonymous from now on
    return user

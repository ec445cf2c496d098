"""Login and logout pages, and the session-to-user hook, for every auth backend.

Active when the configuration names auth backends (``auth = ["session", "oidc"]``).  It serves
``/_plugit/login`` (a form for the password backends, a button per redirect backend) and
``/_plugit/logout`` (POST), and turns the session's user id into a user through the directory.

Failed logins are counted per account and per client address; after ``max_failures`` for the
account (or ``max_address_failures`` from the address) within ``window`` seconds, further
attempts are refused (429) without checking the password until old failures leave the window.
The address limit is higher by default: many people may share one address (an office, a NAT).
A successful login forgets the account's failures, not the address's: one valid account must not
reset the count for guesses at others.

The session remembers a fingerprint of the user's password hash: setting a new password ends
every session opened with the old one.  It also remembers the user's session generation (kept in
the directory, shared by every proxy process): a logout bumps it, which ends every session of that
user opened before, on every device, including copies of the cookie taken before the logout,
whatever the session backend (a signed cookie cannot be revoked otherwise).  Such a session is
emptied when it is opened, before anything reads it: it holds no user and no CSRF token.  A
session opened through an auth backend that is no longer configured is anonymous.

Both pages read at most ``MAX_BODY`` bytes of a POST (a login form is a few hundred): a larger
body, declared or chunked, gets a 413 page before any of it is parsed; a body that cannot be read
as the form (a repeated field, a user name too long or with control characters, a password
with a NUL) gets a 400 page, without counting as a failed login.  The CSRF token is checked after
the body is bounded.

Configuration (all optional)::

    [login_default]
    max_failures = 5              # per account
    max_address_failures = 20     # per client address (default: 4 x max_failures)
    window = 900                  # seconds (at most 86400)
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from werkzeug.datastructures import MultiDict
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge
from werkzeug.wrappers import Response

from plugit_core.backends import RegisterBackend, Session, SessionBackend
from plugit_core.config import ProxyConfig
from plugit_core.hookspecs import hookimpl
from plugit_core.identity import SESSION_BACKEND_KEY, SESSION_USER_KEY, AuthError, log_in, log_out
from plugit_core.proxy.bodies import read_body
from plugit_core.proxy.redirects import is_local_path
from plugit_core.proxy.routes import Route, SiteLinks
from plugit_core.settings import setting
from plugit_core.stores import StoreUnavailable
from plugit_core.users import PlugItUser

if TYPE_CHECKING:
    from plugit_core.proxy.context import PluginContext

__all__ = [
    "LOGIN_PATH",
    "LOGOUT_PATH",
    "MAX_BODY",
    "SESSION_GENERATION_KEY",
    "SESSION_PASSWORD_KEY",
    "EndableSessions",
    "LoginSettings",
]

log = logging.getLogger("plugit.login")

LOGIN_PATH = "/_plugit/login"
LOGOUT_PATH = "/_plugit/logout"
SESSION_PASSWORD_KEY = "pwv"  # noqa: S105 (a session key: the password hash fingerprint)
SESSION_GENERATION_KEY = "sgen"  # the user's session generation at login
MAX_WINDOW = 86400  # stores forget failures after a day
MAX_USERNAME = 256
MAX_PASSWORD = 4096  # as local accounts: longer input is refused without being checked
MAX_BODY = 64 * 1024  # bytes of a login or logout POST
SINGLE_FIELDS = ("username", "password", "next", "csrfmiddlewaretoken")

MESSAGES = {
    "bad_credentials": "Wrong user name or password.",
    "partly_unavailable": (
        "Wrong user name or password. Some account directories cannot be reached right now: "
        "if yours is one of them, please try again later."
    ),
    "disabled": "This account is disabled. Ask an administrator.",
    "unavailable": "The login service is unavailable right now. Please try again later.",
    "throttled": "Too many failed attempts. Wait a few minutes before trying again.",
    "missing": "Enter your user name and password.",
    "malformed": "This form could not be read. Reload the page and try again.",
    "control": "A password cannot contain NUL characters.",
    "password_too_long": f"A password has at most {MAX_PASSWORD} characters.",
    "too_large": "What you sent is far larger than a login form. Reload the page and try again.",
}
CSRF_MESSAGE = "The form has expired. Reload the page and try again."


@dataclass(frozen=True)
class LoginSettings:
    """The ``[login_default]`` table: how failed logins are throttled."""

    max_failures: int = setting(
        5, minimum=1, help="failed logins of one user name before it is throttled"
    )
    window: float = setting(
        900.0, above=0, maximum=MAX_WINDOW, help="seconds failures are remembered for"
    )
    max_address_failures: int = setting(
        20,
        minimum=1,
        default_from=lambda values: 4 * values["max_failures"],
        help="failed logins from one client address (default: 4 x max_failures)",
    )


def _settings(config: ProxyConfig, section: Mapping[str, Any]) -> LoginSettings:
    return config.read(LoginSettings, "login_default", section)


def _safe_next(value: str | None, base: str = "") -> str:
    """A local path to go back to after login (never another site).

    ``value`` is the browser's path (below the proxy's ``SCRIPT_NAME``, ``base``); so is the
    answer, the site's home (``base + "/"``) when ``value`` will not do.
    """
    home = base + "/"
    if not value:
        return home
    if not is_local_path(value):  # as browsers read it (plugit_core.proxy.redirects)
        return home
    if value.startswith((base + LOGIN_PATH, base + LOGOUT_PATH)):
        return home
    return value


def _backends(proxy: PluginContext) -> tuple[list[Any], list[Any]]:
    password = [b for b in proxy.auth if hasattr(b, "authenticate")]
    redirect = [b for b in proxy.auth if hasattr(b, "start_url")]
    return password, redirect


def password_fingerprint(proxy: PluginContext, password_hash: str | None) -> str:
    """What the session keeps of the user's password hash ("" for users without one)."""
    if not password_hash:
        return ""
    key = proxy.config.secret_key.encode("utf-8")
    digest = hmac.new(key, b"plugit.password:" + password_hash.encode("utf-8"), hashlib.sha256)
    return digest.hexdigest()[:32]


def _login_page(
    request: Any,
    *,
    status: int = 200,
    error: str | None = None,
    username: str = "",
    next_path: str = "/",
    headers: Mapping[str, str] | None = None,
) -> Response:
    proxy = request.proxy
    password, redirect = _backends(proxy)
    user = proxy.identify(request)
    notice = None
    if user.is_authenticated and error is None:
        notice = f"You are logged in as {user.display_name}."
    response = proxy.render_site_page(
        request,
        "plugit/login.html",
        status=status,
        password_backends=password,
        redirect_backends=redirect,
        login_action=proxy.site_url(request, LOGIN_PATH),
        next=next_path,
        username=username,
        error=error,
        notice=notice,
        page_title="Log in",
    )
    response.headers["Cache-Control"] = "no-store"
    response.headers.update(headers or {})
    return response


def _read_form(request: Any) -> MultiDict[str, str] | int:
    """The POSTed form, read within ``MAX_BODY`` bytes; else the status refusing it (413 too
    large, 411 unreadable framing, 400 malformed)."""
    try:
        read_body(request, MAX_BODY)
        return request.form
    except RequestEntityTooLarge:
        return 413
    except HTTPException as exc:  # 411: chunked, and the server did not decode it
        return exc.code or 400
    except ValueError:  # a form werkzeug cannot parse
        return 400


def _form_problem(form: MultiDict[str, str]) -> tuple[int, str] | None:
    """Why the login form cannot be used (the status and a key of MESSAGES), or None."""
    if any(len(form.getlist(name)) > 1 for name in SINGLE_FIELDS):
        return 400, "malformed"  # which one counts would depend on who reads it
    username = form.get("username", "").strip()
    password = form.get("password", "")
    if not username or not password:
        return 400, "missing"
    if len(username) > MAX_USERNAME or any(ord(c) < 32 or ord(c) == 127 for c in username):
        # No account has such a name (see identity.check_username): no backend is asked.
        return 401, "bad_credentials"
    if "\x00" in password:
        return 400, "control"
    if len(password) > MAX_PASSWORD:
        return 400, "password_too_long"
    return None


def login_view(request: Any, settings: LoginSettings) -> Response:
    proxy = request.proxy
    base = proxy.base_path(request)
    if request.method in ("GET", "HEAD"):
        referrer = request.headers.get("Referer", "")
        own = f"{request.scheme}://{request.host}"
        fallback = referrer[len(own) :] if referrer.startswith(own + "/") else None
        next_path = _safe_next(request.args.get("next") or fallback, base)
        return _login_page(request, next_path=next_path)
    form = _read_form(request)
    if isinstance(form, int):
        code = "too_large" if form == 413 else "malformed"
        return _login_page(request, status=form, error=MESSAGES[code], next_path=base + "/")
    if not proxy.csrf_valid(request):
        return proxy.error_page(request, 403, reason="csrf", message=CSRF_MESSAGE)
    username = form.get("username", "").strip()
    password = form.get("password", "")
    next_path = _safe_next(form.get("next"), base) if len(form.getlist("next")) == 1 else base + "/"

    def refuse(status: int, code: str, **extra: Any) -> Response:
        return _login_page(
            request,
            status=status,
            error=MESSAGES[code],
            username=username[:MAX_USERNAME],
            next_path=next_path,
            **extra,
        )

    problem = _form_problem(form)
    if problem is not None:
        status, code = problem
        if code != "missing":
            username = ""  # not shown back in the form
        return refuse(status, code)
    address = proxy.client_address(request)
    account_key = f"login:user:{username.lower()[:MAX_USERNAME]}"
    address_key = f"login:addr:{address}"
    keys = (account_key, address_key)
    store = proxy.users
    if (
        store.count_failures(account_key, settings.window) >= settings.max_failures
        or store.count_failures(address_key, settings.window) >= settings.max_address_failures
    ):
        log.warning("login throttled for %r from %s", username[:MAX_USERNAME], address)
        retry = {"Retry-After": str(int(settings.window))}
        return refuse(429, "throttled", headers=retry)
    password_backends, _ = _backends(proxy)
    codes: list[tuple[str, AuthError]] = []
    for backend in password_backends:
        try:
            user = backend.authenticate(username, password, request)
        except AuthError as exc:
            codes.append((backend.name, exc))
            continue
        except StoreUnavailable as exc:  # an outage (logged by its guard): no traceback
            log.warning("auth backend %s: %s", backend.name, exc)
            codes.append((backend.name, AuthError("unavailable", MESSAGES["unavailable"])))
            continue
        except Exception:  # a broken backend must not stop the others
            log.exception("auth backend %s failed", backend.name)
            codes.append((backend.name, AuthError("unavailable", MESSAGES["unavailable"])))
            continue
        if not store.is_active(user.pk):  # disabled in the directory, whoever vouches for them
            codes.append((backend.name, AuthError("disabled", MESSAGES["disabled"])))
            continue
        store.clear_failures(account_key)
        log_in(request, user, backend.name)
        fingerprint = password_fingerprint(proxy, store.password_hash(user.pk))
        if fingerprint:
            request.session[SESSION_PASSWORD_KEY] = fingerprint
        # Said once the session is stored: a login the session store refused never happened.
        proxy.when_session_saved(
            request,
            functools.partial(
                log.info, "%s logged in through %s from %s", user.username, backend.name, address
            ),
        )
        response = Response(b"", status=303, headers={"Location": next_path})
        response.headers["Cache-Control"] = "no-store"
        return response
    for name, refusal in codes:
        log.info("login of %r refused by %s: %s", username[:MAX_USERNAME], name, refusal.code)
    # Say why only when no backend could check the password (directory down), or when the
    # password was right but the account is disabled (backends say so only then).
    if codes and all(exc.code == "unavailable" for _, exc in codes):
        return refuse(503, "unavailable")  # not the user's fault: not counted
    for key in keys:
        store.record_failure(key)
    if any(exc.code == "disabled" for _, exc in codes):
        return refuse(403, "disabled")
    if any(exc.code == "unavailable" for _, exc in codes):
        return refuse(401, "partly_unavailable")  # the password may be right for the one down
    return refuse(401, "bad_credentials")


def logout_view(request: Any) -> Response:
    proxy = request.proxy
    form = _read_form(request)
    if isinstance(form, int):
        return proxy.error_page(request, form, reason="logout_body")
    if not proxy.csrf_valid(request):
        return proxy.error_page(request, 403, reason="csrf", message=CSRF_MESSAGE)
    pk = request.session.get(SESSION_USER_KEY)
    if pk is not None and proxy.users is not None:
        try:
            proxy.users.end_sessions(pk)  # every copy of this session's cookie dies with it
        except KeyError:
            pass  # the user was deleted: the session is anonymous already
        except Exception:
            log.exception("could not end the sessions of user %r", pk)
            return proxy.error_page(
                request,
                503,
                reason="logout",
                message="Logging out failed: please try again in a moment.",
            )
    backend_name = request.session.get(SESSION_BACKEND_KEY)
    redirect = None
    for backend in proxy.auth:
        if getattr(backend, "name", None) == backend_name and hasattr(backend, "logout_redirect"):
            # Before the session is emptied: the backend may need what it kept there at login
            # (OpenID Connect's id_token_hint).
            try:
                redirect = backend.logout_redirect(request)
            except Exception:  # a broken backend must not keep anyone logged in
                log.exception("auth backend %s failed to give its logout redirect", backend_name)
            break
    log_out(request)
    home = proxy.site_url(request, "/")
    return redirect or Response(b"", status=303, headers={"Location": home})


@hookimpl(trylast=True)
def plugit_register_backends(register: RegisterBackend) -> None:
    register("login", "default", _settings)


@hookimpl
def plugit_extra_routes(proxy: PluginContext) -> list[Route] | None:
    if not proxy.auth:
        return None
    settings: LoginSettings = proxy.backends.build("login", "default", proxy.config)
    login = functools.partial(login_view, settings=settings)
    routes = [
        # The views check the CSRF token themselves, once the body is known to be small.
        Route(LOGIN_PATH, login, methods=("GET", "POST"), csrf=False),
        Route(LOGOUT_PATH, logout_view, methods=("POST",), csrf=False),
    ]
    for backend in proxy.auth:
        if hasattr(backend, "routes"):
            routes.extend(backend.routes(proxy))
    return routes


class EndableSessions:
    """The proxy's session backend, with sessions that a logout ends everywhere.

    Wraps any :class:`~plugit_core.backends.SessionBackend`: at login (a rotated session with a
    user) the session gets the user's session generation from the directory; when a session is
    opened, one whose generation is no longer the user's is emptied and rotated (its cookie
    deleted), so nothing of it is read: no user, no CSRF token, no service values.  Sessions of
    no user are untouched, and cost nothing.
    """

    def __init__(self, inner: SessionBackend, users: Any) -> None:
        self.inner = inner
        self.users = users

    def open(self, request: Any) -> Session:
        session = self.inner.open(request)
        pk = session.get(SESSION_USER_KEY)
        if pk is None:
            return session
        try:
            current = self.users.session_generation(pk)
        except StoreUnavailable:  # an outage: a 503 naming the directory, not a silent logout
            raise
        except Exception:  # the directory is broken: this request is anonymous, nothing is lost
            log.exception("could not read the session generation of user %r", pk)
            return Session()
        if session.get(SESSION_GENERATION_KEY, 0) != current:  # logged out since
            session.clear()
            session.rotate = True
        return session

    def save(self, session: Session, request: Any, response: Response) -> None:
        pk = session.get(SESSION_USER_KEY)
        if session.rotate and pk is not None and SESSION_GENERATION_KEY not in session:
            try:  # a login: from now on, a logout of this user ends this session
                session[SESSION_GENERATION_KEY] = self.users.session_generation(pk)
            except Exception:  # stamped 0: the session ends at the user's next logout
                log.exception("could not read the session generation of user %r", pk)
        self.inner.save(session, request, response)

    def __getattr__(self, name: str) -> Any:  # the backend's own attributes (close, ...)
        return getattr(self.inner, name)


@hookimpl
def plugit_site_links(proxy: PluginContext) -> SiteLinks | None:
    return SiteLinks(login_url=LOGIN_PATH, logout_url=LOGOUT_PATH) if proxy.auth else None


@hookimpl
def plugit_session_backend(sessions: SessionBackend, proxy: PluginContext) -> SessionBackend | None:
    if not proxy.auth or proxy.users is None or isinstance(sessions, EndableSessions):
        return None
    if not callable(getattr(proxy.users, "session_generation", None)):
        log.warning(
            "the directory %r cannot end sessions (no session_generation): a logout "
            "deletes the browser's session cookie, but copies of it stay valid",
            type(proxy.users).__name__,
        )
        return None
    return EndableSessions(sessions, proxy.users)


@hookimpl
def plugit_identify_user(request: Any, proxy: PluginContext) -> PlugItUser | None:
    if proxy.users is None or not proxy.auth:
        return None
    session = request.session
    pk = session.get(SESSION_USER_KEY)
    if pk is None:
        return None
    if session.get(SESSION_BACKEND_KEY) not in {getattr(b, "name", None) for b in proxy.auth}:
        return None  # that login method was removed from the configuration
    user = proxy.users.get_user(pk)
    if user is None or not proxy.users.is_active(pk):
        return None  # deleted or disabled since the login: anonymous from now on
    expected = password_fingerprint(proxy, proxy.users.password_hash(pk))
    if not hmac.compare_digest(str(session.get(SESSION_PASSWORD_KEY, "")), expected):
        return None  # the password changed since this session was opened
    return user

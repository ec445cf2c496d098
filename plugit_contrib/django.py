"""Django helpers for PlugIt: serve PlugIt services inside a Django site, for Django's users.

Wrap the site's WSGI application (in its ``wsgi.py``)::

    from django.core.wsgi import get_wsgi_application
    from plugit_contrib.django import wrap_django_wsgi

    application = wrap_django_wsgi(
        get_wsgi_application(), "plugit.toml", login_url="/login/", logout_url="/logout/"
    )

Requests below a service's mount and ``/_plugit/...`` go to the PlugIt proxy, everything else to
Django.  The proxy knows the visitor from Django's session cookie
(:func:`plugit_identity_from_django`): a logged-in Django user is a logged-in PlugIt user, staff
users are members of every service and superusers administrators of every service (the
original PlugIt's standalone mode with real users).  Give ``map_user`` to decide otherwise.

With ``logout_url``, the layout's "Log out" button posts to the site's logout view (Django's
``LogoutView`` or the site's own, behind ``CsrfViewMiddleware``) with the visitor's Django CSRF
token (:func:`plugit_logout_fields_from_django`), never the proxy's.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from importlib import import_module
from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib.auth import (
    BACKEND_SESSION_KEY,
    HASH_SESSION_KEY,
    SESSION_KEY,
    get_user_model,
    load_backend,
)
from django.core.exceptions import ValidationError
from django.db import close_old_connections
from django.http import parse_cookie
from django.utils.crypto import constant_time_compare

from plugit_core.config import ProxyConfig
from plugit_core.proxy.app import PlugItMiddleware
from plugit_core.users import ALL, PlugItUser

__all__ = [
    "PlugItDjangoMiddleware",
    "django_session_user",
    "plugit_identity_from_django",
    "plugit_logout_fields_from_django",
    "plugit_user_from_django",
    "wrap_django_wsgi",
]

Identify = Callable[[dict[str, Any]], "PlugItUser | None"]
LogoutFields = Callable[[dict[str, Any]], "Mapping[str, str] | None"]


def plugit_user_from_django(user: Any) -> PlugItUser:
    """The PlugIt user of an authenticated Django user.

    ``is_staff`` makes them a member of every service, ``is_superuser`` an administrator of
    every service (and a superuser, who passes every access rule).
    """
    staff = bool(getattr(user, "is_staff", False))
    superuser = bool(getattr(user, "is_superuser", False))
    pk = user.pk if isinstance(user.pk, (int, str)) else str(user.pk)
    return PlugItUser(
        pk=pk,
        username=user.get_username(),
        first_name=getattr(user, "first_name", "") or "",
        last_name=getattr(user, "last_name", "") or "",
        email=getattr(user, "email", "") or "",
        is_authenticated=True,
        is_superuser=superuser,
        member_of=frozenset({ALL}) if staff else frozenset(),
        admin_of=frozenset({ALL}) if superuser else frozenset(),
        backend="django",
    )


def django_session_user(session_key: str) -> Any | None:
    """The Django user logged in with the session ``session_key``, or None.

    Checked as :func:`django.contrib.auth.get_user` does (the session's backend must be in
    ``AUTHENTICATION_BACKENDS``, the backend must still return the user, for instance an active
    one, and the session's hash must match the user's current password, or one made with a
    ``SECRET_KEY_FALLBACKS`` key), but read-only: a session that fails is not flushed or
    rotated, that is left to Django on the user's next request to it.
    """
    engine = import_module(settings.SESSION_ENGINE)
    session = engine.SessionStore(session_key)
    try:
        user_id = get_user_model()._meta.pk.to_python(session[SESSION_KEY])
        backend_path = session[BACKEND_SESSION_KEY]
    except (KeyError, ValidationError):
        return None
    if backend_path not in settings.AUTHENTICATION_BACKENDS:
        return None
    user = load_backend(backend_path).get_user(user_id)
    if user is None or not getattr(user, "is_authenticated", False):
        return None
    if hasattr(user, "get_session_auth_hash"):
        session_hash = session.get(HASH_SESSION_KEY)
        if not session_hash:
            return None
        hashes = [user.get_session_auth_hash()]
        fallbacks = getattr(user, "get_session_auth_fallback_hash", None)
        if fallbacks is not None:
            hashes.extend(fallbacks())
        if not any(constant_time_compare(session_hash, h) for h in hashes):
            return None
    return user


def plugit_identity_from_django(
    map_user: Callable[[Any], PlugItUser | None] = plugit_user_from_django,
) -> Identify:
    """An ``identify(environ)`` for :class:`~plugit_core.proxy.app.PlugItMiddleware`.

    Reads Django's session cookie (``SESSION_COOKIE_NAME``) from the request, loads the session
    with the configured ``SESSION_ENGINE`` and its user (see :func:`django_session_user`), and
    returns ``map_user(user)`` (default :func:`plugit_user_from_django`), or None for anonymous
    visitors.  Database connections are handled as around a Django request
    (:func:`django.db.close_old_connections` before and after), so the ones it opens are closed
    unless ``CONN_MAX_AGE`` keeps them.
    """

    def identify(environ: dict[str, Any]) -> PlugItUser | None:
        cookies = parse_cookie(environ.get("HTTP_COOKIE", ""))
        session_key = cookies.get(settings.SESSION_COOKIE_NAME)
        if not session_key:
            return None
        close_old_connections()
        try:
            user = django_session_user(session_key)
            return None if user is None else map_user(user)
        finally:
            close_old_connections()

    return identify


def plugit_logout_fields_from_django() -> LogoutFields:
    """A ``logout_fields(environ)`` for :class:`~plugit_core.proxy.app.PlugItMiddleware`:
    ``{"csrfmiddlewaretoken": <token>}``, a Django CSRF token for the visitor's CSRF secret, so
    the layout's logout form passes Django's ``CsrfViewMiddleware``.

    The secret is read as the middleware reads it (the ``CSRF_COOKIE_NAME`` cookie, or the
    session with ``CSRF_USE_SESSIONS``); Django gives every user one when they log in.  A visitor
    without one gets no field (Django would refuse the form: no token can be made for them
    without setting a cookie).
    """

    def logout_fields(environ: dict[str, Any]) -> Mapping[str, str] | None:
        from django.core.handlers.wsgi import WSGIRequest
        from django.middleware.csrf import CsrfViewMiddleware, get_token

        request = WSGIRequest(environ)  # the body is not read
        close_old_connections()
        try:
            if settings.CSRF_USE_SESSIONS:
                engine = import_module(settings.SESSION_ENGINE)
                request.session = engine.SessionStore(
                    request.COOKIES.get(settings.SESSION_COOKIE_NAME)
                )
            CsrfViewMiddleware(lambda request: None).process_request(request)
            if "CSRF_COOKIE" not in request.META:
                return None
            return {"csrfmiddlewaretoken": get_token(request)}
        finally:
            close_old_connections()

    return logout_fields


class PlugItDjangoMiddleware(PlugItMiddleware):
    """:class:`~plugit_core.proxy.app.PlugItMiddleware` knowing Django's users.

    ``identify`` defaults to :func:`plugit_identity_from_django`; ``login_url`` (for instance
    the site's ``settings.LOGIN_URL``) is where the proxy's "Log in" links lead; with
    ``logout_url`` (the site's logout view, POST-only as Django's ``LogoutView``), the layout's
    "Log out" button posts there with the visitor's Django CSRF token (``logout_fields``,
    default :func:`plugit_logout_fields_from_django`).  Other ``options`` go to the proxy
    (``plugins``, ``check_services``, ...).
    """

    def __init__(
        self,
        app: Callable[..., Iterable[bytes]],
        config: ProxyConfig | dict[str, Any] | str | Path,
        *,
        identify: Identify | None = None,
        login_url: str | None = None,
        logout_url: str | None = None,
        logout_fields: LogoutFields | None = None,
        **options: Any,
    ) -> None:
        super().__init__(
            app,
            config,
            identify=identify or plugit_identity_from_django(),
            login_url=login_url,
            logout_url=logout_url,
            logout_fields=logout_fields or plugit_logout_fields_from_django(),
            **options,
        )


def wrap_django_wsgi(
    django_wsgi_app: Callable[..., Iterable[bytes]],
    config: ProxyConfig | dict[str, Any] | str | Path,
    **options: Any,
) -> PlugItDjangoMiddleware:
    """Serve PlugIt (configured by ``config``) in front of Django's WSGI application.

    ``options`` are :class:`PlugItDjangoMiddleware`'s (``login_url``, ``logout_url``,
    ``identify``, ...).
    """
    return PlugItDjangoMiddleware(django_wsgi_app, config, **options)

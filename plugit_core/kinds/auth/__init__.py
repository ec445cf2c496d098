"""The ``auth`` backend kind: what proves who someone is.

A :class:`PasswordBackend` checks a user name and password (local accounts, LDAP); a
:class:`RedirectBackend` sends the browser elsewhere and comes back (OpenID Connect).  Several
may be active at once: the login page offers every one of them.  A failed login is an
:class:`AuthError` whose message is safe to show.  :data:`AuthFactory` is what a plugin
registers.

Implementations: ``plugit_backends.auth_session`` (the directory's local accounts),
``plugit_backends.auth_ldap`` and ``plugit_backends.auth_oidc``; each passes
:class:`plugit_core.kinds.auth.testing.AuthBackendConformance` against its real server.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

from ...users import PlugItUser

if TYPE_CHECKING:
    from werkzeug.wrappers import Response

    from ...config import ProxyConfig
    from ...proxy.app import ProxyRequest
    from ...proxy.context import PluginContext
    from ...proxy.routes import Route

__all__ = ["AuthBackend", "AuthError", "AuthFactory", "PasswordBackend", "RedirectBackend"]


class AuthError(Exception):
    """A login failed.  ``message`` is safe to show on the login page; ``code`` is for logs.

    Codes: ``bad_credentials``, ``disabled``, ``throttled``, ``unavailable`` (the identity server
    cannot be reached), ``refused`` (the identity provider said no), ``invalid`` (a forged or
    stale answer from the provider).
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class PasswordBackend(Protocol):
    """Checks a user name and password."""

    name: str
    label: str

    def authenticate(self, username: str, password: str, request: ProxyRequest) -> PlugItUser:
        """The user, or raise :class:`AuthError`."""


class RedirectBackend(Protocol):
    """Logs in through another site (an OpenID provider)."""

    name: str
    label: str

    def start_url(self) -> str:
        """Where the login page's button for this backend points (a route of the backend)."""

    def routes(self, proxy: PluginContext) -> Iterable[Route]:
        """The backend's own URLs (start, callback)."""

    def logout_redirect(self, request: ProxyRequest) -> Response | None:
        """A redirect to the provider's logout, or None.

        Called just before the local logout: the session still holds what the backend kept
        there at login (an ID token to send as ``id_token_hint``).
        """


#: An auth backend is one or the other.
AuthBackend = PasswordBackend | RedirectBackend

#: ``factory(proxy_config, section)``: builds the backend from its own table (``[auth_<name>]``).
AuthFactory = Callable[["ProxyConfig", Mapping[str, Any]], AuthBackend]

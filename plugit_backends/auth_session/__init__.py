"""Local accounts: user names and password hashes kept in the directory (``users``).

Configuration::

    auth = ["session"]

    [auth_session]                      # optional
    password_method = "scrypt"          # werkzeug's hash method: "scrypt" or "pbkdf2[:sha256:N]"
    min_password_length = 10            # enforced when a password is set (``plugit users``)

Only users whose source is ``local`` and who have a password hash can log in here; users an
external directory (OIDC, LDAP) vouches for log in there.  A login for a user name that does
not exist costs the same time as a wrong password (a dummy hash is checked), and a disabled
account is only reported as such after the right password was given, so the login page does
not tell who has an account.  A stored hash made with another method (an older setting, older
werkzeug defaults) is replaced at the next successful login.

Users, passwords and roles are managed with ``plugit users --config FILE ...``; see
``docs/auth-session.md``.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from werkzeug.security import check_password_hash, generate_password_hash

from plugit_core.backends import RegisterBackend
from plugit_core.config import ConfigError, ProxyConfig
from plugit_core.hookspecs import hookimpl
from plugit_core.identity import AuthError
from plugit_core.settings import Section, setting
from plugit_core.users import PlugItUser

if TYPE_CHECKING:
    from plugit_core.proxy.context import PluginContext

__all__ = ["DEFAULT_METHOD", "SessionAuth"]

log = logging.getLogger("plugit.auth.session")

DEFAULT_METHOD = "scrypt"  # werkzeug's default
MAX_PASSWORD = 4096  # longer input is refused without hashing it
BAD_CREDENTIALS = "Wrong user name or password."


class SessionAuth:
    """A :class:`plugit_core.identity.PasswordBackend` for the directory's local users."""

    name = "session"
    label = "Local account"

    def __init__(
        self, password_method: str = DEFAULT_METHOD, min_password_length: int = 10
    ) -> None:
        self.password_method = password_method
        self.min_password_length = min_password_length
        # Checked when the user does not exist, so that costs what a wrong password costs.
        self._dummy_hash = generate_password_hash(secrets.token_urlsafe(24), password_method)
        self._method_prefix = self._dummy_hash.split("$", 1)[0]

    # -- passwords --------------------------------------------------------------------------------

    def password_problem(self, password: str) -> str | None:
        """Why ``password`` may not be set (None when it may)."""
        if len(password) < self.min_password_length:
            return f"a password needs at least {self.min_password_length} characters"
        if len(password) > MAX_PASSWORD:
            return f"a password has at most {MAX_PASSWORD} characters"
        return None

    def hash_password(self, password: str) -> str:
        """The hash to store for ``password``; ValueError when the password is not allowed."""
        problem = self.password_problem(password)
        if problem is not None:
            raise ValueError(problem)
        return generate_password_hash(password, self.password_method)

    def _matches(self, stored: str, password: str) -> bool:
        try:
            return check_password_hash(stored, password)
        except (ValueError, TypeError):
            log.error("a stored password hash is malformed or uses an unknown method")
            return False

    # -- PasswordBackend --------------------------------------------------------------------------

    def authenticate(self, username: str, password: str, request: Any) -> PlugItUser:
        store = request.proxy.users
        if store is None:
            raise AuthError("unavailable", "Local accounts are not available.")
        user = store.get_by_username(username) if len(username) <= 256 else None
        stored = None
        if user is not None and user.extra.get("source", "local") == "local":
            stored = store.password_hash(user.pk)
        if not stored or len(password) > MAX_PASSWORD:
            self._matches(self._dummy_hash, password[:MAX_PASSWORD])
            raise AuthError("bad_credentials", BAD_CREDENTIALS)
        assert user is not None
        if not self._matches(stored, password):
            raise AuthError("bad_credentials", BAD_CREDENTIALS)
        if not store.is_active(user.pk):
            raise AuthError("disabled", "This account is disabled.")
        if stored.split("$", 1)[0] != self._method_prefix:
            try:
                store.set_password_hash(
                    user.pk, generate_password_hash(password, self.password_method)
                )
            except Exception:  # an upgrade that fails must not fail the login
                log.exception("could not re-hash the password of %s", user.username)
        return user


def _password_method(value: Any) -> str:
    if not isinstance(value, str) or not value.startswith(("scrypt", "pbkdf2")):
        raise ValueError(f'expected "scrypt" or "pbkdf2" (with optional parameters), got {value!r}')
    return value


@dataclass(frozen=True)
class SessionAuthSettings:
    """The ``[auth_session]`` table."""

    password_method: str = setting(
        DEFAULT_METHOD, parse=_password_method, help="werkzeug's hashing method of new passwords"
    )
    min_password_length: int = setting(
        10, minimum=1, maximum=1024, help="characters of a new password, at least"
    )


def _factory(config: ProxyConfig, section: Mapping[str, Any]) -> SessionAuth:
    settings = config.read(SessionAuthSettings, "auth_session", section)
    method = settings.password_method
    try:
        return SessionAuth(method, settings.min_password_length)
    except (ValueError, TypeError) as exc:
        raise Section("auth_session", config.source).error(
            "password_method", f"werkzeug refuses {method!r}: {exc}"
        ) from None


@hookimpl(trylast=True)
def plugit_register_backends(register: RegisterBackend) -> None:
    register("auth", "session", _factory)


@hookimpl
def plugit_startup(proxy: PluginContext) -> None:
    if proxy.users is None and any(isinstance(b, SessionAuth) for b in proxy.auth):
        raise ConfigError(
            "users",
            'local accounts need a directory: remove users = "" (the default is "sqlite")',
            proxy.config.source,
        )

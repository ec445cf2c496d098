"""Identity: the directory of users and organisations, and the login backends, as interfaces.

* A :class:`UserStore` (backend kind ``users``) keeps users, organisations and memberships:
  who is member or administrator of which service and organisation.  It feeds the access rules,
  orga mode and ``user_info``.  ``users_sqlite`` is the embedded default.
* An auth backend (kind ``auth``) proves who someone is.  A :class:`PasswordBackend` checks a
  user name and password (local accounts, LDAP); a :class:`RedirectBackend` sends the browser
  elsewhere and comes back (OpenID Connect).  Several may be active at once: the login page
  offers every one of them.
* :func:`log_in` and :func:`log_out` change the session the same way for every backend: a login
  empties the session and gives it a new id (no session fixation).

The login pages themselves, and the hook that turns a session into a user, are the
``plugit_backends.login`` plugin.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, runtime_checkable

from .users import ALL, Orga, PlugItUser

if TYPE_CHECKING:
    from werkzeug.wrappers import Response

    from .proxy.app import ProxyApp, ProxyRequest
    from .proxy.routes import Route
    from .settings import Section

__all__ = [
    "MAX_USERNAME",
    "SESSION_BACKEND_KEY",
    "SESSION_USER_KEY",
    "AuthError",
    "GroupGrant",
    "PasswordBackend",
    "RedirectBackend",
    "UserStore",
    "check_role",
    "check_username",
    "grant_memberships",
    "gravatar_url",
    "log_in",
    "log_out",
    "parse_group_grants",
]

SESSION_USER_KEY = "uid"
SESSION_BACKEND_KEY = "auth"
ROLES = ("member", "admin")


MAX_USERNAME = 150


def check_username(username: Any) -> str:
    """A user name as every store keeps it (stripped), or ValueError saying what is wrong."""
    if not isinstance(username, str):
        raise ValueError("a user name must be a string")
    name = username.strip()
    if not name:
        raise ValueError("a user needs a user name")
    if len(name) > MAX_USERNAME:
        raise ValueError(f"a user name has at most {MAX_USERNAME} characters")
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        raise ValueError("a user name cannot contain control characters")
    return name


def check_role(role: str) -> None:
    """ValueError unless ``role`` is ``member`` or ``admin``."""
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}, not {role!r}")


def gravatar_url(email: str) -> str:
    """The Gravatar image of an e-mail address (the ``gravatar`` user property)."""
    digest = hashlib.md5(email.strip().lower().encode("utf-8"), usedforsecurity=False)
    return f"https://www.gravatar.com/avatar/{digest.hexdigest()}?d=retro"


# What a backend matches groups by (LDAP: a normalised DN, OIDC: the claim's text).
GroupKey = TypeVar("GroupKey", bound=Hashable)


@dataclass(frozen=True)
class GroupGrant:
    """What membership of one external group (a directory's, a provider's) gives."""

    services: Mapping[str, str] = field(default_factory=dict)
    orgas: Mapping[str, str] = field(default_factory=dict)


def parse_group_grants(
    reader: Section,
    value: Any,
    service_names: set[str],
    *,
    group_key: Callable[[str, Any], GroupKey],
    described: str,
) -> dict[GroupKey, GroupGrant]:
    """Validate a ``groups`` table: ``group = { services = {name = role}, orgas = {...} }``.

    ``group_key(where, group)`` checks one group name and returns the key it is matched by
    (raising the reader's error); ``described`` says what a group is named by in messages.
    Service names must be mounted services or ``"*"``; roles ``member`` or ``admin``.
    """
    if not isinstance(value, Mapping):
        raise reader.error(
            "groups", f"expected a table of {described} = {{ services = {{...}}, ... }}"
        )
    grants: dict[GroupKey, GroupGrant] = {}
    for group, grant in value.items():
        where = f'groups."{group}"'
        key = group_key(where, group)
        if not isinstance(grant, Mapping):
            raise reader.error(where, "expected a table: { services = {...}, orgas = {...} }")
        unknown = set(grant) - {"services", "orgas"}
        if unknown:
            raise reader.error(f"{where}.{sorted(unknown)[0]}", "unknown setting")
        tables: dict[str, dict[str, str]] = {}
        for kind in ("services", "orgas"):
            table = grant.get(kind, {})
            if not isinstance(table, Mapping):
                raise reader.error(f"{where}.{kind}", 'expected a table of name = "member"/"admin"')
            for name, role in table.items():
                if not isinstance(name, str) or not name.strip():
                    raise reader.error(f"{where}.{kind}", "names must not be empty")
                if role not in ROLES:
                    raise reader.error(
                        f"{where}.{kind}.{name}", f"must be one of {', '.join(ROLES)}, not {role!r}"
                    )
                if kind == "services" and name != ALL and name not in service_names:
                    known = ", ".join(sorted(service_names)) or "none"
                    raise reader.error(
                        f"{where}.{kind}.{name}",
                        f'no service of that name (known: {known}; "*" means every service)',
                    )
            tables[kind] = dict(table)
        if key in grants:
            raise reader.error(where, "the same group appears twice")
        grants[key] = GroupGrant(tables["services"], tables["orgas"])
    return grants


def grant_memberships(
    grants: Mapping[GroupKey, GroupGrant],
    groups: Iterable[GroupKey],
    superuser_groups: Iterable[GroupKey] = (),
) -> tuple[dict[str, str], dict[str, str]]:
    """(service roles, organisation roles) given by a user's groups: the strongest role wins,
    and a superuser group makes its members administrators of every service."""
    services: dict[str, str] = {}
    orgas: dict[str, str] = {}
    superusers = set(superuser_groups)
    superuser = False
    for group in groups:
        superuser = superuser or group in superusers
        grant = grants.get(group)
        if grant is None:
            continue
        for target, table in ((services, grant.services), (orgas, grant.orgas)):
            for name, role in table.items():
                if target.get(name) != "admin":
                    target[name] = role
    if superuser:
        services[ALL] = "admin"
    return services, orgas


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


@runtime_checkable
class UserStore(Protocol):
    """Users, organisations and memberships.  Every method is safe to call from many threads.

    The users it returns are authenticated :class:`PlugItUser` objects whose ``extra`` holds at
    least ``uuid`` (a stable string id, also accepted by :meth:`get_user`) and ``source``
    (``"local"``, or the external directory that vouches for the user: ``"oidc"``, ``"ldap"``).
    Memberships remember their source too: a user's rights are the union of every source's
    grants; :meth:`grant` and :meth:`add_to_orga` are local grants, :meth:`revoke` and
    :meth:`remove_from_orga` remove the grants of every source (an external directory grants
    its own again at the user's next login through it).  Methods that change one user or
    organisation raise ``KeyError`` when it does not exist; :meth:`revoke` and
    :meth:`remove_from_orga` do nothing then.  :class:`plugit_core.testing.UserStoreConformance`
    checks all of this for any implementation.
    """

    def get_user(self, pk: Any) -> PlugItUser | None:
        """The user with this pk (or UUID), with ``member_of``, ``admin_of`` and ``orgas``."""

    def get_by_username(self, username: str) -> PlugItUser | None:
        """The user with this user name (case-insensitive), or None."""

    def list_users(self) -> list[PlugItUser]:
        """Every user, active or not, by user name (for administration: ``plugit users list``)."""

    def create_user(
        self,
        username: str,
        *,
        email: str = "",
        first_name: str = "",
        last_name: str = "",
        password_hash: str | None = None,
        source: str = "local",
        external_id: str | None = None,
        is_superuser: bool = False,
    ) -> PlugItUser:
        """Add a user; raise ValueError when the user name is taken."""

    def sync_external_user(
        self, source: str, external_id: str, fields: Mapping[str, Any]
    ) -> PlugItUser:
        """Create or update the user an external directory (OIDC, LDAP) vouches for.

        ``fields`` may hold ``username``, ``email``, ``first_name``, ``last_name``, and the
        memberships the provider's groups map to: ``services`` (name -> ``member``/``admin``)
        and ``orgas`` (organisation name -> ``member``/``admin``), which replace the ones this
        source granted before.
        """

    def password_hash(self, pk: Any) -> str | None:
        """The stored password hash of a local user (None for external users)."""

    def set_password_hash(self, pk: Any, password_hash: str) -> None: ...

    def set_active(self, pk: Any, active: bool) -> None: ...

    def is_active(self, pk: Any) -> bool: ...

    def session_generation(self, pk: Any) -> int:
        """How many times the user's sessions were ended (:meth:`end_sessions`); 0 for a user
        never logged out, or unknown.  A session remembers it at login and is over once it
        changed."""

    def end_sessions(self, pk: Any) -> None:
        """End every session of the user opened so far, on every device and proxy process (a
        logout): bump :meth:`session_generation`, durably."""

    def grant(self, pk: Any, service: str, role: str) -> None:
        """Make the user ``member`` or ``admin`` of a service (``*`` for every service)."""

    def revoke(self, pk: Any, service: str) -> None: ...

    def create_orga(self, name: str, codops: str = "") -> Orga: ...

    def get_orga(self, pk: Any) -> Orga | None: ...

    def list_orgas(self) -> list[Orga]: ...

    def add_to_orga(self, pk: Any, orga_pk: Any, *, admin: bool = False) -> None: ...

    def remove_from_orga(self, pk: Any, orga_pk: Any) -> None: ...

    def members(self, service: str) -> list[PlugItUser]:
        """Users who are member or admin of the service (directly or through ``*``)."""

    def record_failure(self, key: str) -> None:
        """Record a failed login for ``key`` (an account or a client address)."""

    def count_failures(self, key: str, window: float) -> int:
        """The failed logins recorded for ``key`` within the last ``window`` seconds."""

    def clear_failures(self, key: str) -> None:
        """Forget the failures of ``key`` (after a successful login)."""


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

    def routes(self, proxy: ProxyApp) -> Iterable[Route]:
        """The backend's own URLs (start, callback)."""

    def logout_redirect(self, request: ProxyRequest) -> Response | None:
        """A redirect to the provider's logout, or None.

        Called just before the local logout: the session still holds what the backend kept
        there at login (an ID token to send as ``id_token_hint``).
        """


def log_in(request: ProxyRequest, user: PlugItUser, backend: str) -> None:
    """Make ``user`` the session's user: the session is emptied and gets a new id."""
    session = request.session
    session.clear()
    session[SESSION_USER_KEY] = user.pk
    session[SESSION_BACKEND_KEY] = backend
    session.rotate = True
    request.__dict__["user"] = user


def log_out(request: ProxyRequest) -> None:
    """Forget the session's user and everything else in the session."""
    request.session.clear()
    request.session.rotate = True
    request.__dict__.pop("user", None)

"""Identity: what the directory and the login backends share.

* The interfaces are kinds: :class:`UserStore` (kind ``users``, the directory) is
  :mod:`plugit_core.kinds.users`; :class:`PasswordBackend`, :class:`RedirectBackend` and
  :class:`AuthError` (kind ``auth``) are :mod:`plugit_core.kinds.auth`.  They are re-exported
  here.
* User names, roles and the group grants external directories map to memberships are checked
  and parsed here, the same way for every store and backend.
* :func:`log_in` and :func:`log_out` change the session the same way for every backend: a login
  empties the session and gives it a new id (no session fixation).

The login pages themselves, and the hook that turns a session into a user, are the
``plugit_backends.login`` plugin.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from .kinds.auth import AuthError, PasswordBackend, RedirectBackend
from .kinds.users import UserStore
from .users import ALL, PlugItUser

if TYPE_CHECKING:
    from .proxy.app import ProxyRequest
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

"""Users as the proxy sees them, and the view of one user that one service gets.

A :class:`PlugItUser` is who is logged in, site-wide.  Membership and administration are per
service (and per organisation), so the access rules and ``user_info`` read a
:class:`ServiceUser`: the user seen from one mount, in one current organisation.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "ANONYMOUS",
    "DEFAULT_USER_DATA",
    "SIMULATED_ORGAS",
    "Orga",
    "PlugItUser",
    "ServiceUser",
    "simulated_user",
]

# The properties a service may ask for by default (the original's PIAPI_USERDATA example).
DEFAULT_USER_DATA = (
    "pk",
    "id",
    "username",
    "first_name",
    "last_name",
    "email",
    "ebuio_member",
    "ebuio_admin",
    "ebuio_orga_member",
    "ebuio_orga_admin",
    "subscription_labels",
)

ALL = "*"  # in member_of / admin_of: every service


@dataclass(frozen=True)
class Orga:
    """An organisation; ``is_admin`` says whether the user it belongs to administers it."""

    pk: int | str
    name: str
    codops: str = ""
    is_admin: bool = False
    member_of: frozenset[str] = frozenset()  # services whose members this orga's members are

    def as_dict(self) -> dict[str, Any]:
        return {"pk": self.pk, "name": self.name, "ebu_codops": self.codops, "codops": self.codops}


@dataclass(frozen=True)
class PlugItUser:
    """A site user.  ``member_of``/``admin_of`` hold service names (``"*"`` for every service)."""

    pk: int | str | None = None
    username: str = ""
    first_name: str = ""
    last_name: str = ""
    email: str = ""
    is_authenticated: bool = False
    is_superuser: bool = False
    member_of: frozenset[str] = frozenset()
    admin_of: frozenset[str] = frozenset()
    orgas: tuple[Orga, ...] = ()
    subscriptions: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    extra: Mapping[str, Any] = field(default_factory=dict)
    backend: str = ""  # which auth backend identified the user

    @property
    def display_name(self) -> str:
        full = f"{self.first_name} {self.last_name}".strip()
        return full or self.username or ("Anonymous" if not self.is_authenticated else str(self.pk))

    @property
    def cache_key(self) -> str:
        """A stable key for per-user caches (``anon`` for anonymous visitors)."""
        return f"user:{self.pk}" if self.is_authenticated else "anon"

    def is_member(self, service: str) -> bool:
        return (
            self.is_superuser
            or ALL in self.member_of
            or service in self.member_of
            or self.is_admin(service)
        )

    def is_admin(self, service: str) -> bool:
        return self.is_superuser or ALL in self.admin_of or service in self.admin_of

    def orga(self, pk: Any) -> Orga | None:
        for orga in self.orgas:
            if str(orga.pk) == str(pk):
                return orga
        return None

    def for_service(self, service: str, orga: Orga | None = None) -> ServiceUser:
        return ServiceUser(self, service, orga)


ANONYMOUS = PlugItUser()


class ServiceUser:
    """One user as one service sees it: the ``ebuio_*`` flags are about that service and orga."""

    __slots__ = (
        "ebuio_admin",
        "ebuio_member",
        "ebuio_orga_admin",
        "ebuio_orga_member",
        "orga",
        "service",
        "user",
    )

    def __init__(self, user: PlugItUser, service: str, orga: Orga | None) -> None:
        self.user = user
        self.service = service
        self.orga = orga
        self.ebuio_member = user.is_member(service)
        self.ebuio_admin = user.is_admin(service)
        membership = user.orga(orga.pk) if orga is not None and user.is_authenticated else None
        self.ebuio_orga_member = membership is not None or (orga is not None and user.is_superuser)
        self.ebuio_orga_admin = (membership is not None and membership.is_admin) or (
            orga is not None and user.is_superuser
        )
        if orga is None and user.backend == "dev":
            # As in the original: with no current organisation (orga mode off), dev mode's
            # simulated users have the same rights in "their organisation" as in the service.
            self.ebuio_orga_member = self.ebuio_member
            self.ebuio_orga_admin = self.ebuio_admin

    @property
    def is_authenticated(self) -> bool:
        return self.user.is_authenticated

    @property
    def pk(self) -> Any:
        return self.user.pk

    def get(self, prop: str) -> Any:
        """The value of a user property by its protocol name (None when it has none)."""
        user = self.user
        if prop == "id":
            return None if user.pk is None else str(user.pk)
        if prop in ("ebuio_member", "ebuio_admin", "ebuio_orga_member", "ebuio_orga_admin"):
            return getattr(self, prop)
        if prop == "subscription_labels":
            return list(user.subscriptions.get(self.service, ()))
        if prop in ("pk", "username", "first_name", "last_name", "email", "is_authenticated"):
            return getattr(user, prop)
        return user.extra.get(prop)

    def properties(self, allowed: Iterable[str]) -> dict[str, Any]:
        """The allowed properties this user has (``ebuio_u`` in templates), with ``id``."""
        values = {prop: self.get(prop) for prop in allowed}
        values["id"] = self.get("id")
        return values


# -- dev mode: the original's simulated users and organisations (PROTOCOL.md 5.3, 5.4) ----------

SIMULATED_ORGAS = (
    Orga(-1, "EBU", "zzebu"),
    Orga(-2, "RTS", "chrts"),
    Orga(-3, "BBC", "gbbbc"),
    Orga(-4, "CNN", "uscnn"),
)

_SIMULATED = {
    "ano": None,
    "log": (-1, "Logged", "Logged", "Hector", "logeedin@plugit-standalone.ebuio", False, False),
    "mem": (-2, "Member", "Member", "Luc", "memeber@plugit-standalone.ebuio", True, False),
    "adm": (-3, "Admin", "Admin", "Charles", "admin@plugit-standalone.ebuio", True, True),
}
SIMULATED_MODES = tuple(_SIMULATED)


def simulated_user(mode: str, orga: Orga | None = None) -> PlugItUser:
    """The simulated user of dev mode ``ano``, ``log``, ``mem`` or ``adm`` (else anonymous)."""
    row = _SIMULATED.get(mode)
    if row is None:
        return ANONYMOUS
    pk, username, first, last, email, member, admin = row
    # The original's simulated users have the same rights in the current organisation as in
    # the service: "log" is no member of it, "mem" is, "adm" administers it.
    orgas: tuple[Orga, ...] = ()
    if orga is not None and member:
        orgas = (Orga(orga.pk, orga.name, orga.codops, is_admin=admin),)
    return PlugItUser(
        pk=pk,
        username=username,
        first_name=first,
        last_name=last,
        email=email,
        is_authenticated=True,
        member_of=frozenset({ALL}) if member else frozenset(),
        admin_of=frozenset({ALL}) if admin else frozenset(),
        orgas=orgas,
        extra={"gravatar": f"https://www.gravatar.com/avatar/ebuio{-pk}?d=retro"},
        backend="dev",
    )


def simulated_user_by_pk(pk: Any) -> PlugItUser | None:
    """The simulated user with pk -1, -2 or -3 (``plugitGetUser`` and the API in dev mode)."""
    for mode, row in _SIMULATED.items():
        if row is not None and str(row[0]) == str(pk):
            return simulated_user(mode)
    return None

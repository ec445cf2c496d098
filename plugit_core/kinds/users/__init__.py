"""The ``users`` backend kind, the *directory*: :class:`UserStore` keeps users, organisations
and memberships (who is member or administrator of which service and organisation), which feed
the access rules, orga mode and ``user_info``; :data:`UsersFactory` is what a plugin registers.

Implementations: ``plugit_backends.users_sqlite`` (the embedded default) and
``plugit_backends.users_postgres``; both pass
:class:`plugit_core.kinds.users.testing.UserStoreConformance`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from ...users import Orga, PlugItUser

if TYPE_CHECKING:
    from ...config import ProxyConfig

__all__ = ["UserStore", "UsersFactory"]


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
    :meth:`remove_from_orga` do nothing then.
    :class:`plugit_core.kinds.users.testing.UserStoreConformance` checks all of this for any
    implementation.
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


#: ``factory(proxy_config, section)``: builds the directory from its own table
#: (``[users_<name>]``).
UsersFactory = Callable[["ProxyConfig", Mapping[str, Any]], UserStore]

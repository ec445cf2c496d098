"""Who the users and organisations are, as the proxy sees them.

The user of a request comes from the plugins (``plugit_identify_user``: a login's session, a host
app); users and organisations looked up by pk come from the directory (the ``users`` backend), or,
in dev mode, from the simulated ones.  Every authenticated user is completed by the plugins
(``plugit_user_loaded``: subscriptions...) before anyone sees it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..users import (
    ANONYMOUS,
    SIMULATED_ORGAS,
    Orga,
    PlugItUser,
    simulated_user,
    simulated_user_by_pk,
)

if TYPE_CHECKING:
    from ..kinds.users import UserStore
    from .app import ProxyRequest
    from .hooks import Hooks

__all__ = ["Directory"]


class Directory:
    """Users and organisations: ``users`` is the directory backend (None without one)."""

    def __init__(self, *, users: UserStore | None, dev_mode: bool, hooks: Hooks) -> None:
        self.users = users
        self.dev_mode = dev_mode
        self.hooks = hooks

    def identify(self, request: ProxyRequest) -> PlugItUser:
        """The user making ``request``, asked of the plugins once per request."""
        if "user" in request.__dict__:
            known: PlugItUser = request.__dict__["user"]
            return known
        user = self.loaded(self.hooks.identify_user(request) or ANONYMOUS)
        request.__dict__["user"] = user
        return user

    @staticmethod
    def dev_user(mode: str, orga: Orga | None = None) -> PlugItUser:
        """The simulated user of dev mode ``mode`` (``ano``, ``log``, ``mem``, ``adm``)."""
        return simulated_user(mode, orga)

    def lookup_user(self, pk: Any) -> PlugItUser | None:
        """A user by pk, for ``plugit_get_user`` and the callback API."""
        if self.dev_mode:
            user = simulated_user_by_pk(pk)
        elif self.users is not None:
            user = self.users.get_user(pk)
        else:
            user = None
        return None if user is None else self.loaded(user)

    def loaded(self, user: PlugItUser) -> PlugItUser:
        """``user`` completed by the plugins (``plugit_user_loaded``)."""
        return self.hooks.user_loaded(user) if user.is_authenticated else user

    def lookup_orga(self, pk: Any) -> Orga | None:
        """An organisation by pk (the simulated ones in dev mode)."""
        if self.dev_mode:
            return next((o for o in SIMULATED_ORGAS if str(o.pk) == str(pk)), None)
        return self.users.get_orga(pk) if self.users is not None else None

    def list_orgas(self) -> list[Orga]:
        """Every organisation, by name."""
        if self.dev_mode:
            return sorted(SIMULATED_ORGAS, key=lambda o: o.name)
        return self.users.list_orgas() if self.users is not None else []

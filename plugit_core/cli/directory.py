"""Helpers of the commands that work on a configuration's backends without a proxy.

``plugit users`` and ``plugit billing`` (added by their backends through ``plugit_add_commands``)
build the few backends they need with :func:`installed_backends` and find users and
organisations with :func:`find_user` and :func:`find_orga`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .errors import CommandError

if TYPE_CHECKING:
    from ..backends import Backends
    from ..config import ProxyConfig


# -- commands on the backends of a configuration ---------------------------------------------------


def installed_backends(config: ProxyConfig) -> Backends:
    """The registry of the installed backends, for a command that builds a few of them without a
    proxy: every table of ``config`` must belong to one (``[users_sqlit]`` is refused, not
    ignored)."""
    from ..backends import KINDS, Backends
    from ..config import ConfigError
    from ..plugins import PluginError, make_plugin_manager

    backends = Backends()
    try:
        pm = make_plugin_manager()
    except PluginError as exc:
        raise CommandError(str(exc)) from None
    pm.hook.plugit_register_backends.call_historic(kwargs={"register": backends.register})
    known = {f"{kind}_{name}" for kind in KINDS for name in backends.names(kind)}
    for section in config.sections:
        if section not in known:
            raise ConfigError(
                section, "unknown table: no backend of that name is installed", config.source
            )
    return backends


def find_user(store: Any, username: str) -> Any:
    """The user of the directory ``store`` named ``username``, or a CommandError."""
    user = store.get_by_username(username)
    if user is None:
        raise CommandError(f"no user named {username!r}")
    return user


def find_orga(store: Any, name: str, hint: str = "") -> Any:
    """The organisation of the directory ``store`` named ``name`` (any case) or with that id,
    or a CommandError (``hint`` added to its message)."""
    orgas = store.list_orgas()
    for orga in orgas:
        if orga.name.lower() == name.lower():
            return orga
    for orga in orgas:
        if str(orga.pk) == name:
            return orga
    raise CommandError(f"no organisation named {name!r}{hint}")

"""The plugin manager factory: no import-time globals, a fresh manager per proxy (and per test)."""

from __future__ import annotations

import importlib
import os
from collections.abc import Iterable
from typing import Any

import pluggy

from . import hookspecs

__all__ = ["BUILTIN_PLUGINS", "PluginError", "make_plugin_manager"]

# Built-in backends, each an ordinary plugin module.  Registered before the entry points, so that
# with pluggy's LIFO call order any installed plugin answers before them.
BUILTIN_PLUGINS = (
    "plugit_backends.cache_memory",
    "plugit_backends.session_cookie",
    "plugit_backends.theme_bootstrap.plugin",
    "plugit_backends.theme_legacy.plugin",
    "plugit_backends.dev_users",
    "plugit_backends.login",
    "plugit_backends.users_sqlite",
    "plugit_backends.users_postgres",
    "plugit_backends.auth_session",
    "plugit_backends.billing",
    "plugit_backends.billing_postgres",
    "plugit_backends.auth_ldap",
    "plugit_backends.auth_oidc",
    "plugit_backends.cache_redis",
    "plugit_backends.session_redis",
    "plugit_backends.mail_smtp",
)

ENTRY_POINT_GROUP = "plugit"
BLOCK_ENV = "PLUGIT_BLOCK_PLUGINS"


class PluginError(RuntimeError):
    """A plugin cannot be loaded, or implements a hook that does not exist."""


def make_plugin_manager(
    plugins: Iterable[Any] = (),
    *,
    load_entry_points: bool = True,
    builtins: Iterable[str] = BUILTIN_PLUGINS,
    blocked: Iterable[str] | None = None,
) -> pluggy.PluginManager:
    """Build a plugin manager: hook specs, entry-point plugins, built-ins, then ``plugins``.

    ``blocked`` names plugins not to load (default: the comma-separated environment variable
    ``PLUGIT_BLOCK_PLUGINS``).  Fails with :class:`PluginError` naming the plugin when one
    implements a misspelt or unknown hook.
    """
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    if blocked is None:
        blocked = [
            name.strip() for name in os.environ.get(BLOCK_ENV, "").split(",") if name.strip()
        ]
    for name in blocked:
        pm.set_blocked(name)
    for module_name in builtins:
        if pm.is_blocked(module_name):
            continue
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise PluginError(f"built-in plugin {module_name} cannot be imported: {exc}") from exc
        pm.register(module, name=module_name)
    if load_entry_points:
        try:
            pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP)
        except Exception as exc:  # a broken third-party plugin names itself in the message
            raise PluginError(
                f"a plugin of the entry-point group {ENTRY_POINT_GROUP!r} failed to load: {exc}"
            ) from exc
    for plugin in plugins:
        if not pm.is_registered(plugin):  # a built-in passed again is the same plugin
            pm.register(plugin)
    check_hooks(pm)
    return pm


def check_hooks(pm: pluggy.PluginManager) -> None:
    """Raise :class:`PluginError` naming any plugin that implements an unknown hook."""
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        raise PluginError(f"plugin {exc.plugin!r}: {exc}") from exc

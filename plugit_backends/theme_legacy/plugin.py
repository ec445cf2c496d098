"""Registers the legacy theme (Bootstrap 3 and jQuery) as the ``theme`` backend ``legacy``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from plugit_core.backends import RegisterBackend, Theme
from plugit_core.config import ConfigError, ProxyConfig
from plugit_core.hookspecs import hookimpl
from plugit_core.settings import NoSettings

from . import SERVICE_TEMPLATES_DIR, STATIC_DIR, TEMPLATES_DIR, MissingAssetsError, static_roots


def _factory(config: ProxyConfig, section: Mapping[str, Any]) -> Theme:
    config.read(NoSettings, "theme_legacy", section)
    try:
        roots = static_roots()
    except MissingAssetsError as exc:
        raise ConfigError("theme", str(exc), config.source) from None
    return Theme("legacy", TEMPLATES_DIR, SERVICE_TEMPLATES_DIR, STATIC_DIR, static_roots=roots)


@hookimpl(trylast=True)
def plugit_register_backends(register: RegisterBackend) -> None:
    register("theme", "legacy", _factory)

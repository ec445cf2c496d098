"""Registers the Bootstrap theme as the ``theme`` backend named ``bootstrap``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from plugit_core.backends import RegisterBackend, Theme
from plugit_core.config import ProxyConfig
from plugit_core.hookspecs import hookimpl
from plugit_core.settings import NoSettings

from . import SERVICE_TEMPLATES_DIR, STATIC_DIR, TEMPLATES_DIR


def _factory(config: ProxyConfig, section: Mapping[str, Any]) -> Theme:
    config.read(NoSettings, "theme_bootstrap", section)
    return Theme("bootstrap", TEMPLATES_DIR, SERVICE_TEMPLATES_DIR, STATIC_DIR)


@hookimpl(trylast=True)
def plugit_register_backends(register: RegisterBackend) -> None:
    register("theme", "bootstrap", _factory)

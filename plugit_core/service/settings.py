"""A service's settings: :class:`ServiceConfig`, read from keyword arguments, a module's
``PI_*`` names or the ``config.py`` beside it (the original PlugIt's), each value checked."""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import sys
import types
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from .. import protocol
from ..networks import NetworkList

log = logging.getLogger("plugit.service")


@dataclass(frozen=True)
class ServiceConfig:
    """Settings of a service.  ``from_settings`` reads the original ``PI_*`` names too."""

    base_url: str = "/"
    templates: str | os.PathLike[str] = "templates"
    media: str | os.PathLike[str] = "media"
    root: str | os.PathLike[str] = "."
    allowed_networks: tuple[str, ...] = ("127.0.0.0/8", "::1/128")
    use_proxy_ip: bool = False
    trusted_proxies: tuple[str, ...] = ("127.0.0.0/8", "::1/128")
    api_name: str = protocol.PROTOCOL_NAME
    project_name: str = "PlugIt-Project"
    api_url: str = ""
    debug: bool = False
    meta_cache: int | None = None
    secret: str | None = None
    signature_max_age: int = 300
    max_content_length: int | None = 16 * 1024 * 1024
    max_form_memory_size: int | None = 2 * 1024 * 1024

    # The original settings module names (PROTOCOL.md 4.2).
    SETTINGS = {
        "PI_BASE_URL": "base_url",
        "PI_ALLOWED_NETWORKS": "allowed_networks",
        "PI_USE_PROXY_IP": "use_proxy_ip",
        "PI_TRUSTED_PROXIES": "trusted_proxies",
        "PI_API_NAME": "api_name",
        "PI_PROJECT_NAME": "project_name",
        "PI_META_CACHE": "meta_cache",
        "PI_SECRET": "secret",
        "PI_SIGNATURE_MAX_AGE": "signature_max_age",
        "PI_MAX_CONTENT_LENGTH": "max_content_length",
        "PI_TEMPLATES": "templates",
        "PI_MEDIA": "media",
        "API_URL": "api_url",
        "DEBUG": "debug",
    }

    def __post_init__(self) -> None:
        base = self.base_url
        if not isinstance(base, str) or not base.startswith("/") or not base.endswith("/"):
            raise ValueError(f"base_url must start and end with '/': {base!r}")
        for name in ("allowed_networks", "trusted_proxies"):
            value = getattr(self, name)
            if isinstance(value, str):
                value = tuple(p.strip() for p in value.split(",") if p.strip())
            object.__setattr__(self, name, tuple(value))
            NetworkList(getattr(self, name), setting=name)  # raises ValueError naming the entry
        if self.secret is not None and len(str(self.secret)) < 16:
            raise ValueError("secret must be at least 16 characters long")

    @property
    def meta_cache_seconds(self) -> int:
        if self.meta_cache is not None:
            return int(self.meta_cache)
        return 0 if self.debug else 300

    @classmethod
    def from_settings(
        cls, settings: Any = None, *, defaults: Any = None, **overrides: Any
    ) -> ServiceConfig:
        """Build from a settings module, object or mapping using the ``PI_*`` names, or ours.

        ``defaults`` (the same kinds, original ``PI_*`` names only) gives the values neither
        ``settings`` nor ``overrides`` set: the service's ``config`` module, say.
        """
        values = cls._read(defaults, own_names=False) if defaults is not None else {}
        if settings is not None:
            values.update(cls._read(settings, own_names=True))
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**_checked_settings(values))

    @classmethod
    def _read(cls, settings: Any, *, own_names: bool) -> dict[str, Any]:
        values: dict[str, Any] = {}
        getter = (
            settings.get
            if isinstance(settings, Mapping)
            else (lambda key, default=None: getattr(settings, key, default))
        )
        for original, name in cls.SETTINGS.items():
            value = getter(original, None)
            if value is not None:
                values[name] = value
        if own_names:
            for name in (f.name for f in fields(cls)):
                value = getter(name, None)
                # A service module doubles as its settings: an action or import that happens to
                # be called ``root`` or ``media`` is not a setting.
                if value is not None and not _is_code(value):
                    values[name] = value
        return values

    def with_settings(self, **settings: Any) -> ServiceConfig:
        """A copy with ``settings`` (our names, not ``PI_*``) replacing these; ``None`` values
        are ignored.  Unknown names raise TypeError, bad values ValueError."""
        values = _checked_settings({k: v for k, v in settings.items() if v is not None})
        return replace(self, **values) if values else self


def _checked_settings(values: dict[str, Any]) -> dict[str, Any]:
    unknown = set(values) - {f.name for f in fields(ServiceConfig)}
    if unknown:
        raise TypeError(f"unknown service settings: {', '.join(sorted(unknown))}")
    for name in ("debug", "use_proxy_ip"):  # often read from the environment as text
        if isinstance(values.get(name), str):
            values[name] = _text_bool(name, values[name])
    return values


def _text_bool(name: str, text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("", "0", "false", "no", "off"):
        return False
    raise ValueError(f"{name} must be true or false, not {text!r}")


def _is_code(value: Any) -> bool:
    return isinstance(value, (types.ModuleType, type)) or callable(value)


def service_config_module(module: types.ModuleType) -> types.ModuleType | None:
    """The ``config`` module beside ``module`` (``config.py`` in its folder), the original
    library's settings file, imported once; None when there is none.

    It is registered as ``config`` (or ``<package>.config``) unless another module holds that
    name, so the service's own ``import config`` gets the same module.  ValueError, naming the
    file, when it cannot be imported.
    """
    filename = getattr(module, "__file__", None)
    if not filename or Path(filename).stem == "config":
        return None
    path = Path(filename).resolve().parent / "config.py"
    if not path.is_file():
        return None
    package = getattr(module, "__package__", None)
    name = f"{package}.config" if package else "config"
    loaded = sys.modules.get(name)
    if loaded is not None:
        if Path(getattr(loaded, "__file__", None) or "").resolve() == path:
            return loaded
        name = f"_plugit_service_config_{hashlib.sha256(str(path).encode()).hexdigest()[:12]}"
        if name in sys.modules:
            return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:  # pragma: no cover (a .py file always has one)
        return None
    config = importlib.util.module_from_spec(spec)
    sys.modules[name] = config
    try:
        spec.loader.exec_module(config)
    except Exception as exc:
        del sys.modules[name]
        raise ValueError(
            f"cannot import the settings in {path}: {type(exc).__name__}: {exc}"
        ) from exc
    log.info("service settings read from %s", path)
    return config

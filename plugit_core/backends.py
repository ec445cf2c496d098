"""Backend kinds, their interfaces, and the registry plugins fill at start-up.

Each kind has one small interface here; every implementation (memory, Redis, SQLite, ...) passes
the kind's shared conformance suite (``plugit_core.conformance`` for caches and sessions,
``plugit_core.testing`` for the stores).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from werkzeug.wrappers import Request, Response

    from .config import ProxyConfig

__all__ = [
    "KINDS",
    "Backends",
    "CacheBackend",
    "RegisterBackend",
    "Session",
    "SessionBackend",
    "Theme",
]

KINDS = ("cache", "session", "theme", "auth", "users", "login", "mail", "billing")

Factory = Callable[["ProxyConfig", Mapping[str, Any]], Any]


class RegisterBackend(Protocol):
    def __call__(self, kind: str, name: str, factory: Factory) -> None: ...


@runtime_checkable
class CacheBackend(Protocol):
    """A byte-valued cache with per-entry lifetime.  Must be safe to use from many threads.

    A backend that fails (a lost connection) must not raise to the caller: ``get`` answers
    None and ``set`` does nothing, after logging a warning.
    """

    def get(self, key: str) -> bytes | None:
        """The value stored under ``key``, or None when absent or expired."""

    def set(self, key: str, value: bytes, ttl: float) -> None:
        """Store ``value`` for ``ttl`` seconds (> 0)."""

    def delete(self, key: str) -> None:
        """Forget ``key`` (no error when absent)."""

    def clear(self) -> None:
        """Forget everything this backend stored."""


class Session(dict[str, Any]):
    """A browser session: a dict of JSON-serialisable values that knows whether it changed."""

    def __init__(self, data: Mapping[str, Any] | None = None, *, new: bool = True) -> None:
        super().__init__(data or {})
        self.new = new
        self.modified = False
        self.rotate = False  # set on login: the next save must issue a new session id

    def __setitem__(self, key: str, value: Any) -> None:
        super().__setitem__(key, value)
        self.modified = True

    def __delitem__(self, key: str) -> None:
        super().__delitem__(key)
        self.modified = True

    def pop(self, key: str, *default: Any) -> Any:
        if key in self:
            self.modified = True
        return super().pop(key, *default)

    def setdefault(self, key: str, default: Any = None) -> Any:
        if key not in self:
            self.modified = True
        return super().setdefault(key, default)

    def update(self, *args: Any, **kwargs: Any) -> None:
        super().update(*args, **kwargs)
        self.modified = True

    def clear(self) -> None:
        if self:
            self.modified = True
        super().clear()


class SessionBackend(Protocol):
    """Loads a request's session and saves it onto the response."""

    def open(self, request: Request) -> Session:
        """The session of this request (a new empty one when it has none or it is invalid)."""

    def save(self, session: Session, request: Request, response: Response) -> None:
        """Persist the session if it changed, setting or deleting the cookie on ``response``."""


@dataclass(frozen=True)
class Theme:
    """A theme: the site's own templates, the templates service templates may extend, assets."""

    name: str
    templates: Path
    service_templates: Path
    static: Path
    #: More folders served below the static URL, by the first segment of the path: with
    #: ``{"jquery": Path(...)}``, ``jquery/jquery.min.js`` is that folder's ``jquery.min.js``.
    #: Any other path is looked up in ``static``.  (Assets installed by other packages, such as
    #: the XStatic ones, are served from where they are installed.)
    static_roots: Mapping[str, Path] = field(default_factory=dict, hash=False)


class Backends:
    """The registry: backend factories by kind and name, then the chosen, built instances."""

    def __init__(self) -> None:
        self._factories: dict[str, dict[str, Factory]] = {kind: {} for kind in KINDS}
        self._lock = threading.Lock()

    def register(self, kind: str, name: str, factory: Factory) -> None:
        """Add a backend; raise ValueError for an unknown kind or a duplicate name."""
        if kind not in self._factories:
            raise ValueError(f"backend {name!r}: unknown kind {kind!r} (one of {', '.join(KINDS)})")
        if not callable(factory):
            raise ValueError(f"backend {kind}.{name}: factory is not callable")
        with self._lock:
            if name in self._factories[kind]:
                raise ValueError(f"backend {kind}.{name} is registered twice")
            self._factories[kind][name] = factory

    def names(self, kind: str) -> list[str]:
        return sorted(self._factories[kind])

    def build(self, kind: str, name: str, config: ProxyConfig) -> Any:
        """Build the backend ``name`` of ``kind`` with its own configuration table."""
        try:
            factory = self._factories[kind][name]
        except KeyError:
            from .config import ConfigError

            known = ", ".join(self.names(kind)) or "none"
            raise ConfigError(
                kind, f"no {kind} backend named {name!r} (known: {known})", config.source
            ) from None
        return factory(config, config.section(f"{kind}_{name}"))

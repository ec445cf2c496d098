"""The backend registry: the kinds, the factories plugins register, the chosen instances.

Each kind is a package of :mod:`plugit_core.kinds` holding its interface, the type of its
factory and, in its ``testing`` module, its shared conformance suite (``kinds.cache``,
``kinds.session``, ``kinds.theme``, ``kinds.auth``, ``kinds.users``, ``kinds.billing``,
``kinds.mail``; the mail backend's queue is ``kinds.mailqueue``).  The interfaces the proxy
itself uses most are re-exported here.  ``login`` has no interface of its own yet: its
factories may return anything.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Literal, Protocol, overload

from .kinds.auth import AuthFactory
from .kinds.billing import BillingFactory
from .kinds.cache import CacheBackend, CacheFactory
from .kinds.mail import MailFactory
from .kinds.session import Session, SessionBackend, SessionFactory
from .kinds.theme import Theme, ThemeFactory
from .kinds.users import UsersFactory

if TYPE_CHECKING:
    from .config import ProxyConfig

__all__ = [
    "KINDS",
    "Backends",
    "CacheBackend",
    "Factory",
    "RegisterBackend",
    "Session",
    "SessionBackend",
    "Theme",
]

KINDS = ("cache", "session", "theme", "auth", "users", "login", "mail", "billing")

#: Any kind's factory: ``factory(proxy_config, section)``, ``section`` being the backend's own
#: table of the configuration (``[cache_memory]``).
Factory = Callable[["ProxyConfig", Mapping[str, Any]], Any]


class RegisterBackend(Protocol):
    """``register(kind, name, factory)``, given to ``plugit_register_backends``: typed per kind,
    so a type checker sees a factory that builds the wrong thing for its kind."""

    @overload
    def __call__(self, kind: Literal["cache"], name: str, factory: CacheFactory) -> None: ...
    @overload
    def __call__(self, kind: Literal["session"], name: str, factory: SessionFactory) -> None: ...
    @overload
    def __call__(self, kind: Literal["theme"], name: str, factory: ThemeFactory) -> None: ...
    @overload
    def __call__(self, kind: Literal["auth"], name: str, factory: AuthFactory) -> None: ...
    @overload
    def __call__(self, kind: Literal["users"], name: str, factory: UsersFactory) -> None: ...
    @overload
    def __call__(self, kind: Literal["billing"], name: str, factory: BillingFactory) -> None: ...
    @overload
    def __call__(self, kind: Literal["mail"], name: str, factory: MailFactory) -> None: ...
    @overload
    def __call__(self, kind: Literal["login"], name: str, factory: Factory) -> None: ...
    def __call__(self, kind: str, name: str, factory: Factory) -> None: ...


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

"""The ``session`` backend kind: :class:`Session`, a browser session as the proxy and plugins
see it, :class:`SessionBackend`, what loads and saves it, and :data:`SessionFactory`.

Implementations: ``plugit_backends.session_cookie`` (a signed cookie, the default) and
``plugit_backends.session_redis``; both pass
:class:`plugit_core.kinds.session.testing.SessionBackendConformance`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from werkzeug.wrappers import Request, Response

    from ...config import ProxyConfig

__all__ = ["Session", "SessionBackend", "SessionFactory"]


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


#: ``factory(proxy_config, section)``: builds the backend from its own table
#: (``[session_<name>]``).
SessionFactory = Callable[["ProxyConfig", Mapping[str, Any]], SessionBackend]

"""The request as the proxy reads it: werkzeug's, plus the session, the user and the CSP nonce,
each made when first asked for; and the first defence of every request, dropping what a client
sent in the proxy's own headers."""

from __future__ import annotations

import secrets
from functools import cached_property
from typing import TYPE_CHECKING, Any

from werkzeug.datastructures import ImmutableMultiDict
from werkzeug.http import parse_cookie
from werkzeug.wrappers import Request

if TYPE_CHECKING:
    from ..backends import Session
    from ..users import PlugItUser
    from .context import PluginContext

__all__ = ["ProxyRequest", "strip_plugit_headers"]


def strip_plugit_headers(environ: dict[str, Any]) -> None:
    """Remove every client-supplied ``X-Plugit*`` header (all spellings fold to these keys)."""
    for key in [k for k in environ if k.startswith("HTTP_X_PLUGIT")]:
        del environ[key]


class ProxyRequest(Request):
    """A request to the proxy: werkzeug's, plus the lazily loaded session and user.

    ``proxy`` is the :class:`~plugit_core.proxy.context.PluginContext`, what the views of
    plugins' routes may use.
    """

    proxy: PluginContext

    @cached_property
    def cookies(self) -> ImmutableMultiDict[str, str]:
        """The request's cookies, as werkzeug parses them.  A WSGI server hands the Cookie
        header over as the one ``HTTP_COOKIE`` value; werkzeug's own getter walks the whole
        environ for it, which showed in profiles of every page."""
        cookie = self.environ.get("HTTP_COOKIE", "")
        return parse_cookie(cookie, cls=self.dict_storage_class)  # type: ignore[return-value]

    @cached_property
    def session(self) -> Session:
        """The browser session (loaded on first use, saved when the response leaves)."""
        return self.proxy.sessions.open(self)

    @cached_property
    def user(self) -> PlugItUser:
        """The site user making the request (anonymous when no plugin knows them)."""
        return self.proxy.identify(self)

    @cached_property
    def csp_nonce(self) -> str:
        """This response's Content-Security-Policy nonce: only scripts carrying it run."""
        return secrets.token_urlsafe(16)

    @property
    def session_loaded(self) -> bool:
        return "session" in self.__dict__

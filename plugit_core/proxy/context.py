"""What a plugin may use of the proxy: :class:`PluginContext`.

Every hook that concerns the whole site receives it as ``proxy`` (``plugit_extra_routes``,
``plugit_startup``, ``plugit_identify_user``...), views of extra routes find it as
``request.proxy``, callback API endpoints as ``call.proxy`` and page hooks as ``page.proxy``.
It is a narrow, typed, read-only view: the configuration, the backends the proxy built, the
site's URLs and pages, the directory, the client's address and the CSRF check; not the proxy
object itself.  Plugins are trusted code in the proxy's process: the context says what they are
meant to use, it is not a sandbox (the services' templates have one: ``sandbox.py``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from . import redirects

if TYPE_CHECKING:
    from werkzeug.wrappers import Request, Response

    from ..backends import Backends, SessionBackend
    from ..config import ProxyConfig, ServiceMount
    from ..kinds.auth import AuthBackend
    from ..kinds.billing import BillingStore
    from ..kinds.mail import MailBackend
    from ..kinds.users import UserStore
    from ..users import Orga, PlugItUser
    from .app import ProxyRequest
    from .upstream import ServiceClient

__all__ = ["PluginContext", "SiteContext"]


class PluginContext(Protocol):
    """The proxy as its plugins see it."""

    @property
    def config(self) -> ProxyConfig:
        """The proxy's configuration (its ``secret_key`` included: sign with it, never show
        it)."""

    @property
    def backends(self) -> Backends:
        """The backends registered by every plugin; ``build(kind, name, config)`` makes one."""

    @property
    def auth(self) -> Sequence[AuthBackend]:
        """The configured authentication backends, in the configuration's order."""

    @property
    def users(self) -> UserStore | None:
        """The directory of users and organisations (None without one)."""

    @property
    def billing(self) -> BillingStore | None:
        """The billing store (None without billing)."""

    @property
    def mail(self) -> MailBackend | None:
        """The mail backend (None without mail)."""

    @property
    def sessions(self) -> SessionBackend:
        """The session backend in use (as a plugin may have wrapped it)."""

    @property
    def clients(self) -> Mapping[str, ServiceClient]:
        """The clients of the mounted services by name (``"<service>"``,
        ``"<service>:<variant>"``, ``"<service>:shadow"``)."""

    def identify(self, request: ProxyRequest) -> PlugItUser:
        """The user making ``request`` (anonymous when no plugin knows them)."""

    def lookup_user(self, pk: Any) -> PlugItUser | None:
        """A user by pk, completed by the plugins (``plugit_user_loaded``)."""

    def lookup_orga(self, pk: Any) -> Orga | None:
        """An organisation by pk."""

    def list_orgas(self) -> list[Orga]:
        """Every organisation, by name."""

    def base_path(self, request: Request) -> str:
        """Where the proxy is on the site for ``request`` (``""`` at the root)."""

    def site_url(self, request: Request, path: str) -> str:
        """The URL the browser must use for ``path``, a path of the proxy."""

    def client_address(self, request: Request) -> str | None:
        """The client's address (the first untrusted hop behind ``trusted_proxies``)."""

    def redirect_allowed(self, request: Request, target: str) -> bool:
        """Whether ``target``, an absolute URL, is this site or an allowed host."""

    def is_local_path(self, target: str) -> bool:
        """Whether ``target`` is a path of this site as every browser reads it."""

    def csrf_token(self, request: ProxyRequest, scope: str = "") -> str:
        """The session's CSRF token of ``scope`` (``""``: the site's own forms)."""

    def csrf_valid(self, request: ProxyRequest, scope: str = "") -> bool:
        """Whether an unsafe request carries the token of ``scope``."""

    def when_session_saved(self, request: ProxyRequest, done: Callable[[], None]) -> None:
        """Run ``done`` once the request's session is stored (never when it could not be)."""

    def render_site_page(
        self, request: ProxyRequest, template: str, status: int = 200, **context: Any
    ) -> Response:
        """One of the theme's own templates (login page, ...) inside the site's layout."""

    def error_page(
        self,
        request: ProxyRequest,
        status: int,
        *,
        reason: str | None = None,
        message: str | None = None,
        detail: str | None = None,
        mount: ServiceMount | None = None,
    ) -> Response:
        """The themed error page (``reason`` and ``detail`` shown in dev mode only)."""


class SiteContext:
    """The :class:`PluginContext` of one proxy: its parts, and nothing else of it.

    Read-only for plugins: setting an attribute raises ``AttributeError`` (plugins return what
    they contribute from hooks).  ``sessions`` is the one value that changes after it is made:
    the proxy sets it through :meth:`use_sessions` once the plugins wrapped the session backend
    (``plugit_session_backend``).
    """

    _HOOKS_INSTEAD = {
        "sessions": "plugit_session_backend",
        "login_url": "plugit_site_links",
        "logout_url": "plugit_site_links",
    }

    def __init__(
        self,
        *,
        config: ProxyConfig,
        backends: Backends,
        auth: Sequence[AuthBackend],
        users: UserStore | None,
        billing: BillingStore | None,
        mail: MailBackend | None,
        sessions: SessionBackend,
        clients: Mapping[str, ServiceClient],
        identify: Callable[[ProxyRequest], PlugItUser],
        lookup_user: Callable[[Any], PlugItUser | None],
        lookup_orga: Callable[[Any], Orga | None],
        list_orgas: Callable[[], list[Orga]],
        base_path: Callable[[Request], str],
        site_url: Callable[[Request, str], str],
        client_address: Callable[[Request], str | None],
        csrf_token: Callable[..., str],
        csrf_valid: Callable[..., bool],
        render_site_page: Callable[..., Response],
        error_page: Callable[..., Response],
    ) -> None:
        self.config = config
        self.backends = backends
        self.auth = tuple(auth)
        self.users, self.billing, self.mail = users, billing, mail
        self.sessions = sessions
        self.clients = clients
        self.identify = identify
        self.lookup_user = lookup_user
        self.lookup_orga = lookup_orga
        self.list_orgas = list_orgas
        self.base_path = base_path
        self.site_url = site_url
        self.client_address = client_address
        self.csrf_token = csrf_token
        self.csrf_valid = csrf_valid
        self.render_site_page = render_site_page
        self.error_page = error_page
        self._frozen = True

    def __setattr__(self, name: str, value: Any) -> None:
        if self.__dict__.get("_frozen"):
            hook = self._HOOKS_INSTEAD.get(name)
            instead = f"; return it from the hook {hook} instead" if hook else ""
            raise AttributeError(f"the plugins' context is read-only: cannot set {name!r}{instead}")
        super().__setattr__(name, value)

    def use_sessions(self, sessions: SessionBackend) -> None:
        """The session backend as the plugins wrapped it (the proxy's own call)."""
        self.__dict__["sessions"] = sessions

    def redirect_allowed(self, request: Request, target: str) -> bool:
        return redirects.redirect_allowed(
            target,
            request_scheme=request.scheme,
            request_host=request.host or "",
            allowed_hosts=self.config.allowed_redirect_hosts,
        )

    @staticmethod
    def is_local_path(target: str) -> bool:
        return redirects.is_local_path(target)

    @staticmethod
    def when_session_saved(request: ProxyRequest, done: Callable[[], None]) -> None:
        request.__dict__.setdefault("_plugit_when_saved", []).append(done)

    def __repr__(self) -> str:
        return f"<PluginContext of the proxy {self.config.site_name!r}>"

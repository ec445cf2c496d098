"""The proxy as a WSGI application, standalone (:class:`ProxyApp`) or around another app
(:class:`PlugItMiddleware`).

:class:`ProxyApp` is composed of parts with one job each, built in the start-up order of
:mod:`plugit_core.proxy.hooks`: the service clients (:mod:`.clients`), the directory
(:mod:`.directory`), the CSRF tokens (:mod:`.csrf`), the site's pages (:mod:`.site`), the status
URLs (:mod:`.status`), the page pipeline (:mod:`.pipeline`), the callback API (:mod:`.api`) and
the fragments of site pages (:mod:`.fragments`).  Plugins see none of it: they receive the
:class:`~plugit_core.proxy.context.PluginContext`.

Security, at the entry of every request, before any routing:

* every ``X-Plugit*`` request header is removed from the environ, whatever its spelling: WSGI
  folds ``X-Plugit-Remote-Addr`` and ``X-Plugit_Remote_Addr`` into the same key, and we drop
  every ``HTTP_X_PLUGIT*`` key, so a browser can never pass itself off as the proxy;
* client parameters named ``ebuio_*`` are never forwarded (see the pipeline);
* unsafe methods need the session's CSRF token.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Generator, Iterable, Mapping
from pathlib import Path
from typing import Any

from werkzeug.exceptions import HTTPException
from werkzeug.routing import Map, Rule
from werkzeug.wrappers import Request, Response

from ..backends import KINDS, Backends, CacheBackend, SessionBackend, Theme
from ..config import ConfigError, ProxyConfig, ServiceMount, load_config
from ..hookspecs import hookimpl
from ..kinds.auth import AuthBackend
from ..kinds.billing import BillingStore
from ..kinds.mail import MailBackend
from ..kinds.users import UserStore
from ..networks import NetworkList
from ..plugins import make_plugin_manager
from ..stores import StoreGuard, StoreUnavailable
from ..users import Orga, PlugItUser
from ..wsgi import answer
from . import redirects
from .api import CallbackAPI
from .bodies import bound_body, close_body
from .clients import ServiceClients
from .containment import common_headers
from .context import PluginContext, SiteContext
from .csrf import UNSAFE_METHODS, CsrfTokens
from .dev_guard import dev_guard
from .directory import Directory
from .fragments import Fragments
from .hooks import Hooks
from .page import PageRequest
from .pipeline import Pipeline
from .request import ProxyRequest, strip_plugit_headers
from .routes import LogoutFields, Route, SiteLinks
from .sandbox import RenderBudget
from .site import STATIC_PREFIX, THEMES_PREFIX, SiteRenderer, script_root, site_url
from .status import HealthRoutes
from .templating import ServiceTemplates
from .upstream import ServiceClient, ServiceReply, UpstreamRequest

__all__ = ["LogoutFields", "PlugItMiddleware", "ProxyApp", "ProxyRequest", "script_root"]

log = logging.getLogger("plugit.proxy")


class _CoreCall:
    """The proxy's own hook implementations: the HTTP request to the service, and the closing
    of the backends it built once every plugin's ``plugit_shutdown`` returned."""

    def __init__(self) -> None:
        self.backends: Callable[[], Iterable[Any]] = tuple

    @hookimpl(trylast=True)
    def plugit_call_service(self, page: PageRequest, upstream: UpstreamRequest) -> ServiceReply:
        return page.client.send(upstream)

    @hookimpl(wrapper=True)
    def plugit_shutdown(self, proxy: PluginContext) -> Generator[None, None, None]:
        try:
            yield
        finally:
            for backend in self.backends():
                _close_backend(backend)


_VARIABLE = re.compile(r"<(?:([A-Za-z_]\w*(?:\([^)]*\))?):)?[A-Za-z_]\w*>")


def _rule_shape(rule: str) -> str:
    """``rule`` without the names of its variables: ``/x/<int:a>`` and ``/x/<int:b>`` match the
    same URLs, so they are the same route."""
    return _VARIABLE.sub(lambda m: f"<{m.group(1) or 'string'}>", rule)  # werkzeug's default


def _close_backend(backend: object) -> None:
    """``backend.close()`` when it has one; a failure is logged, so the others still close."""
    closer = getattr(backend, "close", None)
    if callable(closer):
        try:
            closer()
        except Exception:
            log.exception("closing the backend %s failed", type(backend).__name__)


class _HostIdentity:
    """Lets the host app of :class:`PlugItMiddleware` say who the user is."""

    def __init__(self, identify: Callable[[dict[str, Any]], PlugItUser | None]) -> None:
        self.identify = identify

    @hookimpl(tryfirst=True)
    def plugit_identify_user(
        self, request: ProxyRequest, proxy: PluginContext
    ) -> PlugItUser | None:
        return self.identify(request.environ)


class ProxyApp:
    """The PlugIt proxy: serves every mounted service below its mount, plus the site's pages.

    ``config`` is a :class:`ProxyConfig`, a mapping with the TOML structure, or a path to a
    TOML file.  ``plugins`` are registered after the built-in and installed ones.
    """

    request_class = ProxyRequest

    def __init__(
        self,
        config: ProxyConfig | Mapping[str, Any] | str | Path,
        *,
        plugins: Iterable[Any] = (),
        load_entry_points: bool = True,
        check_services: bool = True,
    ) -> None:
        if isinstance(config, (str, Path)):
            config = load_config(config)
        elif isinstance(config, Mapping):
            config = ProxyConfig.from_mapping(config)
        self.config = config
        core = _CoreCall()
        self.pm = make_plugin_manager([core, *plugins], load_entry_points=load_entry_points)
        self.hooks = Hooks(self.pm)
        # 1. Every plugin offers its backends; the configured ones are built.
        self.backends = Backends()
        self.hooks.register_backends(self.backends.register)
        self._check_sections()
        self.cache: CacheBackend = self.backends.build("cache", config.cache, config)
        self.sessions: SessionBackend = self.backends.build("session", config.session, config)
        self.theme: Theme = self.backends.build("theme", config.theme, config)
        self.auth: list[AuthBackend] = [
            self.backends.build("auth", name, config) for name in config.auth
        ]
        self.users: UserStore | None = (
            self.backends.build("users", config.users, config) if config.users else None
        )
        self.billing: BillingStore | None = (
            self.backends.build("billing", config.billing, config) if config.billing else None
        )
        self.mail: MailBackend | None = (
            self.backends.build("mail", config.mail, config) if config.mail else None
        )
        core.backends = self._closing_order
        themes = {self.theme.name: self.theme}
        for name in sorted({m.theme for m in config.services if m.theme} - {config.theme}):
            themes[name] = self.backends.build("theme", name, config)
        try:
            self._assemble(config, themes, check_services=check_services)
        except BaseException:
            self._abandon()  # a start-up error: no thread, pool or connection left behind
            raise

    def _assemble(
        self, config: ProxyConfig, themes: dict[str, Theme], *, check_services: bool
    ) -> None:
        """Steps 2 to 5 of the start-up: the parts, the plugins' context, routes, serving."""
        # 2. The parts, each with one job.
        self.links = SiteLinks()
        self.clients = ServiceClients(config)
        self.csrf = CsrfTokens(lambda: self.sessions, self.links)
        self.directory = Directory(users=self.users, dev_mode=config.dev_mode, hooks=self.hooks)
        self.site = SiteRenderer(
            config, theme=self.theme, themes=themes, csrf=self.csrf, identify=self.identify
        )
        self._trusted = NetworkList(config.trusted_proxies, setting="trusted_proxies")
        self.dev_guard = dev_guard(config)  # dev mode: loopback and dev_allowed_clients only
        self.mounts = sorted(config.services, key=lambda m: len(m.mount), reverse=True)
        self.templates = {
            m.name: ServiceTemplates(
                m.name,
                self.site.mount_theme(m),
                dialect=m.template_dialect,
                menu_block=m.menu_block,
                budget=RenderBudget(
                    cpu_time=m.render_cpu_time,
                    max_iterations=m.render_max_iterations,
                    max_output=m.render_max_output,
                    max_size=m.render_max_size,
                ),
            )
            for m in config.services
        }
        # 3. What plugins see of it; a plugin may wrap the sessions and give the site's links.
        self.context = SiteContext(
            config=config,
            backends=self.backends,
            auth=self.auth,
            users=self.users,
            billing=self.billing,
            mail=self.mail,
            sessions=self.sessions,
            clients=self.clients,
            identify=self.identify,
            lookup_user=self.directory.lookup_user,
            lookup_orga=self.directory.lookup_orga,
            list_orgas=self.directory.list_orgas,
            base_path=script_root,
            site_url=site_url,
            client_address=self.client_address,
            csrf_token=self.csrf.token,
            csrf_valid=self.csrf.valid,
            render_site_page=self.site.render_page,
            error_page=self.site.error_page,
        )
        self.hooks.bind(self.context)
        self.sessions = self.hooks.session_backend(self.sessions)
        self.context.use_sessions(self.sessions)
        links = self.hooks.site_links()
        if links is not None:
            self.links.login_url, self.links.logout_url = links.login_url, links.logout_url
            self.links.logout_method, self.links.logout_fields = (
                links.logout_method,
                links.logout_fields,
            )
        # 4. Pages, the callback API (plugit_register_api_endpoints), fragments, routes
        # (plugit_extra_routes), status URLs.
        self.pipeline = Pipeline(self)
        self.api = CallbackAPI(self)
        self.fragments = Fragments(self)  # fragments of pages, [[pages]]
        self.site.fill_fragments = self.fragments.fill
        self.url_map = Map(
            [
                Rule(STATIC_PREFIX + "<path:path>", endpoint="static", methods=["GET"]),
                Rule(THEMES_PREFIX + "<name>/<path:path>", endpoint="theme", methods=["GET"]),
                Rule("/_plugit/health", endpoint="health", methods=["GET"]),
                Rule("/_plugit/ready", endpoint="ready", methods=["GET"]),
                Rule("/_plugit/metrics", endpoint="metrics", methods=["GET"]),
            ]
        )
        self._routes: dict[str, Route] = {}
        for route in self.hooks.extra_routes():
            self.add_route(route)
        for route in self.fragments.routes():
            self.add_route(route)
        home_taken = any(route.rule == "/" for route in self._routes.values())  # a plugin's home
        if not (home_taken or any(m.mount == "/" for m in self.mounts)):
            if "/" not in self.fragments.pages:
                self.url_map.add(Rule("/", endpoint="home", methods=["GET"]))
        self.status = HealthRoutes(
            config, clients=self.clients, stores=self._stores, mail=self.mail
        )
        # 5. Ready to serve.
        self.hooks.startup()
        if check_services:
            self.check_services()

    def _abandon(self) -> None:
        """Release what a failed start-up built, as far as it got (errors are logged)."""
        for name in ("fragments", "clients", "status"):
            part = self.__dict__.get(name)
            if part is not None:
                try:
                    part.close()
                except Exception:
                    log.exception("closing %s after a failed start-up", name)
        for backend in self._closing_order():
            _close_backend(backend)

    def _closing_order(self) -> tuple[object, ...]:
        """The backends the proxy built, in the order they close: the mail queue first (its
        threads use the service clients)."""
        return (self.mail, self.users, self.billing, self.cache, self.sessions, *self.auth)

    def _check_sections(self) -> None:
        themes = set(self.backends.names("theme"))
        for i, mount in enumerate(self.config.services):
            if mount.theme and mount.theme not in themes:
                raise ConfigError(
                    f"services[{i}].theme",
                    f"no theme {mount.theme!r} is installed for service {mount.name!r} "
                    f"(installed: {', '.join(sorted(themes))})",
                    self.config.source,
                )
        known = {f"{kind}_{name}" for kind in KINDS for name in self.backends.names(kind)}
        for section in self.config.sections:
            if section not in known:
                raise ConfigError(
                    section,
                    "unknown table: no backend of that name is installed",
                    self.config.source,
                )

    def _stores(self) -> list[object]:
        return [self.users, self.billing, self.sessions, self.cache, self.mail, *self.auth]

    def add_route(self, route: Route) -> None:
        """Serve ``route`` (what ``plugit_extra_routes`` returns).

        Raises ValueError when the proxy already serves the same rule for one of its methods
        (two plugins claiming one URL is a start-up error, never a silent winner)."""
        methods = {m.upper() for m in route.methods}
        shape = _rule_shape(route.rule)
        for rule in self.url_map.iter_rules():
            if _rule_shape(rule.rule) == shape and methods & set(rule.methods or ()):
                raise ValueError(
                    f"the route {route.rule!r} ({', '.join(sorted(methods))}) is added twice: "
                    "another plugin or the proxy already serves it"
                )
        endpoint = f"route:{len(self._routes)}"
        self._routes[endpoint] = route
        self.url_map.add(Rule(route.rule, endpoint=endpoint, methods=list(route.methods)))

    def check_services(self) -> dict[str, tuple[bool, str]]:
        """Ask every service's ``version``, in parallel; log and return what each answered."""
        return self.clients.check_all()

    # -- WSGI -------------------------------------------------------------------------------------

    def __call__(
        self, environ: dict[str, Any], start_response: Callable[..., Any]
    ) -> Iterable[bytes]:
        if self.dev_guard is not None and not self.dev_guard.allows(environ):
            return self.dev_guard.refuse(environ, start_response)
        strip_plugit_headers(environ)
        request = self.request_class(environ)
        request.proxy = self.context
        bound_body(request, self.config.max_upload_size)  # 413 past it, chunked bodies too
        response = self.dispatch(request)
        response.call_on_close(lambda: close_body(request))  # uploads are temporary files
        return answer(response, environ, start_response)

    def match_mount(self, path: str) -> tuple[ServiceMount, str] | None:
        """The mount serving ``path`` and the action path below it, or None."""
        for mount in self.mounts:
            if path.startswith(mount.mount):
                return mount, path[len(mount.mount) :]
            if path + "/" == mount.mount:
                return mount, ""
        return None

    def dispatch(self, request: ProxyRequest) -> Response:
        """Answer one request; never raises."""
        try:
            response = self._dispatch(request)
        except StoreUnavailable as exc:  # an outage, not a bug: a 503 naming it, no traceback
            response = self.site.outage_page(request, exc)
        except Exception:
            log.exception("unhandled error on %s %s", request.method, request.path)
            response = self.error_page(request, 500)
        if request.session_loaded and not request.__dict__.get("_plugit_outage"):
            try:
                self.sessions.save(request.session, request, response)
                for done in request.__dict__.pop("_plugit_when_saved", ()):
                    done()
            except StoreUnavailable as exc:  # never answer as if a login or a change was kept
                log.warning(
                    "%s %s: the session was not saved (%s); the %s answer became a 503",
                    request.method,
                    request.path,
                    exc.reason,
                    response.status_code,
                )
                response = self.site.outage_page(
                    request,
                    exc,
                    message="Your session could not be saved, so nothing of this request was "
                    "kept. Please try again in a moment.",
                )
            except Exception:
                log.exception("could not save the session")
                response = self.error_page(request, 500)
        common_headers(response.headers, hsts=bool(getattr(self.sessions, "secure", False)))
        return response

    def _dispatch(self, request: ProxyRequest) -> Response:
        found = self.match_mount(request.path)
        if found is not None:
            mount, path = found
            if request.path + "/" == mount.mount:
                location = site_url(request, mount.mount)
                return Response(b"", status=308, headers={"Location": location})
            return self.pipeline.handle(request, mount, path)
        adapter = self.url_map.bind_to_environ(request.environ)
        try:
            endpoint, values = adapter.match()
        except HTTPException as exc:
            if exc.code is not None and exc.code < 400:
                return exc.get_response()
            return self.error_page(request, exc.code or 404)
        if endpoint == "static":
            return self.site.static(request, values["path"])
        if endpoint == "theme":
            theme = self.site.themes.get(values["name"])
            if theme is None or theme is self.theme:
                return self.error_page(request, 404)
            return self.site.static(request, values["path"], theme)
        if endpoint == "home":
            return self.site.home(request)
        if endpoint in ("health", "ready", "metrics"):
            view: Callable[[Request], Response] = getattr(self.status, endpoint)
            return view(request)
        route = self._routes[endpoint]
        if route.csrf and request.method in UNSAFE_METHODS and not self.csrf.valid(request):
            return self.error_page(
                request,
                403,
                reason="csrf",
                message="The form has expired. Reload the page and try again.",
            )
        return route.view(request, **values)

    # -- what the pipeline, the API and the fragments ask of the parts ----------------------------

    def identify(self, request: ProxyRequest) -> PlugItUser:
        """The user making ``request`` (see :class:`~plugit_core.proxy.directory.Directory`)."""
        return self.directory.identify(request)

    def lookup_user(self, pk: Any) -> PlugItUser | None:
        return self.directory.lookup_user(pk)

    def lookup_orga(self, pk: Any) -> Orga | None:
        return self.directory.lookup_orga(pk)

    def list_orgas(self) -> list[Orga]:
        return self.directory.list_orgas()

    def select_client(
        self, mount: ServiceMount, request: Request, user: PlugItUser
    ) -> tuple[ServiceClient, str]:
        return self.clients.select(mount, request, user)

    def client_address(self, request: Request) -> str | None:
        """The client's address: the peer, or behind trusted proxies the first untrusted hop."""
        peer = request.remote_addr
        if not self._trusted.networks or peer not in self._trusted:
            return peer
        hops = [
            h.strip() for h in request.headers.get("X-Forwarded-For", "").split(",") if h.strip()
        ]
        for hop in reversed(hops):
            if hop not in self._trusted:
                return hop
        return hops[0] if hops else peer

    def csrf_token(self, request: ProxyRequest, scope: str = "") -> str:
        """The session's CSRF token of ``scope`` (:class:`~plugit_core.proxy.csrf.CsrfTokens`)."""
        return self.csrf.token(request, scope)

    def csrf_valid(self, request: ProxyRequest, scope: str = "") -> bool:
        return self.csrf.valid(request, scope)

    def with_csrf(self, request: ProxyRequest, html: str, scope: str = "") -> str:
        return self.csrf.fill(request, html, scope)

    @staticmethod
    def base_path(request: Request) -> str:
        """Where this app is on the site for ``request`` (its ``SCRIPT_NAME``)."""
        return script_root(request)

    @staticmethod
    def site_url(request: Request, path: str) -> str:
        """The URL the browser must use for ``path``, a path of this app."""
        return site_url(request, path)

    @staticmethod
    def is_local_path(target: str) -> bool:
        """A path on this site (``/x``) as browsers read it, and no other reader could take it
        for another site (:func:`plugit_core.proxy.redirects.is_local_path`)."""
        return redirects.is_local_path(target)

    def redirect_allowed(self, request: Request, target: str) -> bool:
        """An absolute http(s) URL, as browsers read it, to this host and port or to one of
        ``allowed_redirect_hosts`` (:func:`plugit_core.proxy.redirects.redirect_allowed`)."""
        return self.context.redirect_allowed(request, target)

    def cache_get(self, key: str) -> dict[str, Any] | None:
        """A page-cache entry (None when absent or unreadable)."""
        raw = self.cache.get(key)
        if raw is None:
            return None
        try:
            value = json.loads(raw)
        except ValueError:
            return None
        return value if isinstance(value, dict) else None

    def cache_set(self, key: str, content: dict[str, Any], ttl: float) -> None:
        self.cache.set(key, json.dumps(content, separators=(",", ":")).encode("utf-8"), ttl)

    def render_site_page(
        self, request: ProxyRequest, template: str, status: int = 200, **context: Any
    ) -> Response:
        """Render one of the site's own templates (login page, ...) with the layout's variables."""
        return self.site.render_page(request, template, status, **context)

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
        """The themed error page.  Internal reasons are shown in dev mode only."""
        return self.site.error_page(
            request, status, reason=reason, message=message, detail=detail, mount=mount
        )

    def store_guards(self) -> list[StoreGuard]:
        """The guards of every store the proxy uses (plugit_core/stores.py)."""
        return self.status.store_guards()

    def close(self) -> None:
        """Release pools, connections and threads (the proxy cannot serve afterwards).

        Calls the ``plugit_shutdown`` hook first, which also closes the backends."""
        self.status.close()
        try:
            self.hooks.shutdown()
        except Exception:
            log.exception("a plugit_shutdown implementation failed")
        self.fragments.close()
        self.clients.close()


class PlugItMiddleware:
    """Serve PlugIt mounts inside another WSGI app (Flask, Django, ...).

    Requests below a service's mount, and the proxy's own URLs (``/_plugit/...``), are answered
    by the proxy; everything else goes to ``app`` untouched, except that client-supplied
    ``X-Plugit*`` headers are removed for every request.  ``identify(environ)`` lets the host app
    say who the user is (return a :class:`~plugit_core.users.PlugItUser` or None)::

        app.wsgi_app = PlugItMiddleware(app.wsgi_app, "plugit.toml", identify=current_user)

    Mounts are matched on ``PATH_INFO``; when the host app is below a path prefix
    (``SCRIPT_NAME``), every URL the proxy emits carries it.

    ``login_url`` and ``logout_url`` are the host app's own login and logout URLs (paths of the
    app, like the mounts), for the layout's "Log in" link and "Log out" control.  The logout
    control is a plain link (a GET: the host's page should ask for confirmation with its own
    form) unless ``logout_fields(environ)`` is given: it is then a POST form carrying the hidden
    fields that function returns for the request, typically the host's own CSRF token (see
    :func:`plugit_contrib.flask.plugit_logout_fields_from_flask` and
    :func:`plugit_contrib.django.plugit_logout_fields_from_django`).  The proxy's CSRF token is
    never sent to the host.
    """

    def __init__(
        self,
        app: Callable[..., Iterable[bytes]],
        config: ProxyConfig | Mapping[str, Any] | str | Path,
        *,
        identify: Callable[[dict[str, Any]], PlugItUser | None] | None = None,
        login_url: str | None = None,
        logout_url: str | None = None,
        logout_fields: LogoutFields | None = None,
        plugins: Iterable[Any] = (),
        **options: Any,
    ) -> None:
        self.app = app
        extra = [_HostIdentity(identify)] if identify is not None else []
        self.proxy = ProxyApp(config, plugins=[*extra, *plugins], **options)
        if login_url:
            self.proxy.links.login_url = login_url
        if logout_url:
            self.proxy.links.logout_url = logout_url
            self.proxy.links.logout_method = "post" if logout_fields is not None else "get"
            self.proxy.links.logout_fields = logout_fields

    def __call__(
        self, environ: dict[str, Any], start_response: Callable[..., Any]
    ) -> Iterable[bytes]:
        guard = self.proxy.dev_guard  # in dev mode, the host app's pages are refused too
        if guard is not None and not guard.allows(environ):
            return guard.refuse(environ, start_response)
        strip_plugit_headers(environ)
        path = environ.get("PATH_INFO", "") or "/"
        if self.proxy.match_mount(path) is not None or path.startswith("/_plugit/"):
            return self.proxy(environ, start_response)
        return self.app(environ, start_response)

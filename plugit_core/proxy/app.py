"""The proxy as a WSGI application, standalone (:class:`ProxyApp`) or around another app
(:class:`PlugItMiddleware`).

Security, at the entry of every request, before any routing:

* every ``X-Plugit*`` request header is removed from the environ, whatever its spelling: WSGI
  folds ``X-Plugit-Remote-Addr`` and ``X-Plugit_Remote_Addr`` into the same key, and we drop
  every ``HTTP_X_PLUGIT*`` key, so a browser can never pass itself off as the proxy;
* client parameters named ``ebuio_*`` are never forwarded (see the pipeline);
* unsafe methods need the session's CSRF token.
"""

from __future__ import annotations

import base64
import concurrent.futures
import functools
import hashlib
import hmac
import json
import logging
import secrets
import threading
import time
from collections.abc import Callable, Generator, Iterable, Mapping
from dataclasses import replace
from functools import cached_property
from pathlib import Path
from typing import Any
from urllib.parse import quote

from cachetools import LRUCache
from markupsafe import Markup, escape
from werkzeug.datastructures import ImmutableMultiDict
from werkzeug.exceptions import HTTPException
from werkzeug.http import parse_cookie
from werkzeug.routing import Map, Rule
from werkzeug.security import safe_join
from werkzeug.utils import send_file
from werkzeug.wrappers import Request, Response

from ..backends import KINDS, Backends, CacheBackend, Session, SessionBackend, Theme
from ..config import ConfigError, ProxyConfig, ServiceMount, load_config
from ..hookspecs import hookimpl
from ..metrics import MetricsBoard
from ..networks import NetworkList
from ..plugins import make_plugin_manager
from ..stores import StoreUnavailable, guards_of
from ..users import (
    ANONYMOUS,
    SIMULATED_ORGAS,
    Orga,
    PlugItUser,
    simulated_user,
    simulated_user_by_pk,
)
from . import redirects
from .api import CallbackAPI
from .bodies import bound_body, close_body
from .containment import common_headers, page_policy
from .dev_guard import dev_guard
from .fragments import Fragments
from .health import bind_metrics, render_services, render_stores
from .pipeline import CSRF_FIELD_NAME, UNSAFE_METHODS, Pipeline
from .routes import Route
from .sandbox import RenderBudget
from .templating import CSRF_PLACEHOLDER, ServiceTemplates, site_environment
from .upstream import ServiceClient, ServiceError

__all__ = ["LogoutFields", "PlugItMiddleware", "ProxyApp", "ProxyRequest", "script_root"]

log = logging.getLogger("plugit.proxy")

STATIC_PREFIX = "/_plugit/static/"
THEMES_PREFIX = "/_plugit/themes/"  # the static files of the mounts' own themes
SITE_CSRF_FIELD_NAME = "plugit_site_csrf"  # the layout's own forms (see csrf_token)
# What stays unquoted of SCRIPT_NAME in the URLs we emit: RFC 3986 path characters ("%" is not,
# since SCRIPT_NAME arrives percent-decoded).
_PATH_SAFE = "/!$&'()*+,;=:@-._~"
LogoutFields = Callable[[dict[str, Any]], "Mapping[str, str] | None"]
_STATUS_TITLES = {
    400: ("Bad request", "The request could not be understood."),
    401: ("Login required", "Please log in to see this page."),
    403: ("Access denied", "You may not see this page."),
    404: ("Page not found", "This page does not exist."),
    405: ("Method not allowed", "This page cannot be used this way."),
    409: ("Conflict", "The request conflicts with the current state of the page."),
    413: ("Too large", "What you sent is larger than this site accepts."),
    429: ("Too many requests", "Please wait a moment and try again."),
    500: ("Server error", "Something went wrong on our side."),
    502: (
        "Service unavailable",
        "This service is not answering properly right now. Please try again later.",
    ),
    503: ("Service busy", "This service is busy right now. Please try again in a moment."),
    504: ("Service too slow", "This service did not answer in time. Please try again later."),
}
# A service's failure named by what happened, whatever the status: a service that is down is
# unreachable (502, or 503 once its circuit breaker is open), not busy.
_FAILURE_TITLES = {
    "unreachable": (
        "Service unreachable",
        "This service cannot be reached right now. Please try again later.",
    ),
    "timeout": _STATUS_TITLES[504],
    "error": _STATUS_TITLES[502],
}


def strip_plugit_headers(environ: dict[str, Any]) -> None:
    """Remove every client-supplied ``X-Plugit*`` header (all spellings fold to these keys)."""
    for key in [k for k in environ if k.startswith("HTTP_X_PLUGIT")]:
        del environ[key]


def script_root(request: Request) -> str:
    """The external base of ``request``: where the app is mounted on the site (WSGI
    ``SCRIPT_NAME``, as werkzeug's ``Request.script_root``), URL-quoted, without a trailing slash;
    ``""`` for an app served at the site's root.

    Mounts and the proxy's own routes are matched on ``PATH_INFO``; every URL the proxy gives the
    browser is this base followed by the path in the app.  Leading slashes are folded into one, so
    an odd ``SCRIPT_NAME`` (``//host``) can never make a protocol-relative URL.
    """
    root = request.script_root
    if not root:
        return ""
    return "/" + quote(root.strip("/"), safe=_PATH_SAFE)


def _prefixed(base: str, path: str) -> str:
    """``path`` as the browser must ask for it: ``base`` in front of a local path (``/x``);
    absolute and protocol-relative URLs, and anything else, unchanged."""
    if not base or not path.startswith("/") or path.startswith("//"):
        return path
    return base + path


def _variant_matches(variant: Any, mount: ServiceMount, request: Request, user: PlugItUser) -> bool:
    if variant.cookie is not None and request.cookies.get(variant.cookie[0]) == variant.cookie[1]:
        return True
    if not user.is_authenticated:
        return False
    if user.username in variant.users:
        return True
    if variant.orgas and any(o.name in variant.orgas for o in user.orgas):
        return True
    roles = set()
    if user.is_member(mount.name):
        roles.add("member")
    if user.is_admin(mount.name):
        roles.add("admin")
    if user.is_superuser:
        roles.add("superuser")
    return bool(roles & set(variant.roles))


@functools.lru_cache(maxsize=4096)
def _derived_token(secret: str, scope: str) -> str:
    """The CSRF token of ``scope`` for a session's ``secret`` (a page asks for the same one
    several times: its forms, the csrftoken cookie, the check of a post)."""
    digest = hmac.new(secret.encode(), b"plugit-csrf:" + scope.encode(), hashlib.sha256)
    return base64.urlsafe_b64encode(digest.digest()).decode().rstrip("=")


def _json_response(data: Any, status: int = 200) -> Response:
    response = Response(json.dumps(data), status=status, mimetype="application/json")
    response.headers["Cache-Control"] = "no-store"
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response


class ProxyRequest(Request):
    """A request to the proxy: werkzeug's, plus the lazily loaded session and user."""

    proxy: ProxyApp

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


class _CoreCall:
    """The proxy's own hook implementations: the HTTP request to the service, and the closing
    of the backends it built once every plugin's ``plugit_shutdown`` returned."""

    @hookimpl(trylast=True)
    def plugit_call_service(self, page: Any, upstream: Any) -> Any:
        return page.client.send(upstream)

    @hookimpl(wrapper=True)
    def plugit_shutdown(self, proxy: ProxyApp) -> Generator[None, None, None]:
        try:
            yield
        finally:
            # The mail queue first: its threads use the service clients.
            backends = (proxy.mail, proxy.users, proxy.billing, proxy.cache, proxy.sessions)
            for backend in (*backends, *proxy.auth):
                closer = getattr(backend, "close", None)
                if callable(closer):
                    closer()


class _HostIdentity:
    """Lets the host app of :class:`PlugItMiddleware` say who the user is."""

    def __init__(self, identify: Callable[[dict[str, Any]], PlugItUser | None]) -> None:
        self.identify = identify

    @hookimpl(tryfirst=True)
    def plugit_identify_user(self, request: ProxyRequest, proxy: ProxyApp) -> PlugItUser | None:
        return self.identify(request.environ)


class ProxyApp:
    """The PlugIt proxy: serves every mounted service below its mount, plus the site's pages.

    ``config`` is a :class:`ProxyConfig`, a mapping with the TOML structure, or a path to a
    TOML file.  ``plugins`` are registered after the built-in and installed ones.
    """

    request_class = ProxyRequest
    #: Seconds between two ``version`` checks of a service not yet reached, and of one refused.
    recheck_unknown = 10.0
    recheck_refused = 30.0

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
        self.pm = make_plugin_manager([_CoreCall(), *plugins], load_entry_points=load_entry_points)
        self.backends = Backends()
        self.pm.hook.plugit_register_backends.call_historic(
            kwargs={"register": self.backends.register}
        )
        self._check_sections()
        self.cache: CacheBackend = self.backends.build("cache", config.cache, config)
        self.sessions: SessionBackend = self.backends.build("session", config.session, config)
        self.theme: Theme = self.backends.build("theme", config.theme, config)
        self.auth = [self.backends.build("auth", name, config) for name in config.auth]
        self.users: Any = (
            self.backends.build("users", config.users, config) if config.users else None
        )
        self.billing: Any = (
            self.backends.build("billing", config.billing, config) if config.billing else None
        )
        self.mail: Any = self.backends.build("mail", config.mail, config) if config.mail else None
        # Where the layout's "Log in" and "Log out" controls lead: paths of this app (the
        # request's SCRIPT_NAME is put in front) or absolute URLs.  The logout control is a POST
        # form carrying the proxy's CSRF token (the proxy's own logout), or, when
        # ``logout_fields`` is set, the hidden fields it gives for the request (a host app's
        # own CSRF token); ``logout_method = "get"`` makes it a plain link.
        self.login_url: str | None = None
        self.logout_url: str | None = None
        self.logout_method: str = "post"
        self.logout_fields: LogoutFields | None = None
        self.static_prefix = STATIC_PREFIX
        self._trusted = NetworkList(config.trusted_proxies, setting="trusted_proxies")
        self.dev_guard = dev_guard(config)  # dev mode: loopback and dev_allowed_clients only
        self.site_env = site_environment(self.theme)
        self.site_env.globals.update(static_url=self.static_url, site_name=config.site_name)
        # Themes of their own for some mounts (``theme`` of a service: an original service in
        # the legacy theme), each with its layout environment and its static files at
        # /_plugit/themes/<name>/.
        self.themes: dict[str, Theme] = {self.theme.name: self.theme}
        self._theme_envs = {self.theme.name: self.site_env}
        for name in sorted({m.theme for m in config.services if m.theme} - {config.theme}):
            theme = self.backends.build("theme", name, config)
            self.themes[name] = theme
            env = site_environment(theme)
            env.globals.update(site_name=config.site_name)
            self._theme_envs[name] = env
        self.mounts = sorted(config.services, key=lambda m: len(m.mount), reverse=True)
        # Every client, by name: "<service>", "<service>:<variant>", "<service>:shadow".
        self.clients: dict[str, ServiceClient] = {}
        for mount in config.services:
            self.clients[mount.name] = ServiceClient(
                mount, http_client=config.http_client, cache_meta=not config.dev_mode
            )
            for variant in mount.variants:
                derived = replace(
                    mount,
                    name=f"{mount.name}:{variant.name}",
                    url=variant.url,
                    secret=variant.secret or mount.secret,
                )
                self.clients[derived.name] = ServiceClient(
                    derived, http_client=config.http_client, cache_meta=not config.dev_mode
                )
            if mount.shadow_url:
                derived = replace(
                    mount,
                    name=f"{mount.name}:shadow",
                    url=mount.shadow_url,
                    secret=mount.shadow_secret or mount.secret,
                    max_concurrency=4,
                )
                self.clients[derived.name] = ServiceClient(
                    derived, http_client=config.http_client, cache_meta=not config.dev_mode
                )
        self._shadow_pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=2, thread_name_prefix="plugit-shadow"
        )
        self.templates = {
            m.name: ServiceTemplates(
                m.name,
                self.mount_theme(m),
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
        self._last_version_check: dict[str, float] = {}
        self._version_lock = threading.Lock()
        self._skeletons: LRUCache[tuple[Any, ...], str] = LRUCache(maxsize=1024)
        self._skeleton_lock = threading.Lock()
        # Markers planted in cached layouts and pages, filled in per response: content, menu,
        # path, host logout fields, the site's CSRF token, the CSP nonce, the page's token for
        # scripts.  Random per process, so no service can guess and plant them.
        self._marks = tuple(
            f"\x00plugit-{name}-{secrets.token_hex(8)}\x00"
            for name in ("c", "m", "p", "l", "s", "n", "t")
        )
        self.pipeline = Pipeline(self)
        self.api = CallbackAPI(self)
        self.fragments = Fragments(self)  # fragments of pages, [[pages]]
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
        for routes in self.pm.hook.plugit_extra_routes(proxy=self):
            for route in routes or ():
                self.add_route(route)
        for route in self.fragments.routes():
            self.add_route(route)
        if not any(m.mount == "/" for m in self.mounts) and "/" not in self.fragments.pages:
            self.url_map.add(Rule("/", endpoint="home", methods=["GET"]))
        # One answer per scrape for all the worker processes when PLUGIT_METRICS_DIR is set
        # (plugit proxy sets it): plugit_core/metrics.py.
        self.metrics_board = MetricsBoard.from_environment()
        bind_metrics(
            self.metrics_board,
            self.clients.values(),
            self.store_guards(),
            [self.mail.gauges] if self.mail is not None and hasattr(self.mail, "gauges") else [],
        )
        self.pm.hook.plugit_startup(proxy=self)
        if check_services:
            self.check_services()

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

    # -- start-up ---------------------------------------------------------------------------------

    def add_route(self, route: Route) -> None:
        """Serve ``route`` (what ``plugit_extra_routes`` returns)."""
        endpoint = f"route:{len(self._routes)}"
        self._routes[endpoint] = route
        self.url_map.add(Rule(route.rule, endpoint=endpoint, methods=list(route.methods)))

    def check_services(self) -> dict[str, tuple[bool, str]]:
        """Ask every service's ``version``, in parallel; log and return what each answered."""
        if not self.clients:
            return {}
        with concurrent.futures.ThreadPoolExecutor(max_workers=min(8, len(self.clients))) as pool:
            futures = {
                name: pool.submit(client.check_version) for name, client in self.clients.items()
            }
        results = {name: future.result() for name, future in futures.items()}
        now = time.monotonic()
        for name, (ok, message) in results.items():
            self._last_version_check[name] = now
            if ok:
                log.info("service %s: %s", name, message)
            elif self.clients[name].compatible is False:
                log.error(
                    "service %s does not speak PlugIt protocol 1 and is disabled: %s", name, message
                )
            else:
                log.warning("service %s is not reachable at start-up: %s", name, message)
        return results

    def check_compatible(self, client: ServiceClient) -> None:
        """Refuse calls to a service known to speak another protocol.

        A service whose protocol is unknown (unreachable so far) is asked again at most every
        10 s, and one that was refused at most every 30 s, so a service fixed and redeployed
        comes back without restarting the proxy.
        """
        if client.compatible is not True:
            every = self.recheck_unknown if client.compatible is None else self.recheck_refused
            with self._version_lock:
                due = time.monotonic() - self._last_version_check.get(client.name, 0) > every
                if due:
                    self._last_version_check[client.name] = time.monotonic()
            if due:
                ok, message = client.check_version()
                if ok:
                    log.info("service %s: %s", client.name, message)
        if client.compatible is False:
            raise ServiceError(
                client.name, "incompatible", "the service does not speak PlugIt protocol 1"
            )

    # -- WSGI -------------------------------------------------------------------------------------

    def __call__(
        self, environ: dict[str, Any], start_response: Callable[..., Any]
    ) -> Iterable[bytes]:
        if self.dev_guard is not None and not self.dev_guard.allows(environ):
            return self.dev_guard.refuse(environ, start_response)
        strip_plugit_headers(environ)
        request = self.request_class(environ)
        request.proxy = self
        bound_body(request, self.config.max_upload_size)  # 413 past it, chunked bodies too
        response = self.dispatch(request)
        response.call_on_close(lambda: close_body(request))  # uploads are temporary files
        return response(environ, start_response)

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
            response = self.outage_page(request, exc)
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
                response = self.outage_page(
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

    def outage_page(
        self, request: ProxyRequest, exc: StoreUnavailable, *, message: str | None = None
    ) -> Response:
        """The themed 503 for a store that is unavailable (see plugit_core/stores.py): it names
        the store, says to retry, and is rendered without asking the stores again."""
        log.warning(
            "%s %s: 503, %s (%s) is unavailable: %s",
            request.method,
            request.path,
            exc.label,
            exc.store,
            exc.reason,
        )
        request.__dict__["_plugit_outage"] = True  # the session is not saved
        request.__dict__.setdefault("user", ANONYMOUS)
        request.__dict__.setdefault("session", Session())
        try:
            response = self.error_page(
                request,
                503,
                reason="store_unavailable",
                detail=str(exc),
                message=message or exc.message,
            )
        except Exception:  # the layout needed the store too: a plain page
            text = escape(message or exc.message)
            response = Response(
                f"<!doctype html><title>503</title><h1>Unavailable</h1><p>{text}</p>",
                status=503,
                mimetype="text/html",
            )
        response.headers["Retry-After"] = "1"
        response.headers["Cache-Control"] = "no-store"
        return response

    def _dispatch(self, request: ProxyRequest) -> Response:
        found = self.match_mount(request.path)
        if found is not None:
            mount, path = found
            if request.path + "/" == mount.mount:
                location = self.site_url(request, mount.mount)
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
            return self.static(request, values["path"])
        if endpoint == "theme":
            theme = self.themes.get(values["name"])
            if theme is None or theme is self.theme:
                return self.error_page(request, 404)
            return self.static(request, values["path"], theme)
        if endpoint == "home":
            return self.home(request)
        if endpoint in ("health", "ready", "metrics"):
            view: Callable[[ProxyRequest], Response] = getattr(self, endpoint)
            return view(request)
        route = self._routes[endpoint]
        if route.csrf and request.method in UNSAFE_METHODS and not self.csrf_valid(request):
            return self.error_page(
                request,
                403,
                reason="csrf",
                message="The form has expired. Reload the page and try again.",
            )
        return route.view(request, **values)

    # -- users ------------------------------------------------------------------------------------

    def identify(self, request: ProxyRequest) -> PlugItUser:
        if "user" in request.__dict__:
            known: PlugItUser = request.__dict__["user"]
            return known
        user = self.pm.hook.plugit_identify_user(request=request, proxy=self) or ANONYMOUS
        user = self.loaded(user)
        request.__dict__["user"] = user
        return user

    def dev_user(self, mode: str, orga: Orga | None = None) -> PlugItUser:
        return simulated_user(mode, orga)

    def lookup_user(self, pk: Any) -> PlugItUser | None:
        """A user by pk, for ``plugitGetUser`` and the API."""
        if self.config.dev_mode:
            user = simulated_user_by_pk(pk)
        elif self.users is not None:
            user = self.users.get_user(pk)
        else:
            user = None
        return None if user is None else self.loaded(user)

    def loaded(self, user: PlugItUser) -> PlugItUser:
        """``user`` completed by the plugins (hook ``plugit_user_loaded``: subscriptions, ...)."""
        if not user.is_authenticated:
            return user
        changes: dict[str, Any] = {}
        for answer in reversed(self.pm.hook.plugit_user_loaded(user=user, proxy=self)):
            if answer:
                changes.update(answer)
        return replace(user, **changes) if changes else user

    def select_client(
        self, mount: ServiceMount, request: Request, user: PlugItUser
    ) -> tuple[ServiceClient, str]:
        """The client for this request: the first variant whose rules match, else the service's."""
        for variant in mount.variants:
            if _variant_matches(variant, mount, request, user):
                return self.clients[f"{mount.name}:{variant.name}"], variant.name
        return self.clients[mount.name], ""

    def shadow(self, mount: ServiceMount, upstream: Any) -> None:
        """Send a copy of a read-only call to the mount's shadow target; its answer is dropped.

        Never waits: when the shadow is busy (its concurrency cap is reached) the copy is not
        sent.
        """
        client = self.clients.get(f"{mount.name}:shadow")
        if client is None or upstream.method not in ("GET", "HEAD"):
            return
        copy = replace(upstream, headers=dict(upstream.headers), params=list(upstream.params))

        def send() -> None:
            try:
                reply = client.send(copy, stream=True)
                if reply.close is not None:
                    reply.close()  # the answer is not wanted: drop it and the connection
            except ServiceError as error:
                log.debug("shadow of %s: %s", mount.name, error.message)

        if client.in_flight < client.mount.max_concurrency:
            self._shadow_pool.submit(send)

    def lookup_orga(self, pk: Any) -> Orga | None:
        """An organisation by pk (the simulated ones in dev mode)."""
        if self.config.dev_mode:
            return next((o for o in SIMULATED_ORGAS if str(o.pk) == str(pk)), None)
        return self.users.get_orga(pk) if self.users is not None else None

    def list_orgas(self) -> list[Orga]:
        """Every organisation, by name."""
        if self.config.dev_mode:
            return sorted(SIMULATED_ORGAS, key=lambda o: o.name)
        return self.users.list_orgas() if self.users is not None else []

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

    # -- CSRF -------------------------------------------------------------------------------------

    def csrf_token(self, request: ProxyRequest, scope: str = "") -> str:
        """The session's CSRF token for ``scope``: a mount's name, or ``""`` for the site's own
        forms (login, logout, organisation and dev-mode switches).

        Each scope has its own token, derived from one random secret of the session, so a
        token read in one service's page is refused by every other mount and by the site.
        """
        secret = request.session.get("_csrf")
        if not isinstance(secret, str) or len(secret) < 32:
            secret = secrets.token_urlsafe(32)
            request.session["_csrf"] = secret
        return _derived_token(secret, scope)

    def csrf_valid(self, request: ProxyRequest, scope: str = "") -> bool:
        """Whether an unsafe request carries the token of ``scope`` (see :meth:`csrf_token`),
        in the ``X-CSRFToken`` header or the ``csrfmiddlewaretoken`` form field (the layout's
        own forms: ``plugit_site_csrf``)."""
        if not isinstance(request.session.get("_csrf"), str):
            self._check_session_stored(request)
            return False
        sent = request.headers.get("X-CSRFToken") or request.headers.get("X-CSRF-Token")
        if not sent and request.mimetype in (
            "application/x-www-form-urlencoded",
            "multipart/form-data",
        ):
            sent = request.form.get(CSRF_FIELD_NAME) or request.form.get(SITE_CSRF_FIELD_NAME)
        expected = self.csrf_token(request, scope)
        return bool(sent) and hmac.compare_digest(str(sent).encode(), expected.encode())

    @staticmethod
    def when_session_saved(request: ProxyRequest, done: Callable[[], None]) -> None:
        """Run ``done`` once the request's session is stored (a login's log line): never when
        the store refused it and the answer became a 503."""
        request.__dict__.setdefault("_plugit_when_saved", []).append(done)

    def _check_session_stored(self, request: ProxyRequest) -> None:
        """A form sent without a stored session while the session store is down (Redis out of
        memory): the form was served with a session that could not be stored, so its token
        cannot match.  The answer is the outage (a 503 naming the store), not "the form has
        expired", which a reload would not cure."""
        if not getattr(request.session, "new", False):
            return
        for guard in guards_of(self.sessions):
            if guard.down:
                raise guard.unavailable("the session of this form could not be stored")

    def with_csrf(self, request: ProxyRequest, html: str, scope: str = "") -> str:
        """Fill in what a page holds per response: the CSRF token of ``scope`` where a service's
        HTML has the placeholder, the site's token in the site's own forms, the CSP nonce, and
        the host app's logout fields (``logout_fields``).

        All are filled in after every cache: a cached page or layout never holds anyone's token.
        """
        if self.logout_fields is not None and self._marks[3] in html:
            html = html.replace(self._marks[3], self._logout_fields_html(request))
        if self._marks[4] in html:
            html = html.replace(self._marks[4], self.csrf_token(request))
        if self._marks[5] in html:
            html = html.replace(self._marks[5], request.csp_nonce)
        if CSRF_PLACEHOLDER in html:
            html = html.replace(CSRF_PLACEHOLDER, self.csrf_token(request, scope))
        if self._marks[6] in html:
            # The page's token for its scripts: only when the page has given the session a
            # CSRF secret (a form), so a page without forms makes no session for a visitor.
            has_secret = isinstance(request.session.get("_csrf"), str)
            html = html.replace(
                self._marks[6], self.csrf_token(request, scope) if has_secret else ""
            )
        return html

    def _logout_fields_html(self, request: ProxyRequest) -> str:
        """The hidden inputs of the host app's logout form (``logout_fields``) for this request."""
        assert self.logout_fields is not None
        try:
            fields = self.logout_fields(request.environ) or {}
        except Exception:
            log.exception("logout_fields failed: the logout form goes without them")
            fields = {}
        return "".join(
            f'<input type="hidden" name="{escape(name)}" value="{escape(value)}">'
            for name, value in fields.items()
        )

    # -- URLs -------------------------------------------------------------------------------------

    def base_path(self, request: Request) -> str:
        """Where this app is on the site for ``request`` (its ``SCRIPT_NAME``, see
        :func:`script_root`); ``""`` at the site's root."""
        return script_root(request)

    def site_url(self, request: Request, path: str) -> str:
        """The URL the browser must use for ``path``, a path of this app (``/polls/``,
        ``/_plugit/static/x.css``): the request's :meth:`base_path` in front.  Absolute URLs are
        returned unchanged.  Every URL the proxy emits (links, redirects, ``ebuio_baseUrl``,
        ``MEDIA_URL``, ``X-Plugit-Base-Url``) goes through here."""
        return _prefixed(self.base_path(request), path)

    # -- redirects --------------------------------------------------------------------------------

    @staticmethod
    def is_local_path(target: str) -> bool:
        """A path on this site (``/x``) as browsers read it, and no other reader could take it
        for another site (:func:`plugit_core.proxy.redirects.is_local_path`)."""
        return redirects.is_local_path(target)

    def redirect_allowed(self, request: Request, target: str) -> bool:
        """An absolute http(s) URL, as browsers read it, to this host and port or to one of
        ``allowed_redirect_hosts`` (:func:`plugit_core.proxy.redirects.redirect_allowed`)."""
        return redirects.redirect_allowed(
            target,
            request_scheme=request.scheme,
            request_host=request.host or "",
            allowed_hosts=self.config.allowed_redirect_hosts,
        )

    # -- page cache -------------------------------------------------------------------------------

    def cache_get(self, key: str) -> dict[str, Any] | None:
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

    # -- site pages -------------------------------------------------------------------------------

    def static_url(self, path: str, request: Request | None = None) -> str:
        """The URL of the theme's file ``path``, below ``request``'s base when one is given."""
        url = STATIC_PREFIX + path.lstrip("/")
        return url if request is None else self.site_url(request, url)

    def mount_theme(self, mount: ServiceMount | None) -> Theme:
        """The theme of ``mount``'s pages: its own ``theme``, else the site's."""
        if mount is not None and mount.theme:
            return self.themes[mount.theme]
        return self.theme

    def static(self, request: Request, path: str, theme: Theme | None = None) -> Response:
        """A static file of ``theme`` (the site's by default)."""
        theme = theme or self.theme
        # a path whose first segment names one of the theme's static_roots is served from it
        first, _, rest = path.partition("/")
        root = theme.static_roots.get(first) if rest else None
        if root is not None:
            target = safe_join(str(root), rest)
        else:
            target = safe_join(str(theme.static), path)
        if target is None or not Path(target).is_file():
            return self.error_page(request, 404)  # type: ignore[arg-type]
        response = send_file(target, request.environ, max_age=86400)
        response.headers["X-Content-Type-Options"] = "nosniff"
        return response

    def _site_context(
        self, request: ProxyRequest, mount: ServiceMount | None, user: PlugItUser | None = None
    ) -> dict[str, Any]:
        user = user if user is not None else self.identify(request)
        path = request.full_path if request.query_string else request.path
        base = self.base_path(request)

        def site_url(target: str) -> str:
            return _prefixed(base, target)

        theme = self.mount_theme(mount)
        static_prefix = STATIC_PREFIX if theme is self.theme else f"{THEMES_PREFIX}{theme.name}/"

        def static_url(target: str) -> str:
            return _prefixed(base, static_prefix + target.lstrip("/"))

        return {
            "site_name": self.config.site_name,
            "service": mount,
            "services": list(self.config.services),
            "user": user,
            "csrf_token": Markup(self._marks[4]),  # noqa: S704 (random constant)
            "csp_nonce": Markup(self._marks[5]),  # noqa: S704 (random constant)
            # the token of the page's scope: the mount's on a service page, else the site's
            "page_csrf_token": Markup(self._marks[6]),  # noqa: S704 (random constant)
            # URLs: the values are the browser's (below SCRIPT_NAME); paths of the app (a
            # service's .mount) go through site_url() in the templates.
            "script_root": base,
            "site_url": site_url,
            "static_url": static_url,
            "home_url": base + "/",
            "login_url": None if self.login_url is None else site_url(self.login_url),
            "logout_url": None if self.logout_url is None else site_url(self.logout_url),
            "logout_method": "get" if self.logout_method.lower() == "get" else "post",
            "logout_fields": None if self.logout_fields is None else Markup(self._marks[3]),  # noqa: S704 (random constant)
            "dev_mode": self.config.dev_mode,
            "dev_user_mode": request.session.get("dev_user_mode", "ano")
            if self.config.dev_mode
            else None,
            "dev_orgas": list(SIMULATED_ORGAS)
            if self.config.dev_mode and mount is not None and mount.orga_mode
            else [],
            "request_path": base + path,
            "orga": None,
            "orgas": [],
            "page_title": mount.title if mount else self.config.site_name,
        }

    def render_layout(
        self,
        request: ProxyRequest,
        *,
        mount: ServiceMount,
        content: Markup,
        menu: Markup,
        orga: Orga | None,
        orgas: tuple[Orga, ...],
        user: PlugItUser,
        dev_user_mode: str | None,
    ) -> str:
        """A service page inside the theme's layout.

        The layout is rendered once per kind of visitor (user, dev mode, organisation, with or
        without menu) and script root (``SCRIPT_NAME``) with markers where the content, the menu
        and the request path go; each page then only fills the markers in.  The markers are
        random per process, so no service can guess and plant them.
        """
        base = self.base_path(request)
        key = (
            base,  # every URL of the layout starts with it
            mount.name,
            user.cache_key,
            user.display_name,
            dev_user_mode,
            None if orga is None else (orga.pk, orga.name),
            tuple((o.pk, o.name) for o in orgas),
            bool(menu),
        )
        with self._skeleton_lock:
            skeleton = self._skeletons.get(key)
        if skeleton is None:
            context = self._site_context(request, mount, user)
            context.update(
                plugit_content=Markup(self._marks[0]),  # noqa: S704 (random constant)
                plugit_menu=Markup(self._marks[1]) if menu else Markup(""),  # noqa: S704
                request_path=self._marks[2],
                orga=orga,
                orgas=list(orgas),
            )
            if dev_user_mode is not None:
                context["dev_user_mode"] = dev_user_mode
            name = "plugit/layout-menu.html" if mount.layout == "menu" else "plugit/layout.html"
            env = self._theme_envs[self.mount_theme(mount).name]
            skeleton = env.get_template(name).render(context)
            with self._skeleton_lock:
                self._skeletons[key] = skeleton
        path = request.full_path if request.query_string else request.path
        return (
            skeleton.replace(self._marks[2], str(escape(base + path)))
            .replace(self._marks[1], menu)
            .replace(self._marks[0], content)
        )

    def render_site_page(
        self, request: ProxyRequest, template: str, status: int = 200, **context: Any
    ) -> Response:
        """Render one of the site's own templates (login page, ...) with the layout's variables."""
        values = self._site_context(request, None)
        values.update(context)
        html = self.site_env.get_template(template).render(values)
        return self._site_response(request, html, status)

    def _site_response(self, request: ProxyRequest, html: str, status: int) -> Response:
        """One of the site's own pages: tokens filled in, only the theme's scripts may run."""
        html = self.fragments.fill(request, self.with_csrf(request, html))
        response = Response(html, status=status, mimetype="text/html")
        response.headers["Content-Security-Policy"] = page_policy(request.csp_nonce)
        return response

    def health(self, request: Request) -> Response:
        """``/_plugit/health``: the process is alive and answering."""
        return _json_response({"status": "ok"})

    def store_guards(self) -> list[Any]:
        """The guards of every store the proxy uses (plugit_core/stores.py)."""
        return guards_of(self.users, self.billing, self.sessions, self.cache, self.mail, *self.auth)

    def mail_backlog(self) -> dict[str, int] | None:
        """The mail outbox by state (None without mail, or when the queue cannot be read)."""
        if self.mail is None:
            return None
        try:
            return dict(self.mail.store.counts().get("outbox", {}))
        except StoreUnavailable:
            return None

    def ready(self, request: Request) -> Response:
        """``/_plugit/ready``: the state of every store and service.

        Each store is checked (a cheap query, within its wait; at once while it is known to be
        down).  Answers 503 when a store marked ``required`` (the directory and the session
        store by default) is unavailable: this process cannot log anyone in or recognise them.
        A service makes it 503 only when marked ``required`` (one dead service must not take the
        whole site out of a load balancer, unless the site is that service); ``ready`` is false
        for a service that is incompatible or whose circuit is open.  With mail, ``smtp`` is the
        SMTP server's state as last seen (never waited for; 503 when ``smtp_required``).
        """
        stores = {guard.store: guard.check() for guard in self.store_guards()}
        services = {}
        for name, client in self.clients.items():
            circuit = client.breaker.state
            services[name] = {
                "ready": client.compatible is not False and circuit != "open",
                "protocol": {True: "ok", False: "incompatible", None: "unknown"}[client.compatible],
                "circuit": circuit,
                "in_flight": client.in_flight,
            }
        for mount in self.config.services:  # the main build of each (variants and shadows not)
            services[mount.name]["required"] = mount.required
        body: dict[str, Any] = {"status": "ok", "stores": stores, "services": services}
        components = dict(stores)  # what may be required: the stores, the SMTP server
        if self.mail is not None:
            backlog = self.mail_backlog()
            body["mail"] = {"ready": backlog is not None, "outbox": backlog}
            if hasattr(self.mail, "smtp_status"):  # never waits for the SMTP server
                body["smtp"] = components["smtp"] = self.mail.smtp_status()
        missing = sorted(
            name for name, state in components.items() if state["required"] and not state["ready"]
        ) + sorted(
            f"service:{mount.name}"
            for mount in self.config.services
            if mount.required and not services[mount.name]["ready"]
        )
        if missing:
            body["status"] = "unavailable"
            body["unavailable"] = missing
        return _json_response(body, 503 if missing else 200)

    def metrics(self, request: Request) -> Response:
        """``/_plugit/metrics``: per-service and per-store metrics in the Prometheus text
        format, the totals of every worker process sharing the metrics directory."""
        series = self.metrics_board.collect()
        text = render_services(series, self.clients)
        stores = [guard.store for guard in self.store_guards()]
        text += render_stores(series, stores, self.mail_backlog())
        return Response(text, mimetype="text/plain", headers={"Cache-Control": "no-store"})

    def home(self, request: ProxyRequest) -> Response:
        return self.render_site_page(request, "plugit/home.html")

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
        """The themed error page.  Internal reasons are shown in dev mode only (W17)."""
        title, default_message = _STATUS_TITLES.get(status, ("Error", "Something went wrong."))
        if mount is not None and status in (502, 503, 504) and reason in _FAILURE_TITLES:
            title, default_message = _FAILURE_TITLES[reason]
        if mount is not None and status in (502, 503, 504):
            default_message = f"{mount.title}: {default_message}"
        shown_reason = None
        if self.config.dev_mode and reason:
            shown_reason = f"{reason}: {detail}" if detail else reason
        try:
            context = self._site_context(request, mount)
            context.update(
                status=status,
                title=title,
                message=message or default_message,
                reason=shown_reason,
                page_title=title,
                plugit_content=Markup(""),
                plugit_menu=Markup(""),
            )
            env = self._theme_envs[self.mount_theme(mount).name]
            html = env.get_template("plugit/error.html").render(context)
        except Exception:
            log.exception("the error page itself failed")
            html = f"<!doctype html><title>{status}</title><h1>{status} {title}</h1>"
        return self._site_response(request, html, status)

    def close(self) -> None:
        """Release pools, connections and threads (the proxy cannot serve afterwards).

        Calls the ``plugit_shutdown`` hook first, which also closes the backends."""
        self.metrics_board.close()
        try:
            self.pm.hook.plugit_shutdown(proxy=self)
        except Exception:
            log.exception("a plugit_shutdown implementation failed")
        self._shadow_pool.shutdown(wait=False, cancel_futures=True)
        self.fragments.close()
        for client in self.clients.values():
            client.close()


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
            self.proxy.login_url = login_url
        if logout_url:
            self.proxy.logout_url = logout_url
            self.proxy.logout_method = "post" if logout_fields is not None else "get"
            self.proxy.logout_fields = logout_fields

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

"""The site's own pages: the layout around service pages, error and outage pages, the theme's
static files, and the URLs the proxy gives the browser.

Every URL the proxy emits is a path of the app below the request's ``SCRIPT_NAME``
(:func:`script_root`): links, redirects, ``ebuio_baseUrl``, ``MEDIA_URL``, ``X-Plugit-Base-Url``.
The layout is rendered once per kind of visitor with random markers (:class:`~plugit_core.proxy.
csrf.Markers`) where the per-page and per-response values go.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from cachetools import LRUCache
from markupsafe import Markup, escape
from werkzeug.security import safe_join
from werkzeug.utils import send_file
from werkzeug.wrappers import Request, Response

from ..backends import Session
from ..stores import StoreUnavailable
from ..users import ANONYMOUS, SIMULATED_ORGAS, Orga, PlugItUser
from .containment import page_policy
from .templating import site_environment

if TYPE_CHECKING:
    import jinja2

    from ..backends import Theme
    from ..config import ProxyConfig, ServiceMount
    from .app import ProxyRequest
    from .csrf import CsrfTokens

__all__ = ["STATIC_PREFIX", "THEMES_PREFIX", "SiteRenderer", "script_root"]

log = logging.getLogger("plugit.proxy")

STATIC_PREFIX = "/_plugit/static/"
THEMES_PREFIX = "/_plugit/themes/"  # the static files of the mounts' own themes
# What stays unquoted of SCRIPT_NAME in the URLs we emit: RFC 3986 path characters ("%" is not,
# since SCRIPT_NAME arrives percent-decoded).
_PATH_SAFE = "/!$&'()*+,;=:@-._~"
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


def prefixed(base: str, path: str) -> str:
    """``path`` as the browser must ask for it: ``base`` in front of a local path (``/x``);
    absolute and protocol-relative URLs, and anything else, unchanged."""
    if not base or not path.startswith("/") or path.startswith("//"):
        return path
    return base + path


def site_url(request: Request, path: str) -> str:
    """The URL the browser must use for ``path``, a path of this app (``/polls/``,
    ``/_plugit/static/x.css``): the request's :func:`script_root` in front.  Absolute URLs are
    returned unchanged."""
    return prefixed(script_root(request), path)


class SiteRenderer:
    """The site's pages in the site's theme, or a mount's own theme (``themes`` by name)."""

    def __init__(
        self,
        config: ProxyConfig,
        *,
        theme: Theme,
        themes: Mapping[str, Theme],
        csrf: CsrfTokens,
        identify: Callable[[ProxyRequest], PlugItUser],
    ) -> None:
        self.config = config
        self.theme = theme
        self.themes = dict(themes)
        self.csrf = csrf
        self.links = csrf.links
        self.identify = identify
        #: Fills the fragments of a page (set once the fragments are built).
        self.fill_fragments: Callable[[ProxyRequest, str], str] = lambda request, html: html
        self.env = site_environment(theme)
        self.env.globals.update(static_url=self.static_url, site_name=config.site_name)
        self.theme_envs: dict[str, jinja2.Environment] = {theme.name: self.env}
        for name, other in self.themes.items():
            if other is not theme:
                env = site_environment(other)
                env.globals.update(site_name=config.site_name)
                self.theme_envs[name] = env
        self._skeletons: LRUCache[tuple[Any, ...], str] = LRUCache(maxsize=1024)
        self._skeleton_lock = threading.Lock()

    # -- static files -----------------------------------------------------------------------------

    def static_url(self, path: str, request: Request | None = None) -> str:
        """The URL of the theme's file ``path``, below ``request``'s base when one is given."""
        url = STATIC_PREFIX + path.lstrip("/")
        return url if request is None else site_url(request, url)

    def mount_theme(self, mount: ServiceMount | None) -> Theme:
        """The theme of ``mount``'s pages: its own ``theme``, else the site's."""
        if mount is not None and mount.theme:
            return self.themes[mount.theme]
        return self.theme

    def static(self, request: ProxyRequest, path: str, theme: Theme | None = None) -> Response:
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
            return self.error_page(request, 404)
        response = send_file(target, request.environ, max_age=86400)
        response.headers["X-Content-Type-Options"] = "nosniff"
        return response

    # -- pages ------------------------------------------------------------------------------------

    def context(
        self, request: ProxyRequest, mount: ServiceMount | None, user: PlugItUser | None = None
    ) -> dict[str, Any]:
        """The variables of the layout and of the site's own templates."""
        user = user if user is not None else self.identify(request)
        path = request.full_path if request.query_string else request.path
        base = script_root(request)
        theme = self.mount_theme(mount)
        static_prefix = STATIC_PREFIX if theme is self.theme else f"{THEMES_PREFIX}{theme.name}/"
        marks, links = self.csrf.marks, self.links
        dev_mode = self.config.dev_mode

        def url(target: str) -> str:
            return prefixed(base, target)

        def static_url(target: str) -> str:
            return prefixed(base, static_prefix + target.lstrip("/"))

        return {
            "site_name": self.config.site_name,
            "service": mount,
            "services": list(self.config.services),
            "user": user,
            "csrf_token": Markup(marks.site_token),  # noqa: S704 (random constant)
            "csp_nonce": Markup(marks.nonce),  # noqa: S704 (random constant)
            # the token of the page's scope: the mount's on a service page, else the site's
            "page_csrf_token": Markup(marks.page_token),  # noqa: S704 (random constant)
            # URLs: the values are the browser's (below SCRIPT_NAME); paths of the app (a
            # service's .mount) go through site_url() in the templates.
            "script_root": base,
            "site_url": url,
            "static_url": static_url,
            "home_url": base + "/",
            "login_url": None if links.login_url is None else url(links.login_url),
            "logout_url": None if links.logout_url is None else url(links.logout_url),
            "logout_method": "get" if links.logout_method.lower() == "get" else "post",
            "logout_fields": None if links.logout_fields is None else Markup(marks.logout_fields),  # noqa: S704 (random constant)
            "dev_mode": dev_mode,
            "dev_user_mode": request.session.get("dev_user_mode", "ano") if dev_mode else None,
            "dev_orgas": list(SIMULATED_ORGAS)
            if dev_mode and mount is not None and mount.orga_mode
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
        and the request path go; each page then only fills the markers in.
        """
        base = script_root(request)
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
        marks = self.csrf.marks
        with self._skeleton_lock:
            skeleton = self._skeletons.get(key)
        if skeleton is None:
            context = self.context(request, mount, user)
            context.update(
                plugit_content=Markup(marks.content),  # noqa: S704 (random constant)
                plugit_menu=Markup(marks.menu) if menu else Markup(""),  # noqa: S704
                request_path=marks.path,
                orga=orga,
                orgas=list(orgas),
            )
            if dev_user_mode is not None:
                context["dev_user_mode"] = dev_user_mode
            name = "plugit/layout-menu.html" if mount.layout == "menu" else "plugit/layout.html"
            env = self.theme_envs[self.mount_theme(mount).name]
            skeleton = env.get_template(name).render(context)
            with self._skeleton_lock:
                self._skeletons[key] = skeleton
        path = request.full_path if request.query_string else request.path
        return (
            skeleton.replace(marks.path, str(escape(base + path)))
            .replace(marks.menu, menu)
            .replace(marks.content, content)
        )

    def render_page(
        self, request: ProxyRequest, template: str, status: int = 200, **context: Any
    ) -> Response:
        """Render one of the site's own templates (login page, ...) with the layout's variables."""
        values = self.context(request, None)
        values.update(context)
        html = self.env.get_template(template).render(values)
        return self.response(request, html, status)

    def response(self, request: ProxyRequest, html: str, status: int) -> Response:
        """One of the site's own pages: tokens filled in, only the theme's scripts may run."""
        html = self.fill_fragments(request, self.csrf.fill(request, html))
        response = Response(html, status=status, mimetype="text/html")
        response.headers["Content-Security-Policy"] = page_policy(request.csp_nonce)
        return response

    def home(self, request: ProxyRequest) -> Response:
        return self.render_page(request, "plugit/home.html")

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
        title, default_message = _STATUS_TITLES.get(status, ("Error", "Something went wrong."))
        if mount is not None and status in (502, 503, 504) and reason in _FAILURE_TITLES:
            title, default_message = _FAILURE_TITLES[reason]
        if mount is not None and status in (502, 503, 504):
            default_message = f"{mount.title}: {default_message}"
        shown_reason = None
        if self.config.dev_mode and reason:
            shown_reason = f"{reason}: {detail}" if detail else reason
        try:
            context = self.context(request, mount)
            context.update(
                status=status,
                title=title,
                message=message or default_message,
                reason=shown_reason,
                page_title=title,
                plugit_content=Markup(""),
                plugit_menu=Markup(""),
            )
            env = self.theme_envs[self.mount_theme(mount).name]
            html = env.get_template("plugit/error.html").render(context)
        except Exception:
            log.exception("the error page itself failed")
            html = f"<!doctype html><title>{status}</title><h1>{status} {title}</h1>"
        return self.response(request, html, status)

    def outage_page(
        self,
        request: ProxyRequest,
        exc: StoreUnavailable,
        *,
        message: str | None = None,
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

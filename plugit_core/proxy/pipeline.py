"""One page request through the proxy (PROTOCOL.md 5.5), step by step.

:meth:`Pipeline.handle` runs, for a request below a service's mount:

1. special paths: ``media/``, ``ebuio_setUser``, ``ebuio_setOrga``
2. CSRF check on unsafe methods
3. identify the user (hook ``plugit_identify_user``) and the current organisation
4. the action's meta (cached, single-flight), then the access rules and plugin vetoes
5. page-cache lookup
6. the upstream request (parameters, user info, ``X-Plugit-*`` headers, session values), changed
   by ``plugit_upstream_request`` and signed
7. the call (``plugit_call_service`` wrappers around the HTTP call)
8. the reply: status mapping, redirect, file, JSON/XML, session writes, forwarded headers
9. template (fetched before the call when the meta names one) rendered in the sandbox
10. layout, page-cache store, ``plugit_response``

Failures of the service become :class:`ServiceError` and a themed 502/503/504 page naming the
service (or what ``plugit_handle_error`` answers instead); nothing a service sends can raise out
of here.
"""

from __future__ import annotations

import json
import logging
import random
import re
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import jinja2
from cachetools import TLRUCache
from markupsafe import Markup, escape
from werkzeug.exceptions import RequestEntityTooLarge
from werkzeug.http import dump_cookie
from werkzeug.wrappers import Response

from .. import protocol
from ..config import ServiceMount
from ..protocol import ActionMeta
from ..users import SIMULATED_MODES, SIMULATED_ORGAS, Orga, PlugItUser, ServiceUser
from .api import API_PREFIX, ApiCall, ApiError
from .bodies import form_problem, unreadable_framing
from .containment import RAW_POLICY, page_policy, sanitize_html
from .csrf import CSRF_FIELD_NAME, UNSAFE_METHODS
from .sandbox import OverBudget, TemplateFunction, template_data
from .site import STATIC_PREFIX
from .templating import CSRF_FIELD, CSRF_PLACEHOLDER
from .upstream import ServiceClient, ServiceError, ServiceReply, SingleFlight, UpstreamRequest

if TYPE_CHECKING:
    from .app import ProxyApp, ProxyRequest

__all__ = ["PageRequest", "Pipeline", "ServiceError", "ServiceReply", "UpstreamRequest"]

log = logging.getLogger("plugit.proxy")

MENU_PREFIX = "ebuio_menu/"
CSRF_COOKIE = "csrftoken"  # readable by the mount's scripts, holds the mount's token
MAX_SESSION_KEYS = 32
MAX_SESSION_VALUE = 1024
_SESSION_KEY = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_SESSION_WRITES = threading.Lock()
_PASS_STATUS_HEADERS = ("WWW-Authenticate", "Retry-After", "ETag", "Allow")


@dataclass
class PageRequest:
    """Everything the pipeline knows about the page being served; what hooks receive."""

    request: ProxyRequest
    proxy: ProxyApp
    mount: ServiceMount
    client: ServiceClient
    path: str
    user: PlugItUser
    orga: Orga | None = None
    orgas: tuple[Orga, ...] = ()
    meta: ActionMeta | None = None
    cache_key: str | None = None
    forwarded_headers: list[tuple[str, str]] = field(default_factory=list)
    menu_only: bool = False  # ``<mount>ebuio_menu/<path>``: answer the rendered menu alone
    stale: dict[str, Any] | None = None  # an expired page-cache entry, shown if the service fails
    variant: str = ""  # the service variant serving this request ("" for the main build)
    fragment: bool = False  # rendered as a fragment of another page (proxy/fragments.py)

    @property
    def service_user(self) -> ServiceUser:
        return self.user.for_service(self.mount.name, self.orga)

    @property
    def dev_user_mode(self) -> str | None:
        if not self.proxy.config.dev_mode:
            return None
        mode = self.request.session.get("dev_user_mode", "ano")
        return mode if mode in SIMULATED_MODES else "ano"


class _RefusedError(Exception):
    """Stops the pipeline with a themed error page."""

    def __init__(
        self,
        status: int,
        reason: str | None = None,
        message: str | None = None,
        detail: str | None = None,
    ) -> None:
        super().__init__(reason or str(status))
        self.status = status
        self.reason = reason
        self.message = message
        self.detail = detail  # what was tried, shown in dev mode after the reason


class Pipeline:
    """The page pipeline of a proxy."""

    def __init__(self, proxy: ProxyApp) -> None:
        self.proxy = proxy
        self.config = proxy.config
        self.hooks = proxy.hooks
        self._wrapped = _ExpiringLRU(maxsize=2048)
        self._template_flight: SingleFlight[jinja2.Template | None] = SingleFlight()

    # -- entry ------------------------------------------------------------------------------------

    def handle(self, request: ProxyRequest, mount: ServiceMount, path: str) -> Response:
        if path.startswith("media/"):
            return self.media(request, mount, self.proxy.clients[mount.name], path[len("media/") :])
        if path.startswith(API_PREFIX) or path == API_PREFIX.rstrip("/"):
            return self.proxy.api.handle(request, mount, path[len(API_PREFIX) :])
        user = self.proxy.identify(request)
        client, variant = self.proxy.select_client(mount, request, user)
        menu_only = path.startswith(MENU_PREFIX)
        if menu_only:
            path = path[len(MENU_PREFIX) :]
        page = PageRequest(
            request, self.proxy, mount, client, path, user, menu_only=menu_only, variant=variant
        )
        try:
            if path in ("ebuio_setUser", "ebuio_setOrga"):
                return self._finish(page, self.switch(page, path))
            self.check_csrf(request, mount.name)
            self.proxy.clients.check_compatible(client)
            self.resolve_orga(page)
            response = self.proxy_mode_page(page) if mount.proxy_mode else self.page(page)
        except _RefusedError as refused:
            response = self.proxy.error_page(
                request,
                refused.status,
                reason=refused.reason,
                message=refused.message,
                detail=refused.detail,
                mount=mount,
            )
        except ServiceError as error:
            response = self.service_failed(page, error)
        except RequestEntityTooLarge:
            response = self.proxy.error_page(request, 413, reason="upload_too_large", mount=mount)
        return self._finish(page, response)

    def _finish(self, page: PageRequest, response: Response) -> Response:
        self._csrf_cookie(page, response)
        return self.hooks.response(page, response)

    def _csrf_cookie(self, page: PageRequest, response: Response) -> None:
        """The mount's CSRF token as a JavaScript-readable ``csrftoken`` cookie (Django's
        convention, which client code written for the original reads to send ``X-CSRFToken``).

        Its path is the mount, so a page of another mount never sees it; it is the same
        per-mount, per-session token as the form field's, set once a session has a CSRF
        secret and whenever the browser's copy differs.
        """
        request = page.request
        if not request.session_loaded or not isinstance(request.session.get("_csrf"), str):
            return
        token = self.proxy.csrf_token(request, page.mount.name)
        if request.cookies.get(CSRF_COOKIE) == token:
            return
        response.set_cookie(
            CSRF_COOKIE,
            token,
            path=self.proxy.site_url(request, page.mount.mount),
            secure=bool(getattr(self.proxy.sessions, "secure", False)),
            httponly=False,
            samesite="Lax",
        )

    def service_failed(self, page: PageRequest, error: ServiceError) -> Response:
        log.warning(
            "service %s failed on %s: %s (%s)", error.service, page.path, error.message, error.kind
        )
        fallback = self.hooks.handle_error(page, error)
        if fallback is not None:
            return fallback
        if page.mount.fallback_html and not page.menu_only:
            html = _notice(page.mount, stale=False) + page.mount.fallback_html
            response = self.layout(page, {"html": html, "menu": ""})
            response.status_code = 503
            response.headers["Retry-After"] = "30"
            response.headers["Cache-Control"] = "no-store"
            return response
        return self.proxy.error_page(
            page.request,
            error.status,
            reason=error.cause or error.kind,
            detail=error.message,
            mount=page.mount,
        )

    # -- CSRF, user, organisation -----------------------------------------------------------------

    def check_csrf(self, request: ProxyRequest, scope: str) -> None:
        """Unsafe methods need the CSRF token of ``scope``: the mount's name for the service's
        own forms, ``""`` for the site's (the layout's switches)."""
        if request.method not in UNSAFE_METHODS:
            return
        if not self.proxy.csrf_valid(request, scope):
            raise _RefusedError(
                403,
                "csrf",
                "The form has expired or was not sent from this site. "
                "Reload the page and try again.",
            )

    def resolve_orga(self, page: PageRequest) -> None:
        """Set the current organisation in orga mode (5.4)."""
        if not page.mount.orga_mode:
            return
        session = page.request.session
        if self.config.dev_mode:
            stored = session.get("dev_orga")
            orga = SIMULATED_ORGAS[0]
            if isinstance(stored, dict) and "pk" in stored:
                orga = Orga(
                    stored["pk"], str(stored.get("name", "")), str(stored.get("codops", "zzebu"))
                )
            page.orga = orga
            page.orgas = (orga,)
            page.user = self.proxy.directory.dev_user(page.dev_user_mode or "ano", orga)
            return
        page.orgas = page.user.orgas
        if not page.orgas:
            return
        wanted = (
            session.get("orga", {}).get(page.mount.name)
            if isinstance(session.get("orga"), dict)
            else None
        )
        page.orga = page.user.orga(wanted) if wanted is not None else None
        if page.orga is None:
            page.orga = page.orgas[0]

    def switch(self, page: PageRequest, what: str) -> Response:
        """``ebuio_setUser`` (dev mode) and ``ebuio_setOrga``: change and go back."""
        request = page.request
        values = request.values
        if what == "ebuio_setUser":
            if not self.config.dev_mode:
                raise _RefusedError(404)
            mode = values.get("mode", "ano")
            if mode not in SIMULATED_MODES:
                raise _RefusedError(
                    400, "bad_mode", f"Unknown user mode {mode!r}: use ano, log, mem or adm."
                )
            if request.method == "POST":
                self.check_csrf(request, "")
            request.session["dev_user_mode"] = mode
        else:
            if request.method == "POST":
                self.check_csrf(request, "")
            elif not self.config.dev_mode:  # a state change: a form with the CSRF token (W14)
                raise _RefusedError(405, "post_only", "Switch organisations with the site's menu.")
            pk = values.get("pk", values.get("orga", ""))
            if self.config.dev_mode:
                known = {str(o.pk): o for o in SIMULATED_ORGAS}
                base = known.get(pk)
                request.session["dev_orga"] = {
                    "pk": _int_or_str(pk),
                    "name": values.get("name") or (base.name if base else str(pk)),
                    "codops": base.codops if base else "zzebu",
                }
            else:
                if page.user.orga(pk) is None:
                    raise _RefusedError(
                        403, "not_in_orga", "You are not a member of this organisation."
                    )
                orgas = dict(request.session.get("orga") or {})
                orgas[page.mount.name] = _int_or_str(pk)
                request.session["orga"] = orgas
        target = values.get("next")
        if target and self.proxy.is_local_path(target):
            return _redirect(target, 303)
        return Response(b"", status=200)

    # -- normal mode ------------------------------------------------------------------------------

    def page(self, page: PageRequest) -> Response:
        request = page.request
        meta = page.client.meta(page.path)
        if meta is None:
            tried = f"{page.mount.url}/meta/{page.path}"
            log.info(
                "service %s has no action at %r: %s answered 404", page.mount.name, page.path, tried
            )
            raise _RefusedError(
                404, "meta", "This page does not exist.", f"no action at {page.path!r} ({tried})"
            )
        page.meta = meta
        service_user = page.service_user
        if page.mount.orga_mode and page.orga is None and not meta.public:
            raise _RefusedError(
                403, "no_orga_in_orgamode", "This page is for members of an organisation."
            )
        if request.method != "OPTIONS":
            reason = protocol.access_denied_reason(
                meta, service_user, self.proxy.client_address(request)
            )
            if reason is None:
                reason = self.hooks.access_refusal(page)
            if reason is not None:
                status = 403
                raise _RefusedError(
                    status, reason, _ACCESS_MESSAGES.get(reason, "You may not see this page.")
                )
        cacheable = meta.cache_time > 0 and request.method in ("GET", "HEAD")
        if cacheable:
            page.cache_key = protocol.page_cache_key(
                service=page.mount.name,
                method="FRAGMENT" if page.fragment else "GET",
                path=page.path,
                query=request.query_string.decode("latin-1"),
                template_tag=meta.template_tag,
                user_key=page.user.cache_key if meta.per_user_cache else None,
                orga_key=None if page.orga is None else str(page.orga.pk),
                variant=page.variant,
                script_root=self.proxy.base_path(request),
            )
            wrapped = (
                None if page.menu_only or page.fragment else self._wrapped.get(self._variant(page))
            )
            if wrapped is not None:
                return self._html_response(page, wrapped)
            hit = self.proxy.cache_get(page.cache_key)
            if hit is not None:
                if hit.get("expires", 0) > time.time():
                    return self.layout(page, hit)
                page.stale = hit  # kept past its time, to show if the service fails now
        try:
            return self._fresh_page(page, meta)
        except ServiceError as error:
            if page.stale is None:
                raise
            log.warning(
                "%s failed on %s, showing a stale copy: %s", error.service, page.path, error.message
            )
            stale = dict(page.stale, html=_notice(page.mount, stale=True) + page.stale["html"])
            response = self.layout(page, {k: v for k, v in stale.items() if k != "expires"})
            response.headers["Cache-Control"] = "no-store"
            return response

    def _fresh_page(self, page: PageRequest, meta: ActionMeta) -> Response:
        """Everything after the page cache: template, call, reply, render, store."""
        template = None
        if meta.template_tag and not (meta.json_only or meta.xml_only):
            template = self.template(page, page.path, meta.template_tag)
            if template is None:  # the action is not called: its page could not be shown
                tried = f"{page.mount.url}/template/{page.path}"
                log.warning(
                    "service %s: the action %r names a template, but %s answered 404 "
                    "(the action was not called)",
                    page.mount.name,
                    page.path,
                    tried,
                )
                raise _RefusedError(
                    404,
                    "template",
                    "This page does not exist.",
                    f"the template of {page.path!r} is missing ({tried})",
                )
        upstream = self.build_upstream(page, f"action/{page.path}")
        self.proxy.clients.shadow(page.mount, upstream)
        reply = self.call(page, upstream)
        special = self.special_reply(page, reply)
        if special is not None:
            return special
        if meta.xml_only:
            data = self._json(page, reply)
            xml = data.get("xml") if isinstance(data, dict) else None
            if not isinstance(xml, str):
                raise ServiceError(
                    page.mount.name,
                    "bad_reply",
                    'an xml_only action must return {"xml": "<document>"}',
                )
            return self._forward(page, Response(xml, mimetype="application/xml"))
        data = self._json(page, reply)
        if meta.json_only:
            response = Response(json.dumps(data, ensure_ascii=False), mimetype="application/json")
            return self._forward(page, response)
        if not isinstance(data, dict):
            raise ServiceError(page.mount.name, "bad_reply", "the action's JSON is not an object")
        if template is None:
            raise _RefusedError(404, "template", "This page does not exist.")
        html, menu = self.render(page, template, data)
        if page.mount.trust == "sandboxed" and (page.fragment or not meta.no_template):
            scope = page.mount.name
            html, menu = sanitize_html(html, scope), sanitize_html(menu, scope)
        content = {
            "html": html,
            "menu": menu,
            "headers": page.forwarded_headers,
            "no_layout": meta.no_template,
        }
        if page.cache_key is not None:
            content["expires"] = time.time() + meta.cache_time
            self.proxy.cache_set(page.cache_key, content, meta.cache_time + page.mount.stale_for)
        return self.layout(page, content)

    def template(self, page: PageRequest, path: str, tag: str) -> jinja2.Template | None:
        """The compiled template of the action at ``path``, fetched once per template tag.

        Fetching and compiling are one flight: a request that comes while another compiles
        waits for it instead of fetching the template again.
        """
        templates = self.proxy.templates[page.mount.name]
        key = tag if re.fullmatch(r"[0-9a-fA-F]{16,128}", tag) else f"{path}\x00{tag}"
        compiled = templates.get(key)
        if compiled is not None:
            return compiled
        return self._template_flight.do(
            (page.mount.name, key), lambda: self._load_template(page, key, path, tag)
        )

    def _load_template(
        self, page: PageRequest, key: str, path: str, tag: str
    ) -> jinja2.Template | None:
        templates = self.proxy.templates[page.mount.name]
        compiled = templates.get(key)  # compiled by the flight that ended just before this one
        if compiled is not None:
            return compiled
        source = page.client.template(path)
        if source is None:
            return None
        try:
            return templates.compile(key, source)
        except jinja2.TemplateError as exc:
            raise ServiceError(
                page.mount.name, "bad_reply", f"template of {path!r} is invalid: {exc}"
            ) from None

    def render(
        self, page: PageRequest, template: jinja2.Template, data: dict[str, Any]
    ) -> tuple[str, str]:
        """Render a service's template within its budget, holding one of its concurrency
        slots: a template that goes over its budget is the service's failure (502), and
        never more than ``max_concurrency`` renders of one service run at once."""
        context = self.template_context(page, data)
        try:
            with page.client.slot():
                return self.proxy.templates[page.mount.name].render(template, context)
        except OverBudget as exc:
            raise ServiceError(
                page.mount.name,
                "over_budget",
                f"template of {page.path!r} went over its render budget: {exc}",
            ) from None
        except jinja2.TemplateError as exc:
            raise ServiceError(
                page.mount.name, "bad_reply", f"template of {page.path!r} failed: {exc}"
            ) from None
        except (TypeError, ValueError, ArithmeticError, LookupError, AttributeError) as exc:
            raise ServiceError(
                page.mount.name,
                "bad_reply",
                f"template of {page.path!r} failed: {type(exc).__name__}: {exc}",
            ) from None

    def template_context(self, page: PageRequest, data: dict[str, Any]) -> dict[str, Any]:
        """The variables of a service template (5.15): the action's data plus the proxy's.

        Everything in it is data (JSON-like values and Markup) or an opaque function
        (:class:`~plugit_core.proxy.sandbox.TemplateFunction`): a template never gets an
        object whose attributes lead back into the proxy.  What plugins add through
        ``plugit_template_context`` is converted the same way; a value that is not data is
        dropped with a warning.
        """
        mount = page.mount
        service_user = page.service_user
        context = dict(data)
        # A page kept in the shared page cache is shown to everyone: render it for nobody.
        shared = (
            page.cache_key is not None and page.meta is not None and not page.meta.per_user_cache
        )
        own: dict[str, Any] = {
            "ebuio_u": service_user.properties(self.config.user_data)
            if service_user.is_authenticated and not shared
            else {prop: None for prop in self.config.user_data},
            "ebuio_baseUrl": self.proxy.site_url(page.request, mount.mount),
            "ebuio_userMode": page.dev_user_mode,
            "ebuio_realUsers": not self.config.dev_mode,
            "ebuio_orgamode": mount.orga_mode,
            "ebuio_orga": None if page.orga is None else page.orga.as_dict(),
            "ebuio_orgas": [o.as_dict() for o in page.orgas],
            "csrf_token": CSRF_PLACEHOLDER,
            "csrf_field": CSRF_FIELD,
            "MEDIA_URL": self.proxy.site_url(page.request, mount.media_url),
            "STATIC_URL": self.proxy.site_url(page.request, STATIC_PREFIX),
        }
        own = template_data(own, where="context")
        context.update(own)
        context["plugit_include"] = TemplateFunction(_Include(self, page, context))
        context["plugit_get_user"] = TemplateFunction(_GetUser(self, page))
        context["plugit_fragment"] = TemplateFunction(self.proxy.fragments.placer(page))
        for extra in self.hooks.template_context(page, context):
            for key, value in (extra or {}).items():
                if key in own:
                    continue
                try:
                    context[key] = template_data(value, where=key)
                except TypeError as exc:
                    log.warning("plugit_template_context: %s; dropped", exc)
        return context

    def layout(self, page: PageRequest, content: dict[str, Any]) -> Response:
        """The final page: the service's HTML inside the theme's layout (or alone).

        A cached page wrapped for one kind of visitor (same user, dev mode and organisation) is
        kept wrapped in this process until its page-cache entry expires, so a repeated
        page-cache hit costs no rendering and no cache look-up at all.  The CSRF token is put in
        afterwards, per request.
        """
        if page.menu_only:
            return self._html_response(page, (content.get("menu") or "", (), True))
        if page.fragment:  # without the layout: the page that places it has one
            return self._html_response(page, (content["html"], (), True))
        raw = bool(content.get("no_layout"))
        html = content["html"] if raw else self._render_layout(page, content)
        wrapped = (html, content.get("headers") or (), raw)
        if page.cache_key is not None and "expires" in content:
            self._wrapped.put(self._variant(page), wrapped, content["expires"])
        return self._html_response(page, wrapped)

    @staticmethod
    def _variant(page: PageRequest) -> tuple[Any, ...]:
        """What a cached page's wrapping depends on besides the page itself."""
        orga = None if page.orga is None else str(page.orga.pk)
        return (page.cache_key, page.user.cache_key, page.dev_user_mode, orga)

    def _html_response(self, page: PageRequest, wrapped: tuple[str, Any, bool]) -> Response:
        """A service's HTML as the browser gets it: tokens filled in, its forwarded headers,
        and the policy of its trust level (``raw``: without the layout)."""
        html, headers, raw = wrapped
        request = page.request
        html = self.proxy.with_csrf(request, html, page.mount.name)
        if not page.fragment:
            html = self.proxy.fragments.fill(request, html)
        response = Response(html, mimetype="text/html")
        sandboxed = page.mount.trust == "sandboxed"
        for name, value in headers:
            if sandboxed and not raw and name.lower().startswith("access-control-"):
                continue  # a page in the layout is the site's: no other site may read it
            response.headers[name] = value
        if sandboxed:
            policy = RAW_POLICY if raw else page_policy(request.csp_nonce)
            response.headers["Content-Security-Policy"] = policy
        return response

    def _render_layout(self, page: PageRequest, content: dict[str, Any]) -> str:
        return self.proxy.site.render_layout(
            page.request,
            mount=page.mount,
            content=Markup(content["html"]),  # noqa: S704 (sandbox output)
            menu=Markup(content.get("menu") or ""),  # noqa: S704 (sandbox output)
            orga=page.orga,
            orgas=page.orgas,
            user=page.user,
            dev_user_mode=page.dev_user_mode,
        )

    # -- proxy mode -------------------------------------------------------------------------------

    def proxy_mode_page(self, page: PageRequest) -> Response:
        upstream = self.build_upstream(page, page.path)
        reply = self.call(page, upstream)
        special = self.special_reply(page, reply)
        if special is not None:
            return special
        try:
            html = reply.body.decode("utf-8")
        except UnicodeDecodeError:
            raise ServiceError(page.mount.name, "bad_reply", "the page is not UTF-8 text") from None
        if reply.headers.get(protocol.H_NO_TEMPLATE) is not None:
            html = self.proxy.with_csrf(page.request, html, page.mount.name)
            return self._forward(page, Response(html, mimetype="text/html"))
        if page.mount.trust == "sandboxed":
            html = sanitize_html(html, page.mount.name)
        return self.layout(page, {"html": html, "menu": "", "headers": page.forwarded_headers})

    # -- the upstream request ---------------------------------------------------------------------

    def build_upstream(self, page: PageRequest, path: str) -> UpstreamRequest:
        """The request for the service's action: client data minus ``ebuio_*``, plus ours."""
        request = page.request
        upstream = UpstreamRequest(request.method, path)
        upstream.params = _client_items(request.args)
        if request.method in UNSAFE_METHODS:
            # The body is bounded at the entry (bodies.bound_body): reading past the limit raises
            # RequestEntityTooLarge (a 413 page), chunked or not, so no cut body is forwarded.
            if unreadable_framing(request):
                raise _RefusedError(
                    411, "length_required", "This upload cannot be read: send it with its length."
                )
            if request.mimetype in ("application/x-www-form-urlencoded", "multipart/form-data"):
                if form_problem(request) is not None:  # werkzeug read it as an empty form
                    raise _RefusedError(400, "bad_form", "The form sent could not be read.")
                upstream.form = [
                    (k, v) for k, v in _client_items(request.form) if k != CSRF_FIELD_NAME
                ]
                upstream.files = [
                    (
                        name,
                        (
                            storage.filename or name,
                            storage.stream,
                            storage.mimetype or "application/octet-stream",
                        ),
                    )
                    for name, storage in request.files.items(multi=True)
                    if not name.lower().startswith("ebuio_")
                ]
            elif request.content_length or request.headers.get("Transfer-Encoding"):
                upstream.body = request.get_data(cache=False)
                upstream.content_type = request.content_type
        ours: list[tuple[str, str]] = []
        meta = page.meta
        service_user = page.service_user
        if meta is not None:
            allowed = set(self.config.user_data)
            for prop in meta.user_info:
                if prop not in allowed:
                    log.warning(
                        "%s asked for user property %r, which is not in user_data",
                        page.mount.name,
                        prop,
                    )
                    continue
                ours.extend((f"ebuio_u_{prop}", v) for v in _wire_values(service_user.get(prop)))
        if page.orga is not None:
            ours.append(("ebuio_orgapk", str(page.orga.pk)))
        if upstream.form is not None and request.method == "POST":
            upstream.form.extend(ours)
        else:
            upstream.params.extend(ours)
        upstream.headers.update(self.plugit_headers(page))
        # when this proxy stops waiting: the service and its callback API calls stop there too
        upstream.headers[protocol.H_DEADLINE] = protocol.format_deadline(
            time.time() + page.mount.timeout
        )
        upstream.headers["traceparent"] = _traceparent(request.headers.get("traceparent"))
        tracestate = request.headers.get("tracestate")
        if tracestate and len(tracestate) <= 512 and "traceparent" in request.headers:
            upstream.headers["tracestate"] = tracestate
        self.hooks.upstream_request(page, upstream)
        return upstream

    def plugit_headers(self, page: PageRequest) -> dict[str, str]:
        """``X-Plugit-*`` information headers (2.13), dash-only names, UTF-8 values."""
        request = page.request
        headers: dict[str, str] = {}
        address = self.proxy.client_address(request)
        if address:
            headers["X-Plugit-Remote-Addr"] = address
        for source in (
            "If-None-Match",
            "Origin",
            "Access-Control-Request-Method",
            "Access-Control-Request-Headers",
        ):
            value = request.headers.get(source)
            if value is not None:
                headers[f"X-Plugit-{source}"] = value
        if page.mount.proxy_mode:
            service_user = page.service_user
            if service_user.is_authenticated:
                for prop in self.config.user_data:
                    for value in _wire_values(service_user.get(prop))[:1]:
                        headers[f"X-Plugit-User-{prop.replace('_', '-')}"] = _header_text(value)
            if page.orga is not None:
                headers["X-Plugit-Orga-Pk"] = str(page.orga.pk)
                headers["X-Plugit-Orga-Name"] = _header_text(page.orga.name)
                headers["X-Plugit-Orga-Codops"] = _header_text(page.orga.codops)
            headers["X-Plugit-Base-Url"] = self.proxy.site_url(request, page.mount.mount)
        values = self.service_session(page)
        if values:
            for key, value in values.items():
                headers[f"X-Plugitsession-{key}"] = _header_text(value)
            headers["Cookie"] = "; ".join(
                dump_cookie(key, str(value)).split(";", 1)[0] for key, value in values.items()
            )
        return headers

    def service_session(self, page: PageRequest) -> dict[str, str]:
        stored = page.request.session.get("svc", {})
        values = stored.get(page.mount.name) if isinstance(stored, dict) else None
        return values if isinstance(values, dict) else {}

    # -- the call and its reply -------------------------------------------------------------------

    def call(self, page: PageRequest, upstream: UpstreamRequest) -> ServiceReply:
        reply = self.hooks.call_service(page, upstream)
        return reply

    def special_reply(self, page: PageRequest, reply: ServiceReply) -> Response | None:
        """Everything but ordinary data (5.12, 5.13), or None to go on rendering.

        A streamed reply (a file) is closed here unless the answer streams it on to the browser.
        """
        try:
            response = self._special_reply(page, reply)
        except BaseException:
            if reply.close is not None:
                reply.close()
            raise
        if reply.close is not None and (
            response is None or not getattr(response, "streams_reply", False)
        ):
            reply.close()
        return response

    def _special_reply(self, page: PageRequest, reply: ServiceReply) -> Response | None:
        request = page.request
        self.store_session(page, reply)
        page.forwarded_headers = [
            (name, reply.headers[name])
            for name in protocol.FORWARDED_REPLY_HEADERS
            if name in reply.headers
        ]
        status = reply.status
        if request.method == "OPTIONS":
            return self._forward(page, Response(b"", status=status if status < 500 else 502))
        if status == 304:
            return self._forward(page, Response(status=304))
        if status >= 500:
            raise ServiceError(page.mount.name, "error", f"{page.path} answered {status}")
        if 400 <= status < 500:
            response = self.proxy.error_page(
                request, status, reason="service_status", mount=page.mount
            )
            for name in _PASS_STATUS_HEADERS:
                if name in reply.headers:
                    response.headers[name] = reply.headers[name]
            return response
        if status not in (200, 201, 202, 203, 204):
            raise ServiceError(page.mount.name, "bad_reply", f"{page.path} answered {status}")
        target = reply.headers.get(protocol.H_REDIRECT)
        if target is not None:
            no_prefix = reply.headers.get(protocol.H_REDIRECT_NOPREFIX) == "True"
            return self._forward(page, self.redirect(page, target, no_prefix))
        if reply.headers.get(protocol.H_FILE) is not None:
            return self._forward(page, self.file(reply))
        return None

    def redirect(self, page: PageRequest, target: str, no_prefix: bool) -> Response:
        """A redirect asked by the service, checked (weakness W13)."""
        if any(c in target for c in "\r\n\x00"):
            raise ServiceError(
                page.mount.name, "bad_reply", "redirect target contains control characters"
            )
        if not no_prefix:
            return _redirect(
                self.proxy.site_url(page.request, page.mount.mount) + target.lstrip("/"), 302
            )
        if self.proxy.is_local_path(target) or self.proxy.redirect_allowed(page.request, target):
            return _redirect(self.proxy.site_url(page.request, target), 302)
        raise ServiceError(
            page.mount.name,
            "bad_reply",
            f"redirect to a host that is not allowed: {target[:100]!r}",
        )

    def file(self, reply: ServiceReply) -> Response:
        response = Response(
            reply.stream if reply.stream is not None else reply.body,
            mimetype=None,
            content_type=reply.headers.get("Content-Type", "application/octet-stream"),
            direct_passthrough=reply.stream is not None,
        )
        if reply.close is not None:
            response.call_on_close(reply.close)  # also when the body is never read (HEAD)
            response.streams_reply = True  # type: ignore[attr-defined]
        disposition = reply.headers.get("Content-Disposition")
        if disposition:
            response.headers["Content-Disposition"] = disposition
        length = reply.headers.get("Content-Length")
        if length and length.isdigit():
            response.headers["Content-Length"] = length
        response.headers["X-Content-Type-Options"] = "nosniff"
        return response

    def store_session(self, page: PageRequest, reply: ServiceReply) -> None:
        """``EbuIo-PlugIt-SetSession-<key>`` headers into this service's own session values."""
        updates = {
            name[len(protocol.SET_SESSION_PREFIX) :].lower(): value
            for name, value in reply.headers.items()
            if name.lower().startswith(protocol.SET_SESSION_PREFIX)
        }
        if not updates:
            return
        with _SESSION_WRITES:  # the fragments of one page store from several threads
            self._store_session(page, updates)

    def _store_session(self, page: PageRequest, updates: dict[str, str]) -> None:
        session = page.request.session
        stored = dict(session.get("svc") or {})
        mine = dict(stored.get(page.mount.name) or {})
        for key, value in updates.items():
            if not _SESSION_KEY.match(key) or len(value) > MAX_SESSION_VALUE:
                log.warning(
                    "%s: session value %r refused (name or size)", page.mount.name, key[:64]
                )
                continue
            if key not in mine and len(mine) >= MAX_SESSION_KEYS:
                log.warning(
                    "%s: more than %d session values, %r dropped",
                    page.mount.name,
                    MAX_SESSION_KEYS,
                    key,
                )
                continue
            mine[key] = value
        stored[page.mount.name] = mine
        session["svc"] = stored

    def _json(self, page: PageRequest, reply: ServiceReply) -> Any:
        if reply.status == 204:
            return {}
        try:
            return reply.json()
        except ValueError as exc:
            raise ServiceError(page.mount.name, "bad_reply", f"{page.path}: {exc}") from None

    def _forward(self, page: PageRequest, response: Response) -> Response:
        """What the service sends raw (JSON, XML, files, redirects), with its forwarded
        headers; a sandboxed service's raw replies are sandboxed documents."""
        for name, value in page.forwarded_headers:
            response.headers[name] = value
        if page.mount.trust == "sandboxed":
            response.headers["Content-Security-Policy"] = RAW_POLICY
        if response.mimetype in ("application/json", "application/xml"):
            response.headers["X-Content-Type-Options"] = "nosniff"
        return response

    # -- media ------------------------------------------------------------------------------------

    def media(
        self, request: ProxyRequest, mount: ServiceMount, client: ServiceClient, path: str
    ) -> Response:
        """A service's static file (5.21), with a public cache lifetime of at most an hour."""
        if request.method not in ("GET", "HEAD"):
            return Response(b"", status=405, headers={"Allow": "GET, HEAD"})
        normal = normal_media_path(path)
        if normal is None:
            log.warning(
                "media %s: refused the path %r (it climbs or holds control characters)",
                mount.name,
                path[:200],
            )
            return Response(b"Not Found", status=404, mimetype="text/plain")
        try:
            reply = client.send(UpstreamRequest(request.method, "media/" + normal), stream=True)
        except ServiceError as error:
            log.warning("media %s/%s: %s", mount.name, path, error.message)
            return self.proxy.error_page(
                request, error.status, reason=error.kind, detail=error.message, mount=mount
            )
        if reply.status != 200:
            if reply.close:
                reply.close()
            return Response(b"Not Found", status=404, mimetype="text/plain")
        response = self.file(reply)
        response.headers.pop("Content-Disposition", None)
        if mount.trust == "sandboxed":
            response.headers["Content-Security-Policy"] = RAW_POLICY
        max_age = 3600
        upstream_control = reply.headers.get("Cache-Control")
        if upstream_control:
            from werkzeug.http import parse_cache_control_header

            upstream_age = parse_cache_control_header(upstream_control).max_age
            if upstream_age is not None:
                max_age = min(max_age, upstream_age)
        response.headers["Cache-Control"] = f"public, max-age={max_age}"
        return response


_TRACEPARENT = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")


def _traceparent(incoming: str | None) -> str:
    """The W3C ``traceparent`` for the call: the client's trace continued with a new span id, or
    a new trace when the client sent none (or an invalid one)."""
    # Trace ids need to be unique, not secret: the process's PRNG (reseeded in each forked
    # worker) costs no system call, where a secrets.token_hex per request showed in profiles.
    span = f"{_random_bits(64) or 1:016x}"
    if incoming:
        match = _TRACEPARENT.match(incoming.strip())
        if match and set(match.group(1)) != {"0"} and set(match.group(2)) != {"0"}:
            return f"00-{match.group(1)}-{span}-{match.group(3)}"
    return f"00-{_random_bits(128) or 1:032x}-{span}-01"


_random_bits = random.getrandbits


def normal_media_path(path: str) -> str | None:
    """``path`` (below a service's ``media/``) with ``.`` and ``..`` segments resolved, or None
    when it climbs out of ``media/`` or holds a backslash or a control character (which some
    servers read as separators)."""
    if any(ord(c) < 0x20 or c in "\\\x7f" for c in path):
        return None
    parts: list[str] = []
    for segment in path.split("/"):
        if segment.split(";", 1)[0] in (".", "..") and ";" in segment:
            return None  # "..;x": a climb for servers that strip path parameters (Tomcat)
        if segment in ("", "."):
            continue
        if segment == "..":
            if not parts:
                return None
            parts.pop()
        else:
            parts.append(segment)
    return "/".join(parts) + ("/" if path.endswith("/") and parts else "")


def _notice(mount: ServiceMount, *, stale: bool) -> str:
    what = "This page may be out of date: " if stale else ""
    text = escape(f"{what}{mount.title} is not answering right now.")
    return f'<div id="plugit-notice" class="alert alert-warning" role="status">{text}</div>'


class _ExpiringLRU:
    """A small thread-safe LRU whose entries expire at a given wall-clock time."""

    def __init__(self, maxsize: int) -> None:
        self._data: TLRUCache[Any, tuple[Any, float]] = TLRUCache(
            maxsize=maxsize, ttu=lambda _k, value, _now: value[1], timer=lambda: time.time()
        )
        self._lock = threading.Lock()

    def get(self, key: Any) -> Any:
        with self._lock:
            item = self._data.get(key)
        return None if item is None else item[0]

    def put(self, key: Any, value: Any, expires: float) -> None:
        with self._lock:
            self._data[key] = (value, expires)


class _Include:
    """``plugit_include(path)``: another action's template rendered with the current context.

    Handed to templates inside a :class:`TemplateFunction`, so they can call it but never
    read what it holds.
    """

    MAX_DEPTH = 4
    __slots__ = ("_context", "_depth", "_page", "_pipeline")

    def __init__(self, pipeline: Pipeline, page: PageRequest, context: dict[str, Any]) -> None:
        self._pipeline = pipeline
        self._page = page
        self._context = context
        self._depth = 0

    def __call__(self, path: Any) -> Markup:
        page = self._page
        path = str(path).lstrip("/")
        if self._depth >= self.MAX_DEPTH:
            raise ServiceError(page.mount.name, "bad_reply", "plugitInclude nested too deep")
        meta = page.client.meta(path)
        if meta is None or not meta.template_tag:
            return Markup("")
        template = self._pipeline.template(page, path, meta.template_tag)
        if template is None:
            return Markup("")
        self._depth += 1
        try:
            html, _menu = self._pipeline.proxy.templates[page.mount.name].render(
                template, self._context
            )
        finally:
            self._depth -= 1
        return Markup(html)  # noqa: S704 (rendered by the autoescaping sandbox)


class _GetUser:
    """``plugit_get_user(pk)``: a user reduced to the shared properties (5.22), for the users
    the callback API would show this service (its members), else None."""

    __slots__ = ("_page", "_pipeline")

    def __init__(self, pipeline: Pipeline, page: PageRequest) -> None:
        self._pipeline = pipeline
        self._page = page

    def __call__(self, pk: Any) -> dict[str, Any] | None:
        page = self._page
        try:
            user = ApiCall(page.request, self._pipeline.proxy.context, page.mount).user(pk)
        except ApiError:
            return None
        return user.for_service(page.mount.name, None).properties(self._pipeline.config.user_data)


_ACCESS_MESSAGES = {
    "only_logged_user": "Please log in to see this page.",
    "only_member_user": "This page is for members of this service.",
    "only_admin_user": "This page is for administrators of this service.",
    "only_orga_member_user": "This page is for members of your organisation.",
    "only_orga_admin_user": "This page is for administrators of your organisation.",
    "address_in_networks": "This page cannot be reached from your network.",
}


def _client_items(values: Any) -> list[tuple[str, str]]:
    """Client parameters minus every ``ebuio_*`` name (the proxy's own, weakness W1)."""
    return [(k, v) for k, v in values.items(multi=True) if not k.lower().startswith("ebuio_")]


def _wire_values(value: Any) -> list[str]:
    """A user property as parameter values: None omitted, booleans True/False, lists repeated."""
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value if v is not None]
    return [str(value)]


def _header_text(value: Any) -> str:
    """A header value: UTF-8 bytes carried as latin-1 text, without line breaks or NULs (which
    no transport may send)."""
    text = str(value).replace("\r", " ").replace("\n", " ").replace("\x00", " ")
    return text.encode("utf-8").decode("latin-1")


def _int_or_str(value: str) -> int | str:
    try:
        return int(value)
    except (TypeError, ValueError):
        return value


def _redirect(location: str, status: int) -> Response:
    response = Response(b"", status=status)
    response.headers["Location"] = location
    return response

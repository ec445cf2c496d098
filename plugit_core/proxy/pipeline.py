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
import time
from typing import TYPE_CHECKING, Any

from markupsafe import Markup
from werkzeug.exceptions import RequestEntityTooLarge
from werkzeug.wrappers import Response

from .. import protocol
from ..config import ServiceMount
from ..protocol import ActionMeta
from ..users import SIMULATED_MODES, SIMULATED_ORGAS, Orga
from .api import API_PREFIX
from .containment import RAW_POLICY, page_policy, sanitize_html
from .csrf import UNSAFE_METHODS
from .outgoing import UpstreamBuilder
from .page import PageRequest, RefusedError, notice
from .rendering import ServiceRendering
from .replies import ServiceReplies, redirect_response
from .upstream import ExpiringLRU, ServiceError, ServiceReply, UpstreamRequest

if TYPE_CHECKING:
    from .app import ProxyApp, ProxyRequest

__all__ = ["PageRequest", "Pipeline", "ServiceError", "ServiceReply", "UpstreamRequest"]

log = logging.getLogger("plugit.proxy")

MENU_PREFIX = "ebuio_menu/"
CSRF_COOKIE = "csrftoken"  # readable by the mount's scripts, holds the mount's token


class Pipeline:
    """The page pipeline of a proxy."""

    def __init__(self, proxy: ProxyApp) -> None:
        self.proxy = proxy
        self.config = proxy.config
        self.hooks = proxy.hooks
        self._wrapped = ExpiringLRU(maxsize=2048)
        # The stages, each with one job: the request to the service, its reply, the render.
        self.upstream = UpstreamBuilder(self.config, self.hooks)
        self.replies = ServiceReplies()
        self.rendering = ServiceRendering(
            self.config,
            self.hooks,
            templates=proxy.templates,
            context=proxy.context,
            placer=lambda page: proxy.fragments.placer(page),  # the fragments are built later
        )

    # -- entry ------------------------------------------------------------------------------------

    def handle(self, request: ProxyRequest, mount: ServiceMount, path: str) -> Response:
        if path.startswith("media/"):
            return self.replies.media(
                request, mount, self.proxy.clients[mount.name], path[len("media/") :]
            )
        if path.startswith(API_PREFIX) or path == API_PREFIX.rstrip("/"):
            return self.proxy.api.handle(request, mount, path[len(API_PREFIX) :])
        user = self.proxy.identify(request)
        client, variant = self.proxy.select_client(mount, request, user)
        menu_only = path.startswith(MENU_PREFIX)
        if menu_only:
            path = path[len(MENU_PREFIX) :]
        page = PageRequest(
            request,
            self.proxy.context,
            mount,
            client,
            path,
            user,
            menu_only=menu_only,
            variant=variant,
        )
        try:
            if path in ("ebuio_setUser", "ebuio_setOrga"):
                return self._finish(page, self.switch(page, path))
            self.check_csrf(request, mount.name)
            self.proxy.clients.check_compatible(client)
            self.resolve_orga(page)
            response = self.proxy_mode_page(page) if mount.proxy_mode else self.page(page)
        except RefusedError as refused:
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
            html = notice(page.mount, stale=False) + page.mount.fallback_html
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
            raise RefusedError(
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
                raise RefusedError(404)
            mode = values.get("mode", "ano")
            if mode not in SIMULATED_MODES:
                raise RefusedError(
                    400, "bad_mode", f"Unknown user mode {mode!r}: use ano, log, mem or adm."
                )
            if request.method == "POST":
                self.check_csrf(request, "")
            request.session["dev_user_mode"] = mode
        else:
            if request.method == "POST":
                self.check_csrf(request, "")
            elif not self.config.dev_mode:  # a state change: a form with the CSRF token (W14)
                raise RefusedError(405, "post_only", "Switch organisations with the site's menu.")
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
                    raise RefusedError(
                        403, "not_in_orga", "You are not a member of this organisation."
                    )
                orgas = dict(request.session.get("orga") or {})
                orgas[page.mount.name] = _int_or_str(pk)
                request.session["orga"] = orgas
        target = values.get("next")
        if target and self.proxy.is_local_path(target):
            return redirect_response(target, 303)
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
            raise RefusedError(
                404, "meta", "This page does not exist.", f"no action at {page.path!r} ({tried})"
            )
        page.meta = meta
        service_user = page.service_user
        if page.mount.orga_mode and page.orga is None and not meta.public:
            raise RefusedError(
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
                raise RefusedError(
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
            stale = dict(page.stale, html=notice(page.mount, stale=True) + page.stale["html"])
            response = self.layout(page, {k: v for k, v in stale.items() if k != "expires"})
            response.headers["Cache-Control"] = "no-store"
            return response

    def _fresh_page(self, page: PageRequest, meta: ActionMeta) -> Response:
        """Everything after the page cache: template, call, reply, render, store."""
        template = None
        if meta.template_tag and not (meta.json_only or meta.xml_only):
            template = self.rendering.template(page, page.path, meta.template_tag)
            if template is None:  # the action is not called: its page could not be shown
                tried = f"{page.mount.url}/template/{page.path}"
                log.warning(
                    "service %s: the action %r names a template, but %s answered 404 "
                    "(the action was not called)",
                    page.mount.name,
                    page.path,
                    tried,
                )
                raise RefusedError(
                    404,
                    "template",
                    "This page does not exist.",
                    f"the template of {page.path!r} is missing ({tried})",
                )
        upstream = self.upstream.build(page, f"action/{page.path}")
        self.proxy.clients.shadow(page.mount, upstream)
        reply = self.call(page, upstream)
        special = self.replies.special_reply(page, reply)
        if special is not None:
            return special
        if meta.xml_only:
            data = self.replies.json(page, reply)
            xml = data.get("xml") if isinstance(data, dict) else None
            if not isinstance(xml, str):
                raise ServiceError(
                    page.mount.name,
                    "bad_reply",
                    'an xml_only action must return {"xml": "<document>"}',
                )
            return self.replies.forward(page, Response(xml, mimetype="application/xml"))
        data = self.replies.json(page, reply)
        if meta.json_only:
            response = Response(json.dumps(data, ensure_ascii=False), mimetype="application/json")
            return self.replies.forward(page, response)
        if not isinstance(data, dict):
            raise ServiceError(page.mount.name, "bad_reply", "the action's JSON is not an object")
        if template is None:
            raise RefusedError(404, "template", "This page does not exist.")
        html, menu = self.rendering.render(page, template, data)
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
        upstream = self.upstream.build(page, page.path)
        reply = self.call(page, upstream)
        special = self.replies.special_reply(page, reply)
        if special is not None:
            return special
        try:
            html = reply.body.decode("utf-8")
        except UnicodeDecodeError:
            raise ServiceError(page.mount.name, "bad_reply", "the page is not UTF-8 text") from None
        if reply.headers.get(protocol.H_NO_TEMPLATE) is not None:
            html = self.proxy.with_csrf(page.request, html, page.mount.name)
            return self.replies.forward(page, Response(html, mimetype="text/html"))
        if page.mount.trust == "sandboxed":
            html = sanitize_html(html, page.mount.name)
        return self.layout(page, {"html": html, "menu": "", "headers": page.forwarded_headers})

    # -- the upstream request ---------------------------------------------------------------------

    # -- the call and its reply -------------------------------------------------------------------

    def call(self, page: PageRequest, upstream: UpstreamRequest) -> ServiceReply:
        reply = self.hooks.call_service(page, upstream)
        return reply


_ACCESS_MESSAGES = {
    "only_logged_user": "Please log in to see this page.",
    "only_member_user": "This page is for members of this service.",
    "only_admin_user": "This page is for administrators of this service.",
    "only_orga_member_user": "This page is for members of your organisation.",
    "only_orga_admin_user": "This page is for administrators of your organisation.",
    "address_in_networks": "This page cannot be reached from your network.",
}


def _int_or_str(value: str) -> int | str:
    try:
        return int(value)
    except (TypeError, ValueError):
        return value

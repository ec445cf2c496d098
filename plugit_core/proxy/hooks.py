"""The proxy's one door to its plugins: every hook of ``plugit_core.hookspecs``, typed.

The proxy never calls ``pm.hook`` itself; it calls :class:`Hooks`, whose methods take and return
typed values and apply each hook's documented rule of precedence (first answer wins, any refusal
wins, answers merged in order...).  Plugins receive the :class:`~plugit_core.proxy.context.
PluginContext` of the proxy, never the proxy itself.

Start-up, in this order (:class:`~plugit_core.proxy.app.ProxyApp`)::

    plugit_register_backends       every plugin offers its backends (historic)
                                   the proxy builds the configured backends
    plugit_session_backend         a plugin may wrap the session backend (first answer wins)
    plugit_site_links              where the layout's log-in and log-out controls lead
    plugit_register_api_endpoints  endpoints of the callback API
    plugit_extra_routes            URLs of the site (login pages, ...)
    plugit_startup                 the proxy is built and about to serve

Shutdown (:meth:`ProxyApp.close <plugit_core.proxy.app.ProxyApp.close>`): ``plugit_shutdown``,
while the service clients still work; the proxy's own implementation wraps the others and closes
the backends it built once they returned.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any, cast

import pluggy

if TYPE_CHECKING:
    from werkzeug.wrappers import Response

    from ..backends import RegisterBackend, SessionBackend
    from ..config import FragmentSpec
    from ..users import PlugItUser
    from .app import ProxyRequest
    from .context import PluginContext
    from .fragments import FragmentResult
    from .pipeline import PageRequest
    from .routes import Route, SiteLinks
    from .upstream import ServiceError, ServiceReply, UpstreamRequest

__all__ = ["Hooks"]


class Hooks:
    """Typed calls of the hooks of ``pm``, with ``context`` as the plugins' ``proxy``.

    A per-request hook that no plugin implements is not called at all: its answer is known
    (nothing to merge, no refusal, no replacement), and a page-cache hit then costs no pluggy
    call for it.  Whether a hook has implementations is asked at each call, so a plugin
    registered late is called like the others (pluggy's call monitoring, if a site adds it,
    sees no call of a hook without implementations).
    """

    def __init__(self, pm: pluggy.PluginManager) -> None:
        self.pm = pm
        self._hook = pm.hook
        self._context: PluginContext | None = None

    def bind(self, context: PluginContext) -> None:
        """Give the plugins' context (made once the backends are built)."""
        self._context = context

    @property
    def context(self) -> PluginContext:
        if self._context is None:
            raise RuntimeError("the plugins' context is made once the backends are built")
        return self._context

    # -- start-up and shutdown --------------------------------------------------------------------

    def register_backends(self, register: RegisterBackend) -> None:
        self._hook.plugit_register_backends.call_historic(kwargs={"register": register})

    def session_backend(self, sessions: SessionBackend) -> SessionBackend:
        """The session backend to use: ``sessions`` wrapped by every plugin in turn, in pluggy's
        call order (the most recently registered first, so the first registered is
        outermost); a plugin answering None leaves it as it is."""
        # pluggy calls every implementation with the same arguments; here each must get the
        # backend as the ones before it wrapped it, so the implementations are called in turn.
        for impl in reversed(self._hook.plugit_session_backend.get_hookimpls()):
            if impl.wrapper or impl.hookwrapper:
                continue  # nothing to wrap around: each implementation is one step
            arguments = {"sessions": sessions, "proxy": self.context}
            wrapped = cast(
                "SessionBackend | None", impl.function(*(arguments[name] for name in impl.argnames))
            )
            if wrapped is not None:
                sessions = wrapped
        return sessions

    def site_links(self) -> SiteLinks | None:
        """The log-in and log-out URLs of the first plugin that offers a login, or None."""
        links: SiteLinks | None = self._hook.plugit_site_links(proxy=self.context)
        return links

    def register_api_endpoints(self, register: Callable[..., None]) -> None:
        self._hook.plugit_register_api_endpoints(register=register, proxy=self.context)

    def extra_routes(self) -> list[Route]:
        """Every plugin's routes, the last registered plugin's first."""
        answers: list[list[Route] | None] = self._hook.plugit_extra_routes(proxy=self.context)
        return [route for routes in answers for route in routes or ()]

    def startup(self) -> None:
        self._hook.plugit_startup(proxy=self.context)

    def shutdown(self) -> None:
        self._hook.plugit_shutdown(proxy=self.context)

    # -- one request ------------------------------------------------------------------------------

    def identify_user(self, request: ProxyRequest) -> PlugItUser | None:
        """The first plugin's answer (None: no plugin knows the user)."""
        user: PlugItUser | None = self._hook.plugit_identify_user(
            request=request, proxy=self.context
        )
        return user

    def user_loaded(self, user: PlugItUser) -> PlugItUser:
        """``user`` with every plugin's changes; on a field two plugins change, the one
        registered last (called first) wins."""
        if not self._hook.plugit_user_loaded.get_hookimpls():
            return user
        changes: dict[str, Any] = {}
        for answer in reversed(self._hook.plugit_user_loaded(user=user, proxy=self.context)):
            if answer:
                changes.update(answer)
        return replace(user, **changes) if changes else user

    def access_refusal(self, page: PageRequest) -> str | None:
        """The first refusal of any plugin, or None when every plugin allows."""
        if not self._hook.plugit_access_decision.get_hookimpls():
            return None
        refusals = [r for r in self._hook.plugit_access_decision(page=page) if r]
        return refusals[0] if refusals else None

    def upstream_request(self, page: PageRequest, upstream: UpstreamRequest) -> None:
        if self._hook.plugit_upstream_request.get_hookimpls():
            self._hook.plugit_upstream_request(page=page, upstream=upstream)

    def call_service(self, page: PageRequest, upstream: UpstreamRequest) -> ServiceReply:
        reply: ServiceReply = self._hook.plugit_call_service(page=page, upstream=upstream)
        return reply

    def template_context(self, page: PageRequest, context: dict[str, Any]) -> list[Any]:
        """Every plugin's answer, in call order (later answers overwrite earlier ones)."""
        if not self._hook.plugit_template_context.get_hookimpls():
            return []
        answers: list[Any] = self._hook.plugit_template_context(page=page, context=context)
        return answers

    def response(self, page: PageRequest, response: Response) -> Response:
        """``response`` as the plugins changed it, or the first replacement in call order."""
        if not self._hook.plugit_response.get_hookimpls():
            return response
        answers = self._hook.plugit_response(page=page, response=response)
        replacements = [r for r in answers if r is not None]
        return replacements[0] if replacements else response

    def handle_error(self, page: PageRequest, error: ServiceError) -> Response | None:
        if not self._hook.plugit_handle_error.get_hookimpls():
            return None
        fallback: Response | None = self._hook.plugit_handle_error(page=page, error=error)
        return fallback

    def fragments(self, request: ProxyRequest, where: str, fragments: list[FragmentSpec]) -> None:
        if self._hook.plugit_fragments.get_hookimpls():
            self._hook.plugit_fragments(request=request, where=where, fragments=fragments)

    def fragment_rendered(self, request: ProxyRequest, result: FragmentResult) -> None:
        if self._hook.plugit_fragment_rendered.get_hookimpls():
            self._hook.plugit_fragment_rendered(request=request, result=result)

"""A service's template rendered in the sandbox (PROTOCOL.md 5.14, 5.15): fetched and compiled
once per template tag, its context made of data only, rendered within its budget."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import jinja2
from markupsafe import Markup

from .api import ApiCall, ApiError
from .hooks import Hooks
from .sandbox import OverBudget, TemplateFunction, template_data
from .site import STATIC_PREFIX, site_url
from .templating import CSRF_FIELD, CSRF_PLACEHOLDER
from .upstream import ServiceError, SingleFlight

if TYPE_CHECKING:
    from ..config import ProxyConfig
    from .context import PluginContext
    from .page import PageRequest
    from .templating import ServiceTemplates

__all__ = ["ServiceRendering"]

log = logging.getLogger("plugit.proxy")


class ServiceRendering:
    """Templates of the proxy's services: fetching, compiling, context and render.

    ``templates`` are the mounts' sandboxes by name; ``context`` is what the callback API's
    lookups (``plugit_get_user``) use; ``placer(page)`` gives a page's ``plugit_fragment``.
    """

    def __init__(
        self,
        config: ProxyConfig,
        hooks: Hooks,
        *,
        templates: Mapping[str, ServiceTemplates],
        context: PluginContext,
        placer: Callable[[PageRequest], Callable[..., Markup]],
    ) -> None:
        self.config = config
        self.hooks = hooks
        self.templates = templates
        self.context = context
        self.placer = placer
        self._template_flight: SingleFlight[jinja2.Template | None] = SingleFlight()

    def template(self, page: PageRequest, path: str, tag: str) -> jinja2.Template | None:
        """The compiled template of the action at ``path``, fetched once per template tag.

        Fetching and compiling are one flight: a request that comes while another compiles
        waits for it instead of fetching the template again.
        """
        templates = self.templates[page.mount.name]
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
        templates = self.templates[page.mount.name]
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
                return self.templates[page.mount.name].render(template, context)
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
            "ebuio_baseUrl": site_url(page.request, mount.mount),
            "ebuio_userMode": page.dev_user_mode,
            "ebuio_realUsers": not self.config.dev_mode,
            "ebuio_orgamode": mount.orga_mode,
            "ebuio_orga": None if page.orga is None else page.orga.as_dict(),
            "ebuio_orgas": [o.as_dict() for o in page.orgas],
            "csrf_token": CSRF_PLACEHOLDER,
            "csrf_field": CSRF_FIELD,
            "MEDIA_URL": site_url(page.request, mount.media_url),
            "STATIC_URL": site_url(page.request, STATIC_PREFIX),
        }
        own = template_data(own, where="context")
        context.update(own)
        context["plugit_include"] = TemplateFunction(_Include(self, page, context))
        context["plugit_get_user"] = TemplateFunction(_GetUser(self, page))
        context["plugit_fragment"] = TemplateFunction(self.placer(page))
        for extra in self.hooks.template_context(page, context):
            for key, value in (extra or {}).items():
                if key in own:
                    continue
                try:
                    context[key] = template_data(value, where=key)
                except TypeError as exc:
                    log.warning("plugit_template_context: %s; dropped", exc)
        return context


class _Include:
    """``plugit_include(path)``: another action's template rendered with the current context.

    Handed to templates inside a :class:`TemplateFunction`, so they can call it but never
    read what it holds.
    """

    MAX_DEPTH = 4
    __slots__ = ("_context", "_depth", "_page", "_rendering")

    def __init__(
        self, rendering: ServiceRendering, page: PageRequest, context: dict[str, Any]
    ) -> None:
        self._rendering = rendering
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
        template = self._rendering.template(page, path, meta.template_tag)
        if template is None:
            return Markup("")
        self._depth += 1
        try:
            html, _menu = self._rendering.templates[page.mount.name].render(template, self._context)
        finally:
            self._depth -= 1
        return Markup(html)  # noqa: S704 (rendered by the autoescaping sandbox)


class _GetUser:
    """``plugit_get_user(pk)``: a user reduced to the shared properties (5.22), for the users
    the callback API would show this service (its members), else None."""

    __slots__ = ("_page", "_rendering")

    def __init__(self, rendering: ServiceRendering, page: PageRequest) -> None:
        self._rendering = rendering
        self._page = page

    def __call__(self, pk: Any) -> dict[str, Any] | None:
        page = self._page
        try:
            user = ApiCall(page.request, self._rendering.context, page.mount).user(pk)
        except ApiError:
            return None
        return user.for_service(page.mount.name, None).properties(self._rendering.config.user_data)

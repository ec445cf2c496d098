"""Rendering service templates in a jinja2 sandbox, and the site's own templates.

Service templates come from another process and are not trusted (weakness W12 of the original):
they are compiled by a :class:`~plugit_core.proxy.sandbox.ServiceSandbox`, where they see data
and never objects and render within the mount's budget, and whose loader only knows the
service's own templates and the theme's ``service_templates`` folder (the ``plugit/base.html``
they extend).  They cannot reach Python internals, the proxy's objects, the site's templates or
the file system.  The original's Django dialect is translated to Jinja2 when a mount asks for it.

Compiled templates are kept in a bounded LRU cache keyed by the service and the template tag
(a content hash), so identical templates reached through many URLs compile once.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import jinja2
from cachetools import LRUCache
from markupsafe import Markup

from ..backends import Theme
from .sandbox import OverBudget, RenderBudget, ServiceSandbox

__all__ = [
    "CSRF_PLACEHOLDER",
    "OverBudget",
    "RenderBudget",
    "ServiceSandbox",
    "ServiceTemplates",
    "site_environment",
]

# Rendered in place of the CSRF token, replaced per response: cached pages never carry
# another user's token (weakness W5), and proxy-mode services use the same placeholder.
CSRF_PLACEHOLDER = "{~__PLUGIT_CSRF_TOKEN__~}"
CSRF_FIELD = Markup(  # noqa: S704 (constant)
    f'<input type="hidden" name="csrfmiddlewaretoken" value="{CSRF_PLACEHOLDER}">'
)
SERVICE_PREFIX = "@service/"


def url_target_blank(value: Any) -> Markup:
    """PlugIt's filter: every link opens in a new window."""
    text = value if isinstance(value, Markup) else Markup.escape(value)
    return Markup(str(text).replace("<a ", '<a target="_blank" '))  # noqa: S704 (escaped above)


class _ServiceLoader(jinja2.BaseLoader):
    """Serves ``@service/<key>`` names from sources handed over by the pipeline."""

    def __init__(self) -> None:
        self.sources: LRUCache[str, str] = LRUCache(maxsize=512)
        self._lock = threading.Lock()

    def add(self, name: str, source: str) -> None:
        with self._lock:
            self.sources[name] = source

    def get_source(
        self, environment: jinja2.Environment, template: str
    ) -> tuple[str, str | None, Callable[[], bool]]:
        with self._lock:
            source = self.sources.get(template)
        if source is None:
            raise jinja2.TemplateNotFound(template)
        return source, None, lambda: True


class ThemeServiceLoader(jinja2.FileSystemLoader):
    """The theme's service templates; ``plugIt/x`` (the original's spelling) is ``plugit/x``.

    One folder on disk serves both names, which also keeps case-insensitive file systems right.
    """

    def get_source(
        self, environment: jinja2.Environment, template: str
    ) -> tuple[str, str, Callable[[], bool]]:
        if template.startswith("plugIt/"):
            template = "plugit/" + template[len("plugIt/") :]
        return super().get_source(environment, template)


class ServiceTemplates:
    """Compiles and renders one service's templates in a sandbox."""

    def __init__(
        self,
        service: str,
        theme: Theme,
        *,
        dialect: str = "jinja",
        menu_block: str = "menubar",
        budget: RenderBudget | None = None,
    ) -> None:
        self.service = service
        self.menu_block = menu_block
        self.budget = budget or RenderBudget()
        self._service_loader = _ServiceLoader()
        own: jinja2.BaseLoader = self._service_loader
        if dialect == "django":
            from ..templating.django_dialect import DjangoDialectLoader, install

            own = DjangoDialectLoader(own)  # the theme's base templates stay jinja
        loader = jinja2.ChoiceLoader([own, ThemeServiceLoader(str(theme.service_templates))])
        self.env = ServiceSandbox(
            loader=loader,
            autoescape=True,
            auto_reload=False,
            cache_size=64,  # the theme base templates; service ones are kept in _compiled
            undefined=jinja2.Undefined,
            budget=self.budget,
        )
        self.env.filters["url_target_blank"] = url_target_blank
        if dialect == "django":
            install(self.env)
        self._compiled: LRUCache[str, jinja2.Template] = LRUCache(maxsize=512)
        self._lock = threading.Lock()

    def get(self, key: str) -> jinja2.Template | None:
        with self._lock:
            return self._compiled.get(key)

    def compile(self, key: str, source: str) -> jinja2.Template:
        """Compile ``source`` under ``key``; raises jinja2.TemplateError when it is invalid or
        larger than the budget's ``max_size``."""
        if len(source) > self.budget.max_size:
            raise jinja2.TemplateError(
                f"the template is larger than {self.budget.max_size} characters"
            )
        name = SERVICE_PREFIX + key
        self._service_loader.add(name, source)
        try:
            template = self.env.get_template(name)
        except RecursionError:
            raise jinja2.TemplateError("the template is nested too deeply") from None
        with self._lock:
            self._compiled[key] = template
        return template

    def render(self, template: jinja2.Template, context: Mapping[str, Any]) -> tuple[str, str]:
        """Render within the budget; return (page HTML, menu HTML), the menu being the
        template's own menu block.  Raises :class:`~plugit_core.proxy.sandbox.OverBudget`.

        Renders made while another is under way (``plugit_include``) share its account.
        """
        with self.env.metered() as meter:
            try:
                html = _joined(
                    template.root_render_func(template.new_context(dict(context))), meter
                )
                menu = ""
                block = template.blocks.get(self.menu_block)
                if block is not None:
                    menu = _joined(block(template.new_context(dict(context))), meter)
            except RecursionError:
                raise OverBudget("recursion", "templates and macros nested too deeply") from None
            meter.check_cpu()
        return html, menu


def _joined(chunks: Any, meter: Any) -> str:
    """The rendered chunks joined, counted against the output budget as they come."""
    parts = []
    size = 0
    limit = meter.budget.max_output - meter.output
    for chunk in chunks:
        size += len(chunk)
        if size > limit:
            meter.wrote(size)  # raises
        parts.append(chunk)
    meter.wrote(size)
    return "".join(parts)


def site_environment(theme: Theme, extra_paths: list[Path] | None = None) -> jinja2.Environment:
    """The (trusted) environment for the site's own templates: layout, error and login pages."""
    paths = [str(p) for p in (extra_paths or [])] + [str(theme.templates)]
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(paths),
        autoescape=True,
        auto_reload=False,
        undefined=jinja2.Undefined,
    )
    return env

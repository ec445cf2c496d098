"""The ``django`` template dialect: Django template language translated to sandboxed Jinja2.

Services written for the original PlugIt proxy (a Django application) ship templates in the
Django template language. This proxy renders with Jinja2 in a sandbox, so a service whose settings
select the ``django`` dialect has every template translated to Jinja2 source when it is loaded
(:class:`DjangoDialectLoader`); the sandboxed environment then compiles and runs the result like
any other template.

The package has four parts, each a module with one job:

* :mod:`.lexer` cuts the source into text, ``{{ variable }}``, ``{% tag %}`` and
  ``{# comment #}`` tokens the way Django's lexer does (a tag never spans lines), and turns Django
  constants and numbers into Jinja expressions;
* :mod:`.translator` walks the tokens, driven by the tag table of :mod:`.tags` (Django tag name ->
  small translate function) and the filter table of :mod:`.filters` (Django filter name -> ``dj_*``
  Jinja filter and argument rule);
* :mod:`.runtime`, :mod:`.filters` and :mod:`.dates` are the ``dj_*`` globals and filters that
  :func:`install` registers, which give translated code Django's semantics: a lookup ``a.b`` tries
  ``a["b"]``, then the attribute, then a list index, and calls argument-less callables (so
  ``dict.items`` works); missing values and bad comparisons fail silently; filters behave like
  Django's;
* this module is the public API: :func:`translate`, :func:`install`, :class:`DjangoDialectLoader`.

Boundary: the package is a translator of text. It imports jinja2 and markupsafe only, no other
plugit module (an import-linter contract checks it), so it can be read, tested and reused alone.

Each tag translates to Jinja source on the same line, so line numbers of compile and render errors
point at the original line.

Security: translated code is ordinary Jinja code run by the sandbox, and the helpers do not widen
what a template can reach: they read attributes only after the sandbox's ``is_safe_attribute``
agrees and call only through ``Environment.call``. As in Django, a name or attribute starting with
an underscore is rejected at translation time.

Example::

    env = ImmutableSandboxedEnvironment(
        autoescape=True, loader=DjangoDialectLoader(FileSystemLoader("templates"))
    )
    install(env)
    env.get_template("home.html").render(polls=[...], csrf_field=Markup(...))
"""

from __future__ import annotations

from collections.abc import Callable

from jinja2 import BaseLoader, Environment, TemplateSyntaxError

from .filters import FILTERS, INTERNAL_FILTERS
from .runtime import GLOBALS
from .tags import TAGS
from .translator import Translator

__all__ = ["DjangoDialectLoader", "install", "translate"]

# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------


def translate(source: str, name: str | None = None) -> str:
    """Translate Django template source to Jinja2 source.

    The result needs the helpers registered by :func:`install`, plus the proxy's ``csrf_field``,
    ``plugit_include`` and ``plugit_get_user`` in the render context. Each tag is translated on
    its own line, so the line numbers of the result match the original.

    :param source: the Django template text.
    :param name: the template name, reported in errors.
    :raises jinja2.TemplateSyntaxError: for an unknown or malformed tag or filter (the message
        names it; ``lineno`` is the original line, ``name`` is ``name``), and for Django features
        PlugIt services cannot use, such as ``{% url %}``.
    """
    return Translator(source, name, TAGS).translate()


def install(env: Environment) -> None:
    """Register on ``env`` the ``dj_*`` filters and globals that translated templates use.

    Safe for sandboxed environments: the helpers read attributes only when the sandbox allows
    it and call functions through ``env.call``. Jinja's own filters are left untouched, so the
    same environment can also render native Jinja templates.
    """
    env.filters.update(
        {spec.jinja_name: spec.function for spec in FILTERS.values() if spec.function}
    )
    env.filters.update(INTERNAL_FILTERS)
    env.globals.update(GLOBALS)


class DjangoDialectLoader(BaseLoader):
    """A loader that translates the templates of another loader from Django to Jinja2.

    ``get_source`` returns the translated source with the wrapped loader's filename and
    up-to-date check, so Jinja's template cache and auto-reload work as usual. Syntax errors
    carry the template's name, file and original line.

    Every template reached through this loader is read as Django; give Jinja templates of the
    proxy (layouts) their own loader, e.g. with a :class:`jinja2.ChoiceLoader`.
    """

    def __init__(self, loader: BaseLoader) -> None:
        self.loader = loader
        self.has_source_access = loader.has_source_access

    def get_source(
        self, environment: Environment, template: str
    ) -> tuple[str, str | None, Callable[[], bool] | None]:
        source, filename, uptodate = self.loader.get_source(environment, template)
        try:
            return translate(source, name=template), filename, uptodate
        except TemplateSyntaxError as error:
            error.filename = filename
            raise

    def list_templates(self) -> list[str]:
        return self.loader.list_templates()

"""The default PlugIt theme: Bootstrap 5, every asset served by the proxy itself.

The package holds files only; the proxy decides how to use them:

* ``TEMPLATES_DIR``: the site's own templates (``plugit/layout.html``, ``plugit/layout-menu.html``,
  ``plugit/error.html``, ``plugit/home.html``). They are trusted and rendered in an ordinary
  jinja2 environment with ``autoescape=True``.
* ``SERVICE_TEMPLATES_DIR``: the templates a *service* template may extend (``plugit/base.html``,
  ``plugit/base-withBlocks.html``; the proxy also serves them as ``plugIt/...``, the original
  spelling). They are rendered
  in the sandbox together with the service's template and use no variable of their own.
* ``STATIC_DIR``: files the layouts reference through ``static_url(path)``, where ``path`` is
  relative to this folder (``bootstrap/bootstrap.min.css``, ``bootstrap/bootstrap.bundle.min.js``,
  ``plugit.css``, ``favicon.svg``). Bootstrap is vendored unchanged from its npm package, with its
  MIT licence.

The layouts load no resource from another host and contain no inline script, inline style or event
handler, so they work under ``Content-Security-Policy: default-src 'self'; img-src 'self' data:``
(Bootstrap's stylesheet draws a few icons, such as the navigation toggler, as ``data:`` images).
"""

from __future__ import annotations

from pathlib import Path

__all__ = [
    "BOOTSTRAP_VERSION",
    "MENU_BLOCK",
    "SERVICE_TEMPLATES_DIR",
    "STATIC_DIR",
    "TEMPLATES_DIR",
    "THEME_DIR",
]

THEME_DIR: Path = Path(__file__).resolve().parent
TEMPLATES_DIR: Path = THEME_DIR / "templates"
SERVICE_TEMPLATES_DIR: Path = THEME_DIR / "service_templates"
STATIC_DIR: Path = THEME_DIR / "static"

#: Version of the vendored files in ``static/bootstrap/``.
BOOTSTRAP_VERSION = "5.3.9"

#: Name of the block that the base service templates declare but never output: the proxy renders
#: it on its own and hands the result to the layouts as ``plugit_menu``.
MENU_BLOCK = "menubar"

"""The legacy PlugIt theme: the page original (2018) PlugIt services were written for.

Bootstrap 3 and jQuery, as the original's layouts loaded them, so that a service's templates
using ``$(...)``, glyphicons and Bootstrap 3 classes work unchanged.  Every asset is served by the
proxy itself (below ``/_plugit/static/``), never from a CDN, and the third-party ones are not
copied into this repository: they come from the installed XStatic packages
(``pip install 'plugit-wsgi[legacy]'``), served from each package's ``BASE_DIR``.

* ``TEMPLATES_DIR``: the site's own templates (``plugit/layout.html``, ``plugit/layout-menu.html``,
  ``plugit/error.html``, ``plugit/home.html``, ``plugit/login.html``), same context as the
  default theme's (see ``plugit_backends.theme_bootstrap``).  ``layout-menu.html`` is the
  original's ``plugItBase-menu.html``: the menu in a left column.
* ``SERVICE_TEMPLATES_DIR``: ``plugit/base.html`` (blocks ``pretitle``, ``content`` and the menu
  block ``menubar``) and ``plugit/base-withBlocks.html`` (adds ``css`` and ``javascript``), the
  original's blocks; the proxy also serves them as ``plugIt/...``.
* ``STATIC_DIR``: the theme's own files, all below ``legacy/`` (``legacy/plugit-legacy.css``,
  ``legacy/favicon.svg``), so they never collide with another theme's.
* :func:`static_roots`: the XStatic folders, by URL prefix: ``bootstrap3/`` (``css/``, ``js/``,
  ``fonts/``: the stylesheet finds its glyphicons at ``../fonts/``), ``jquery/`` and
  ``jquery-migrate/``.

jQuery is 3.x (the original shipped 2.1.4, whose known cross-site scripting flaws were fixed in
3.5), with jQuery Migrate, which restores what jQuery 3 removed from the 1.x/2.x API that original
service code uses (``.size()``, ``.bind()``, ``jqXHR.success()``, ...).  The scripts are loaded in
``<head>``, as in the original, so a service's inline ``$(...)`` finds jQuery; each carries the
response's CSP nonce.
"""

from __future__ import annotations

import importlib
from pathlib import Path

__all__ = [
    "ASSETS",
    "INSTALL_HINT",
    "MENU_BLOCK",
    "SERVICE_TEMPLATES_DIR",
    "STATIC_DIR",
    "TEMPLATES_DIR",
    "THEME_DIR",
    "XSTATIC_PACKAGES",
    "MissingAssetsError",
    "static_roots",
]

THEME_DIR: Path = Path(__file__).resolve().parent
TEMPLATES_DIR: Path = THEME_DIR / "templates"
SERVICE_TEMPLATES_DIR: Path = THEME_DIR / "service_templates"
STATIC_DIR: Path = THEME_DIR / "static"

#: Name of the block that the base service templates declare but never output (see the default
#: theme): the proxy renders it on its own and hands it to the layouts as ``plugit_menu``.
MENU_BLOCK = "menubar"

#: URL prefix below the static URL -> (XStatic module, the upstream version expected).
XSTATIC_PACKAGES: dict[str, tuple[str, str]] = {
    "bootstrap3": ("xstatic.pkg.bootstrap", "3."),
    "jquery": ("xstatic.pkg.jquery", "3."),
    "jquery-migrate": ("xstatic.pkg.jquery_migrate", "3."),
}

#: What the layouts load, relative to the static URL, in order.
ASSETS: dict[str, list[str]] = {
    "stylesheets": ["bootstrap3/css/bootstrap.min.css", "legacy/plugit-legacy.css"],
    "scripts": [
        "jquery/jquery.min.js",
        "jquery-migrate/jquery-migrate.min.js",
        "bootstrap3/js/bootstrap.min.js",
    ],
}


#: How to install them (XStatic-Bootstrap 3 builds only with setuptools < 81: docs/themes.md).
INSTALL_HINT = (
    "pip install --build-constraint build-constraints.txt 'plugit-wsgi[legacy]' "
    "(see docs/themes.md)"
)


class MissingAssetsError(RuntimeError):
    """An XStatic package the theme needs is not installed (or not the expected version)."""


def static_roots() -> dict[str, Path]:
    """The installed XStatic folders by URL prefix (:class:`MissingAssetsError` if one is not)."""
    roots: dict[str, Path] = {}
    for prefix, (module_name, major) in XSTATIC_PACKAGES.items():
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            raise MissingAssetsError(
                f"the legacy theme needs the package {_dist_name(module_name)}: {INSTALL_HINT}"
            ) from None
        version = str(getattr(module, "VERSION", ""))
        if not version.startswith(major):
            raise MissingAssetsError(
                f"the legacy theme needs {_dist_name(module_name)} {major}x, "
                f"{version or 'an unknown version'} is installed: {INSTALL_HINT}"
            )
        base = Path(module.BASE_DIR)
        if not base.is_dir():
            raise MissingAssetsError(f"{_dist_name(module_name)} has no files in {base}")
        roots[prefix] = base
    return roots


def _dist_name(module_name: str) -> str:
    return "XStatic-" + module_name.rsplit(".", 1)[-1].replace("_", "-")

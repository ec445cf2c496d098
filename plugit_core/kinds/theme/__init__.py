"""The ``theme`` backend kind: :class:`Theme`, the site's look (its layouts, the templates
service templates may extend, its assets), and :data:`ThemeFactory`.

A theme is data, not behaviour, so it has no conformance suite.  Implementations:
``plugit_backends.theme_bootstrap`` (the default) and ``plugit_backends.theme_legacy``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ...config import ProxyConfig

__all__ = ["Theme", "ThemeFactory"]


@dataclass(frozen=True)
class Theme:
    """A theme: the site's own templates, the templates service templates may extend, assets."""

    name: str
    templates: Path
    service_templates: Path
    static: Path
    #: More folders served below the static URL, by the first segment of the path: with
    #: ``{"jquery": Path(...)}``, ``jquery/jquery.min.js`` is that folder's ``jquery.min.js``.
    #: Any other path is looked up in ``static``.  (Assets installed by other packages, such as
    #: the XStatic ones, are served from where they are installed.)
    static_roots: Mapping[str, Path] = field(default_factory=dict, hash=False)


#: ``factory(proxy_config, section)``: the theme, from its own table (``[theme_<name>]``).
ThemeFactory = Callable[["ProxyConfig", Mapping[str, Any]], Theme]

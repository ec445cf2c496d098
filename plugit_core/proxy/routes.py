"""Extra URLs that plugins add to the proxy (``plugit_extra_routes``)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from werkzeug.wrappers import Response

__all__ = ["Route"]


@dataclass(frozen=True)
class Route:
    """A werkzeug rule (``/_plugit/login``, ``/api/<int:pk>``) and its view.

    The view is called as ``view(request, **values)`` with the
    :class:`~plugit_core.proxy.app.ProxyRequest` (its ``session``, ``user`` and ``proxy`` ready)
    and returns a werkzeug :class:`Response`.  ``csrf`` (default True) refuses unsafe methods
    without the form's CSRF token; set it False for API endpoints authenticated otherwise.
    """

    rule: str
    view: Callable[..., Response]
    methods: tuple[str, ...] = ("GET",)
    csrf: bool = True

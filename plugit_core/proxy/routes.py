"""Extra URLs that plugins add to the proxy (``plugit_extra_routes``), and the site's log-in and
log-out links (``plugit_site_links``)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from werkzeug.wrappers import Response

__all__ = ["LogoutFields", "Route", "SiteLinks"]

LogoutFields = Callable[[dict[str, Any]], "Mapping[str, str] | None"]


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


@dataclass
class SiteLinks:
    """Where the layout's "Log in" and "Log out" controls lead: paths of this app (the request's
    ``SCRIPT_NAME`` is put in front) or absolute URLs.

    The logout control is a POST form carrying the proxy's CSRF token (the proxy's own logout),
    or, when ``logout_fields`` is set, the hidden fields it gives for the request (a host app's
    own CSRF token); ``logout_method = "get"`` makes it a plain link.  A plugin offering a login
    returns one from ``plugit_site_links``; :class:`~plugit_core.proxy.app.PlugItMiddleware`
    sets the host app's.
    """

    login_url: str | None = None
    logout_url: str | None = None
    logout_method: str = "post"
    logout_fields: LogoutFields | None = None

"""Every extension point of the PlugIt proxy, as pluggy hook specifications.

A plugin is a module or object with functions marked ``@hookimpl`` whose names are the hooks below.
Built-in backends (``plugit_backends``) are ordinary plugins; third-party ones are found through
the entry-point group ``plugit``.

Order of one page request through the hooks (the pipeline in ``plugit_core.proxy.pipeline``)::

    plugit_identify_user          who is the user (first answer wins)
    plugit_access_decision        may they see this action (any refusal wins)
    plugit_upstream_request       add to the request sent to the service (every plugin)
    plugit_call_service           wrappers around the HTTP call to the service
    plugit_template_context       add template variables (every plugin, merged in order)
    plugit_response               change the final response (every plugin, in order)
    plugit_handle_error           a fallback when the service failed (first answer wins)

At start-up, in this order (:mod:`plugit_core.proxy.hooks`)::

    plugit_register_backends       every plugin offers its backends (historic)
    plugit_session_backend         wrap the session backend (each plugin in turn)
    plugit_site_links              where "Log in" and "Log out" lead (first answer wins)
    plugit_register_api_endpoints  endpoints of the callback API
    plugit_extra_routes            URLs of the site
    plugit_startup                 the proxy is about to serve

and ``plugit_shutdown`` when it closes.  Hooks about the whole site receive the proxy as a
:class:`~plugit_core.proxy.context.PluginContext` (``proxy``): what plugins may use of it.

Plugins registered later are called first (pluggy's LIFO order); built-in defaults are marked
``trylast`` so any installed plugin runs before them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from werkzeug.wrappers import Response

    from .backends import RegisterBackend, SessionBackend
    from .config import FragmentSpec
    from .proxy.app import ProxyRequest
    from .proxy.context import PluginContext
    from .proxy.fragments import FragmentResult
    from .proxy.pipeline import PageRequest, ServiceError, ServiceReply, UpstreamRequest
    from .proxy.routes import Route, SiteLinks
    from .users import PlugItUser

__all__ = ["hookimpl", "hookspec"]

PROJECT = "plugit"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


# -- start-up --------------------------------------------------------------------------------------


@hookspec(historic=True)
def plugit_register_backends(register: RegisterBackend) -> None:
    """Offer backends, by calling ``register(kind, name, factory)`` once per backend.

    Called once when the plugin manager is built, and for any plugin registered later (historic).
    ``kind`` is one of :data:`plugit_core.backends.KINDS` (``cache``, ``session``, ``theme``,
    ``auth``, ...); ``name`` is what the configuration uses to choose it (``cache = "memory"``);
    ``factory(proxy_config, section)`` builds it, where ``section`` is the backend's own table of
    the configuration file (``[cache_memory]``).  ``register`` raises ``ValueError`` at once for
    an unknown kind or a name already taken, naming the plugin's backend.

    Returns nothing.
    """


@hookspec
def plugit_session_backend(sessions: SessionBackend, proxy: PluginContext) -> SessionBackend | None:
    """Wrap the session backend the configuration chose.

    Called once at start-up, after the backends were built, for every plugin in turn (the most
    recently registered first): each gets ``sessions`` as the plugins before it left it, and
    returns a backend wrapping it, or None to leave it as it is.  So every wrapper applies (a
    login ending copied sessions at logout, and yours); the plugin called last is outermost.
    A wrapper must keep the wrapped backend's other attributes reachable (``secure``,
    ``close``, its store guard): delegate them, e.g. with ``__getattr__``.
    """


@hookspec(firstresult=True)
def plugit_site_links(proxy: PluginContext) -> SiteLinks | None:
    """Where the layout's "Log in" and "Log out" controls lead.

    Called once at start-up, after ``plugit_session_backend``.  A plugin that serves a login
    returns a :class:`~plugit_core.proxy.routes.SiteLinks` (paths of the proxy, or absolute URLs);
    None otherwise.  The first non-None answer wins; without one the layout shows neither
    control.  :class:`~plugit_core.proxy.app.PlugItMiddleware`'s ``login_url`` and
    ``logout_url`` take precedence over it.
    """


@hookspec
def plugit_extra_routes(proxy: PluginContext) -> list[Route] | None:
    """Add URLs to the proxy (login pages, an API, health checks).

    Called once at start-up, after the backends were built.  Return a list of
    :class:`plugit_core.proxy.routes.Route` (a werkzeug rule string and a view
    ``view(request, **values) -> Response``), or None.  Every plugin's routes are added; a rule
    that clashes with another is a start-up error.
    """


@hookspec
def plugit_register_api_endpoints(register: Callable[..., None], proxy: PluginContext) -> None:
    """Add endpoints to the callback API that services call (``<mount>ebuio_api/...``).

    Called once at start-up, after the built-in endpoints were registered.  Call
    ``register(rule, view, methods=("GET",))`` for each: ``rule`` is a werkzeug rule relative to
    the API base (``"polls/<int:pk>"``); ``view(call, **values)`` receives a
    :class:`plugit_core.proxy.api.ApiCall` (the request, the proxy and the calling service's
    mount, already authenticated by its key) and returns JSON-able data or a Response, or raises
    :class:`plugit_core.proxy.api.ApiError`.  ``register`` raises ValueError for a rule and
    method already taken.  Returns nothing.
    """


@hookspec
def plugit_add_commands(commands: Any) -> None:
    """Add sub-commands to the ``plugit`` command line.

    Called once when the ``plugit`` command builds its parser, before any configuration is read.
    ``commands`` is the ``argparse`` sub-parsers object: call ``commands.add_parser(name, ...)``
    and set ``handler=function(args) -> int`` with ``set_defaults``.  A handler raises
    ``plugit_core.cli.CommandError`` for a one-line error (exit status 2).  Returns nothing.
    """


@hookspec
def plugit_startup(proxy: PluginContext) -> None:
    """The proxy is built and about to serve.

    Called once, after backends and routes.  Use it to check connections or start background
    work.  Returns nothing; an exception here stops the start-up with the plugin's error.
    """


@hookspec
def plugit_shutdown(proxy: PluginContext) -> None:
    """The proxy is closing (:meth:`ProxyApp.close <plugit_core.proxy.app.ProxyApp.close>`).

    Called once, in reverse registration order (the plugins passed in code first, the built-in
    backends last), while the proxy's service clients still work.  Stop what
    ``plugit_startup`` started and release what the plugin holds.  The proxy's own
    implementation wraps the others: once they returned, it closes the backends the proxy
    built (mail queue, directory, billing, cache, sessions, auth).  Returns nothing; an
    exception is logged and the proxy still closes its backends and connections.
    """


# -- one request -----------------------------------------------------------------------------------


@hookspec(firstresult=True)
def plugit_identify_user(request: Any, proxy: PluginContext) -> PlugItUser | None:
    """Who is making this request.

    Called once per request that needs a user, before the access decision.  ``request`` is the
    :class:`plugit_core.proxy.app.ProxyRequest` (its ``session`` is loaded).  Return a
    :class:`plugit_core.users.PlugItUser`, or None to let the next plugin try.  The first
    non-None answer wins; when every plugin answers None the user is anonymous.
    """


@hookspec
def plugit_user_loaded(user: PlugItUser, proxy: PluginContext) -> Mapping[str, Any] | None:
    """Complete a user the proxy has just loaded (subscriptions, groups from elsewhere).

    Called for every authenticated user the proxy identifies for a request, and for users looked
    up by pk (``plugit_get_user`` in templates, the callback API).  Return a mapping of
    :class:`~plugit_core.users.PlugItUser` fields to change (``{"subscriptions": {...}}``), or
    None.  Every plugin is called with the same user; the changes are applied together, and
    when two plugins change the same field the one registered last wins (it is called first).
    """


@hookspec
def plugit_access_decision(page: PageRequest) -> str | None:
    """Refuse access to an action, after the built-in rules of the meta allowed it.

    Called for every page request in normal mode once the meta is known and the built-in rules
    (``only_*``, ``address_in_networks``) passed.  ``page`` carries the request, the mount, the
    meta and the user.  Return a short reason code (shown to the user as 403) to refuse, or None
    to allow.  Every plugin is asked; any refusal wins.
    """


@hookspec
def plugit_upstream_request(page: PageRequest, upstream: UpstreamRequest) -> None:
    """Change the request about to be sent to the service's action.

    Called for every action call, after the proxy added user info, organisation and
    ``X-Plugit-*`` headers, and before the request is signed: whatever a plugin adds to
    ``upstream.headers`` or ``upstream.params`` is covered by the signature.  Mutate
    ``upstream`` in place; the return value is ignored.  Every plugin is called.
    """


@hookspec(firstresult=True)
def plugit_call_service(page: PageRequest, upstream: UpstreamRequest) -> ServiceReply | None:
    """Make, or wrap, the HTTP call to a service's action.

    Called once per action call (not for meta, template or media fetches).  The proxy's own
    implementation (``trylast``) sends ``upstream`` and returns the :class:`ServiceReply`, or
    raises :class:`ServiceError`.  Plugins implement this hook as
    new-style wrappers, ``@hookimpl(wrapper=True)``: ``reply = yield`` runs the inner wrappers
    and the call and gives the reply (or raises the call's ServiceError); return a reply or
    raise.  Use it for timing, circuit breaking, retries or metrics.  Wrappers nest in plugin
    order: the last registered is the outermost.  A plain implementation that returns a reply
    replaces the call (the first non-None answer wins).  A reply of any status, 5xx included, is a
    reply (the pipeline maps it afterwards): ``ServiceError`` means no usable reply at all.
    """


@hookspec
def plugit_template_context(page: PageRequest, context: dict[str, Any]) -> dict[str, Any] | None:
    """Add variables to a service template's context.

    Called once per rendered page (not on page-cache hits), after the proxy's own variables
    were set.  Return a dict of variables to merge, or None.  Plugins run in order and later
    answers overwrite earlier ones; the proxy's ``ebuio_*`` variables cannot be overwritten.
    Values must be template data (dicts with string keys, lists, tuples, strings, numbers,
    booleans, None, Markup) or functions, which templates may call but not inspect and whose
    results are checked the same way (see ``plugit_core.proxy.sandbox.template_data``); any
    other value is dropped with a warning, since an object would let the service's template
    walk its attributes.
    """


@hookspec
def plugit_response(page: PageRequest, response: Response) -> Response | None:
    """Change or replace the final response of a page, cached or not.

    Called last for every page of a service (rendered, from cache, JSON, redirect, file, error).
    Every plugin receives the same response: change it in place (headers, cookies) and return
    None, or return a replacement.  When several plugins return one, the first in call order
    wins (the last registered plugin is called first).
    """


@hookspec(firstresult=True)
def plugit_handle_error(page: PageRequest, error: ServiceError) -> Response | None:
    """Answer in place of the error page when a service failed.

    Called when the service is unreachable, too slow, refused by its circuit breaker, or
    answered garbage.  Return a response (a stale page, a fallback) or None for the themed error
    page.  The first non-None answer wins.
    """


@hookspec
def plugit_fragments(request: ProxyRequest, where: str, fragments: list[FragmentSpec]) -> None:
    """Add, drop or reorder the fragments of a site page (``[[pages]]``) before they are fetched.

    ``where`` is the page's path; ``fragments`` is the declared list of
    :class:`~plugit_core.config.FragmentSpec`, for this request only: change it in place (to
    personalise a dashboard per user, ``request.user``).  Every plugin is called, the most
    recently registered first; the return value is ignored.
    """


@hookspec
def plugit_fragment_rendered(request: ProxyRequest, result: FragmentResult) -> None:
    """Wrap or replace one fragment before it goes into the page, whatever its placement.

    Called once per fragment of a response, after it was rendered or fell back:
    ``result.fragment`` is the :class:`~plugit_core.config.FragmentSpec`, ``result.outcome``
    says where ``result.html`` came from (``ok``, ``stale``, ``refused``, ``fallback``,
    ``last_good``, ``empty``).  Change ``result.html`` in place (``""`` drops the fragment).
    What a plugin writes there goes into the page as it is: escape what is not markup.  Every
    plugin is called; the return value is ignored.
    """


HOOK_NAMES: tuple[str, ...] = tuple(
    name
    for name, value in list(globals().items())
    if name.startswith("plugit_") and callable(value)
)

Register = Callable[..., None]

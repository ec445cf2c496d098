"""Decorators that declare a service's actions (PROTOCOL.md 4.4).

Every decorator only records facts on the function (in an :class:`ActionSpec` kept under the
attribute ``__plugit__``); none wraps the call.  They may be stacked in any order: unlike the
original, ``@crossdomain`` works above or below ``@action``, and no decorator shares a mutable
default with another action.

Like the original, each is a factory and is written with parentheses (``@json_only()``).
"""

from __future__ import annotations

import datetime
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from ..networks import parse_networks

__all__ = [
    "ActionSpec",
    "CorsSpec",
    "action",
    "address_in_networks",
    "cache",
    "crossdomain",
    "fragment_assets",
    "get_spec",
    "json_only",
    "no_template",
    "only_admin_user",
    "only_logged_user",
    "only_member_user",
    "only_orga_admin_user",
    "only_orga_member_user",
    "public",
    "send_etag",
    "user_info",
    "xml_only",
]

F = TypeVar("F", bound=Callable[..., Any])


@dataclass
class CorsSpec:
    """What ``@crossdomain`` declared, already rendered as header values."""

    origin: str
    methods: str | None
    headers: str | None
    max_age: int


@dataclass
class ActionSpec:
    """Everything the decorators recorded about one function."""

    route: str | None = None
    template: str = ""
    methods: tuple[str, ...] = ("GET",)
    meta: dict[str, Any] = field(default_factory=dict)
    send_etag: bool = False
    cors: CorsSpec | None = None

    @property
    def is_action(self) -> bool:
        return self.route is not None

    @property
    def allowed_methods(self) -> tuple[str, ...]:
        methods = list(self.methods)
        if self.cors is not None and "OPTIONS" not in methods:
            methods.append("OPTIONS")
        if "GET" in methods and "HEAD" not in methods:
            methods.append("HEAD")
        return tuple(methods)

    def build_meta(self, template_tag: str) -> dict[str, Any]:
        """The JSON object served by the ``meta`` endpoint."""
        meta: dict[str, Any] = {"template_tag": template_tag, **self.meta}
        if "cache_time" in meta and meta.get("cache_by_user") is None:
            # Weakness W5: the original emitted null, which its proxy read as "shared" even for
            # restricted actions.  State the safe default explicitly, so any proxy gets it right:
            # per user when the action is restricted or receives user data.
            meta["cache_by_user"] = bool(meta.get("user_info")) or any(
                meta.get(key)
                for key in (
                    "only_logged_user",
                    "only_member_user",
                    "only_admin_user",
                    "only_orga_member_user",
                    "only_orga_admin_user",
                )
            )
        return meta


def get_spec(fn: Callable[..., Any], *, create: bool = False) -> ActionSpec | None:
    """Return the spec recorded on ``fn`` (None when undecorated, unless ``create``)."""
    spec = getattr(fn, "__plugit__", None)
    if spec is None and create:
        spec = ActionSpec()
        fn.__plugit__ = spec  # type: ignore[attr-defined]
    return spec


def _record(update: Callable[[ActionSpec], None]) -> Callable[[F], F]:
    def decorator(fn: F) -> F:
        spec = get_spec(fn, create=True)
        assert spec is not None
        update(spec)
        return fn

    return decorator


def _meta_flag(key: str, value: Any = True) -> Callable[[F], F]:
    return _record(lambda spec: spec.meta.__setitem__(key, value))


def _method_names(methods: str | Iterable[str]) -> tuple[str, ...]:
    # A lone string is one method ("POST"), not a sequence of one-letter ones.
    if isinstance(methods, str):
        methods = [methods]
    return tuple(dict.fromkeys(str(m).strip().upper() for m in methods))


def action(
    route: str, template: str = "", methods: str | Iterable[str] = ("GET",)
) -> Callable[[F], F]:
    """Declare an action served at ``route`` (werkzeug rule syntax, starting with ``/``).

    ``template`` is a file name inside the service's templates folder ("" for none); ``methods``
    the HTTP methods the action accepts (a list, or one name).
    """
    if not isinstance(route, str) or not route.startswith("/"):
        raise ValueError(f"action route must start with '/': {route!r}")
    method_tuple = _method_names(methods)
    if not method_tuple:
        raise ValueError(f"action {route!r} declares no HTTP method")

    def update(spec: ActionSpec) -> None:
        spec.route = route
        spec.template = template or ""
        spec.methods = method_tuple

    return _record(update)


def only_logged_user() -> Callable[[F], F]:
    """Only authenticated users may call the action (meta ``only_logged_user``)."""
    return _meta_flag("only_logged_user")


def only_member_user() -> Callable[[F], F]:
    """Only members of the service may call the action."""
    return _meta_flag("only_member_user")


def only_admin_user() -> Callable[[F], F]:
    """Only administrators of the service may call the action."""
    return _meta_flag("only_admin_user")


def only_orga_member_user() -> Callable[[F], F]:
    """Only members of the current organisation may call the action."""
    return _meta_flag("only_orga_member_user")


def only_orga_admin_user() -> Callable[[F], F]:
    """Only administrators of the current organisation may call the action."""
    return _meta_flag("only_orga_admin_user")


def cache(time: int = 0, byUser: bool | None = None) -> Callable[[F], F]:  # noqa: N803 (protocol name)
    """Let the proxy cache the rendered page ``time`` seconds.

    ``byUser`` True keeps one copy per user, False shares it; None (default) means per user when
    the action is restricted by an ``only_*`` decorator, shared otherwise.
    """
    if isinstance(time, bool) or not isinstance(time, int) or time < 0:
        raise ValueError(f"cache time must be a whole number of seconds >= 0, not {time!r}")

    def update(spec: ActionSpec) -> None:
        spec.meta["cache_time"] = time
        spec.meta["cache_by_user"] = byUser

    return _record(update)


def address_in_networks(networks: Iterable[str]) -> Callable[[F], F]:
    """Only clients whose address lies in one of ``networks`` (CIDR, IPv4 or IPv6) may call."""
    networks = list(networks) if not isinstance(networks, str) else [networks]
    parse_networks(networks, setting="address_in_networks")  # fail at import, not per request
    return _meta_flag("address_in_networks", networks)


def user_info(props: Iterable[str]) -> Callable[[F], F]:
    """Ask the proxy to send these user properties, as ``ebuio_u_<prop>`` parameters."""
    props = [props] if isinstance(props, str) else list(props)
    return _meta_flag("user_info", props)


def public() -> Callable[[F], F]:
    """In orga mode, the page may be shown to a user without any organisation."""
    return _meta_flag("public")


def json_only() -> Callable[[F], F]:
    """The action's JSON goes to the browser as it is; no template."""
    return _meta_flag("json_only")


def xml_only() -> Callable[[F], F]:
    """The action returns ``{"xml": "<document>"}``; the proxy sends the document as XML."""
    return _meta_flag("xml_only")


def fragment_assets(css: Iterable[str] = (), js: Iterable[str] = ()) -> Callable[[F], F]:
    """The stylesheets and scripts (paths below the service's ``media/``) the action needs when
    a page places it as a fragment (meta ``fragment_assets``, an extension of protocol 1): the
    proxy puts each once in the page's head and foot (scripts for full-trust services only)."""
    styles, scripts = list(css), list(js)
    for path in (*styles, *scripts):
        if not isinstance(path, str) or not path or path.startswith("/") or ":" in path:
            raise ValueError(f"fragment assets are paths below media/, got {path!r}")
    return _meta_flag("fragment_assets", {"css": styles, "js": scripts})


def no_template() -> Callable[[F], F]:
    """The action's template is rendered without the site's layout around it."""
    return _meta_flag("no_template")


def send_etag() -> Callable[[F], F]:
    """Move ``_plugit_etag`` from the action's result to the ``ETag`` reply header."""

    def update(spec: ActionSpec) -> None:
        spec.send_etag = True

    return _record(update)


def _seconds(max_age: int | float | datetime.timedelta) -> int:
    if isinstance(max_age, datetime.timedelta):
        return int(max_age.total_seconds())
    return int(max_age)


def crossdomain(
    origin: str | Iterable[str] = "*",
    methods: str | Iterable[str] | None = None,
    headers: str | Iterable[str] | None = None,
    max_age: int | float | datetime.timedelta = 21600,
) -> Callable[[F], F]:
    """Answer cross-origin requests: CORS headers on replies and OPTIONS answered with ``{}``.

    ``methods`` defaults to the action's own methods.
    """
    origin_value = origin if isinstance(origin, str) else ", ".join(origin)
    methods_value = ", ".join(sorted(_method_names(methods))) if methods else None
    if headers is None or isinstance(headers, str):
        headers_value = headers
    else:
        headers_value = ", ".join(h.upper() for h in headers)
    cors = CorsSpec(origin_value, methods_value, headers_value, _seconds(max_age))

    def update(spec: ActionSpec) -> None:
        spec.cors = cors

    return _record(update)

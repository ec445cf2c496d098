"""The callback API: what services ask the proxy (PROTOCOL.md section 6).

Each mounted service reaches it at ``<mount>ebuio_api/`` (the original's standalone layout), and
authenticates with its own key in a header::

    Authorization: Bearer <the mount's api_key>

never in the URL.  The key is compared in constant time; a missing or wrong key gets 403 JSON.
A service only sees what belongs to it: the users of its own mount, the organisations of those
users, its own subscriptions.  Unknown users, and users who are not members of the calling
service, are 404 alike (organisations likewise), so a service cannot probe who exists elsewhere.
An id that no store could hold (not an integer of at most 64 bits, not a UUID-like text) is 404
too, before any store sees it.

Every answer is JSON, errors included, and no input makes it a 5xx: the body is read first and
checked against :data:`MAX_API_BODY` whatever its framing (:func:`.bodies.read_body`), and
endpoints refuse what they cannot use with :class:`ApiError` (4xx).

Endpoints are registered through a callback, so plugins add their own with the hook
``plugit_register_api_endpoints``; views return JSON-able data or raise :class:`ApiError`.
"""

from __future__ import annotations

import hmac
import json
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from werkzeug.exceptions import (
    HTTPException,
    LengthRequired,
    MethodNotAllowed,
    NotFound,
    RequestEntityTooLarge,
)
from werkzeug.routing import Map, Rule
from werkzeug.wrappers import Response

from .. import protocol
from ..config import ServiceMount
from ..stores import StoreUnavailable
from ..users import SIMULATED_MODES, Orga, PlugItUser, simulated_user
from .bodies import form_problem, read_body

if TYPE_CHECKING:
    from .app import ProxyApp, ProxyRequest
    from .context import PluginContext

__all__ = ["API_PREFIX", "ApiCall", "ApiError", "CallbackAPI", "json_response", "parse_id"]

log = logging.getLogger("plugit.api")

API_PREFIX = "ebuio_api/"
MAX_API_BODY = 1024 * 1024
ApiView = Callable[..., Any]

_INT_ID = re.compile(r"-?[0-9]+", re.ASCII)
_TEXT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@+-]{0,127}", re.ASCII)
_INT64 = 2**63


def parse_id(value: Any) -> int | str | None:
    """``value`` as an id a store can hold, or None.

    An integer (or its decimal text, ASCII digits only) within 64 bits; or a UUID-like text
    (ASCII letters, digits and ``._:@+-``, at most 128 characters).  Anything else (a 30-digit
    number, a bool, other digits than ASCII, control characters, a float, a list) is None: no
    user or organisation has that id.
    """
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if -_INT64 <= value < _INT64 else None
    if not isinstance(value, str):
        return None
    text = value.strip(" ")
    if _INT_ID.fullmatch(text):  # a number, then: within 64 bits or nobody's
        number = int(text) if len(text) <= 20 else _INT64
        return number if -_INT64 <= number < _INT64 else None
    return text if _TEXT_ID.fullmatch(text) else None


class ApiError(Exception):
    """An API refusal: ``status`` (4xx/5xx), a machine ``code`` and a human ``message``."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


@dataclass
class ApiCall:
    """One API request, from one service."""

    request: ProxyRequest
    #: What endpoints may use of the proxy (the directory, the backends, the configuration).
    proxy: PluginContext
    mount: ServiceMount

    @property
    def service(self) -> str:
        return self.mount.name

    def user(self, pk: Any) -> PlugItUser:
        """The user ``pk`` if it belongs to the calling service, else ApiError 404 (an id no
        store could hold included)."""
        user = None if parse_id(pk) is None else self.proxy.lookup_user(pk)
        if user is None or not self._visible(user):
            raise ApiError(404, "not_found", "no such user")
        return user

    def orgas(self) -> list[Orga]:
        """The organisations the calling service may see, by name: those of its members (in dev
        mode, every simulated organisation)."""
        if self.proxy.config.dev_mode or self.proxy.users is None:
            return self.proxy.list_orgas()
        seen: dict[str, Orga] = {}
        for member in self.proxy.users.members(self.service):
            for orga in member.orgas:
                seen.setdefault(str(orga.pk), Orga(orga.pk, orga.name, orga.codops))
        return sorted(seen.values(), key=lambda o: (o.name.lower(), str(o.pk)))

    def orga(self, pk: Any) -> Orga:
        """The organisation ``pk`` if one of the calling service's members belongs to it (any
        simulated one in dev mode), else ApiError 404."""
        wanted = parse_id(pk)
        found = None
        if wanted is not None:
            if self.proxy.config.dev_mode or self.proxy.users is None:
                found = self.proxy.lookup_orga(wanted)
            else:
                found = next((o for o in self.orgas() if str(o.pk) == str(wanted)), None)
        if found is None:
            raise ApiError(404, "not_found", "no such organisation")
        return found

    def _visible(self, user: PlugItUser) -> bool:
        if self.proxy.config.dev_mode and user.backend == "dev":
            return True  # the simulated users belong to every service
        return user.is_member(self.service)

    def user_object(self, user: PlugItUser) -> dict[str, Any]:
        """A user as the API shows it (6.3): the shared properties, ``id``, ``orgas``."""
        data = user.for_service(self.service, None).properties(self.proxy.config.user_data)
        data["orgas"] = [
            {"id": o.pk, "name": o.name, "codops": o.codops, "is_admin": o.is_admin}
            for o in user.orgas
        ]
        return data


def json_response(data: Any, status: int = 200) -> Response:
    """A JSON answer that no one caches or sniffs (the API's, and the status URLs')."""
    response = Response(
        json.dumps(data, ensure_ascii=False), status=status, mimetype="application/json"
    )
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Cache-Control"] = "no-store"
    return response


def _error(status: int, code: str, message: str) -> Response:
    return json_response({"error": code, "message": message, "status": status}, status)


def _past_deadline(request: ProxyRequest, mount: ServiceMount) -> Response | None:
    """412 ``deadline_passed`` for a call made on behalf of a page request this proxy no longer
    waits for (the ``Plugit-Deadline`` it was given has passed): the visitor was told it failed,
    so nothing may happen now.  400 ``bad_deadline`` for a value that is not a deadline."""
    try:
        deadline = protocol.parse_deadline(request.headers.get(protocol.H_API_DEADLINE))
    except ValueError as exc:
        return _error(400, "bad_deadline", f"{protocol.H_API_DEADLINE}: {exc}")
    if deadline is None:
        return None
    late = time.time() - deadline
    if late < 0:
        return None
    log.warning(
        "API call %s %s from %s refused: its request's deadline passed %.1fs ago",
        request.method,
        request.path,
        mount.name,
        late,
    )
    return _error(
        412,
        "deadline_passed",
        f"the page request this call was made for ended {late:.1f}s ago (the visitor was "
        "told it failed): nothing was done",
    )


class CallbackAPI:
    """Routes and authenticates API calls; endpoints are registered by name."""

    def __init__(self, proxy: ProxyApp) -> None:
        self.proxy = proxy
        self._map = Map(strict_slashes=False)
        self._views: dict[str, ApiView] = {}
        self.register("/", self._home)
        for rule, view, methods in _BUILTIN:
            self.register(rule, view, methods)
        proxy.hooks.register_api_endpoints(self.register)

    def _home(self, call: ApiCall) -> Response:
        return api_home(call, sorted({rule.rule for rule in self._map.iter_rules()}))

    def register(self, rule: str, view: ApiView, methods: tuple[str, ...] = ("GET",)) -> None:
        """Serve ``view(call, **values)`` at ``<mount>ebuio_api/<rule>`` (werkzeug rule syntax).

        Raises ValueError when another endpoint has the same rule and method.
        """
        rule = "/" + rule.lstrip("/")
        for existing in self._map.iter_rules():
            if existing.rule == rule and set(existing.methods or ()) & {m.upper() for m in methods}:
                raise ValueError(f"API endpoint {rule!r} is registered twice")
        endpoint = f"api:{len(self._views)}"
        self._views[endpoint] = view
        self._map.add(Rule(rule, endpoint=endpoint, methods=list(methods)))

    def authenticate(self, request: ProxyRequest, mount: ServiceMount) -> bool:
        """True when the request carries the mount's key (or in dev mode when it has none)."""
        if not mount.api_key:
            return self.proxy.config.dev_mode
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token:
            return False
        return hmac.compare_digest(token.strip().encode(), mount.api_key.encode())

    def handle(self, request: ProxyRequest, mount: ServiceMount, path: str) -> Response:
        """Answer ``<mount>ebuio_api/<path>``; never raises."""
        if not self.authenticate(request, mount):
            log.warning("API call to %s refused: wrong or missing key", mount.name)
            return _error(
                403, "forbidden", "this API needs the service's key: Authorization: Bearer <key>"
            )
        refused = _past_deadline(request, mount)
        if refused is not None:
            return refused
        try:
            read_body(request, MAX_API_BODY)  # endpoints parse it from memory, never cut
        except RequestEntityTooLarge:
            limit = min(MAX_API_BODY, self.proxy.config.max_upload_size)
            return _error(413, "too_large", f"API requests are limited to {limit} bytes")
        except LengthRequired as exc:
            return _error(411, "length_required", exc.description or "send a Content-Length")
        try:
            problem = form_problem(request)  # werkzeug would read it as an empty form
        except RequestEntityTooLarge:
            return _error(413, "too_large", "the form has too many parts or too large a field")
        if problem is not None:
            return _error(400, "bad_request", problem)
        call = ApiCall(request, self.proxy.context, mount)
        try:
            endpoint, values = self._map.bind("api").match("/" + path, method=request.method)
            result = self._views[endpoint](call, **values)
        except ApiError as exc:
            return _error(exc.status, exc.code, exc.message)
        except MethodNotAllowed as exc:
            response = _error(405, "method_not_allowed", "this endpoint does not take this method")
            response.headers["Allow"] = ", ".join(exc.valid_methods or ())
            return response
        except NotFound:
            return _error(404, "not_found", "no such API endpoint")
        except RequestEntityTooLarge:
            return _error(413, "too_large", "the request is too large")
        except HTTPException as exc:
            return _error(exc.code or 400, "bad_request", exc.description or "bad request")
        except StoreUnavailable as exc:  # an outage: the service may retry, nothing was done
            log.warning("API endpoint %s for %s: 503, %s", path, mount.name, exc)
            response = _error(503, "store_unavailable", f"{exc.label} is unavailable; retry later")
            response.headers["Retry-After"] = "1"
            return response
        except Exception:
            log.exception("API endpoint %s failed for %s", path, mount.name)
            return _error(500, "internal", "the API failed; the error is logged")
        if isinstance(result, Response):
            return result
        return json_response(result)


# -- the built-in endpoints (6.2) ------------------------------------------------------------------


def api_home(call: ApiCall, rules: list[str]) -> Response:
    lines = "".join(
        f"<li><code>{call.mount.mount}{API_PREFIX}{r.lstrip('/')}</code></li>"
        for r in rules
        if r != "/"
    )
    html = (
        "<!doctype html><html lang=en><meta charset=utf-8><title>PlugIt callback API</title>"
        f"<h1>PlugIt callback API for {call.mount.name}</h1>"
        "<p>Send the service's key in <code>Authorization: Bearer &lt;key&gt;</code>.</p>"
        f"<ul>{lines}</ul></html>"
    )
    return Response(html, mimetype="text/html")


def api_user(call: ApiCall, pk: str) -> dict[str, Any]:
    return call.user_object(call.user(pk))


def api_subscriptions(call: ApiCall, pk: str) -> list[str]:
    user = call.user(pk)
    labels = list(user.subscriptions.get(call.service, ()))
    billing = getattr(call.proxy, "billing", None)
    if billing is not None and user.pk is not None:
        # Asked of the store itself: while it is unavailable this is a 503, never "none" (a
        # loaded user's labels are left out during an outage, see plugit_user_loaded).
        found = billing.labels(call.service, user.pk, [orga.pk for orga in user.orgas])
        labels = list(dict.fromkeys((*labels, *found)))
    return labels


def api_user_techgroups(call: ApiCall, pk: str) -> list[Any]:
    call.user(pk)
    return []  # tech groups belong to the original's hosting platform


def api_orga(call: ApiCall, pk: str) -> dict[str, Any]:
    orga = call.orga(pk)
    return {"pk": orga.pk, "name": orga.name, "codops": orga.codops}


def api_orgas(call: ApiCall) -> dict[str, Any]:
    return {"data": [{"id": o.pk, "name": o.name, "codops": o.codops} for o in call.orgas()]}


def api_members(call: ApiCall) -> dict[str, Any]:
    if call.proxy.config.dev_mode:
        members = [simulated_user(mode) for mode in SIMULATED_MODES if mode != "ano"]
    elif call.proxy.users is not None:
        members = call.proxy.users.members(call.service)
    else:
        members = []
    return {"members": [call.user_object(user) for user in members]}


def api_techgroups(call: ApiCall) -> list[Any]:
    return []


def api_mail(call: ApiCall) -> Any:
    mailer = getattr(call.proxy, "mail", None)
    if mailer is None:
        raise ApiError(
            503, "mail_unavailable", "this site sends no mail (no mail backend configured)"
        )
    return mailer.api_send(call)


def api_forum(call: ApiCall, tag: str | None = None) -> dict[str, Any]:
    return {"error": "no-on-ebuio"}  # the forum belongs to the original's hosting platform


_BUILTIN: tuple[tuple[str, ApiView, tuple[str, ...]], ...] = (
    ("user/<pk>", api_user, ("GET",)),
    ("user/<pk>/techgroups/", api_user_techgroups, ("GET",)),
    ("subscriptions/<pk>", api_subscriptions, ("GET",)),
    ("orga/<pk>", api_orga, ("GET",)),
    ("orgas/", api_orgas, ("GET",)),
    ("members/", api_members, ("GET",)),
    ("techgroups/", api_techgroups, ("GET",)),
    ("mail/", api_mail, ("POST",)),
    ("ebuio/forum/", api_forum, ("POST",)),
    ("ebuio/forum/search/bytag/<tag>", api_forum, ("GET",)),
)

"""The callback API: what services ask the proxy (PROTOCOL.md section 6).

Each mounted service reaches it at ``<mount>ebuio_api/`` (the original's standalone layout), and
authenticates with its own key in a header::

    Authorization: Bearer <the mount's api_key>

never in the URL.  The key is compared in constant time; a missing or wrong key gets 403 JSON.
A service only sees what belongs to it: the users of its own mount, its own subscriptions.
Unknown users, and users who are not members of the calling service, are 404 alike, so a
service cannot probe who exists elsewhere.

Endpoints are registered through a callback, so plugins add their own with the hook
``plugit_register_api_endpoints``; views return JSON-able data or raise :class:`ApiError`.
"""

from __future__ import annotations

import hmac
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from werkzeug.exceptions import HTTPException, MethodNotAllowed, NotFound, RequestEntityTooLarge
from werkzeug.routing import Map, Rule
from werkzeug.wrappers import Response

from ..config import ServiceMount
from ..users import SIMULATED_MODES, PlugItUser, simulated_user

if TYPE_CHECKING:
    from .app import ProxyApp, ProxyRequest

__all__ = ["API_PREFIX", "ApiCall", "ApiError", "CallbackAPI"]

log = logging.getLogger("plugit.api")

API_PREFIX = "ebuio_api/"
MAX_API_BODY = 1024 * 1024
ApiView = Callable[..., Any]


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
    proxy: ProxyApp
    mount: ServiceMount

    @property
    def service(self) -> str:
        return self.mount.name

    def user(self, pk: Any) -> PlugItUser:
        """The user ``pk`` if it belongs to the calling service, else ApiError 404."""
        user = self.proxy.lookup_user(pk)
        if user is None or not self._visible(user):
            raise ApiError(404, "not_found", "no such user")
        return user

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


def _body_within_limit(request: ProxyRequest) -> bool:
    """Read the request's body now (endpoints then parse it from memory); False when it is
    larger than :data:`MAX_API_BODY`.

    A declared length is checked first.  A chunked body has none, and werkzeug stops reading
    one at ``max_content_length`` without saying so, so one byte more than allowed is read to
    see whether it was cut: no endpoint ever gets a silently truncated body.
    """
    if request.content_length is not None and request.content_length > MAX_API_BODY:
        return False
    request.max_content_length = MAX_API_BODY + 1
    try:
        return len(request.get_data(cache=True)) <= MAX_API_BODY
    except RequestEntityTooLarge:
        return False


def _json(data: Any, status: int = 200) -> Response:
    response = Response(
        json.dumps(data, ensure_ascii=False), status=status, mimetype="application/json"
    )
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Cache-Control"] = "no-store"
    return response


def _error(status: int, code: str, message: str) -> Response:
    return _json({"error": code, "message": message, "status": status}, status)


class CallbackAPI:
    """Routes and authenticates API calls; endpoints are registered by name."""

    def __init__(self, proxy: ProxyApp) -> None:
        self.proxy = proxy
        self._map = Map(strict_slashes=False)
        self._views: dict[str, ApiView] = {}
        for rule, view, methods in _BUILTIN:
            self.register(rule, view, methods)
        proxy.pm.hook.plugit_register_api_endpoints(register=self.register, proxy=proxy)

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
        if not _body_within_limit(request):
            return _error(413, "too_large", f"API requests are limited to {MAX_API_BODY} bytes")
        call = ApiCall(request, self.proxy, mount)
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
        except Exception:
            log.exception("API endpoint %s failed for %s", path, mount.name)
            return _error(500, "internal", "the API failed; the error is logged")
        if isinstance(result, Response):
            return result
        return _json(result)


# -- the built-in endpoints (6.2) ------------------------------------------------------------------


def api_home(call: ApiCall) -> Response:
    rules = sorted({rule.rule for rule in call.proxy.api._map.iter_rules()})
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
    return list(call.user(pk).subscriptions.get(call.service, ()))


def api_user_techgroups(call: ApiCall, pk: str) -> list[Any]:
    call.user(pk)
    return []  # tech groups belong to the original's hosting platform


def api_orga(call: ApiCall, pk: str) -> dict[str, Any]:
    orga = call.proxy.lookup_orga(pk)
    if orga is None:
        raise ApiError(404, "not_found", "no such organisation")
    return {"pk": orga.pk, "name": orga.name, "codops": orga.codops}


def api_orgas(call: ApiCall) -> dict[str, Any]:
    return {
        "data": [{"id": o.pk, "name": o.name, "codops": o.codops} for o in call.proxy.list_orgas()]
    }


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
    ("/", api_home, ("GET",)),
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

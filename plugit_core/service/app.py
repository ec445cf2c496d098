"""The service side of the PlugIt protocol as a plain werkzeug WSGI application.

A service is a module of decorated action functions::

    from plugit_core.service import PlugItService, action, only_logged_user

    @action("/", template="home.html")
    def home(request):
        return {"polls": [...]}

    app = PlugItService.from_module(sys.modules[__name__], templates="templates")

``app`` serves ``ping``, ``version``, ``mail``, ``meta<route>``, ``template<route>``,
``action<route>`` and ``media/<path>`` below ``base_url`` (PROTOCOL.md section 2).

Security: every endpoint, ``version`` and ``media`` included, is refused (404) to callers outside
``allowed_networks`` (loopback only by default).  When ``secret`` is set, every request to an
endpoint must also carry a valid, fresh, unreplayed signature from the proxy
(:mod:`plugit_core.signing`), else 403 with a JSON error naming the reason; unknown paths and wrong
methods still answer 404 and 405.

Bad input gets a JSON answer, never a traceback: 400 for a malformed form, 413 above
``max_content_length``, 500 when an action fails (logged with the action's name).

This module is the application (routing, signature check, the endpoints); its settings are
:mod:`.settings` and its request and JSON answers :mod:`.messages`.
"""

from __future__ import annotations

import copy
import datetime
import hashlib
import logging
import os
import sys
import types
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from werkzeug.exceptions import (
    BadRequest,
    GatewayTimeout,
    HTTPException,
    InternalServerError,
    NotFound,
    RequestEntityTooLarge,
)
from werkzeug.http import http_date
from werkzeug.routing import Map, Rule
from werkzeug.security import safe_join
from werkzeug.utils import send_file
from werkzeug.wrappers import Request, Response

from .. import protocol
from ..networks import NetworkList
from ..signing import NonceRegistry, SignatureError, verify_request
from ..wsgi import answer
from .api import deadline_scope
from .decorators import ActionSpec, get_spec
from .messages import (
    SIGNED_ENVIRON_KEY,
    ServiceRequest,
    SignatureRefused,
    buffer_unsized_body,
    error_response,
    json_response,
    set_etag,
    signature_error_response,
    status_response,
)
from .results import PlugItRedirect, PlugItSendFile, PlugItSetSession
from .settings import ServiceConfig, service_config_module

__all__ = ["MISSING_TEMPLATE_TAG", "MailCallback", "PlugItService"]

log = logging.getLogger("plugit.service")
#: The template tag of an action whose template file is missing (any non-empty value would do).
MISSING_TEMPLATE_TAG = "missing-template"

MailCallback = Callable[["ServiceRequest"], Any]


@dataclass
class _Action:
    name: str
    fn: Callable[..., Any]
    spec: ActionSpec
    _tag_cache: dict[str, tuple[tuple[int, int, int, int], str]] = field(default_factory=dict)


class PlugItService:
    """A PlugIt service: a WSGI application serving a set of actions."""

    request_class = ServiceRequest

    def __init__(
        self,
        actions: types.ModuleType | Iterable[Callable[..., Any]] | None = None,
        config: ServiceConfig | None = None,
        *,
        mail_callback: MailCallback | None = None,
        **settings: Any,
    ) -> None:
        if config is None:
            config = ServiceConfig.from_settings(None, **settings)
        elif settings:
            config = config.with_settings(**settings)
        self.mail_callback = mail_callback
        self._configure(config)
        if actions is not None:
            self.load_actions(actions)

    def _configure(self, config: ServiceConfig) -> None:
        """Everything that follows from the settings; the actions are registered afterwards."""
        self.config = config
        root = Path(config.root)
        self.templates_dir = (root / config.templates).resolve()
        self.media_dir = (root / config.media).resolve()
        self.root_dir = root.resolve()
        self._allowed = NetworkList(config.allowed_networks, setting="allowed_networks")
        self._trusted = NetworkList(config.trusted_proxies, setting="trusted_proxies")
        self._nonces = NonceRegistry(ttl=config.signature_max_age * 2)
        self.actions: dict[str, _Action] = {}
        self._url_map = Map(strict_slashes=False, merge_slashes=False)
        base = config.base_url
        for endpoint, path, methods in (
            ("ping", "ping", ["GET"]),
            ("version", "version", ["GET"]),
            ("mail", "mail", ["POST"]),
            ("media", "media/<path:path>", ["GET"]),
        ):
            self._url_map.add(Rule(base + path, endpoint=(endpoint, None), methods=methods))

    def with_settings(self, **settings: Any) -> PlugItService:
        """A copy of this service whose settings are its own with ``settings`` replacing them
        (``PlugItService`` keyword names: ``secret``, ``base_url``, ``allowed_networks``,
        ``debug``, ``templates``, ``media`` ...; ``None`` values are ignored).

        The copy keeps the actions, the mail callback and the attributes of a subclass (a
        database handle, say); its routes follow the new ``base_url``.  This service is not
        changed.  ``plugit service`` applies its command-line options to a module's ``app`` this
        way.  Unknown names raise TypeError, bad values ValueError.
        """
        clone = copy.copy(self)
        clone._configure(self.config.with_settings(**settings))
        for act in self.actions.values():
            clone.add_action(act.fn, name=act.name)
        return clone

    @classmethod
    def from_module(
        cls,
        module: types.ModuleType | str,
        settings: Any = None,
        *,
        mail_callback: MailCallback | None = None,
        **overrides: Any,
    ) -> PlugItService:
        """Serve the actions of ``module`` (a module or a dotted name).

        ``settings`` (a module, object or mapping with ``PI_*`` names) defaults to the module
        itself, so a one-file service keeps its settings beside its actions; and, as the
        original library did, to the ``PI_*`` settings of the service's ``config`` module
        (``config.py`` in the module's folder) when there is one: the module's own settings
        win over it, ``overrides`` over both.  ValueError when that file cannot be imported.
        """
        if isinstance(module, str):
            __import__(module)
            module = sys.modules[module]
        defaults = service_config_module(module) if settings is None else None
        try:
            config = ServiceConfig.from_settings(
                module if settings is None else settings, defaults=defaults, **overrides
            )
        except (TypeError, ValueError) as exc:
            if defaults is None:
                raise
            raise type(exc)(f"{exc} (settings read from {defaults.__file__} too)") from exc
        callback = mail_callback or getattr(module, "mail_callback", None)
        return cls(module, config, mail_callback=callback)

    def load_actions(
        self,
        actions: types.ModuleType | Iterable[Callable[..., Any]],
        mail_callback: MailCallback | None = None,
    ) -> None:
        """Register every decorated action of a module (or an iterable of functions)."""
        if isinstance(actions, types.ModuleType):
            candidates = [(name, value) for name, value in vars(actions).items()]
        else:  # (mypy cannot rule out a module that is also iterable)
            functions = cast(Iterable[Callable[..., Any]], actions)
            candidates = [(getattr(fn, "__name__", repr(fn)), fn) for fn in functions]
        for name, fn in candidates:
            spec = get_spec(fn) if callable(fn) else None
            if spec is not None and spec.is_action:
                self.add_action(fn, name=name)
        if mail_callback is not None:
            self.mail_callback = mail_callback

    def add_action(self, fn: Callable[..., Any], *, name: str | None = None) -> None:
        """Register one decorated action."""
        spec = get_spec(fn)
        if spec is None or not spec.is_action:
            raise ValueError(f"{fn!r} is not decorated with @action")
        name = name or fn.__name__
        if any(other.fn is fn for other in self.actions.values()):
            return  # already registered, e.g. imported into the module under a second name
        if name in self.actions:
            raise ValueError(f"two actions are named {name!r}")
        for other in self.actions.values():
            if other.spec.route == spec.route:
                raise ValueError(
                    f"actions {other.name!r} and {name!r} share the route {spec.route!r}"
                )
        self.actions[name] = _Action(name, fn, spec)
        base = self.config.base_url
        route = spec.route
        assert route is not None
        self._url_map.add(Rule(f"{base}meta{route}", endpoint=("meta", name), methods=["GET"]))
        self._url_map.add(
            Rule(f"{base}template{route}", endpoint=("template", name), methods=["GET"])
        )
        self._url_map.add(
            Rule(
                f"{base}action{route}",
                endpoint=("action", name),
                methods=list(spec.allowed_methods),
            )
        )

    # -- WSGI -------------------------------------------------------------------------------------

    def __call__(
        self, environ: dict[str, Any], start_response: Callable[..., Any]
    ) -> Iterable[bytes]:
        request = self.request_class(environ)
        request.max_content_length = self.config.max_content_length
        request.max_form_memory_size = self.config.max_form_memory_size
        response = self.handle(request)
        response.call_on_close(request.close)  # uploaded files are temporary files
        return answer(response, environ, start_response)

    def handle(self, request: ServiceRequest) -> Response:
        """Answer one request; never raises."""
        try:
            if not self.caller_allowed(request):
                raise NotFound()
            buffer_unsized_body(request, self.config.max_content_length)
            if self.config.secret:  # before routing: unsigned callers learn nothing of the routes
                self._verify_signature(request)
            adapter = self._url_map.bind_to_environ(request.environ)
            try:
                (kind, name), values = adapter.match()
            except NotFound:
                self._log_unknown(request)
                raise
            return self._dispatch(kind, name, values, request)
        except SignatureRefused as exc:
            return signature_error_response(exc)
        except HTTPException as exc:
            if exc.response is not None:  # abort(response), abort(304)
                return exc.response  # type: ignore[return-value]
            if exc.code is not None and exc.code < 400:  # abort(NotModified()), a redirect
                return status_response(exc)
            return error_response(exc)
        except Exception:
            log.exception("unhandled error while serving %s %s", request.method, request.path)
            return error_response(InternalServerError())

    def _log_unknown(self, request: Request) -> None:
        """The proxy asked for an action this service does not have: say which, and what is."""
        if request.path.startswith(self.config.base_url + "meta/"):
            routes = sorted({a.spec.route or "" for a in self.actions.values()})  # (all have one)
            log.warning(
                "no action at %s (the actions: %s)",
                request.path,
                ", ".join(routes[:20]) + (", ..." if len(routes) > 20 else ""),
            )

    def client_address(self, request: Request) -> str | None:
        """The caller's address: the TCP peer, or with ``use_proxy_ip`` the right-most
        ``X-Forwarded-For`` entry when the peer is a trusted proxy."""
        peer = request.remote_addr
        if self.config.use_proxy_ip and peer in self._trusted:
            forwarded = request.headers.get("X-Forwarded-For", "")
            entries = [e.strip() for e in forwarded.split(",") if e.strip()]
            if entries:
                return entries[-1]
        return peer

    def caller_allowed(self, request: Request) -> bool:
        return self.client_address(request) in self._allowed

    def _verify_signature(self, request: ServiceRequest) -> None:
        has_body = request.content_length or request.headers.get("Transfer-Encoding")
        body = request.get_data(cache=True) if has_body else b""
        try:
            verify_request(
                self.config.secret or "",
                method=request.method,
                path=request.script_root + request.path,
                query=request.query_string,
                body=body,
                headers=request.headers.items(),
                max_age=self.config.signature_max_age,
                nonces=self._nonces,
            )
        except SignatureError as exc:
            log.warning("refused %s %s: %s", request.method, request.path, exc.code)
            raise SignatureRefused(exc) from None
        request.environ[SIGNED_ENVIRON_KEY] = True

    def _dispatch(
        self, kind: str, name: str | None, values: Mapping[str, Any], request: ServiceRequest
    ) -> Response:
        if kind == "ping":
            return json_response({"data": request.args.get("data", "")})
        if kind == "version":
            return json_response(
                {
                    "result": "Ok",
                    "version": protocol.PROTOCOL_VERSION,
                    "protocol": self.config.api_name,
                }
            )
        if kind == "mail":
            return self._mail(request)
        if kind == "media":
            return self._media(request, values["path"])
        assert name is not None
        act = self.actions[name]
        if kind == "meta":
            return self._meta(act)
        if kind == "template":
            return self._template(act, request)
        return self._action(act, values, request)

    # -- endpoints --------------------------------------------------------------------------------

    def _mail(self, request: ServiceRequest) -> Response:
        self._load_form(request)
        if "response_id" not in request.form:
            raise BadRequest("the response_id field is required")
        if not request.form["response_id"]:
            return json_response({"result": "Error", "message": "empty response_id"})
        if self.mail_callback is None:
            return json_response({"result": "Ok"})
        result = self.mail_callback(request)
        if isinstance(result, Response):
            return result
        if result is None:
            result = {"result": "Ok"}
        return json_response(result)

    def _media(self, request: Request, path: str) -> Response:
        target = safe_join(str(self.media_dir), path)
        if target is None or not os.path.isfile(target):
            raise NotFound()
        response = send_file(target, request.environ, max_age=3600)
        response.headers["X-Content-Type-Options"] = "nosniff"
        return response

    def _template_path(self, act: _Action) -> str | None:
        if not act.spec.template:
            return None
        return safe_join(str(self.templates_dir), act.spec.template)

    def template_tag(self, act: _Action) -> str:
        """MD5 of the template file (the original's tag), cached until the file changes.

        An action whose template file is missing gets :data:`MISSING_TEMPLATE_TAG`: not empty,
        so the proxy asks for the template (before calling the action) and gets a 404 naming
        it, instead of calling the action and then finding nothing to render.
        """
        path = self._template_path(act)
        if path is None:
            return ""
        try:
            stat = os.stat(path)
        except OSError:
            self._log_missing_template(act, path)
            return MISSING_TEMPLATE_TAG
        key = (stat.st_mtime_ns, stat.st_ctime_ns, stat.st_size, stat.st_ino)
        cached = act._tag_cache.get(path)
        if cached and cached[0] == key:
            return cached[1]
        digest = hashlib.md5(usedforsecurity=False)
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(65536), b""):
                digest.update(chunk)
        tag = digest.hexdigest()
        act._tag_cache[path] = (key, tag)
        return tag

    def _meta(self, act: _Action) -> Response:
        response = json_response(act.spec.build_meta(self.template_tag(act)))
        seconds = self.config.meta_cache_seconds
        expires = http_date(
            datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=seconds)
        )
        response.headers["Expire"] = expires  # the original's (non-standard) name
        response.headers["Expires"] = expires
        response.headers["Cache-Control"] = f"public, max-age={seconds}"
        return response

    def _log_missing_template(self, act: _Action, path: str | None) -> None:
        log.error(
            "action %r: its template %r is missing (looked for %s)",
            act.name,
            act.spec.template,
            path or f"{act.spec.template} below {self.templates_dir}",
        )

    def _missing_template(self, act: _Action) -> NotFound | None:
        """A 404 naming the action's template when its file is missing (and the log line)."""
        path = self._template_path(act)
        if act.spec.template and (path is None or not os.path.isfile(path)):
            self._log_missing_template(act, path)
            return NotFound(f"the template {act.spec.template!r} of this action is missing")
        return None

    def _template(self, act: _Action, request: Request) -> Response:
        missing = self._missing_template(act)
        if missing is not None:
            raise missing
        path = self._template_path(act)
        if path is None:
            raise NotFound("this action has no template")
        with open(path, "rb") as fh:
            body = fh.read()
        return Response(body, mimetype="text/plain")

    @staticmethod
    def _load_form(request: ServiceRequest) -> None:
        try:
            request.form  # noqa: B018 (parse now, so a malformed body is a 400 here)
            request.files  # noqa: B018
        except RequestEntityTooLarge:
            raise
        except ValueError as exc:
            raise BadRequest(f"malformed form data: {exc}") from None

    def _action(self, act: _Action, values: Mapping[str, Any], request: ServiceRequest) -> Response:
        spec = act.spec
        if request.method == "OPTIONS" and spec.cors is not None:
            return self._add_cors(json_response({}), spec, request)
        if request.method in ("POST", "PUT", "PATCH", "DELETE"):
            self._load_form(request)
        missing = self._missing_template(act)
        if missing is not None:
            raise missing  # its page could not be shown: the action is not run
        left = request.time_left()
        if left is not None and left <= 0:  # the proxy has stopped waiting: do nothing
            log.warning(
                "action %r not run: its request's deadline passed %.1fs ago", act.name, -left
            )
            return error_response(
                GatewayTimeout("the proxy stopped waiting for this request: not run"),
                "deadline_passed",
            )
        try:
            with deadline_scope(request.deadline):  # the callback API calls carry it
                result = act.fn(request, **values)
            response = self._result_response(result, act, request)
        except HTTPException:
            raise
        except Exception:
            # The traceback goes to the log, naming the action; the caller gets a plain 500.
            log.exception("action %r failed on %s %s", act.name, request.method, request.path)
            raise InternalServerError() from None
        if spec.cors is not None:
            self._add_cors(response, spec, request)
        return response

    def _result_response(self, result: Any, act: _Action, request: ServiceRequest) -> Response:
        session: dict[str, Any] = {}
        while isinstance(result, PlugItSetSession):
            session.update(result.things_to_set)
            result = result.base
        if isinstance(result, Response):
            response = result
        elif isinstance(result, PlugItRedirect):
            response = Response(b"", mimetype="application/json")
            response.headers[protocol.H_REDIRECT] = result.url
            if result.no_prefix:
                response.headers[protocol.H_REDIRECT_NOPREFIX] = "True"
        elif isinstance(result, PlugItSendFile):
            response = self._send_file(result, request)
        elif isinstance(result, (dict, list)):
            if act.spec.send_etag and isinstance(result, dict) and "_plugit_etag" in result:
                result = dict(result)
                etag = result.pop("_plugit_etag")
                response = json_response(result)
                if etag:
                    set_etag(response, str(etag))
            else:
                response = json_response(result)
        else:
            raise TypeError(
                f"action {act.name!r} returned {type(result).__name__}; an action returns a dict "
                "or list (JSON data), PlugItRedirect, PlugItSendFile or PlugItSetSession"
            )
        for key, value in session.items():
            key = str(key)
            if not key or not all(c.isalnum() or c in "-_" for c in key):
                raise ValueError(f"session key {key!r} must be letters, digits, '-' or '_'")
            response.headers[f"EbuIo-PlugIt-SetSession-{key}"] = str(value)
        return response

    def _send_file(self, result: PlugItSendFile, request: Request) -> Response:
        target = result.filename
        if isinstance(target, (str, os.PathLike)):
            path = Path(target)
            if not path.is_absolute():
                path = self.root_dir / path
            if not path.is_file():
                raise NotFound("file not found")
            target = str(path)
        name = result.attachment_filename or None
        if name is None and isinstance(target, str):
            name = os.path.basename(target)
        response = send_file(
            target,
            request.environ,
            mimetype=result.mimetype,
            as_attachment=result.as_attachment and name is not None,
            download_name=name,
            conditional=False,
            etag=False,
        )
        if not result.as_attachment:
            response.headers.pop("Content-Disposition", None)  # only attachments carry one (2.9)
        elif name is None:  # an open file without a name
            response.headers["Content-Disposition"] = "attachment"
        response.headers[protocol.H_FILE] = "True"
        return response

    @staticmethod
    def _add_cors(response: Response, spec: ActionSpec, request: Request) -> Response:
        cors = spec.cors
        assert cors is not None
        response.headers["Access-Control-Allow-Origin"] = cors.origin
        response.headers["Access-Control-Max-Age"] = str(cors.max_age)
        methods = cors.methods or ", ".join(sorted(set(spec.methods) | {"OPTIONS"}))
        response.headers["Access-Control-Allow-Methods"] = methods
        if cors.headers:
            response.headers["Access-Control-Allow-Headers"] = cors.headers
        return response

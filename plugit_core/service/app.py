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
"""

from __future__ import annotations

import copy
import datetime
import decimal
import hashlib
import importlib.util
import io
import json
import logging
import os
import sys
import time
import types
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, cast

from werkzeug.exceptions import (
    BadRequest,
    Forbidden,
    GatewayTimeout,
    HTTPException,
    InternalServerError,
    MethodNotAllowed,
    NotFound,
    RequestEntityTooLarge,
)
from werkzeug.formparser import FormDataParser
from werkzeug.http import http_date
from werkzeug.routing import Map, Rule
from werkzeug.security import safe_join
from werkzeug.utils import send_file
from werkzeug.wrappers import Request, Response

from .. import protocol
from ..networks import NetworkList
from ..signing import NonceRegistry, SignatureError, verify_request
from .api import deadline_scope
from .decorators import ActionSpec, get_spec
from .results import PlugItRedirect, PlugItSendFile, PlugItSetSession

__all__ = [
    "MailCallback",
    "PlugItService",
    "ServiceConfig",
    "ServiceRequest",
    "service_config_module",
]

log = logging.getLogger("plugit.service")
#: Set in the environ of a request whose signature was checked.
SIGNED_ENVIRON_KEY = "plugit.signed"
#: The template tag of an action whose template file is missing (any non-empty value would do).
MISSING_TEMPLATE_TAG = "missing-template"

MailCallback = Callable[["ServiceRequest"], Any]


@dataclass(frozen=True)
class ServiceConfig:
    """Settings of a service.  ``from_settings`` reads the original ``PI_*`` names too."""

    base_url: str = "/"
    templates: str | os.PathLike[str] = "templates"
    media: str | os.PathLike[str] = "media"
    root: str | os.PathLike[str] = "."
    allowed_networks: tuple[str, ...] = ("127.0.0.0/8", "::1/128")
    use_proxy_ip: bool = False
    trusted_proxies: tuple[str, ...] = ("127.0.0.0/8", "::1/128")
    api_name: str = protocol.PROTOCOL_NAME
    project_name: str = "PlugIt-Project"
    api_url: str = ""
    debug: bool = False
    meta_cache: int | None = None
    secret: str | None = None
    signature_max_age: int = 300
    max_content_length: int | None = 16 * 1024 * 1024
    max_form_memory_size: int | None = 2 * 1024 * 1024

    # The original settings module names (PROTOCOL.md 4.2).
    SETTINGS = {
        "PI_BASE_URL": "base_url",
        "PI_ALLOWED_NETWORKS": "allowed_networks",
        "PI_USE_PROXY_IP": "use_proxy_ip",
        "PI_TRUSTED_PROXIES": "trusted_proxies",
        "PI_API_NAME": "api_name",
        "PI_PROJECT_NAME": "project_name",
        "PI_META_CACHE": "meta_cache",
        "PI_SECRET": "secret",
        "PI_SIGNATURE_MAX_AGE": "signature_max_age",
        "PI_MAX_CONTENT_LENGTH": "max_content_length",
        "PI_TEMPLATES": "templates",
        "PI_MEDIA": "media",
        "API_URL": "api_url",
        "DEBUG": "debug",
    }

    def __post_init__(self) -> None:
        base = self.base_url
        if not isinstance(base, str) or not base.startswith("/") or not base.endswith("/"):
            raise ValueError(f"base_url must start and end with '/': {base!r}")
        for name in ("allowed_networks", "trusted_proxies"):
            value = getattr(self, name)
            if isinstance(value, str):
                value = tuple(p.strip() for p in value.split(",") if p.strip())
            object.__setattr__(self, name, tuple(value))
            NetworkList(getattr(self, name), setting=name)  # raises ValueError naming the entry
        if self.secret is not None and len(str(self.secret)) < 16:
            raise ValueError("secret must be at least 16 characters long")

    @property
    def meta_cache_seconds(self) -> int:
        if self.meta_cache is not None:
            return int(self.meta_cache)
        return 0 if self.debug else 300

    @classmethod
    def from_settings(
        cls, settings: Any = None, *, defaults: Any = None, **overrides: Any
    ) -> ServiceConfig:
        """Build from a settings module, object or mapping using the ``PI_*`` names, or ours.

        ``defaults`` (the same kinds, original ``PI_*`` names only) gives the values neither
        ``settings`` nor ``overrides`` set: the service's ``config`` module, say.
        """
        values = cls._read(defaults, own_names=False) if defaults is not None else {}
        if settings is not None:
            values.update(cls._read(settings, own_names=True))
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**_checked_settings(values))

    @classmethod
    def _read(cls, settings: Any, *, own_names: bool) -> dict[str, Any]:
        values: dict[str, Any] = {}
        getter = (
            settings.get
            if isinstance(settings, Mapping)
            else (lambda key, default=None: getattr(settings, key, default))
        )
        for original, name in cls.SETTINGS.items():
            value = getter(original, None)
            if value is not None:
                values[name] = value
        if own_names:
            for name in (f.name for f in fields(cls)):
                value = getter(name, None)
                # A service module doubles as its settings: an action or import that happens to
                # be called ``root`` or ``media`` is not a setting.
                if value is not None and not _is_code(value):
                    values[name] = value
        return values

    def with_settings(self, **settings: Any) -> ServiceConfig:
        """A copy with ``settings`` (our names, not ``PI_*``) replacing these; ``None`` values
        are ignored.  Unknown names raise TypeError, bad values ValueError."""
        values = _checked_settings({k: v for k, v in settings.items() if v is not None})
        return replace(self, **values) if values else self


def _checked_settings(values: dict[str, Any]) -> dict[str, Any]:
    unknown = set(values) - {f.name for f in fields(ServiceConfig)}
    if unknown:
        raise TypeError(f"unknown service settings: {', '.join(sorted(unknown))}")
    for name in ("debug", "use_proxy_ip"):  # often read from the environment as text
        if isinstance(values.get(name), str):
            values[name] = _text_bool(name, values[name])
    return values


def _text_bool(name: str, text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("", "0", "false", "no", "off"):
        return False
    raise ValueError(f"{name} must be true or false, not {text!r}")


def _is_code(value: Any) -> bool:
    return isinstance(value, (types.ModuleType, type)) or callable(value)


def service_config_module(module: types.ModuleType) -> types.ModuleType | None:
    """The ``config`` module beside ``module`` (``config.py`` in its folder), the original
    library's settings file, imported once; None when there is none.

    It is registered as ``config`` (or ``<package>.config``) unless another module holds that
    name, so the service's own ``import config`` gets the same module.  ValueError, naming the
    file, when it cannot be imported.
    """
    filename = getattr(module, "__file__", None)
    if not filename or Path(filename).stem == "config":
        return None
    path = Path(filename).resolve().parent / "config.py"
    if not path.is_file():
        return None
    package = getattr(module, "__package__", None)
    name = f"{package}.config" if package else "config"
    loaded = sys.modules.get(name)
    if loaded is not None:
        if Path(getattr(loaded, "__file__", None) or "").resolve() == path:
            return loaded
        name = f"_plugit_service_config_{hashlib.sha256(str(path).encode()).hexdigest()[:12]}"
        if name in sys.modules:
            return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:  # pragma: no cover (a .py file always has one)
        return None
    config = importlib.util.module_from_spec(spec)
    sys.modules[name] = config
    try:
        spec.loader.exec_module(config)
    except Exception as exc:
        del sys.modules[name]
        raise ValueError(
            f"cannot import the settings in {path}: {type(exc).__name__}: {exc}"
        ) from exc
    log.info("service settings read from %s", path)
    return config


class _StrictFormDataParser(FormDataParser):
    """Malformed form bodies are an error (400), not silently an empty form."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["silent"] = False
        super().__init__(*args, **kwargs)


class ServiceRequest(Request):
    """The request an action receives: werkzeug's, plus the proxy's PlugIt data."""

    form_data_parser_class = _StrictFormDataParser

    @property
    def user_info(self) -> dict[str, Any]:
        """The user properties the proxy sent (``ebuio_u_<prop>``), keyed by property name.

        A property sent several times (a list such as ``subscription_labels``) is a list.
        """
        info: dict[str, Any] = {}
        values = self._proxy_values()
        for key in values:
            if key.startswith("ebuio_u_"):
                items = values.getlist(key)
                info[key[len("ebuio_u_") :]] = items if len(items) > 1 else items[0]
        return info

    @property
    def deadline(self) -> float | None:
        """When the proxy stops waiting for this request's answer (seconds since the epoch,
        ``X-Plugit-Deadline``, signed with the request), or None when it sent none (or sent
        something that is not a deadline).  The service's clock must be set (NTP)."""
        try:
            return protocol.parse_deadline(self.headers.get(protocol.H_DEADLINE))
        except ValueError:
            return None

    def time_left(self) -> float | None:
        """Seconds until :attr:`deadline` (negative once passed), or None without one: an
        action doing long work checks it between steps and stops when the proxy has gone."""
        deadline = self.deadline
        return None if deadline is None else deadline - time.time()

    @property
    def orga_pk(self) -> str | None:
        """The current organisation's id in orga mode (``ebuio_orgapk``), else None."""
        orga_pk: str | None = self._proxy_values().get("ebuio_orgapk")
        return orga_pk

    def _proxy_values(self) -> Any:
        """Where the proxy put its ``ebuio_*`` values: the query, but the form of a POST (as in
        the original).  A POST without a form (a JSON body) has them in the query: they are
        read there only when the request's signature was checked, since only then the query
        is the proxy's for sure."""
        if self.method != "POST":
            return self.args
        if self.form or not self.environ.get(SIGNED_ENVIRON_KEY):
            return self.form
        return self.args

    @property
    def plugit_session(self) -> dict[str, str]:
        """This service's session values sent by the proxy (lower-cased keys)."""
        from .helpers import get_session_from_request

        return get_session_from_request(self)


def _json_default(value: Any) -> Any:
    if isinstance(value, (datetime.datetime, datetime.date, datetime.time)):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return float(value)
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def json_response(data: Any, status: int = 200) -> Response:
    body = json.dumps(
        data, default=_json_default, ensure_ascii=False, allow_nan=False, separators=(",", ":")
    )
    response = Response(body, status=status, mimetype="application/json")
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response


def _error_response(exc: HTTPException, error: str | None = None) -> Response:
    code = exc.code or 500
    payload = {"error": error or (exc.name or "error").lower().replace(" ", "_"), "status": code}
    if exc.description:
        payload["message"] = exc.description
    response = json_response(payload, status=code)
    if isinstance(exc, MethodNotAllowed) and exc.valid_methods:
        response.headers["Allow"] = ", ".join(exc.valid_methods)
    return response


def _status_response(exc: HTTPException) -> Response:
    """The reply for an HTTPException below 400 (a service's own ``NotModified`` class, say):
    werkzeug's, without a body for the statuses that have none."""
    response = exc.get_response()
    if response.status_code in (204, 304):
        bare = Response(status=response.status_code)
        for name, value in response.headers.items():
            if name.lower() not in ("content-type", "content-length"):
                bare.headers.add(name, value)
        return bare
    return response


def _buffer_unsized_body(request: Request, limit: int | None) -> None:
    """Read a body sent without Content-Length (chunked) into memory, refusing it above ``limit``.

    werkzeug stops reading such a body silently at ``max_content_length``: a form would be cut
    short instead of refused with 413.
    """
    environ = request.environ
    if limit is None or environ.get("CONTENT_LENGTH") or not environ.get("wsgi.input_terminated"):
        return
    stream = environ["wsgi.input"]
    chunks: list[bytes] = []
    size = 0
    while chunk := stream.read(min(65536, limit + 1 - size)):
        chunks.append(chunk)
        size += len(chunk)
        if size > limit:
            raise RequestEntityTooLarge()
    environ["wsgi.input"] = io.BytesIO(b"".join(chunks))
    environ["CONTENT_LENGTH"] = str(size)
    del environ["wsgi.input_terminated"]
    environ.pop("HTTP_TRANSFER_ENCODING", None)  # no longer chunked: the length is known
    for cached in ("content_length", "stream"):  # werkzeug caches both on first use
        request.__dict__.pop(cached, None)


def _set_etag(response: Response, value: str) -> None:
    """``value`` as the ETag header, exactly as the action gave it (as the original library sent
    it): a service that compares ``X-Plugit-If-None-Match`` with its own value must find it
    unchanged.  ValueError for a value no header can carry (a line break)."""
    response.headers["ETag"] = value


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
        return response(environ, start_response)

    def handle(self, request: ServiceRequest) -> Response:
        """Answer one request; never raises."""
        try:
            if not self.caller_allowed(request):
                raise NotFound()
            _buffer_unsized_body(request, self.config.max_content_length)
            if self.config.secret:  # before routing: unsigned callers learn nothing of the routes
                self._verify_signature(request)
            adapter = self._url_map.bind_to_environ(request.environ)
            try:
                (kind, name), values = adapter.match()
            except NotFound:
                self._log_unknown(request)
                raise
            return self._dispatch(kind, name, values, request)
        except _SignatureRefused as exc:
            return _signature_error_response(exc)
        except HTTPException as exc:
            if exc.response is not None:  # abort(response), abort(304)
                return exc.response  # type: ignore[return-value]
            if exc.code is not None and exc.code < 400:  # abort(NotModified()), a redirect
                return _status_response(exc)
            return _error_response(exc)
        except Exception:
            log.exception("unhandled error while serving %s %s", request.method, request.path)
            return _error_response(InternalServerError())

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
            raise _SignatureRefused(exc) from None
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
            return _error_response(
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
                    _set_etag(response, str(etag))
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


class _SignatureRefused(Forbidden):
    def __init__(self, error: SignatureError) -> None:
        super().__init__(error.message)
        self.error = error

    name = "Forbidden"


def _signature_error_response(exc: _SignatureRefused) -> Response:
    return json_response(
        {"error": "signature", "code": exc.error.code, "message": exc.error.message, "status": 403},
        status=403,
    )

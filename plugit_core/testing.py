"""Test helpers for PlugIt services, proxies and plugins.

* :func:`serve` runs any WSGI app on a real loopback port in a thread, for the length of a
  ``with`` block, and gives its base URL.
* :func:`run_checks` checks a running service against the protocol (PROTOCOL.md sections 2 and 3,
  plus request signatures) and returns one :class:`CheckResult` per check; it never raises.
  ``plugit service --check URL`` prints them.
* :func:`compatibility_report` lists what a service written for the original PlugIt uses that
  behaves differently behind this proxy, with the porting advice; ``--check`` prints it too.
* :class:`ServiceConformance` is the same checks as a pytest test class: subclass it as
  ``TestMyService``, give it a ``plugit_service`` fixture returning ``(url, secret, actions)``,
  and each check runs as one test.  pytest is only imported when those tests run.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import re
import secrets
import socket
import string
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import quote, unquote, urlencode, urlsplit

from werkzeug.serving import ThreadedWSGIServer

from . import protocol
from .networks import parse_networks
from .signing import sign_request

__all__ = [
    "CHECK_NAMES",
    "CheckResult",
    "CompatibilityNote",
    "ServiceConformance",
    "compatibility_report",
    "free_port",
    "run_checks",
    "serve",
    "wait_for_port",
]


@contextlib.contextmanager
def serve(app: Callable[..., Any], host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
    """Serve ``app`` over real HTTP on ``host`` (a free port by default); yield its base URL."""
    server = ThreadedWSGIServer(host, port, app)  # (its request threads are daemons)
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    try:
        shown = f"[{host}]" if ":" in host else host
        yield f"http://{shown}:{server.port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now on ``host`` (IPv4 or IPv6)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def wait_for_port(host: str, port: int, timeout: float = 30.0) -> None:
    """Poll until a TCP server accepts connections on ``host:port``; raise TimeoutError after
    ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing listens on {host}:{port} after {timeout}s") from None
            time.sleep(0.05)


# -- service conformance checks ----------------------------------------------------------------


@dataclass(frozen=True)
class CheckResult:
    """The outcome of one conformance check.

    ``level`` says how much a failure matters: ``"error"`` breaks the protocol, ``"warning"`` is
    an unsafe but working set-up (a service that accepts unsigned requests).
    """

    name: str
    ok: bool
    message: str
    level: Literal["error", "warning"] = "error"


class _UnreachableError(Exception):
    """The service could not be reached or answered something that is not HTTP."""


@dataclass(frozen=True)
class _Reply:
    status: int
    headers: dict[str, str]  # lower-cased names
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body.decode("utf-8"))

    def describe(self) -> str:
        text = self.body[:120].decode("utf-8", "replace")
        return f"HTTP {self.status} {text!r}"


_MAX_BODY = 1 << 20
_PATH_SAFE = "/%:@!$&'()*+,;=~"
_FLAG_KEYS = (*protocol.RESTRICTING_KEYS, "public", "json_only", "xml_only", "no_template")
_TRAVERSALS = (
    "media/../../../../../../../../etc/passwd",
    "media/%2e%2e/%2e%2e/%2e%2e/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
    "media/..%2f..%2f..%2f..%2f..%2f..%2fetc%2fpasswd",
)


def _token(length: int = 32) -> str:
    alphabet = string.ascii_letters + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(length))


class _Caller:
    """Sends raw HTTP requests to one service (no path normalisation), signed when a secret is
    known.  After the first connection failure every later call fails at once."""

    def __init__(self, url: str, secret: str | None, timeout: float) -> None:
        split = urlsplit(url)
        if split.scheme not in ("http", "https") or not split.hostname:
            raise ValueError(f"not an http(s) URL: {url!r}")
        self.url = url
        self.secret = secret
        self.timeout = timeout
        self.https = split.scheme == "https"
        self.host = split.hostname
        self.port = split.port
        self.base = split.path.rstrip("/")
        self.unreachable: str | None = None

    def signature(
        self,
        method: str,
        endpoint: str,
        query: str = "",
        body: bytes = b"",
        headers: dict[str, str] | None = None,
    ) -> dict[str, str]:
        assert self.secret is not None
        path = unquote(f"{self.base}/{endpoint}")
        return sign_request(
            self.secret, method=method, path=path, query=query, body=body, headers=headers or {}
        )

    def call(
        self,
        method: str,
        endpoint: str,
        *,
        query: dict[str, str] | None = None,
        form: dict[str, str] | None = None,
        signed: bool | dict[str, str] = True,
    ) -> _Reply:
        """``endpoint`` is relative to the service URL and sent as is (already URL-encoded)."""
        if self.unreachable:
            raise _UnreachableError(f"not run: {self.unreachable}")
        qs = urlencode(query or {})
        body = urlencode(form).encode("ascii") if form is not None else b""
        headers = {"Accept": "application/json", "Connection": "close"}
        if form is not None:
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        if isinstance(signed, dict):
            headers.update(signed)
        elif signed and self.secret:
            headers.update(self.signature(method, endpoint, qs, body, headers))
        target = f"{self.base}/{endpoint}" + (f"?{qs}" if qs else "")
        cls = http.client.HTTPSConnection if self.https else http.client.HTTPConnection
        connection = cls(self.host, self.port, timeout=self.timeout)
        try:
            connection.request(method, target, body=body or None, headers=headers)
            response = connection.getresponse()
            with contextlib.closing(response):
                data = response.read(_MAX_BODY)
                names = {k.lower(): v for k, v in response.getheaders()}
                return _Reply(response.status, names, data)
        except (OSError, http.client.HTTPException) as exc:
            reason = str(exc) or type(exc).__name__
            self.unreachable = f"cannot reach {self.url}: {reason}"
            raise _UnreachableError(self.unreachable) from None
        finally:
            connection.close()

    def get_json_object(self, endpoint: str, **kwargs: Any) -> tuple[_Reply, dict[str, Any] | None]:
        reply = self.call("GET", endpoint, **kwargs)
        try:
            data = reply.json()
        except ValueError:
            return reply, None
        return reply, data if isinstance(data, dict) else None


def _action_endpoint(kind: str, path: str) -> str:
    return f"{kind}/{quote(path.lstrip('/'), safe=_PATH_SAFE)}"


# Each check returns (ok, message) or a CheckResult (for a warning).
Outcome = tuple[bool, str] | CheckResult


def _check_version(c: _Caller) -> Outcome:
    reply, data = c.get_json_object("version")
    if reply.status != 200 or data is None:
        return False, f"version must answer 200 with a JSON object, got {reply.describe()}"
    wanted = {"result": "Ok", "version": protocol.PROTOCOL_VERSION}
    wrong = {k: data.get(k) for k, v in wanted.items() if data.get(k) != v}
    name = data.get("protocol")
    if not isinstance(name, str) or not name:
        wrong["protocol"] = name
    if wrong:
        wanted["protocol"] = protocol.PROTOCOL_NAME
        return False, f"version must answer {wanted}; wrong: {wrong}"
    if name != protocol.PROTOCOL_NAME:  # accepted by the proxy, with a warning in its log
        return True, f"protocol {name!r} version 1 (see the compatibility report)"
    return True, f"protocol {protocol.PROTOCOL_NAME} version 1"


def _check_ping(c: _Caller) -> Outcome:
    token = _token()
    reply, data = c.get_json_object("ping", query={"data": token})
    if reply.status != 200 or data is None:
        return False, f"ping must answer 200 with a JSON object, got {reply.describe()}"
    if data.get("data") != token:
        return False, f"ping must echo the data parameter {token!r}, got {data.get('data')!r}"
    return True, "echoes its data parameter"


def _check_mail_requires_response_id(c: _Caller) -> Outcome:
    reply = c.call("POST", "mail", form={"message": "PlugIt conformance check"})
    if reply.status != 400:
        return False, f"mail without response_id must answer 400, got {reply.describe()}"
    return True, "400 without response_id"


def _check_mail_empty_response_id(c: _Caller) -> Outcome:
    reply = c.call("POST", "mail", form={"response_id": "", "message": "PlugIt conformance"})
    try:
        data = reply.json()
    except ValueError:
        data = None
    if reply.status != 200 or not isinstance(data, dict) or data.get("result") != "Error":
        expected = '{"result": "Error"}'
        return False, f"mail with an empty response_id must answer {expected}, {reply.describe()}"
    return True, 'empty response_id answers {"result": "Error"}'


def _meta_problems(meta: dict[str, Any]) -> list[str]:
    problems = []
    if not isinstance(meta.get("template_tag"), str):
        problems.append("template_tag must be a string")
    for key, value in meta.items():
        if key == "template_tag":
            continue
        if key in _FLAG_KEYS:
            good = isinstance(value, bool)
        elif key == "cache_time":
            good = isinstance(value, int) and not isinstance(value, bool) and value >= 0
        elif key == "cache_by_user":
            good = value is None or isinstance(value, bool)
        elif key == "user_info":
            good = isinstance(value, list) and all(isinstance(v, str) for v in value)
        elif key == "address_in_networks":
            good = isinstance(value, list) and all(isinstance(v, str) for v in value)
            if good:
                try:
                    parse_networks(value, setting="address_in_networks")
                except ValueError:
                    good = False
        elif key == "fragment_assets":  # an extension of protocol 1 (docs/fragments.md)
            good = (
                isinstance(value, dict)
                and set(value) <= {"css", "js"}
                and all(
                    isinstance(paths, list)
                    and len(paths) <= 8
                    and all(
                        isinstance(p, str) and p and not p.startswith("/") and ":" not in p
                        for p in paths
                    )
                    for paths in value.values()
                )
            )
        else:
            problems.append(f"unknown meta key {key!r}")
            continue
        if not good:
            problems.append(f"{key} has the wrong JSON type or value: {value!r}")
    return problems


def _check_meta(c: _Caller, path: str) -> Outcome:
    reply, meta = c.get_json_object(_action_endpoint("meta", path))
    if reply.status != 200 or meta is None:
        return False, f"meta must answer 200 with a JSON object, got {reply.describe()}"
    problems = _meta_problems(meta)
    cache_control = reply.headers.get("cache-control", "")
    if not any(p.strip().startswith("max-age=") for p in cache_control.split(",")):
        problems.append(f"Cache-Control must carry a max-age, got {cache_control!r}")
    if problems:
        return False, "; ".join(problems)
    return True, f"template_tag {meta['template_tag']!r}, keys {sorted(meta)}"


def _check_template(c: _Caller, path: str) -> Outcome:
    reply, meta = c.get_json_object(_action_endpoint("meta", path))
    if reply.status != 200 or meta is None or not isinstance(meta.get("template_tag"), str):
        return False, f"no usable meta to read the template tag from: {reply.describe()}"
    tag = meta["template_tag"]
    reply = c.call("GET", _action_endpoint("template", path))
    expected = 200 if tag else 404
    if reply.status != expected:
        why = "template_tag is set" if tag else "template_tag is empty (no template)"
        return False, f"template must answer {expected} since {why}, got {reply.describe()}"
    return True, f"{expected} ({len(reply.body)} bytes)" if tag else "404: no template"


def _check_meta_refuses_post(c: _Caller, path: str) -> Outcome:
    reply = c.call("POST", _action_endpoint("meta", path), form={})
    if reply.status != 405:
        return False, f"POST to meta must answer 405, got {reply.describe()}"
    return True, "405"


def _check_unknown_path(c: _Caller) -> Outcome:
    reply = c.call("GET", f"plugit-conformance-{_token(12)}")
    if reply.status != 404:
        return False, f"an unknown path must answer 404, got {reply.describe()}"
    return True, "404"


def _check_media_traversal(c: _Caller) -> Outcome:
    for endpoint in _TRAVERSALS:
        reply = c.call("GET", endpoint)
        if reply.status != 404:
            return False, f"{endpoint} must answer 404, got {reply.describe()}"
    return True, f"{len(_TRAVERSALS)} traversal paths answer 404"


def _check_signature_required(c: _Caller) -> Outcome:
    reply = c.call("GET", "ping", query={"data": "unsigned"}, signed=False)
    if c.secret is None:
        if reply.status == 200:
            return CheckResult(
                "signature_required",
                False,
                "the service accepts unsigned requests: any caller its network allow-list lets "
                "in can claim to be any user; give it a secret (docs/protocol.md, W1)",
                "warning",
            )
        if reply.status == 403:
            return False, "the service requires signed requests: give its secret to the checks"
        return False, f"unsigned ping answered {reply.describe()}"
    if reply.status != 403:
        return False, f"an unsigned request must be refused with 403, got {reply.describe()}"
    return True, "unsigned request refused with 403"


def _check_signed_request_accepted(c: _Caller) -> Outcome:
    token = _token()
    reply, data = c.get_json_object("ping", query={"data": token})
    if reply.status != 200 or data is None or data.get("data") != token:
        return False, f"a correctly signed ping must answer 200 and echo, got {reply.describe()}"
    return True, "signed request accepted"


def _check_replay_refused(c: _Caller) -> Outcome:
    query = {"data": _token()}
    signature = c.signature("GET", "ping", urlencode(query))
    first = c.call("GET", "ping", query=query, signed=signature)
    if first.status != 200:
        return False, f"the first signed request must pass, got {first.describe()}"
    second = c.call("GET", "ping", query=query, signed=signature)
    if second.status != 403:
        return False, f"the same signed request sent again must answer 403, got {second.describe()}"
    return True, "replayed request refused with 403"


@dataclass(frozen=True)
class _Check:
    name: str
    run: Callable[..., Outcome]
    per_action: bool = False
    needs_secret: bool = False


_CHECKS = (
    _Check("version", _check_version),
    _Check("ping", _check_ping),
    _Check("mail_requires_response_id", _check_mail_requires_response_id),
    _Check("mail_empty_response_id", _check_mail_empty_response_id),
    _Check("meta", _check_meta, per_action=True),
    _Check("template", _check_template, per_action=True),
    _Check("meta_refuses_post", _check_meta_refuses_post, per_action=True),
    _Check("unknown_path", _check_unknown_path),
    _Check("media_traversal", _check_media_traversal),
    _Check("signature_required", _check_signature_required),
    _Check("signed_request_accepted", _check_signed_request_accepted, needs_secret=True),
    _Check("replay_refused", _check_replay_refused, needs_secret=True),
)
CHECK_NAMES = tuple(check.name for check in _CHECKS)


def _run_one(check: _Check, caller: _Caller, actions: Sequence[str]) -> list[CheckResult]:
    if check.needs_secret and caller.secret is None:
        return []
    targets: Sequence[str | None] = actions if check.per_action else [None]
    results = []
    for path in targets:
        name = check.name if path is None else f"{check.name}[/{path.lstrip('/')}]"
        try:
            outcome = check.run(caller) if path is None else check.run(caller, path)
        except _UnreachableError as exc:
            outcome = (False, str(exc))
        except Exception as exc:  # a broken service must never crash the checks
            outcome = (False, f"the check could not run: {type(exc).__name__}: {exc}")
        if isinstance(outcome, CheckResult):
            results.append(outcome)
        else:
            results.append(CheckResult(name, outcome[0], outcome[1]))
    return results


def run_checks(
    url: str,
    *,
    secret: str | None = None,
    actions: Sequence[str] = ("",),
    timeout: float = 5.0,
    only: Sequence[str] | None = None,
) -> list[CheckResult]:
    """Check the service at ``url`` (its base URL, ``PI_BASE_URL`` included) and return one
    result per check.  Never raises for a broken or unreachable service.

    ``actions`` are action paths to check (``""`` is the root action; give real paths such as
    ``"show/5"``, not route patterns).  With ``secret`` every request is signed and the service
    must refuse unsigned and replayed ones; without it, a service accepting unsigned requests is
    reported as a warning.  ``only`` limits the run to some check names (:data:`CHECK_NAMES`).
    """
    if isinstance(actions, str):
        actions = [actions]
    try:
        caller = _Caller(url, secret, timeout)
    except ValueError as exc:
        return [CheckResult("url", False, str(exc))]
    unknown = set(only or ()) - set(CHECK_NAMES)
    if unknown:
        raise ValueError(f"unknown checks: {', '.join(sorted(unknown))}")
    results: list[CheckResult] = []
    for check in _CHECKS:
        if only is None or check.name in only:
            results.extend(_run_one(check, caller, actions))
    return results


# -- compatibility with the original PlugIt -------------------------------------------------------


@dataclass(frozen=True)
class CompatibilityNote:
    """One thing a service uses that behaves differently behind this proxy than behind the
    original PlugIt: ``what`` it uses (and ``where``: ``version``, an action path, a template),
    ``why`` it matters here, and the porting ``advice``."""

    where: str
    what: str
    why: str
    advice: str

    def __str__(self) -> str:
        return f"{self.where}: {self.what}. {self.why}. {self.advice}."


# Django template language constructs that Jinja2 does not read the same way.
_DJANGO_MARKERS = re.compile(
    r"\{%-?\s*(?:load|csrf_token|url|plugitInclude|plugitGetUser|ifequal|ifnotequal|empty|"
    r"comment|widthratio|cycle|firstof|now|regroup|spaceless|templatetag|verbatim|blocktrans|"
    r"blocktranslate|trans|translate|static|endifequal|endifnotequal|endcomment)\b"
    r"|\{%-?\s*with\s+\S+\s+as\s"
    r"|\bforloop\."
    r"|\|\s*[A-Za-z_]\w*:"
    r"|\.items\s*%\}"
)
_SCRIPT = re.compile(r"<script\b", re.IGNORECASE)
_JQUERY = re.compile(r"(?<![\w$])(?:\$\s*\(|\$\.\w|jQuery\b)")
_BOOTSTRAP3 = re.compile(
    r"\b(?:glyphicon|col-xs-\d|panel-(?:default|heading|body|footer|primary|info|success|"
    r"warning|danger)|btn-default|navbar-default|label-(?:default|primary|success|info|warning|"
    r"danger)|img-responsive|pull-(?:left|right)|hidden-xs|well)\b|\bdata-toggle="
)
_HANDLER = re.compile(r"<[^>]*\s(on[a-z]+)\s*=", re.IGNORECASE)
_REMOVED_ELEMENT = re.compile(r"<(style|link|iframe|frame|object|embed|base|meta)\b", re.I)
_JAVASCRIPT_URL = re.compile(r"""\b(?:href|src|action)\s*=\s*["']?\s*javascript:""", re.I)
_ABSOLUTE_URL = re.compile(
    r"""\b(?:href|src|action|formaction)\s*=\s*["']?\s*((?:[a-z][a-z0-9+.-]*:|//)[^"'\s>]*)""",
    re.IGNORECASE,
)


def _template_dialect(source: str) -> tuple[str, str | None]:
    """("jinja" | "django" | "neither", the Django dialect's refusal or None)."""
    from jinja2 import Environment, TemplateSyntaxError

    from .templating.django_dialect import translate

    def parses(text: str) -> bool:
        try:
            Environment(autoescape=True).parse(text)
        except TemplateSyntaxError:
            return False
        return True

    refusal = None
    try:
        django_ok = parses(translate(source, "template"))
    except TemplateSyntaxError as exc:
        django_ok, refusal = False, exc.message
    if _DJANGO_MARKERS.search(source):
        return "django", refusal
    if parses(source):
        return "jinja", None
    return ("django", None) if django_ok else ("neither", None)


def _template_notes(where: str, source: str) -> list[CompatibilityNote]:
    notes: list[CompatibilityNote] = []

    def note(what: str, why: str, advice: str) -> None:
        notes.append(CompatibilityNote(where, what, why, advice))

    dialect, refusal = _template_dialect(source)
    if dialect == "django":
        note(
            "Django template syntax",
            "this proxy renders Jinja2 unless the mount says otherwise",
            'set template_dialect = "django" on its mount (or port the template to Jinja2)',
        )
        if refusal:
            note(
                f"a construct the Django dialect does not support ({refusal.splitlines()[0]})",
                "the page is an error page until it is removed",
                "replace it: build links from ebuio_baseUrl, use the supported tags and filters "
                "(docs/writing-a-service.md)",
            )
    elif dialect == "neither":
        note(
            "a template that compiles in neither dialect",
            "the page is an error page",
            "fix the template's syntax",
        )
    sandboxed_advice = (
        'set trust = "full" on its mount if the site trusts this service as much as the '
        "proxy itself; else remove it"
    )
    if _SCRIPT.search(source):
        note(
            "<script> elements",
            'a mount with trust = "sandboxed" (the default) removes them and its pages run '
            "no script",
            sandboxed_advice,
        )
    handlers = sorted({m.group(1).lower() for m in _HANDLER.finditer(source)})
    if handlers:
        note(
            f"inline event handlers ({', '.join(handlers)})",
            "a sandboxed mount removes them",
            sandboxed_advice,
        )
    if _JAVASCRIPT_URL.search(source):
        note("javascript: URLs", "a sandboxed mount removes them", sandboxed_advice)
    if _JQUERY.search(source):
        note(
            "jQuery ($ or jQuery)",
            "the original layout loaded jQuery; this proxy's default theme does not",
            'set theme = "legacy" on its mount (jQuery and Bootstrap 3, served by the site), '
            'and trust = "full" for its scripts to run',
        )
    if _BOOTSTRAP3.search(source):
        note(
            "Bootstrap 3 classes or attributes (glyphicons, col-xs-*, panels, data-toggle)",
            "the default theme is Bootstrap 5, where they do nothing",
            'set theme = "legacy" on its mount, or move to Bootstrap 5 classes',
        )
    removed = sorted({m.group(1).lower() for m in _REMOVED_ELEMENT.finditer(source)})
    if removed:
        note(
            f"<{'>, <'.join(removed)}> elements",
            "a sandboxed mount removes them (style and stylesheets, frames, objects)",
            "use style attributes and the theme's classes, or " + sandboxed_advice,
        )
    absolute = sorted(
        {
            m.group(1)
            for m in _ABSOLUTE_URL.finditer(source)
            if not m.group(1).lower().startswith(("mailto:", "javascript:"))
        }
    )
    if absolute:
        shown = ", ".join(absolute[:3]) + (", ..." if len(absolute) > 3 else "")
        note(
            f"absolute links or sources ({shown})",
            "a sandboxed mount keeps only links, images and forms that stay on the site",
            "link to paths of the site (from ebuio_baseUrl and MEDIA_URL), or " + sandboxed_advice,
        )
    return notes


def _meta_notes(where: str, meta: dict[str, Any]) -> list[CompatibilityNote]:
    from .users import DEFAULT_USER_DATA

    notes: list[CompatibilityNote] = []
    if "cache_time" in meta and meta.get("cache_by_user") is None and meta.get("cache_time"):
        restricted = any(meta.get(k) for k in protocol.RESTRICTING_KEYS) or meta.get("user_info")
        if restricted:
            notes.append(
                CompatibilityNote(
                    where,
                    "@cache(time) without byUser on a restricted action",
                    "the original proxy shared the cached page between users; this one keeps "
                    "a copy per user",
                    "nothing to do, or @cache(time, byUser=False) if the page is the same for "
                    "everyone",
                )
            )
    unknown = sorted(set(meta) - {"template_tag", *_FLAG_KEYS, *_OTHER_META_KEYS})
    if unknown:
        notes.append(
            CompatibilityNote(
                where,
                f"meta keys {', '.join(map(repr, unknown))}",
                "neither the original nor this proxy reads them",
                "remove them, or check their spelling",
            )
        )
    user_info = meta.get("user_info")
    if isinstance(user_info, list):
        odd = [p for p in user_info if isinstance(p, str) and p not in DEFAULT_USER_DATA]
        if odd:
            notes.append(
                CompatibilityNote(
                    where,
                    f"user_info {', '.join(map(repr, odd))}",
                    "the proxy sends only the properties its user_data lists (the original "
                    "failed with a 500); these are not in the default list",
                    f"ask for {', '.join(DEFAULT_USER_DATA)}, or have the site add them to "
                    "user_data",
                )
            )
    return notes


_OTHER_META_KEYS = ("cache_time", "cache_by_user", "user_info", "address_in_networks")


def compatibility_report(
    url: str,
    *,
    secret: str | None = None,
    actions: Sequence[str] = ("",),
    timeout: float = 5.0,
) -> list[CompatibilityNote]:
    """What the service at ``url`` uses that behaves differently behind this proxy than behind
    the original PlugIt, each with the porting advice (docs/writing-a-service.md).

    Reads ``version``, an unsigned ``ping``, and the meta and template of each of ``actions``
    (it never calls an action).  Never raises: what cannot be read is left out (the
    conformance checks of :func:`run_checks` report it).
    """
    if isinstance(actions, str):
        actions = [actions]
    try:
        c = _Caller(url, secret, timeout)
    except ValueError:
        return []
    notes: list[CompatibilityNote] = []
    try:
        reply, data = c.get_json_object("version")
        name = data.get("protocol") if data else None
        if reply.status == 200 and isinstance(name, str) and name != protocol.PROTOCOL_NAME:
            notes.append(
                CompatibilityNote(
                    "version",
                    f"protocol name {name!r}",
                    f"the proxy accepts any name with version 1, but logs a warning for a name "
                    f"other than {protocol.PROTOCOL_NAME!r} at every start",
                    f"set PI_API_NAME = {protocol.PROTOCOL_NAME!r} (this library's default)",
                )
            )
        if secret is None:
            token = _token()
            unsigned, echo = c.get_json_object("ping", query={"data": token}, signed=False)
            if unsigned.status == 200 and echo is not None and echo.get("data") == token:
                notes.append(
                    CompatibilityNote(
                        "ping",
                        "unsigned requests accepted (no secret)",
                        "the original had no signatures; without one, any caller the network "
                        "allow-list lets in can claim to be any user",
                        "give the service a secret (PI_SECRET, or plugit service --secret) and "
                        "the same secret on its mount",
                    )
                )
    except _UnreachableError:
        return notes
    for path in actions:
        where = "/" + path.lstrip("/")
        try:
            reply, meta = c.get_json_object(_action_endpoint("meta", path))
            if reply.status != 200 or meta is None:
                continue
            notes.extend(_meta_notes(where, meta))
            if not meta.get("template_tag") or meta.get("json_only") or meta.get("xml_only"):
                continue
            reply = c.call("GET", _action_endpoint("template", path))
            if reply.status == 200:
                source = reply.body.decode("utf-8", "replace")
                notes.extend(_template_notes(f"{where} (template)", source))
        except _UnreachableError:
            break
        except Exception as exc:  # a broken service never crashes the report
            notes.append(
                CompatibilityNote(
                    where, "an answer the report cannot read", str(exc), "see the checks"
                )
            )
    return notes


class ServiceConformance:
    """The conformance checks as pytest tests, one test per check.

    Subclass it in a test module and provide the service::

        class TestMyService(ServiceConformance):
            @pytest.fixture
            def plugit_service(self):
                with serve(my_app) as url:
                    yield url, "my-shared-secret-0123456789", ["", "show/5"]

    For one server per class, write ``@pytest.fixture(scope="class")`` above ``@classmethod``
    (pytest deprecates class-scoped fixtures on instance methods).  A warning (a service that
    accepts unsigned requests) is reported as a skipped test.
    """

    timeout: float = 5.0

    def _expect(self, plugit_service: tuple[str, str | None, Sequence[str]], name: str) -> None:
        import pytest

        url, secret, actions = plugit_service
        results = run_checks(url, secret=secret, actions=actions, timeout=self.timeout, only=[name])
        if not results:
            pytest.skip(f"{name}: only checked when a secret is given")
        errors = [r for r in results if not r.ok and r.level == "error"]
        warnings = [r for r in results if not r.ok and r.level == "warning"]
        if errors:
            pytest.fail("\n".join(f"{r.name}: {r.message}" for r in errors), pytrace=False)
        if warnings:
            pytest.skip("; ".join(f"{r.name}: {r.message}" for r in warnings))

    def test_version(self, plugit_service: Any) -> None:
        self._expect(plugit_service, "version")

    def test_ping(self, plugit_service: Any) -> None:
        self._expect(plugit_service, "ping")

    def test_mail_requires_response_id(self, plugit_service: Any) -> None:
        self._expect(plugit_service, "mail_requires_response_id")

    def test_mail_empty_response_id(self, plugit_service: Any) -> None:
        self._expect(plugit_service, "mail_empty_response_id")

    def test_meta(self, plugit_service: Any) -> None:
        self._expect(plugit_service, "meta")

    def test_template(self, plugit_service: Any) -> None:
        self._expect(plugit_service, "template")

    def test_meta_refuses_post(self, plugit_service: Any) -> None:
        self._expect(plugit_service, "meta_refuses_post")

    def test_unknown_path(self, plugit_service: Any) -> None:
        self._expect(plugit_service, "unknown_path")

    def test_media_traversal(self, plugit_service: Any) -> None:
        self._expect(plugit_service, "media_traversal")

    def test_signature_required(self, plugit_service: Any) -> None:
        self._expect(plugit_service, "signature_required")

    def test_signed_request_accepted(self, plugit_service: Any) -> None:
        self._expect(plugit_service, "signed_request_accepted")

    def test_replay_refused(self, plugit_service: Any) -> None:
        self._expect(plugit_service, "replay_refused")


# -- directory (UserStore) conformance -------------------------------------------------------------


class FakeClock:
    """A clock for the failed-login records that tests move forward by hand."""

    def __init__(self, start: float | None = None) -> None:
        self.now = time.time() if start is None else start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class UserStoreConformance:
    """The contract of :class:`plugit_core.identity.UserStore` as pytest tests.

    Subclass it in a test module and provide a fresh, empty store per test::

        class TestMyStore(UserStoreConformance):
            @pytest.fixture
            def store(self, tmp_path):
                store = MyStore(...)
                yield store
                store.close()

    A store whose failed-login records read an attribute ``clock`` (a callable giving the time)
    gets a :class:`FakeClock` there, and the window tests step it forward; for any other store
    they wait about a second of real time.  pytest is only imported when the tests run.
    """

    threads: int = 8

    # -- helpers ----------------------------------------------------------------------------------

    @staticmethod
    def _raises(exc: type[BaseException]) -> Any:
        import pytest

        return pytest.raises(exc)

    @staticmethod
    def _fake_clock(store: Any) -> FakeClock | None:
        if not callable(getattr(store, "clock", None)):
            return None
        clock = FakeClock()
        store.clock = clock
        return clock

    @staticmethod
    def _roles(user: Any) -> dict[str, str]:
        return {
            service: "admin" if service in user.admin_of else "member"
            for service in user.member_of | user.admin_of
        }

    @staticmethod
    def _orgas(user: Any) -> dict[str, bool]:
        return {orga.name: orga.is_admin for orga in user.orgas}

    # -- users ------------------------------------------------------------------------------------

    def test_is_a_user_store(self, store: Any) -> None:
        from .identity import UserStore

        assert isinstance(store, UserStore)

    def test_create_and_get_user(self, store: Any) -> None:
        user = store.create_user(
            "alice",
            email="alice@example.org",
            first_name="Alice",
            last_name="Liddell",
            password_hash="pbkdf2:sha256:1000$salt$hash",  # noqa: S106
        )
        assert user.pk is not None and user.is_authenticated and not user.is_superuser
        assert (user.username, user.email) == ("alice", "alice@example.org")
        assert (user.first_name, user.last_name) == ("Alice", "Liddell")
        assert user.extra["source"] == "local" and isinstance(user.extra["uuid"], str)
        assert not user.member_of and not user.admin_of and user.orgas == ()
        for key in (user.pk, str(user.pk), user.extra["uuid"]):
            found = store.get_user(key)
            assert found is not None and found.username == "alice" and found.pk == user.pk
        for missing in (None, 987654, "987654", "no-such-uuid", ""):
            assert store.get_user(missing) is None
        boss = store.create_user("boss", is_superuser=True)
        assert boss.is_superuser and boss.is_member("any") and boss.is_admin("any")
        assert store.get_user(boss.pk).is_superuser

    def test_user_names_are_unique_and_case_insensitive(self, store: Any) -> None:
        alice = store.create_user("Alice")
        for taken in ("Alice", "alice", "ALICE"):
            with self._raises(ValueError):
                store.create_user(taken)
        with self._raises(ValueError):
            store.create_user("   ")
        assert store.get_by_username("aLiCe").pk == alice.pk
        assert store.get_by_username("alice").username == "Alice"
        assert store.get_by_username("bob") is None
        assert [u.username for u in store.list_users()] == ["Alice"]

    def test_list_users(self, store: Any) -> None:
        assert store.list_users() == []
        for name in ("carol", "alice", "bob"):
            store.create_user(name)
        store.set_active(store.get_by_username("bob").pk, False)
        assert [u.username for u in store.list_users()] == ["alice", "bob", "carol"]

    def test_password_hash(self, store: Any) -> None:
        alice = store.create_user("alice", password_hash="hash-one")  # noqa: S106
        bob = store.create_user("bob")
        assert store.password_hash(alice.pk) == "hash-one"
        assert store.password_hash(bob.pk) is None
        store.set_password_hash(alice.pk, "hash-two")
        store.set_password_hash(bob.pk, "hash-three")
        assert store.password_hash(alice.pk) == "hash-two"
        assert store.password_hash(bob.pk) == "hash-three"
        assert store.password_hash(987654) is None
        with self._raises(KeyError):
            store.set_password_hash(987654, "hash")

    def test_active(self, store: Any) -> None:
        alice = store.create_user("alice")
        assert store.is_active(alice.pk) is True
        store.set_active(alice.pk, False)
        assert store.is_active(alice.pk) is False
        assert store.get_user(alice.pk) is not None  # disabled, not deleted
        store.set_active(alice.pk, True)
        assert store.is_active(alice.pk) is True
        assert store.is_active(987654) is False
        with self._raises(KeyError):
            store.set_active(987654, False)

    def test_session_generation(self, store: Any) -> None:
        alice = store.create_user("alice")
        bob = store.create_user("bob")
        assert store.session_generation(alice.pk) == 0
        store.end_sessions(alice.pk)
        store.end_sessions(alice.extra["uuid"])  # by UUID too
        assert store.session_generation(alice.pk) == 2
        assert store.session_generation(str(alice.pk)) == 2
        assert store.session_generation(alice.extra["uuid"]) == 2
        assert store.session_generation(bob.pk) == 0  # one user's logout only
        for unknown in (987654, "no-such-uuid", None, "", "1\x00", 10**30, True):
            assert store.session_generation(unknown) == 0
        with self._raises(KeyError):
            store.end_sessions(987654)
        store.set_active(alice.pk, False)  # other changes keep it
        store.set_password_hash(alice.pk, "hash")
        assert store.session_generation(alice.pk) == 2

    def test_threads_ending_sessions(self, store: Any) -> None:
        """Concurrent logouts are all counted (the generation only grows)."""
        alice = store.create_user("alice")
        import concurrent.futures

        with concurrent.futures.ThreadPoolExecutor(self.threads) as pool:
            list(pool.map(lambda _: store.end_sessions(alice.pk), range(4 * self.threads)))
        assert store.session_generation(alice.pk) == 4 * self.threads

    # -- services ---------------------------------------------------------------------------------

    def test_grant_and_revoke(self, store: Any) -> None:
        alice = store.create_user("alice")
        store.grant(alice.pk, "polls", "member")
        store.grant(alice.pk, "wiki", "admin")
        user = store.get_user(alice.pk)
        assert self._roles(user) == {"polls": "member", "wiki": "admin"}
        assert user.is_member("polls") and not user.is_admin("polls")
        assert user.is_member("wiki") and user.is_admin("wiki")
        assert not user.is_member("other")
        store.grant(alice.pk, "wiki", "member")  # a new grant replaces the old role
        store.grant(alice.pk, "polls", "admin")
        assert self._roles(store.get_user(alice.pk)) == {"polls": "admin", "wiki": "member"}
        store.revoke(alice.pk, "polls")
        store.revoke(alice.pk, "never-granted")
        store.revoke(987654, "polls")  # no error
        assert self._roles(store.get_user(alice.pk)) == {"wiki": "member"}
        with self._raises(ValueError):
            store.grant(alice.pk, "wiki", "owner")
        with self._raises(KeyError):
            store.grant(987654, "wiki", "member")

    def test_grant_every_service(self, store: Any) -> None:
        alice = store.create_user("alice")
        store.grant(alice.pk, "*", "admin")
        user = store.get_user(alice.pk)
        assert user.is_member("anything") and user.is_admin("anything")

    def test_members(self, store: Any) -> None:
        names = ("dora", "bob", "carl", "alice", "erin")
        users = {name: store.create_user(name) for name in names}
        store.grant(users["bob"].pk, "polls", "member")
        store.grant(users["alice"].pk, "polls", "admin")
        store.grant(users["dora"].pk, "*", "member")
        store.grant(users["carl"].pk, "wiki", "admin")
        store.grant(users["erin"].pk, "polls", "member")
        store.set_active(users["erin"].pk, False)  # disabled users are nobody's members
        assert [u.username for u in store.members("polls")] == ["alice", "bob", "dora"]
        assert [u.username for u in store.members("wiki")] == ["carl", "dora"]
        assert [u.username for u in store.members("none")] == ["dora"]
        assert store.members("polls")[0].is_admin("polls")

    # -- organisations ----------------------------------------------------------------------------

    def test_organisations(self, store: Any) -> None:
        assert store.list_orgas() == []
        rts = store.create_orga("RTS", "chrts")
        ebu = store.create_orga("EBU", "zzebu")
        bare = store.create_orga("Bare")
        assert (rts.name, rts.codops, bare.codops) == ("RTS", "chrts", "")
        with self._raises(ValueError):
            store.create_orga("RTS")
        assert store.get_orga(ebu.pk).name == "EBU"
        assert store.get_orga(str(ebu.pk)).codops == "zzebu"
        for missing in (987654, "987654", "garbage", None):
            assert store.get_orga(missing) is None
        assert [o.name for o in store.list_orgas()] == ["Bare", "EBU", "RTS"]

    def test_orga_membership(self, store: Any) -> None:
        alice = store.create_user("alice")
        rts = store.create_orga("RTS", "chrts")
        ebu = store.create_orga("EBU", "zzebu")
        store.add_to_orga(alice.pk, rts.pk)
        store.add_to_orga(alice.pk, ebu.pk, admin=True)
        user = store.get_user(alice.pk)
        assert self._orgas(user) == {"RTS": False, "EBU": True}
        assert [o.name for o in user.orgas] == ["EBU", "RTS"]  # by name
        assert user.orga(rts.pk).codops == "chrts" and user.orga(str(rts.pk)) is not None
        service_user = user.for_service("polls", user.orga(ebu.pk))
        assert service_user.ebuio_orga_member and service_user.ebuio_orga_admin
        store.add_to_orga(alice.pk, rts.pk, admin=True)  # joining again changes the role
        store.add_to_orga(alice.pk, ebu.pk, admin=False)
        assert self._orgas(store.get_user(alice.pk)) == {"RTS": True, "EBU": False}
        store.remove_from_orga(alice.pk, rts.pk)
        store.remove_from_orga(alice.pk, 987654)  # no error
        store.remove_from_orga(987654, ebu.pk)
        assert self._orgas(store.get_user(alice.pk)) == {"EBU": False}
        with self._raises(KeyError):
            store.add_to_orga(alice.pk, 987654)
        with self._raises(KeyError):
            store.add_to_orga(987654, rts.pk)

    # -- external directories ---------------------------------------------------------------------

    def test_sync_creates_then_updates(self, store: Any) -> None:
        fields = {"username": "dana", "email": "dana@corp.example", "first_name": "Dana"}
        dana = store.sync_external_user("ldap", "uid=dana", fields)
        assert dana.username == "dana" and dana.email == "dana@corp.example"
        assert dana.extra["source"] == "ldap" and store.password_hash(dana.pk) is None
        again = store.sync_external_user(
            "ldap", "uid=dana", {"username": "dana", "email": "d@corp.example"}
        )
        assert again.pk == dana.pk and again.email == "d@corp.example"
        assert again.first_name == "Dana"  # fields not given are kept
        assert [u.username for u in store.list_users()] == ["dana"]
        assert store.get_user(dana.extra["uuid"]).pk == dana.pk

    def test_sync_never_takes_over_an_account(self, store: Any) -> None:
        local = store.create_user("erin", email="erin@local.example", password_hash="h")  # noqa: S106
        external = store.sync_external_user("oidc", "sub-1", {"username": "erin", "email": "x@y"})
        assert external.pk != local.pk and external.username.lower() != "erin"
        assert store.get_by_username("erin").pk == local.pk
        assert store.get_user(local.pk).email == "erin@local.example"
        assert store.password_hash(local.pk) == "h"
        other = store.sync_external_user("ldap", "uid=erin", {"username": "erin"})
        assert len({local.pk, external.pk, other.pk}) == 3
        assert len({u.username.lower() for u in store.list_users()}) == 3
        nameless = store.sync_external_user("oidc", "sub-2", {})
        assert nameless.username  # some name, from the external id

    def test_sync_replaces_its_own_grants_only(self, store: Any) -> None:
        pk = store.sync_external_user(
            "oidc",
            "sub-1",
            {"username": "fay", "services": {"polls": "admin", "wiki": "member"}},
        ).pk
        store.grant(pk, "forum", "member")  # local grants survive every sync
        store.grant(pk, "wiki", "member")
        store.sync_external_user("ldap", "uid=fay", {"username": "fay2"})  # another user
        user = store.sync_external_user("oidc", "sub-1", {"services": {"news": "member"}})
        assert self._roles(user) == {"news": "member", "forum": "member", "wiki": "member"}
        user = store.sync_external_user("oidc", "sub-1", {"services": {"wiki": "admin"}})
        assert self._roles(user) == {"forum": "member", "wiki": "admin"}
        user = store.sync_external_user("oidc", "sub-1", {"services": {}})
        assert self._roles(user) == {"forum": "member", "wiki": "member"}  # local wiki kept
        store.sync_external_user("oidc", "sub-1", {"services": {"polls": "member"}})
        user = store.sync_external_user("oidc", "sub-1", {"email": "fay@x.example"})
        assert "polls" in user.member_of  # no "services" key: grants unchanged
        with self._raises(ValueError):
            store.sync_external_user("oidc", "sub-1", {"services": {"polls": "owner"}})
        assert self._roles(store.get_user(pk)) == {
            "forum": "member",
            "polls": "member",
            "wiki": "member",
        }

    def test_sync_replaces_its_own_orgas_only(self, store: Any) -> None:
        local_orga = store.create_orga("Local", "zzloc")
        pk = store.sync_external_user(
            "ldap", "uid=gus", {"username": "gus", "orgas": {"RTS": "admin", "BBC": "member"}}
        ).pk
        store.add_to_orga(pk, local_orga.pk)
        assert {o.name for o in store.list_orgas()} == {"Local", "RTS", "BBC"}  # created by name
        user = store.sync_external_user("ldap", "uid=gus", {"orgas": {"BBC": "admin"}})
        assert self._orgas(user) == {"BBC": True, "Local": False}
        user = store.sync_external_user("ldap", "uid=gus", {"orgas": {}})
        assert self._orgas(user) == {"Local": False}
        assert {o.name for o in store.list_orgas()} == {"Local", "RTS", "BBC"}

    def test_sync_keeps_the_account_state(self, store: Any) -> None:
        pk = store.sync_external_user("oidc", "sub-9", {"username": "hal"}).pk
        store.set_active(pk, False)
        store.sync_external_user("oidc", "sub-9", {"username": "hal", "email": "h@x"})
        assert store.is_active(pk) is False  # a login elsewhere never re-enables an account

    # -- failed logins ----------------------------------------------------------------------------

    def test_failures(self, store: Any) -> None:
        for _ in range(3):
            store.record_failure("login:user:alice")
        store.record_failure("login:addr:10.0.0.1")
        assert store.count_failures("login:user:alice", 60) == 3
        assert store.count_failures("login:addr:10.0.0.1", 60) == 1
        assert store.count_failures("login:user:bob", 60) == 0
        store.clear_failures("login:user:alice")
        store.clear_failures("login:user:nobody")
        assert store.count_failures("login:user:alice", 60) == 0
        assert store.count_failures("login:addr:10.0.0.1", 60) == 1

    def test_failures_leave_the_window(self, store: Any) -> None:
        clock = self._fake_clock(store)
        store.record_failure("k")
        if clock is not None:
            clock.advance(30)
        else:
            time.sleep(1.2)
        store.record_failure("k")
        if clock is not None:
            assert store.count_failures("k", 60) == 2
            assert store.count_failures("k", 10) == 1
            clock.advance(61)
        else:
            assert store.count_failures("k", 0.6) == 1
            time.sleep(0.7)
        assert store.count_failures("k", 60 if clock is not None else 0.6) == 0

    # -- many threads -----------------------------------------------------------------------------

    def test_threads_creating_users(self, store: Any) -> None:
        import concurrent.futures

        def work(n: int) -> list[Any]:
            made = []
            for i in range(5):
                user = store.create_user(f"user-{n}-{i}")
                store.grant(user.pk, "polls", "member")
                store.record_failure("shared-key")
                made.append(user.pk)
                assert store.get_user(user.pk).is_member("polls")
            return made

        with concurrent.futures.ThreadPoolExecutor(self.threads) as pool:
            pks = [pk for made in pool.map(work, range(self.threads)) for pk in made]
        assert len(set(pks)) == self.threads * 5
        assert len(store.list_users()) == self.threads * 5
        assert len(store.members("polls")) == self.threads * 5
        assert store.count_failures("shared-key", 3600) == self.threads * 5

    def test_threads_racing_for_one_name(self, store: Any) -> None:
        import concurrent.futures

        def attempt(_: int) -> bool:
            try:
                store.create_user("contested")
            except ValueError:
                return False
            return True

        with concurrent.futures.ThreadPoolExecutor(self.threads) as pool:
            results = list(pool.map(attempt, range(self.threads * 2)))
        assert results.count(True) == 1
        assert [u.username for u in store.list_users()] == ["contested"]

    def test_threads_syncing_one_external_user(self, store: Any) -> None:
        import concurrent.futures

        def sync(n: int) -> Any:
            fields = {"username": "ivy", "services": {f"svc{n % 3}": "member"}}
            return store.sync_external_user("oidc", "sub-ivy", fields).pk

        with concurrent.futures.ThreadPoolExecutor(self.threads) as pool:
            pks = set(pool.map(sync, range(self.threads * 2)))
        assert len(pks) == 1 and len(store.list_users()) == 1
        assert len(store.get_user(pks.pop()).member_of) == 1  # the last sync's grants only


# -- billing store conformance ---------------------------------------------------------------------


def _billing_clock() -> Any:
    """``(now, timedelta)``: the current aware UTC time, for the billing checks."""
    from datetime import datetime, timedelta, timezone

    return datetime.now(timezone.utc), timedelta


class BillingStoreConformance:
    """The contract of a billing backend (``plugit_backends.billing.BillingStore``) as pytest
    tests.

    Subclass it in a test module and provide a fresh, empty store::

        class TestMyBillingStore(BillingStoreConformance):
            @pytest.fixture
            def store(self, tmp_path):
                store = MyBillingStore(tmp_path / "billing.db")
                yield store
                store.close()

    The checks use the real clock, with margins of days around it.  Unknown plans and
    subscriptions must raise ``KeyError`` (or a subclass), bad input ``ValueError`` (or a
    subclass), and a refused call must change nothing.
    """

    # -- plans ------------------------------------------------------------------------------------

    def test_plans_belong_to_their_service(self, store: Any) -> None:
        plan = store.create_plan("polls", "pro", "Pro", "More polls")
        assert (plan.service, plan.code, plan.label, plan.description) == (
            "polls",
            "pro",
            "Pro",
            "More polls",
        )
        store.create_plan("polls", "basic", "Basic")
        store.create_plan("wiki", "pro", "Wiki Pro")
        assert [p.code for p in store.list_plans("polls")] == ["basic", "pro"]
        assert [p.label for p in store.list_plans("wiki")] == ["Wiki Pro"]
        assert store.list_plans("nothing") == []

    def test_a_plan_code_is_unique_in_its_service(self, store: Any) -> None:
        import pytest

        store.create_plan("polls", "pro", "Pro")
        with pytest.raises(ValueError):
            store.create_plan("polls", "pro", "Another Pro")
        assert [p.label for p in store.list_plans("polls")] == ["Pro"]

    def test_bad_plans_are_refused(self, store: Any) -> None:
        import pytest

        for code, label in (("", "Empty"), ("a b", "Space"), ("x" * 65, "Long"), ("ok", "")):
            with pytest.raises(ValueError):
                store.create_plan("polls", code, label)
        assert store.list_plans("polls") == []

    # -- grants -----------------------------------------------------------------------------------

    def test_grant_to_a_user(self, store: Any) -> None:
        now, delta = _billing_clock()
        store.create_plan("polls", "pro", "Pro")
        sub = store.grant("polls", "pro", user_pk=7)
        assert (sub.service, sub.plan, sub.label, sub.user_pk, sub.orga_pk) == (
            "polls",
            "pro",
            "Pro",
            7,
            None,
        )
        assert sub.state == "active" and sub.active is True and sub.end is None
        assert sub.start.tzinfo is not None and abs(sub.start - now) < delta(minutes=1)
        assert sub.created.tzinfo is not None
        assert store.get(sub.id) == sub
        assert store.subscriptions("polls", user_pk=7) == [sub]
        assert store.labels("polls", 7, []) == ["Pro"]
        assert store.labels("polls", 8, []) == []

    def test_grant_needs_exactly_one_holder(self, store: Any) -> None:
        import pytest

        store.create_plan("polls", "pro", "Pro")
        with pytest.raises(ValueError):
            store.grant("polls", "pro")
        with pytest.raises(ValueError):
            store.grant("polls", "pro", user_pk=1, orga_pk=2)
        assert store.subscriptions("polls", include_inactive=True) == []

    def test_grant_of_an_unknown_plan(self, store: Any) -> None:
        import pytest

        store.create_plan("polls", "pro", "Pro")
        with pytest.raises(KeyError):
            store.grant("polls", "gold", user_pk=1)
        with pytest.raises(KeyError):
            store.grant("wiki", "pro", user_pk=1)  # another service's plan
        assert store.subscriptions("polls", include_inactive=True) == []
        assert store.subscriptions("wiki", include_inactive=True) == []

    def test_the_end_comes_after_the_start(self, store: Any) -> None:
        import pytest

        now, delta = _billing_clock()
        store.create_plan("polls", "pro", "Pro")
        with pytest.raises(ValueError):
            store.grant("polls", "pro", user_pk=1, start=now, end=now - delta(days=1))
        with pytest.raises(ValueError):
            store.grant("polls", "pro", user_pk=1, start=now, end=now)
        with pytest.raises(ValueError):
            store.grant("polls", "pro", user_pk=1, end=now - delta(days=1))  # start: now
        assert store.subscriptions("polls", include_inactive=True) == []

    def test_naive_times_are_utc(self, store: Any) -> None:
        from datetime import datetime, timezone

        store.create_plan("polls", "pro", "Pro")
        sub = store.grant(
            "polls", "pro", user_pk=1, start=datetime(2001, 2, 3, 4, 5), end=datetime(2101, 1, 1)
        )
        assert sub.start == datetime(2001, 2, 3, 4, 5, tzinfo=timezone.utc)
        assert sub.end == datetime(2101, 1, 1, tzinfo=timezone.utc)

    # -- activeness -------------------------------------------------------------------------------

    def test_only_current_subscriptions_give_labels(self, store: Any) -> None:
        now, delta = _billing_clock()
        day = delta(days=1)
        for code in ("past", "current", "future", "open"):
            store.create_plan("polls", code, code.title())
        past = store.grant("polls", "past", user_pk=1, start=now - 3 * day, end=now - day)
        current = store.grant("polls", "current", user_pk=1, start=now - day, end=now + day)
        future = store.grant("polls", "future", user_pk=1, start=now + day, end=now + 3 * day)
        store.grant("polls", "open", user_pk=1, start=now - day)
        assert store.labels("polls", 1, []) == ["Current", "Open"]
        assert (past.state, past.active) == ("expired", False)
        assert (current.state, current.active) == ("active", True)
        assert (future.state, future.active) == ("active", False)
        assert [s.plan for s in store.subscriptions("polls", user_pk=1)] == ["current", "open"]
        everything = store.subscriptions("polls", user_pk=1, include_inactive=True)
        assert [s.plan for s in everything] == ["past", "current", "future", "open"]

    def test_labels_are_sorted_and_unique(self, store: Any) -> None:
        store.create_plan("polls", "b", "Beta")
        store.create_plan("polls", "a", "Alpha")
        store.grant("polls", "b", user_pk=1)
        store.grant("polls", "b", user_pk=1)
        store.grant("polls", "a", orga_pk=5)
        assert store.labels("polls", 1, [5]) == ["Alpha", "Beta"]

    def test_labels_are_per_service(self, store: Any) -> None:
        store.create_plan("polls", "pro", "Pro")
        store.create_plan("wiki", "pro", "Wiki Pro")
        store.grant("polls", "pro", user_pk=1)
        assert store.labels("wiki", 1, []) == []
        assert store.subscriptions("wiki", user_pk=1, include_inactive=True) == []
        labels_by_service = getattr(store, "labels_by_service", None)
        if labels_by_service is not None:
            store.grant("wiki", "pro", orga_pk=3)
            assert labels_by_service(1, [3]) == {"polls": ["Pro"], "wiki": ["Wiki Pro"]}
            assert labels_by_service(2, []) == {}

    def test_organisations_give_labels_to_their_members(self, store: Any) -> None:
        store.create_plan("polls", "team", "Team")
        sub = store.grant("polls", "team", orga_pk=10)
        assert (sub.user_pk, sub.orga_pk) == (None, 10)
        assert store.labels("polls", 1, [10]) == ["Team"]
        assert store.labels("polls", 1, [11, 10]) == ["Team"]
        assert store.labels("polls", 1, [11]) == []
        assert store.labels("polls", 10, []) == []  # an orga pk is no user pk
        assert store.subscriptions("polls", orga_pk=10) == [sub]
        assert store.subscriptions("polls", user_pk=10) == []

    # -- cancellation -----------------------------------------------------------------------------

    def test_cancel_ends_the_subscription_now(self, store: Any) -> None:
        now, delta = _billing_clock()
        store.create_plan("polls", "pro", "Pro")
        sub = store.grant("polls", "pro", user_pk=1, start=now - delta(days=1))
        cancelled = store.cancel(sub.id)
        assert cancelled.id == sub.id and cancelled.state == "cancelled"
        assert cancelled.active is False and cancelled.cancelled is not None
        assert cancelled.end is not None and abs(cancelled.end - now) < delta(minutes=1)
        assert store.labels("polls", 1, []) == []
        assert store.subscriptions("polls", user_pk=1) == []
        assert store.get(sub.id).state == "cancelled"
        assert store.cancel(sub.id) == store.get(sub.id)  # again: nothing changes

    def test_cancel_later(self, store: Any) -> None:
        now, delta = _billing_clock()
        store.create_plan("polls", "pro", "Pro")
        sub = store.grant("polls", "pro", user_pk=1)
        scheduled = store.cancel(sub.id, at=now + delta(days=2))
        assert scheduled.state == "active" and scheduled.active is True
        assert scheduled.end == now + delta(days=2)
        assert store.labels("polls", 1, []) == ["Pro"]

    def test_cancel_keeps_an_earlier_end(self, store: Any) -> None:
        now, delta = _billing_clock()
        store.create_plan("polls", "pro", "Pro")
        sub = store.grant("polls", "pro", user_pk=1, end=now + delta(days=1))
        assert store.cancel(sub.id, at=now + delta(days=5)).end == now + delta(days=1)

    def test_cancel_refusals(self, store: Any) -> None:
        import pytest

        now, delta = _billing_clock()
        store.create_plan("polls", "pro", "Pro")
        with pytest.raises(KeyError):
            store.cancel(424242)
        assert store.get(424242) is None
        old = store.grant(
            "polls", "pro", user_pk=1, start=now - delta(days=3), end=now - delta(days=1)
        )
        with pytest.raises(ValueError):
            store.cancel(old.id)
        assert store.get(old.id) == old

    # -- threads ----------------------------------------------------------------------------------

    def test_grants_from_many_threads(self, store: Any) -> None:
        import concurrent.futures

        store.create_plan("polls", "pro", "Pro")

        def work(n: int) -> list[int]:
            return [store.grant("polls", "pro", user_pk=n).id for _ in range(10)]

        with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
            ids = [i for batch in pool.map(work, range(8)) for i in batch]
        assert len(set(ids)) == 80
        assert len(store.subscriptions("polls")) == 80
        assert all(store.labels("polls", n, []) == ["Pro"] for n in range(8))


# -- mail queue conformance ------------------------------------------------------------------------


class MailQueueConformance:
    """The contract of :class:`plugit_core.kinds.mailqueue.MailQueue` as pytest tests.

    Subclass it in a test module and provide two fixtures: ``queue``, a fresh, empty queue, and
    ``other_queue``, a second queue object on the same storage (what another proxy process
    opens)::

        class TestMyMailQueue(MailQueueConformance):
            @pytest.fixture
            def queue(self, tmp_path):
                queue = MyMailQueue(tmp_path / "mail")
                yield queue
                queue.close()

            @pytest.fixture
            def other_queue(self, queue, tmp_path):
                other = MyMailQueue(tmp_path / "mail")
                yield other
                other.close()

    The clock moves through the protocol's ``clock`` attribute: the checks put one
    :class:`FakeClock` on both objects and step it.  pytest is only imported when the tests run.
    """

    threads: int = 4

    # -- helpers ----------------------------------------------------------------------------------

    @staticmethod
    def _clock(*queues: Any) -> FakeClock:
        clock = FakeClock(1_700_000_000.0)
        for queue in queues:
            queue.clock = clock
        return clock

    @staticmethod
    def _enqueue(queue: Any, n: int = 1, *, service: str = "polls", **fields: Any) -> list[int]:
        options: dict[str, Any] = {
            "service": service,
            "sender": "PlugIt <no-reply@example.org>",
            "recipients": ["dana@example.org"],
            "subject": "Your vote",
            "body": "Please vote.",
            "html": False,
            "reply_to": None,
            "message_id": "<m@example.org>",
            "max_per_hour": 0,
        }
        options.update(fields)
        return [queue.enqueue(**options) for _ in range(n)]

    @staticmethod
    def _row(queue: Any, mail_id: int) -> dict[str, Any]:
        rows: list[dict[str, Any]] = [row for row in queue.outbox() if row["id"] == mail_id]
        (row,) = rows
        return row

    # -- the protocol -----------------------------------------------------------------------------

    def test_is_a_mail_queue(self, queue: Any, other_queue: Any) -> None:
        from plugit_core.kinds.mailqueue import MailQueue

        assert isinstance(queue, MailQueue)
        assert isinstance(queue.owner, str) and queue.owner
        assert queue.owner != other_queue.owner
        assert isinstance(queue.clock(), float)

    def test_empty(self, queue: Any) -> None:
        assert queue.outbox() == [] and queue.incoming() == []
        assert queue.counts() == {"outbox": {}, "incoming": {}}
        assert queue.next_due() is None
        assert queue.claim(10, 60, started=queue.clock()) == []
        assert queue.purge(0) == 0 and queue.purge_incoming(0) == 0
        assert queue.incoming_state("nothing") is None

    # -- outbox -----------------------------------------------------------------------------------

    def test_enqueue_keeps_every_field(self, queue: Any) -> None:
        clock = self._clock(queue)
        mail_id = queue.enqueue(
            service="polls",
            sender="Poll <polls@example.org>",
            recipients=["a@example.org", "Zoë <b@example.org>"],
            subject="Héllo ✓",
            body="<p>Vote</p>\n",
            html=True,
            reply_to="replies+tok@example.org",
            message_id="<1@example.org>",
            max_per_hour=0,
        )
        assert isinstance(mail_id, int)
        (row,) = queue.outbox()
        assert row == {
            "id": mail_id,
            "service": "polls",
            "sender": "Poll <polls@example.org>",
            "recipients": ["a@example.org", "Zoë <b@example.org>"],
            "n_recipients": 2,
            "subject": "Héllo ✓",
            "body": "<p>Vote</p>\n",
            "html": 1,
            "reply_to": "replies+tok@example.org",
            "message_id": "<1@example.org>",
            "state": "queued",
            "attempts": 0,
            "next_try": clock.now,
            "owner": None,
            "lease_until": None,
            "last_try": None,
            "last_error": None,
            "created": clock.now,
            "done": None,
            "stale_since": None,
        }
        (plain,) = self._enqueue(queue)
        assert plain > mail_id and self._row(queue, plain)["html"] == 0
        assert queue.counts() == {"outbox": {"queued": 2}, "incoming": {}}
        assert [row["id"] for row in queue.outbox("queued")] == [mail_id, plain]
        assert queue.outbox("sent") == []

    def test_quota_counts_recipients_per_rolling_hour(self, queue: Any) -> None:
        from plugit_core.kinds.mailqueue import RateLimitedError

        clock = self._clock(queue)
        two = ["a@example.org", "b@example.org"]
        self._enqueue(queue, recipients=two, max_per_hour=3)
        clock.advance(600)
        self._enqueue(queue, recipients=["c@example.org"], max_per_hour=3)
        clock.advance(600)
        try:
            self._enqueue(queue, max_per_hour=3)
        except RateLimitedError as exc:
            assert (exc.used, exc.limit) == (3, 3)
            assert exc.retry_after == 3600 - 1200
        else:
            raise AssertionError("the quota was not applied")
        assert len(queue.outbox()) == 2  # the refused mail left nothing behind
        self._enqueue(queue, service="other", recipients=two, max_per_hour=3)  # per service
        self._enqueue(queue, recipients=two, max_per_hour=0)  # 0: no quota
        clock.advance(2401)  # the first mail left the hour (the unlimited one still counts)
        try:
            self._enqueue(queue, recipients=two, max_per_hour=3)
        except RateLimitedError as exc:
            assert exc.used == 3 and exc.retry_after == 600 - 1
        else:
            raise AssertionError("the quota was not applied")
        self._enqueue(queue, max_per_hour=4)
        assert len(queue.outbox()) == 5

    def test_quota_holds_across_queues_and_threads(self, queue: Any, other_queue: Any) -> None:
        import concurrent.futures

        from plugit_core.kinds.mailqueue import RateLimitedError

        def work(q: Any) -> int:
            accepted = 0
            for _ in range(5):
                try:
                    self._enqueue(q, max_per_hour=7)
                    accepted += 1
                except RateLimitedError:
                    pass
            return accepted

        targets = [queue, other_queue] * self.threads
        with concurrent.futures.ThreadPoolExecutor(max_workers=len(targets)) as pool:
            accepted = sum(pool.map(work, targets))
        assert accepted == 7
        assert len(queue.outbox()) == 7

    def test_claim_takes_due_mails_under_a_lease(self, queue: Any) -> None:
        clock = self._clock(queue)
        first, second, third = self._enqueue(queue, 3, reply_to="r@example.org")
        started = clock.now
        clock.advance(1)
        batch = queue.claim(2, 60, started=started)
        assert [mail.id for mail in batch] == [first, second]
        mail = batch[0]
        assert (mail.service, mail.sender, mail.recipients) == (
            "polls",
            "PlugIt <no-reply@example.org>",
            ("dana@example.org",),
        )
        assert (mail.subject, mail.body, mail.html, mail.reply_to, mail.message_id) == (
            "Your vote",
            "Please vote.",
            False,
            "r@example.org",
            "<m@example.org>",
        )
        assert (mail.attempts, mail.created) == (0, started)
        row = self._row(queue, first)
        assert (row["state"], row["owner"], row["lease_until"], row["last_try"]) == (
            "sending",
            queue.owner,
            clock.now + 60,
            clock.now,
        )
        assert [mail.id for mail in queue.claim(10, 60, started=started)] == [third]
        assert queue.claim(10, 60, started=started) == []
        assert queue.counts()["outbox"] == {"sending": 3}
        assert queue.next_due() == clock.now + 60  # the first lease to end

    def test_mails_not_due_yet_wait(self, queue: Any) -> None:
        clock = self._clock(queue)
        (mail_id,) = self._enqueue(queue)
        queue.claim(1, 60, started=clock.now)
        assert queue.mark_retry(mail_id, "busy", 300, 0) == "queued"
        clock.advance(299)
        assert queue.claim(1, 60, started=clock.now) == []
        assert queue.next_due() == clock.now + 1
        clock.advance(1)
        assert [mail.attempts for mail in queue.claim(1, 60, started=clock.now)] == [1]

    def test_retry_now_takes_waiting_mails_once_per_pass(self, queue: Any) -> None:
        clock = self._clock(queue)
        (mail_id,) = self._enqueue(queue)
        started = clock.now
        queue.claim(1, 60, started=started)
        queue.mark_retry(mail_id, "busy", 300, 0)
        # The same pass: tried already since ``started``, even with retry_now.
        assert queue.claim(1, 60, started=started, retry_now=True) == []
        clock.advance(1)
        assert queue.claim(1, 60, started=clock.now) == []  # not due
        assert [m.id for m in queue.claim(1, 60, started=clock.now, retry_now=True)] == [mail_id]

    def test_claims_are_ordered_by_next_try(self, queue: Any) -> None:
        clock = self._clock(queue)
        early, late = self._enqueue(queue, 2)
        queue.claim(2, 60, started=clock.now)
        queue.mark_retry(early, "busy", 20, 0)
        queue.mark_retry(late, "busy", 10, 0)
        clock.advance(30)
        assert [mail.id for mail in queue.claim(5, 60, started=clock.now)] == [late, early]

    def test_mark_sent(self, queue: Any, other_queue: Any) -> None:
        clock = self._clock(queue, other_queue)
        quiet, noted = self._enqueue(queue, 2)
        queue.claim(2, 60, started=clock.now)
        clock.advance(5)
        assert other_queue.mark_sent(quiet) is False  # not its mail
        assert queue.mark_sent(quiet) is True
        assert queue.mark_sent(noted, "refused recipients: x@example.org (550)") is True
        assert queue.mark_sent(quiet) is False  # no longer sending
        row = self._row(queue, quiet)
        assert (row["state"], row["attempts"], row["done"], row["owner"]) == (
            "sent",
            1,
            clock.now,
            None,
        )
        assert row["lease_until"] is None and row["last_error"] is None
        assert self._row(queue, noted)["last_error"] == "refused recipients: x@example.org (550)"
        assert queue.next_due() is None
        assert queue.claim(5, 60, started=clock.now + 1, retry_now=True) == []

    def test_mark_retry_backs_off_then_gives_up(self, queue: Any, other_queue: Any) -> None:
        clock = self._clock(queue, other_queue)
        (mail_id,) = self._enqueue(queue)
        for attempt in (1, 2):
            queue.claim(1, 60, started=clock.now)
            assert other_queue.mark_retry(mail_id, "not mine", 1, 3) == "lost"
            assert queue.mark_retry(mail_id, f"421 try later {attempt}", 10.0 * attempt, 3) == (
                "queued"
            )
            row = self._row(queue, mail_id)
            assert (row["state"], row["attempts"], row["owner"], row["lease_until"]) == (
                "queued",
                attempt,
                None,
                None,
            )
            assert row["next_try"] == clock.now + 10.0 * attempt
            assert row["last_error"] == f"421 try later {attempt}" and row["done"] is None
            clock.advance(10.0 * attempt)
        queue.claim(1, 60, started=clock.now)
        assert queue.mark_retry(mail_id, "x" * 5000, 10, 3) == "failed"
        row = self._row(queue, mail_id)
        assert (row["state"], row["attempts"], row["done"]) == ("failed", 3, clock.now)
        assert row["last_error"] == "x" * 1000
        assert queue.mark_retry(mail_id, "again", 10, 3) == "lost"
        clock.advance(3600)
        assert queue.claim(1, 60, started=clock.now, retry_now=True) == []
        assert queue.next_due() is None

    def test_max_attempts_zero_never_gives_up(self, queue: Any) -> None:
        clock = self._clock(queue)
        (mail_id,) = self._enqueue(queue)
        for _ in range(5):
            assert len(queue.claim(1, 60, started=clock.now)) == 1
            assert queue.mark_retry(mail_id, "busy", 1, 0) == "queued"
            clock.advance(1)
        assert self._row(queue, mail_id)["attempts"] == 5

    def test_mark_failed(self, queue: Any, other_queue: Any) -> None:
        clock = self._clock(queue, other_queue)
        (mail_id,) = self._enqueue(queue)
        queue.claim(1, 60, started=clock.now)
        other_queue.mark_failed(mail_id, "not mine")
        assert self._row(queue, mail_id)["state"] == "sending"
        clock.advance(2)
        queue.mark_failed(mail_id, "550 " + "y" * 2000)
        row = self._row(queue, mail_id)
        assert (row["state"], row["attempts"], row["done"], row["owner"]) == (
            "failed",
            1,
            clock.now,
            None,
        )
        assert row["last_error"] == ("550 " + "y" * 2000)[:1000]
        assert queue.claim(1, 60, started=clock.now + 1, retry_now=True) == []
        assert queue.counts()["outbox"] == {"failed": 1}

    def test_release_gives_the_mail_back(self, queue: Any, other_queue: Any) -> None:
        clock = self._clock(queue, other_queue)
        (mail_id,) = self._enqueue(queue)
        started = clock.now
        queue.claim(1, 60, started=started)
        other_queue.release(mail_id)  # not its mail: nothing happens
        assert self._row(queue, mail_id)["state"] == "sending"
        queue.release(mail_id)
        row = self._row(queue, mail_id)
        assert (row["state"], row["attempts"], row["owner"], row["lease_until"]) == (
            "queued",
            0,
            None,
            None,
        )
        assert row["next_try"] == started and row["last_try"] == started
        assert queue.next_due() == started
        assert queue.claim(1, 60, started=started) == []  # tried in this pass already
        clock.advance(1)
        assert [mail.id for mail in other_queue.claim(1, 60, started=clock.now)] == [mail_id]

    def test_an_expired_lease_is_claimed_again(self, queue: Any, other_queue: Any) -> None:
        clock = self._clock(queue, other_queue)
        (mail_id,) = self._enqueue(queue)
        assert len(queue.claim(1, 60, started=clock.now)) == 1
        clock.advance(59)
        assert other_queue.claim(1, 60, started=clock.now) == []
        assert other_queue.next_due() == clock.now + 1
        clock.advance(1)  # the first sender died: its lease ended
        (mail,) = other_queue.claim(1, 30, started=clock.now)
        assert mail.id == mail_id
        row = self._row(queue, mail_id)
        assert (row["owner"], row["lease_until"]) == (other_queue.owner, clock.now + 30)
        assert queue.mark_sent(mail_id) is False  # too late: no longer its mail
        assert queue.mark_retry(mail_id, "late", 1, 0) == "lost"
        assert other_queue.mark_sent(mail_id) is True
        assert self._row(queue, mail_id)["attempts"] == 1

    def test_renew_extends_the_leases_it_holds(self, queue: Any, other_queue: Any) -> None:
        clock = self._clock(queue, other_queue)
        first, second, third = self._enqueue(queue, 3)
        assert queue.renew(60) == []  # holds nothing
        queue.claim(2, 10, started=clock.now)
        other_queue.claim(1, 10, started=clock.now)
        clock.advance(8)
        assert queue.renew(10) == [first, second]
        assert {self._row(queue, i)["lease_until"] for i in (first, second)} == {clock.now + 10}
        assert self._row(queue, third)["lease_until"] == clock.now + 2  # not its mail
        clock.advance(5)  # past the first lease, within the renewed one
        (taken,) = queue.claim(5, 10, started=clock.now)  # the other's lease ended
        assert taken.id == third
        assert other_queue.claim(5, 10, started=clock.now) == []
        assert other_queue.renew(10) == []  # it lost its mail
        assert queue.mark_sent(first) is True
        assert queue.renew(10) == [second, third]

    def test_grace_notices_an_expired_lease_before_taking_it(
        self, queue: Any, other_queue: Any
    ) -> None:
        clock = self._clock(queue, other_queue)
        first, second = self._enqueue(queue, 2)
        queue.claim(2, 10, started=clock.now)
        clock.advance(10)  # both leases ended (the holder was cut off from the queue)
        assert other_queue.claim(5, 10, started=clock.now, grace=6, max_attempts=3) == []
        row = self._row(queue, first)
        assert (row["state"], row["owner"], row["attempts"], row["last_error"]) == (
            "sending",
            queue.owner,
            0,
            None,
        )
        assert (row["stale_since"], row["lease_until"]) == (clock.now, clock.now + 6)
        assert other_queue.next_due() == clock.now + 6
        clock.advance(3)
        assert other_queue.claim(5, 10, started=clock.now, grace=6) == []  # within the grace
        assert queue.mark_sent(first) is True  # the holder records its result in time
        assert queue.renew(10) == [second]  # and shows it lives: the notice is gone
        assert self._row(queue, second)["stale_since"] is None
        clock.advance(10)
        assert other_queue.claim(5, 10, started=clock.now, grace=6) == []  # noticed anew
        clock.advance(5.9)
        assert other_queue.claim(5, 10, started=clock.now, grace=6) == []
        clock.advance(0.1)  # the holder stayed silent through the grace: taken over
        (mail,) = other_queue.claim(5, 10, started=clock.now, grace=6, max_attempts=3)
        assert (mail.id, mail.attempts) == (second, 1)
        row = self._row(queue, second)
        assert (row["owner"], row["lease_until"], row["stale_since"]) == (
            other_queue.owner,
            clock.now + 10,
            None,
        )
        assert (
            row["last_error"] == "its sender stopped before recording the result (the lease ended)"
        )
        assert queue.mark_sent(second) is False and queue.renew(10) == []
        assert self._row(queue, first)["state"] == "sent"

    def test_two_queues_never_claim_the_same_mail(self, queue: Any, other_queue: Any) -> None:
        import concurrent.futures

        ids = self._enqueue(queue, 60)
        started = queue.clock()

        def work(q: Any) -> list[int]:
            taken: list[int] = []
            while True:
                batch = q.claim(3, 600, started=started + 3600)
                if not batch:
                    return taken
                for mail in batch:
                    assert q.mark_sent(mail.id)
                taken.extend(mail.id for mail in batch)

        targets = [queue, other_queue] * self.threads
        with concurrent.futures.ThreadPoolExecutor(max_workers=len(targets)) as pool:
            taken = [mail_id for batch in pool.map(work, targets) for mail_id in batch]
        assert sorted(taken) == sorted(ids)  # each mail once, none twice
        assert queue.counts()["outbox"] == {"sent": 60}
        assert {row["attempts"] for row in other_queue.outbox()} == {1}

    def test_next_due(self, queue: Any) -> None:
        clock = self._clock(queue)
        first, second = self._enqueue(queue, 2)
        assert queue.next_due() == clock.now
        queue.claim(1, 120, started=clock.now)
        queue.mark_retry(first, "busy", 500, 0)
        assert queue.next_due() == clock.now  # the second one is due
        queue.claim(1, 120, started=clock.now)
        assert queue.next_due() == clock.now + 120  # its lease
        queue.mark_sent(second)
        assert queue.next_due() == clock.now + 500

    def test_purge_forgets_old_sent_mails_only(self, queue: Any) -> None:
        clock = self._clock(queue)
        sent, failed, waiting, recent = self._enqueue(queue, 4)
        queue.claim(3, 60, started=clock.now)
        queue.mark_sent(sent)
        queue.mark_failed(failed, "550 no")
        queue.mark_retry(waiting, "busy", 10, 0)
        clock.advance(100)
        queue.claim(1, 60, started=clock.now)
        queue.mark_sent(recent)
        assert queue.purge(100) == 0  # done exactly 100 s ago: kept
        clock.advance(1)
        assert queue.purge(100) == 1
        assert [row["id"] for row in queue.outbox()] == [failed, waiting, recent]
        clock.advance(100)
        assert queue.purge(100) == 1
        assert queue.counts()["outbox"] == {"failed": 1, "queued": 1}

    # -- incoming ---------------------------------------------------------------------------------

    def test_record_incoming_creates_then_updates(self, queue: Any) -> None:
        clock = self._clock(queue)
        seen = clock.now
        assert (
            queue.record_incoming(
                "sha256:aa",
                "pending",
                message_id="<r@x>",
                service="polls",
                response_id="42",
                error="HTTP 500",
                count_attempt=True,
            )
            == 1
        )
        assert queue.incoming_state("sha256:aa") == ("pending", 1, None)
        clock.advance(10)
        assert queue.record_incoming("sha256:aa", "pending", error="z" * 3000) == 1
        clock.advance(10)
        raw = b"From: a\r\n\r\n\x00\xff body"
        attempts = queue.record_incoming(
            "sha256:aa", "undeliverable", message_id="<other@x>", count_attempt=True, raw=raw
        )
        assert attempts == 2
        (record,) = queue.incoming()
        assert record == {
            "key": "sha256:aa",
            "message_id": "<r@x>",  # the first one stays
            "service": "polls",  # kept when not given
            "response_id": "42",
            "state": "undeliverable",
            "attempts": 2,
            "next_try": None,
            "last_error": "z" * 1000,  # kept when not given, cut at 1000 characters
            "first_seen": seen,
            "updated": clock.now,
            "raw": raw,
        }
        assert queue.record_incoming("box:7", "failing", count_attempt=False) == 0
        assert queue.incoming_state("box:7") == ("failing", 0, None)
        assert queue.counts()["incoming"] == {"undeliverable": 1, "failing": 1}

    def test_defer_incoming(self, queue: Any) -> None:
        clock = self._clock(queue)
        queue.record_incoming("k", "pending", count_attempt=True)
        queue.defer_incoming("k", 120)
        assert queue.incoming_state("k") == ("pending", 1, clock.now + 120)
        clock.advance(5)
        queue.record_incoming("k", "pending", count_attempt=True)  # keeps next_try
        assert queue.incoming_state("k") == ("pending", 2, clock.now - 5 + 120)
        queue.defer_incoming("unknown", 10)  # nothing to defer
        assert queue.incoming_state("unknown") is None

    def test_incoming_lists_by_first_seen(self, queue: Any) -> None:
        clock = self._clock(queue)
        for key, state in (("c", "delivered"), ("a", "pending"), ("b", "delivered")):
            queue.record_incoming(key, state)
            clock.advance(1)
        queue.record_incoming("c", "delivered")  # updated, not seen anew
        assert [r["key"] for r in queue.incoming()] == ["c", "a", "b"]
        assert [r["key"] for r in queue.incoming("delivered")] == ["c", "b"]
        assert queue.incoming("rejected") == []

    def test_purge_incoming_keeps_what_still_matters(self, queue: Any) -> None:
        clock = self._clock(queue)
        states = ("delivered", "dropped", "rejected", "undeliverable", "pending", "failing")
        for state in states:
            queue.record_incoming(f"old-{state}", state)
        clock.advance(100)
        queue.record_incoming("new-delivered", "delivered")
        assert queue.purge_incoming(100) == 0
        clock.advance(1)
        assert queue.purge_incoming(100) == 3
        assert sorted(r["key"] for r in queue.incoming()) == [
            "new-delivered",
            "old-failing",
            "old-pending",
            "old-undeliverable",
        ]

    # -- locks ------------------------------------------------------------------------------------

    def test_locks_are_exclusive_leases(self, queue: Any, other_queue: Any) -> None:
        clock = self._clock(queue, other_queue)
        assert queue.acquire_lock("check_mail", 60)
        assert not other_queue.acquire_lock("check_mail", 60)
        assert other_queue.acquire_lock("another", 60)  # names are independent
        assert queue.acquire_lock("check_mail", 60)  # renewed by its holder
        clock.advance(59)
        assert not other_queue.acquire_lock("check_mail", 60)  # the renewal counts
        other_queue.release_lock("check_mail")  # not its lock: nothing happens
        assert not other_queue.acquire_lock("check_mail", 60)
        queue.release_lock("check_mail")
        assert other_queue.acquire_lock("check_mail", 60)
        assert not queue.acquire_lock("check_mail", 60)
        clock.advance(60)  # its holder died: the lease ran out
        assert queue.acquire_lock("check_mail", 60)
        assert not other_queue.acquire_lock("check_mail", 60)

    def test_one_lock_holder_among_threads(self, queue: Any, other_queue: Any) -> None:
        import concurrent.futures

        targets = [queue, other_queue] * self.threads
        with concurrent.futures.ThreadPoolExecutor(max_workers=len(targets)) as pool:
            results = list(pool.map(lambda q: (q.owner, q.acquire_lock("race", 60)), targets))
        winners = {owner for owner, won in results if won}
        assert len(winners) == 1

    # -- life cycle -------------------------------------------------------------------------------

    def test_close_then_use_again(self, queue: Any, other_queue: Any) -> None:
        (mail_id,) = self._enqueue(queue)
        queue.close()
        queue.close()  # twice is fine
        assert [row["id"] for row in queue.outbox()] == [mail_id]
        assert [row["id"] for row in other_queue.outbox()] == [mail_id]

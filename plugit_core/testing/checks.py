"""The protocol conformance checks of a running service (PROTOCOL.md sections 2 and 3, plus
request signatures): :func:`run_checks` returns one :class:`CheckResult` per check and never
raises (``plugit service --check URL`` prints them); :class:`ServiceConformance` runs the same
checks as pytest tests, one test per check.  pytest is only imported when those tests run.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import secrets
import string
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import quote, unquote, urlencode, urlsplit

from .. import protocol
from ..networks import parse_networks
from ..signing import sign_request

__all__ = ["CHECK_NAMES", "CheckResult", "ServiceConformance", "run_checks"]


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


class UnreachableError(Exception):
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
FLAG_KEYS = (*protocol.RESTRICTING_KEYS, "public", "json_only", "xml_only", "no_template")
_TRAVERSALS = (
    "media/../../../../../../../../etc/passwd",
    "media/%2e%2e/%2e%2e/%2e%2e/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
    "media/..%2f..%2f..%2f..%2f..%2f..%2fetc%2fpasswd",
)


def random_token(length: int = 32) -> str:
    alphabet = string.ascii_letters + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(length))


class Caller:
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
            raise UnreachableError(f"not run: {self.unreachable}")
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
            raise UnreachableError(self.unreachable) from None
        finally:
            connection.close()

    def get_json_object(self, endpoint: str, **kwargs: Any) -> tuple[_Reply, dict[str, Any] | None]:
        reply = self.call("GET", endpoint, **kwargs)
        try:
            data = reply.json()
        except ValueError:
            return reply, None
        return reply, data if isinstance(data, dict) else None


def action_endpoint(kind: str, path: str) -> str:
    return f"{kind}/{quote(path.lstrip('/'), safe=_PATH_SAFE)}"


# Each check returns (ok, message) or a CheckResult (for a warning).
Outcome = tuple[bool, str] | CheckResult


def _check_version(c: Caller) -> Outcome:
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


def _check_ping(c: Caller) -> Outcome:
    token = random_token()
    reply, data = c.get_json_object("ping", query={"data": token})
    if reply.status != 200 or data is None:
        return False, f"ping must answer 200 with a JSON object, got {reply.describe()}"
    if data.get("data") != token:
        return False, f"ping must echo the data parameter {token!r}, got {data.get('data')!r}"
    return True, "echoes its data parameter"


def _check_mail_requires_response_id(c: Caller) -> Outcome:
    reply = c.call("POST", "mail", form={"message": "PlugIt conformance check"})
    if reply.status != 400:
        return False, f"mail without response_id must answer 400, got {reply.describe()}"
    return True, "400 without response_id"


def _check_mail_empty_response_id(c: Caller) -> Outcome:
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
        if key in FLAG_KEYS:
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


def _check_meta(c: Caller, path: str) -> Outcome:
    reply, meta = c.get_json_object(action_endpoint("meta", path))
    if reply.status != 200 or meta is None:
        return False, f"meta must answer 200 with a JSON object, got {reply.describe()}"
    problems = _meta_problems(meta)
    cache_control = reply.headers.get("cache-control", "")
    if not any(p.strip().startswith("max-age=") for p in cache_control.split(",")):
        problems.append(f"Cache-Control must carry a max-age, got {cache_control!r}")
    if problems:
        return False, "; ".join(problems)
    return True, f"template_tag {meta['template_tag']!r}, keys {sorted(meta)}"


def _check_template(c: Caller, path: str) -> Outcome:
    reply, meta = c.get_json_object(action_endpoint("meta", path))
    if reply.status != 200 or meta is None or not isinstance(meta.get("template_tag"), str):
        return False, f"no usable meta to read the template tag from: {reply.describe()}"
    tag = meta["template_tag"]
    reply = c.call("GET", action_endpoint("template", path))
    expected = 200 if tag else 404
    if reply.status != expected:
        why = "template_tag is set" if tag else "template_tag is empty (no template)"
        return False, f"template must answer {expected} since {why}, got {reply.describe()}"
    return True, f"{expected} ({len(reply.body)} bytes)" if tag else "404: no template"


def _check_meta_refuses_post(c: Caller, path: str) -> Outcome:
    reply = c.call("POST", action_endpoint("meta", path), form={})
    if reply.status != 405:
        return False, f"POST to meta must answer 405, got {reply.describe()}"
    return True, "405"


def _check_unknown_path(c: Caller) -> Outcome:
    reply = c.call("GET", f"plugit-conformance-{random_token(12)}")
    if reply.status != 404:
        return False, f"an unknown path must answer 404, got {reply.describe()}"
    return True, "404"


def _check_media_traversal(c: Caller) -> Outcome:
    for endpoint in _TRAVERSALS:
        reply = c.call("GET", endpoint)
        if reply.status != 404:
            return False, f"{endpoint} must answer 404, got {reply.describe()}"
    return True, f"{len(_TRAVERSALS)} traversal paths answer 404"


def _check_signature_required(c: Caller) -> Outcome:
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


def _check_signed_request_accepted(c: Caller) -> Outcome:
    token = random_token()
    reply, data = c.get_json_object("ping", query={"data": token})
    if reply.status != 200 or data is None or data.get("data") != token:
        return False, f"a correctly signed ping must answer 200 and echo, got {reply.describe()}"
    return True, "signed request accepted"


def _check_replay_refused(c: Caller) -> Outcome:
    query = {"data": random_token()}
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


def _run_one(check: _Check, caller: Caller, actions: Sequence[str]) -> list[CheckResult]:
    if check.needs_secret and caller.secret is None:
        return []
    targets: Sequence[str | None] = actions if check.per_action else [None]
    results = []
    for path in targets:
        name = check.name if path is None else f"{check.name}[/{path.lstrip('/')}]"
        try:
            outcome = check.run(caller) if path is None else check.run(caller, path)
        except UnreachableError as exc:
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
        caller = Caller(url, secret, timeout)
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

"""The attacking suite's harness: a hostile service, a healthy one, canaries, and leak checks.

Imported by name (``from hostile_site import ...``) by the tests of this folder and its conftest.

* :class:`HostileService` is a PlugIt service written by an attacker: a raw WSGI app whose every
  reply (meta JSON, template in either dialect, action data, reply headers and status, media) is
  scripted per test, and that records every request the proxy sends it.
* :func:`make_healthy_service` is an honest, signed service whose page the bombs must not slow.
* :class:`Canaries` are random secrets planted in the proxy's configuration and directory;
  :class:`LeakCheck` fails when one of them shows up in a response, a log line, a mail or a
  request that reached the hostile service.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import requests
from werkzeug.wrappers import Request, Response

from plugit_core.service import PlugItService, action, json_only

SESSION_COOKIE = "plugit_session"
PASSWORD = "correct horse battery staple"
FAST_HASH = "pbkdf2:sha256:1000"
CSRF_RE = re.compile(r'name="csrfmiddlewaretoken" value="([^"]+)"')


def _hex(n: int = 16) -> str:
    return secrets.token_hex(n)


# -- canaries --------------------------------------------------------------------------------------


@dataclass
class Canaries:
    """Random values the hostile service must never see, nor any visitor, log or mail.

    ``own`` are the hostile mounts' own secret and key: the attacker knows them, so they may
    reach the hostile service, but still never a browser, a log or a mail.
    """

    secret_key: str = field(default_factory=lambda: f"cnry-secret-key-{_hex(24)}")
    hostile_secret: str = field(default_factory=lambda: f"cnry-hostile-secret-{_hex()}")
    hostile_api_key: str = field(default_factory=lambda: f"cnry-hostile-apikey-{_hex()}")
    django_secret: str = field(default_factory=lambda: f"cnry-django-secret-{_hex()}")
    django_api_key: str = field(default_factory=lambda: f"cnry-django-apikey-{_hex()}")
    healthy_secret: str = field(default_factory=lambda: f"cnry-healthy-secret-{_hex()}")
    healthy_api_key: str = field(default_factory=lambda: f"cnry-healthy-apikey-{_hex()}")
    stranger_username: str = field(default_factory=lambda: f"str{_hex(10)}")
    stranger_email: str = field(default_factory=lambda: f"em{_hex(10)}@stranger.example")
    stranger_first_name: str = field(default_factory=lambda: f"Fn{_hex(10)}")
    stranger_last_name: str = field(default_factory=lambda: f"Ln{_hex(10)}")
    boss_username: str = field(default_factory=lambda: f"boss{_hex(10)}")
    boss_email: str = field(default_factory=lambda: f"bm{_hex(10)}@boss.example")
    stranger_orga: str = field(default_factory=lambda: f"Orga{_hex(10)}")
    session_cookies: set[str] = field(default_factory=set)  # every value the visitor was given

    def add_session_cookie(self, value: str) -> None:
        """A session cookie value a visitor got: a canary from now on (whole, and its
        signature, the part no one else can make)."""
        self.session_cookies.add(value)
        if "." in value:
            self.session_cookies.add(value.rsplit(".", 1)[1])

    OWN = ("hostile_secret", "hostile_api_key", "django_secret", "django_api_key")

    def named(self, *, include_own: bool = True) -> dict[str, str]:
        values = {
            k: v
            for k, v in vars(self).items()
            if isinstance(v, str) and (include_own or k not in self.OWN)
        }
        for n, cookie in enumerate(sorted(self.session_cookies)):
            values[f"session_cookie[{n}]"] = cookie
        return values

    def find(self, text: str, *, include_own: bool = True) -> list[str]:
        """The names of the canaries ``text`` holds: whole, in pieces of 16 characters, reversed,
        upper-case, with separators between the characters, or in base64."""
        if not text:
            return []
        flat = re.sub(r"[^a-z0-9]", "", text.lower())
        found = []
        for name, value in self.named(include_own=include_own).items():
            if value in text or base64.b64encode(value.encode()).decode()[:24] in text:
                found.append(name)
                continue
            core = re.sub(r"[^a-z0-9]", "", value.lower())
            step = 1 if len(core) <= 64 else 16  # a long cookie leaks whole or not at all
            pieces = [core[i : i + 16] for i in range(0, max(1, len(core) - 15), step)]
            if any(p in flat or p[::-1] in flat for p in pieces):
                found.append(name)
        return found


# -- the hostile service ---------------------------------------------------------------------------


@dataclass
class Script:
    """What the hostile service answers for one action path."""

    template: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    data: Any = field(default_factory=dict)
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes | None = None  # the action's raw body instead of ``data`` as JSON
    meta_body: bytes | None = None  # a raw meta reply instead of the JSON one
    trickle: float = 0.0  # > 0: the action's body sent a byte every ``trickle`` seconds


@dataclass
class Received:
    method: str
    path: str
    query: list[tuple[str, str]]
    headers: dict[str, str]
    body: bytes

    def text(self) -> str:
        head = "\n".join(f"{k}: {v}" for k, v in self.headers.items())
        return f"{self.method} {self.path} {self.query}\n{head}\n{self.body.decode('latin-1')}"


class HostileService:
    """A service that does whatever the test scripted, and keeps what it was sent."""

    def __init__(self) -> None:
        self.scripts: dict[str, Script] = {}
        self.media: dict[str, tuple[int, dict[str, str], bytes]] = {}
        self.received: list[Received] = []
        self._lock = threading.Lock()

    def script(self, path: str, template: str | None = None, **kwargs: Any) -> str:
        """Script the action at ``path`` (relative to the mount); returns ``path``."""
        self.scripts[path.lstrip("/")] = Script(template=template, **kwargs)
        return path

    def requests_to(self, endpoint: str) -> list[Received]:
        with self._lock:
            return [r for r in self.received if r.path.startswith("/" + endpoint)]

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        request = Request(environ)
        body = request.get_data()
        with self._lock:
            self.received.append(
                Received(
                    request.method,
                    request.path,
                    parse_qsl(request.query_string.decode("latin-1"), keep_blank_values=True),
                    dict(request.headers.items()),
                    body,
                )
            )
        return self._answer(request)(environ, start_response)

    def _answer(self, request: Request) -> Response:
        path = request.path
        if path == "/version":
            return _json({"result": "Ok", "version": "1", "protocol": "EBUio-PlugIt"})
        if path == "/ping":
            return _json({"data": request.args.get("data", "")})
        if path.startswith("/media/"):
            status, headers, content = self.media.get(path[len("/media/") :], (404, {}, b""))
            return Response(content, status=status, headers=headers)
        for endpoint in ("meta", "template", "action"):
            if path.startswith(f"/{endpoint}/"):
                script = self.scripts.get(path[len(endpoint) + 2 :])
                if script is None:
                    return _json({"error": "unknown action"}, 404)
                return getattr(self, f"_{endpoint}")(script)
        return _json({"error": "unknown endpoint"}, 404)

    @staticmethod
    def _meta(script: Script) -> Response:
        if script.meta_body is not None:
            return Response(script.meta_body, mimetype="application/json")
        tag = hashlib.md5(script.template.encode()).hexdigest() if script.template else ""
        meta = {"template_tag": tag, **script.meta}
        response = _json(meta)
        response.headers["Cache-Control"] = "no-cache, max-age=0"
        return response

    @staticmethod
    def _template(script: Script) -> Response:
        if script.template is None:
            return _json({"error": "no template"}, 404)
        return Response(script.template, mimetype="text/html")

    @staticmethod
    def _action(script: Script) -> Response:
        content = script.body if script.body is not None else json.dumps(script.data).encode()
        if script.trickle:
            pace = script.trickle

            def trickled() -> Iterable[bytes]:
                for i in range(len(content)):
                    time.sleep(pace)
                    yield content[i : i + 1]

            response = Response(trickled(), status=script.status, mimetype="application/json")
        else:
            response = Response(content, status=script.status, mimetype="application/json")
        for name, value in script.headers.items():  # (any text: UTF-8 bytes on the wire)
            response.headers[name] = value.encode("utf-8").decode("latin-1")
        return response


def _json(data: Any, status: int = 200) -> Response:
    return Response(json.dumps(data), status=status, mimetype="application/json")


# -- the healthy service ---------------------------------------------------------------------------

HEALTHY_TEMPLATE = (
    '{% extends "plugit/base.html" %}{% block content %}'
    '<p id="healthy">healthy page {{ n }}</p>'
    '<form method="post" action="{{ ebuio_baseUrl }}write">{{ csrf_field }}</form>'
    "{% endblock %}"
)
healthy_writes: list[dict[str, Any]] = []


@action("/", template="healthy.html")
def healthy_home(request: Any) -> dict[str, Any]:
    return {"n": 42}


@action("/write", methods=["POST"])
@json_only()
def healthy_write(request: Any) -> dict[str, Any]:
    healthy_writes.append(dict(request.form))
    return {"written": True}


def make_healthy_service(root: Path, secret: str) -> PlugItService:
    (root / "templates").mkdir(parents=True, exist_ok=True)
    (root / "media").mkdir(exist_ok=True)
    (root / "templates" / "healthy.html").write_text(HEALTHY_TEMPLATE)
    return PlugItService([healthy_home, healthy_write], root=str(root), secret=secret)


# -- logs and mail ---------------------------------------------------------------------------------


class LogCapture(logging.Handler):
    """Every record of every logger, at DEBUG, formatted with its traceback."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s %(message)s"))
        self.lines: list[str] = []
        self._lock2 = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
        except Exception as exc:  # a record whose arguments do not format is still evidence
            line = f"{record.name} {record.msg!r} {record.args!r} ({exc})"
        with self._lock2:
            self.lines.append(line)

    def since(self, mark: int) -> list[str]:
        with self._lock2:
            return self.lines[mark:]

    def __enter__(self) -> LogCapture:
        root = logging.getLogger()
        self._level = root.level
        root.addHandler(self)
        root.setLevel(logging.DEBUG)
        return self

    def __exit__(self, *exc: Any) -> None:
        root = logging.getLogger()
        root.removeHandler(self)
        root.setLevel(self._level)


class MailSink:
    """An aiosmtpd server on loopback keeping every message it is given."""

    def __init__(self) -> None:
        from plugit_core.testing import free_port

        self.port = free_port()
        self.messages: list[bytes] = []
        self._controller: Any = None

    def __enter__(self) -> MailSink:
        import asyncio

        from aiosmtpd.controller import Controller

        sink = self

        class Handler:
            async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
                rcpt = ", ".join(envelope.rcpt_tos)
                sink.messages.append(f"RCPT {rcpt}\n".encode() + bytes(envelope.content))
                return "250 OK"

        self._loop = asyncio.new_event_loop()
        self._controller = Controller(
            Handler(), hostname="127.0.0.1", port=self.port, loop=self._loop
        )
        self._controller.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._controller.stop()
        self._loop.close()


# -- the visitor -----------------------------------------------------------------------------------


@dataclass
class Seen:
    method: str
    url: str
    status: int
    headers: list[tuple[str, str]]
    body: str


class Visitor(requests.Session):
    """A browser of the site: relative URLs, no redirects followed, every response kept."""

    def __init__(self, base: str, log: list[Seen], canaries: Canaries | None = None) -> None:
        super().__init__()
        self.base = base
        self.seen = log
        self.canaries = canaries

    def request(self, method: str, url: str, *args: Any, **kwargs: Any) -> requests.Response:  # type: ignore[override]
        kwargs.setdefault("allow_redirects", False)
        kwargs.setdefault("timeout", 30)
        full = url if url.startswith("http") else self.base + url
        response = super().request(method, full, *args, **kwargs)
        record(self.seen, method, full, response)
        value = self.cookies.get(SESSION_COOKIE)
        if value and self.canaries is not None:
            self.canaries.add_session_cookie(value)
        return response

    def csrf_from(self, html: str) -> str:
        match = CSRF_RE.search(html)
        assert match is not None, html[:2000]
        return match.group(1)

    def login(self, username: str, password: str = PASSWORD) -> None:
        page = self.get("/_plugit/login")
        token = self.csrf_from(page.text)
        response = self.post(
            "/_plugit/login",
            data={"csrfmiddlewaretoken": token, "username": username, "password": password},
        )
        assert response.status_code == 303, response.text[:2000]


def record(log: list[Seen], method: str, url: str, response: requests.Response) -> None:
    headers = [
        (k, v)
        for k, v in response.raw.headers.iteritems()
        if not (k.lower() == "set-cookie" and v.startswith(SESSION_COOKIE + "="))
    ]
    log.append(Seen(method, url, response.status_code, headers, response.text))


# -- the check -------------------------------------------------------------------------------------


class LeakCheck:
    """Looks for canaries everywhere the attacker or anyone else could read them."""

    def __init__(
        self,
        canaries: Canaries,
        logs: LogCapture,
        mails: MailSink | None,
        hostile: HostileService,
        seen: list[Seen],
        extra_logs: Callable[[], str] | None = None,
    ) -> None:
        self.canaries = canaries
        self.logs = logs
        self.mails = mails
        self.hostile = hostile
        self.seen = seen
        self.extra_logs = extra_logs
        self.marks = (0, 0, 0, 0)

    def mark(self) -> None:
        self.canaries.session_cookies.clear()  # from now on: the cookies of this test's visitors
        self.marks = (
            len(self.seen),
            len(self.logs.lines),
            len(self.mails.messages) if self.mails else 0,
            len(self.hostile.received),
        )

    def leaks(self) -> list[str]:
        seen_mark, log_mark, mail_mark, received_mark = self.marks
        found: list[str] = []
        for item in self.seen[seen_mark:]:
            head = "\n".join(f"{k}: {v}" for k, v in item.headers)
            for name in self.canaries.find(head + "\n" + item.body):
                found.append(f"{name} in the response to {item.method} {item.url} ({item.status})")
        for line in self.logs.since(log_mark):
            for name in self.canaries.find(line):
                found.append(f"{name} in a log line: {line[:300]!r}")
        if self.extra_logs is not None:
            for name in self.canaries.find(self.extra_logs()):
                found.append(f"{name} in the log of the served proxy")
        for message in (self.mails.messages if self.mails else [])[mail_mark:]:
            for name in self.canaries.find(message.decode("utf-8", "replace")):
                found.append(f"{name} in a mail")
        for received in self.hostile.received[received_mark:]:
            for name in self.canaries.find(received.text(), include_own=False):
                found.append(
                    f"{name} reached the hostile service: {received.method} {received.path}"
                )
        return found

    def assert_clean(self) -> None:
        found = self.leaks()
        self.mark()
        assert not found, "canaries leaked:\n" + "\n".join(dict.fromkeys(found))


def flatten(values: Iterable[Any]) -> list[Any]:
    return [v for value in values for v in (value if isinstance(value, (list, tuple)) else [value])]

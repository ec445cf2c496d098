"""The mail backend against real servers on loopback: aiosmtpd (SMTP) and Dovecot (IMAP, POP3).

Services are real signed PlugIt services behind a real proxy; they send mail through the callback
API (``PlugItAPI.send_mail``) and receive replies on their ``mail`` endpoint.  The SMTP server is
:class:`mail_servers.SMTPServer`; Dovecot is started once per session by :mod:`mail_servers` with
its own configuration.  When Dovecot is missing the set-up installs it if root
(``scripts/install-dovecot.sh``); otherwise the reply tests are skipped, or fail when
``PLUGIT_REQUIRE_SERVERS=1`` (CI).  aiosmtpd is in the ``test`` extra.
"""

from __future__ import annotations

import contextlib
import email.utils
import itertools
import os
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
import requests
from itsdangerous import BadSignature, SignatureExpired, TimestampSigner, URLSafeTimedSerializer
from postgres_schema import DSN as PG_DSN
from postgres_schema import fresh_schema
from werkzeug.wrappers import Response

from plugit_backends.mail_smtp import (
    MailBackend,
    ReplyTokens,
    message_key,
    read_settings,
    run_command,
)
from plugit_backends.mail_smtp.mailbox import MailboxError
from plugit_backends.mail_smtp.message import first_text, html_to_text, parse, plus_address
from plugit_core.cli import main
from plugit_core.config import ConfigError, ProxyConfig
from plugit_core.proxy.app import ProxyApp
from plugit_core.service import PlugItAPI, PlugItService
from plugit_core.testing import serve

REQUIRED = os.environ.get("PLUGIT_REQUIRE_SERVERS") == "1"

try:
    import aiosmtpd  # noqa: F401 (the SMTP server of these tests)
except ImportError as exc:  # aiosmtpd is in the test extra
    if REQUIRED:
        raise
    pytest.skip(f"aiosmtpd is not installed (pip install aiosmtpd): {exc}", allow_module_level=True)

from mail_servers import Dovecot, SMTPServer, find_dovecot, free_port  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
SECRET = "mail-service-secret-for-tests-0123456789"
STRONG_KEY = "k3y-for-mail-tests-9f8e7d6c5b4a39281706f5e4d3c2b1a0"
KEYS = {"one": "api-key-of-mail-service-one-0123", "two": "api-key-of-mail-service-two-4567"}
REPLIES = "replies@example.org"
SENDER = "PlugIt <no-reply@example.org>"
MEMBER = "dana@members.example"  # a member of service one
OUTSIDER = "erin@elsewhere.example"  # a user, member of nothing
STAFF = "ops@staff.example.org"  # in allowed_recipient_domains


# -- servers ---------------------------------------------------------------------------------------


def _need_dovecot() -> None:
    if find_dovecot() is not None:
        return
    if os.geteuid() == 0:
        subprocess.run(
            ["bash", str(ROOT / "scripts" / "install-dovecot.sh")], check=False, timeout=900
        )
        if find_dovecot() is not None:
            return
    message = "dovecot is not installed: run scripts/install-dovecot.sh as root"
    if REQUIRED:
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="session")
def dovecot() -> Iterator[Dovecot]:
    _need_dovecot()
    with Dovecot() as server:
        yield server


_mailbox_numbers = itertools.count(1)


@dataclass
class Mailbox:
    server: Dovecot
    user: str
    password: str

    def deliver(self, raw: bytes) -> None:
        self.server.deliver(self.user, raw)

    def messages(self) -> list[bytes]:
        return self.server.messages(self.user)


@pytest.fixture
def mailbox(dovecot: Dovecot) -> Mailbox:
    """A fresh, empty account on the session's Dovecot."""
    user = f"replies{next(_mailbox_numbers)}"
    dovecot.add_user(user)
    return Mailbox(dovecot, user, dovecot.password)


@pytest.fixture
def smtp() -> Iterator[SMTPServer]:
    with SMTPServer() as server:
        yield server


@pytest.fixture
def pg_schema() -> Iterator[str]:
    """A fresh schema on the PostgreSQL test server, dropped afterwards (see test_mail_queue)."""
    with fresh_schema(PG_DSN) as name:
        yield name


def _queue_settings(queue: str, schema: str | None, path: Path) -> dict[str, Any]:
    """The ``[mail_smtp]`` keys of a queue: the SQLite file ``path`` or the schema ``schema``."""
    if queue == "postgres":
        return {"queue": "postgres", "queue_dsn": PG_DSN, "queue_schema": schema}
    return {"queue_path": str(path)}


# -- services and proxy ----------------------------------------------------------------------------


@dataclass
class Inbox:
    """A service's mail callback: records replies and answers ``answer`` (Ok, Error or 500)."""

    answer: Any = "Ok"
    calls: list[tuple[str, str]] = field(default_factory=list)

    def __call__(self, request: Any) -> Any:
        self.calls.append((request.form["response_id"], request.form["message"]))
        if self.answer == 500:
            return Response("the callback crashed", status=500)
        return {"result": self.answer}


@dataclass
class Site:
    proxy: ProxyApp
    base: str
    inboxes: dict[str, Inbox]
    apis: dict[str, PlugItAPI]

    @property
    def mail(self) -> MailBackend:
        return self.proxy.mail

    def post(self, service: str, data: Any, key: str | None = None, **kwargs: Any) -> Any:
        return requests.post(
            f"{self.base}/{service}/ebuio_api/mail/",
            data=data,
            headers={"Authorization": f"Bearer {key or KEYS[service]}"},
            timeout=10,
            **kwargs,
        )


@pytest.fixture
def make_site(tmp_path: Path) -> Iterator[Callable[..., Site]]:
    """``make_site(smtp=server, mailbox=account, **mail_smtp_settings)``: two signed services
    (``one``, ``two``, and ``down`` whose server is not running) behind a proxy with
    ``mail = "smtp"``; the proxy is served over HTTP."""
    with contextlib.ExitStack() as stack:
        inboxes = {name: Inbox() for name in ("one", "two")}
        urls = {
            name: stack.enter_context(serve(PlugItService([], secret=SECRET, mail_callback=inbox)))
            for name, inbox in inboxes.items()
        }
        urls["down"] = f"http://127.0.0.1:{free_port()}"
        counter = itertools.count()

        def factory(
            smtp: SMTPServer | None = None,
            mailbox: Mailbox | None = None,
            protocol: str = "imap",
            **settings: Any,
        ) -> Site:
            mail = {
                "host": "127.0.0.1",
                "port": smtp.port if smtp is not None else free_port(),
                "helo_name": "localhost",
                "timeout": 5,
                "sender": SENDER,
                "reply_address": REPLIES,
                "queue_path": str(tmp_path / "mail.sqlite3"),
                "send_in_background": False,
                "allowed_recipient_domains": ["staff.example.org"],
            }
            if mailbox is not None:
                mail.update(
                    incoming_protocol=protocol,
                    incoming_host="127.0.0.1",
                    incoming_port=mailbox.server.imap_port
                    if protocol == "imap"
                    else mailbox.server.pop3_port,
                    incoming_username=mailbox.user,
                    incoming_password=mailbox.password,
                )
            if settings.get("queue") == "postgres":
                del mail["queue_path"]
            mail.update(settings)
            config = {
                "secret_key": STRONG_KEY,
                "services": [
                    {"name": name, "url": url, "secret": SECRET, "api_key": KEYS.get(name)}
                    for name, url in urls.items()
                ],
                "session_cookie": {"secure": False},
                "users": "sqlite",
                "users_sqlite": {"path": str(tmp_path / f"directory{next(counter)}.sqlite3")},
                "mail": "smtp",
                "mail_smtp": mail,
            }
            proxy = ProxyApp(config, load_entry_points=False)
            stack.callback(proxy.close)
            store = proxy.users
            dana = store.create_user("dana", email=MEMBER)
            store.create_user("erin", email=OUTSIDER)
            store.grant(dana.pk, "one", "member")
            base = stack.enter_context(serve(proxy))
            apis = {
                name: PlugItAPI(f"{base}/{name}/ebuio_api/", KEYS[name]) for name in ("one", "two")
            }
            for api in apis.values():
                stack.callback(api.close)
            return Site(proxy, base, inboxes, apis)

        yield factory


def send(site: Site, service: str = "one", **fields: Any) -> int:
    """Send a mail through ``PlugItAPI.send_mail``; return the queued id."""
    options = {
        "sender": None,
        "subject": "Your vote",
        "recipients": [MEMBER],
        "message": "Please vote.",
    }
    options.update(fields)
    response = site.apis[service].send_mail(**options)
    assert response.status_code == 202, response.text
    return int(response.json()["queued"])


def reply_message(
    to: str | None,
    text: str = "I vote yes.\nCheers, Dana",
    *,
    headers: dict[str, str] | None = None,
) -> bytes:
    """What a mail client sends back: text and HTML alternatives, plus an attachment."""
    msg = EmailMessage()
    msg["From"] = f"Dana <{MEMBER}>"
    if to is not None:
        msg["To"] = to
    msg["Subject"] = "Re: Your vote"
    msg["Date"] = email.utils.formatdate()
    msg["Message-ID"] = email.utils.make_msgid(domain="members.example")
    for name, value in (headers or {}).items():
        msg[name] = value
    msg.set_content(text)
    msg.add_alternative(f"<p>{text}</p><p>(html)</p>", subtype="html")
    msg.add_attachment("not this one", filename="notes.txt")
    return msg.as_bytes()


# -- settings --------------------------------------------------------------------------------------


def _config(**mail: Any) -> ProxyConfig:
    return ProxyConfig.from_mapping({"dev_mode": True, "mail_smtp": mail})


@pytest.mark.parametrize(
    ("settings", "key"),
    [
        pytest.param({}, "sender", id="no-sender"),
        pytest.param({"sender": "nobody"}, "sender", id="bad-sender"),
        pytest.param({"sender": "a@b.example, c@d.example"}, "sender", id="two-senders"),
        pytest.param({"sender": "a@b.example (PlugIt)"}, "sender", id="sender-comment"),
        pytest.param({"sender": "a@b.example\nBcc: c@d.example"}, "sender", id="sender-newline"),
        pytest.param(
            {"sender": "a@b.example", "reply_address": "=?utf-8?q?r?=@b.example"},
            "reply_address",
            id="reply-address-encoded-word",
        ),
        pytest.param({"sender": "a@b.example", "colour": 1}, "colour", id="unknown-key"),
        pytest.param(
            {"sender": "a@b.example", "ssl": True, "starttls": True}, "starttls", id="tls"
        ),
        pytest.param({"sender": "a@b.example", "username": "u"}, "password", id="no-password"),
        pytest.param(
            {"sender": "a@b.example", "password": {"env": "PLUGIT_TEST_UNSET_VARIABLE"}},
            "password",
            id="unset-env",
        ),
        pytest.param(
            {"sender": "a@b.example", "incoming_protocol": "smoke"},
            "incoming_protocol",
            id="protocol",
        ),
        pytest.param(
            {
                "sender": "a@b.example",
                "incoming_protocol": "imap",
                "incoming_host": "h",
                "incoming_username": "u",
                "incoming_password": "p",
            },
            "reply_address",
            id="incoming-without-reply-address",
        ),
        pytest.param(
            {"sender": "a@b.example", "allowed_senders": ["not an address"]},
            "allowed_senders",
            id="allowed-senders",
        ),
        pytest.param(
            {"sender": "a@b.example", "allowed_recipient_domains": ["a@b.example"]},
            "allowed_recipient_domains",
            id="domains",
        ),
        pytest.param({"sender": "a@b.example", "max_per_hour": -1}, "max_per_hour", id="quota"),
        pytest.param({"sender": "a@b.example", "poll_interval": 5}, "poll_interval", id="poll"),
    ],
)
def test_bad_settings_name_the_key(settings: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as error:
        read_settings(_config(**settings), settings)
    assert error.value.key == f"mail_smtp.{key}"


def test_settings_defaults_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PLUGIT_TEST_SMTP_PASSWORD", "from-the-environment")
    settings = read_settings(
        _config(),
        {
            "sender": SENDER,
            "starttls": True,
            "username": "plugit",
            "password": {"env": "PLUGIT_TEST_SMTP_PASSWORD"},
            "allowed_recipient_domains": ["*.Example.org", "example.net"],
        },
    )
    assert settings.password == "from-the-environment"
    assert settings.port == 587 and settings.sender_address == "no-reply@example.org"
    assert settings.allowed_recipient_domains == (".example.org", "example.net")
    assert settings.token_max_age == 30 * 86400 and settings.max_per_hour == 100


# -- reply tokens and message parsing --------------------------------------------------------------


def test_reply_tokens_are_signed_and_expire(monkeypatch: pytest.MonkeyPatch) -> None:
    tokens = ReplyTokens(STRONG_KEY, max_age=86400)
    token = tokens.make("one", "poll:42")
    assert tokens.verify(token) == ("one", "poll:42")
    assert token.count(".") == 2 and all(c.isalnum() or c in "-_." for c in token)
    signature = token.rpartition(".")[2]
    with pytest.raises(BadSignature):
        tokens.verify(token[: -len(signature)] + signature[::-1])
    with pytest.raises(BadSignature):
        ReplyTokens("another-proxy-secret-key-0123456789abcdef", 86400).verify(token)
    with pytest.raises(BadSignature):  # signed, but by the session cookie's serializer
        URLSafeTimedSerializer(STRONG_KEY).dumps(["one", "x"])
        tokens.verify(URLSafeTimedSerializer(STRONG_KEY).dumps(["one", "x"]))
    with monkeypatch.context() as patch:
        patch.setattr(TimestampSigner, "get_timestamp", lambda self: int(time.time()) - 2 * 86400)
        old = tokens.make("one", "old")
    with pytest.raises(SignatureExpired):
        tokens.verify(old)


def _multipart(*parts: tuple[str, str, str | None]) -> EmailMessage:
    msg = EmailMessage()
    msg["Subject"] = "x"
    msg.make_mixed()
    for subtype, content, filename in parts:
        part = EmailMessage()
        part.set_content(content, subtype=subtype)
        if filename:
            part.add_header("Content-Disposition", "attachment", filename=filename)
        msg.attach(part)
    return msg


def _nested() -> EmailMessage:
    inner = EmailMessage()
    inner.set_content("the nested text")
    inner.add_alternative("<p>the nested html</p>", subtype="html")
    outer = EmailMessage()
    outer["Subject"] = "x"
    outer.make_mixed()
    outer.attach(inner)
    return outer


def _latin1() -> EmailMessage:
    msg = EmailMessage()
    msg.set_content("Réponse: oui".encode("latin-1"), maintype="text", subtype="plain")
    msg.replace_header("Content-Type", 'text/plain; charset="iso-8859-1"')
    return msg


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        pytest.param(_nested(), "the nested text\n", id="nested-alternative"),
        pytest.param(
            _multipart(("plain", "attached", "a.txt"), ("plain", "the body", None)),
            "the body\n",
            id="attachment-skipped",
        ),
        pytest.param(
            _multipart(("html", "<p>Hello&nbsp;<b>you</b></p><style>p{}</style>", None)),
            "Hello you",
            id="html-only",
        ),
        pytest.param(_latin1(), "Réponse: oui", id="latin-1"),
        pytest.param(_multipart(("html", "", "x.html")), "", id="no-text"),
    ],
)
def test_first_text_part(message: EmailMessage, expected: str) -> None:
    assert first_text(parse(message.as_bytes())) == expected


def test_html_to_text_keeps_blocks_apart() -> None:
    assert html_to_text("<h1>Title</h1><p>one &amp; two</p><ul><li>a</li><li>b</li></ul>") == (
        "Title\n\none & two\n\na\n\nb"
    )


# -- the API: refusals -----------------------------------------------------------------------------


GOOD = {"subject": "Hello", "message": "Hi there", "dests": [STAFF]}


@pytest.mark.parametrize(
    ("data", "status", "code"),
    [
        pytest.param({"message": "m", "dests": STAFF}, 400, "missing_subject", id="no-subject"),
        pytest.param({**GOOD, "subject": "  "}, 400, "missing_subject", id="blank-subject"),
        pytest.param({"subject": "s", "dests": STAFF}, 400, "missing_message", id="no-message"),
        pytest.param({"subject": "s", "message": "m"}, 400, "no_recipient", id="no-recipient"),
        pytest.param({**GOOD, "dests": ["", " "]}, 400, "no_recipient", id="blank-recipient"),
        pytest.param({**GOOD, "dests": "not-an-address"}, 400, "bad_recipient", id="bad-address"),
        pytest.param(
            {**GOOD, "dests": f"{STAFF}\r\nBcc: victim@evil.example"},
            400,
            "bad_recipient",
            id="recipient-injection",
        ),
        pytest.param(
            {**GOOD, "subject": "Hi\r\nBcc: victim@evil.example"},
            400,
            "bad_subject",
            id="subject-injection",
        ),
        pytest.param({**GOOD, "sender": "no one"}, 400, "bad_sender", id="bad-sender"),
        pytest.param(
            {**GOOD, "dests": [f"u{i}@staff.example.org" for i in range(6)]},
            400,
            "too_many_recipients",
            id="too-many-recipients",
        ),
        pytest.param({**GOOD, "response_id": "r" * 129}, 400, "bad_response_id", id="long-id"),
        pytest.param({**GOOD, "message": "x" * 2001}, 413, "too_large", id="oversized-body"),
        pytest.param(
            {**GOOD, "dests": "victim@evil.example"}, 403, "recipient_not_allowed", id="open-relay"
        ),
        pytest.param(
            {**GOOD, "dests": [STAFF, OUTSIDER]}, 403, "recipient_not_allowed", id="non-member"
        ),
        pytest.param(
            {**GOOD, "sender": "ceo@example.org"}, 403, "sender_not_allowed", id="sender-spoof"
        ),
    ],
)
def test_api_refusals_are_clear_and_write_nothing(
    make_site: Callable[..., Site], data: dict[str, Any], status: int, code: str
) -> None:
    site = make_site(max_recipients=5, max_body_bytes=2000)
    response = site.post("one", data)
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"] == "application/json"
    body = response.json()
    assert body["error"] == code and body["status"] == status and body["message"]
    assert site.mail.store.outbox() == []


def test_api_refuses_wrong_keys_huge_requests_and_json(make_site: Callable[..., Site]) -> None:
    site = make_site()
    assert site.post("one", GOOD, key=KEYS["two"]).status_code == 403
    huge = site.post("one", {**GOOD, "message": "x" * (1024 * 1024 + 10)})
    assert huge.status_code == 413 and huge.json()["error"] == "too_large"
    as_json = requests.post(
        f"{site.base}/one/ebuio_api/mail/",
        json=GOOD,
        headers={"Authorization": f"Bearer {KEYS['one']}"},
        timeout=10,
    )
    assert as_json.status_code == 400 and as_json.json()["error"] == "missing_subject"
    assert site.mail.store.outbox() == []


def test_api_accepts_members_allowed_domains_and_senders(make_site: Callable[..., Site]) -> None:
    site = make_site(allowed_senders=["news@example.org", "@lists.example.org"])
    ok = site.post("one", {**GOOD, "dests": [MEMBER, STAFF.upper()], "sender": ""})
    assert ok.status_code == 202, ok.text
    assert site.post("one", {**GOOD, "sender": "News <News@example.org>"}).status_code == 202
    assert site.post("one", {**GOOD, "sender": "x@lists.example.org"}).status_code == 202
    # Dana is a member of one, not of two: two may not write to her.
    refused = site.post("two", {**GOOD, "dests": MEMBER})
    assert refused.status_code == 403 and refused.json()["error"] == "recipient_not_allowed"
    rows = site.mail.store.outbox()
    assert [row["sender"] for row in rows] == [
        SENDER,
        "News <news@example.org>",
        "x@lists.example.org",
    ]
    assert rows[0]["recipients"] == [MEMBER, STAFF.upper()] and rows[0]["service"] == "one"


def test_rate_limit_per_service(make_site: Callable[..., Site]) -> None:
    site = make_site(max_per_hour=3)
    assert site.post("one", {**GOOD, "dests": [STAFF, MEMBER]}).status_code == 202
    assert site.post("one", GOOD).status_code == 202
    limited = site.post("one", GOOD)
    assert limited.status_code == 429
    assert (
        limited.json()["error"] == "rate_limited"
        and "3 recipients per hour" in (limited.json()["message"])
    )
    assert site.post("two", GOOD).status_code == 202  # each service has its own quota
    assert [row["service"] for row in site.mail.store.outbox()] == ["one", "one", "two"]


def test_no_reply_address_means_no_response_id(make_site: Callable[..., Site]) -> None:
    site = make_site(reply_address="")
    refused = site.post("one", {**GOOD, "response_id": "42"})
    assert refused.status_code == 400 and refused.json()["error"] == "replies_unavailable"
    assert site.post("one", GOOD).status_code == 202


# -- sending ---------------------------------------------------------------------------------------


def test_sent_mail_carries_a_signed_reply_address(
    make_site: Callable[..., Site], smtp: SMTPServer
) -> None:
    site = make_site(smtp=smtp)
    send(site, response_id="poll-42", recipients=[MEMBER, STAFF])
    send(site, message="<p>Vote <b>now</b>, Zoë</p>", html_message=True, subject="Héllo ✓")
    assert site.mail.flush() == 2
    plain, html = smtp.wait_for(2)
    assert plain.mail_from == "no-reply@example.org" and plain.rcpt_tos == [MEMBER, STAFF]
    msg = plain.message
    assert msg["From"] == SENDER and msg["To"] == f"{MEMBER}, {STAFF}"
    assert msg["Subject"] == "Your vote" and msg["X-PlugIt-Service"] == "one"
    assert msg["Auto-Submitted"] == "auto-generated" and msg["Date"] and msg["Message-ID"]
    assert msg.get_content().strip() == "Please vote."
    reply_to = msg["Reply-To"]
    local, _, domain = reply_to.rpartition("@")
    assert domain == "example.org" and local.startswith("replies+")
    assert site.mail.tokens.verify(local.partition("+")[2]) == ("one", "poll-42")
    assert html.message["Subject"] == "Héllo ✓" and html.message["Reply-To"] is None
    assert html.message.get_content_type() == "multipart/alternative"
    parts = {part.get_content_type(): part.get_content() for part in html.message.iter_parts()}
    assert parts["text/plain"].strip() == "Vote now, Zoë"
    assert parts["text/html"].strip() == "<p>Vote <b>now</b>, Zoë</p>"
    assert html.content.isascii()  # 7-bit transfer encodings: any SMTP server takes it
    assert [row["state"] for row in site.mail.store.outbox()] == ["sent", "sent"]
    assert site.mail.flush() == 0 and len(smtp.messages) == 2


@pytest.mark.embedded_backends  # reads the SQLite queue the config names
def test_smtp_outage_loses_nothing_and_sends_once(make_site: Callable[..., Site]) -> None:
    port = free_port()  # nothing listens there yet: the SMTP server is down
    site = make_site(port=port, retry_interval=600)
    first, second = send(site), send(site, subject="Second", response_id="r2")
    assert site.mail.flush() == 0
    rows = site.mail.store.outbox()
    assert [(r["id"], r["state"], r["attempts"]) for r in rows] == [
        (first, "queued", 1),
        (second, "queued", 1),
    ]
    assert all("cannot reach the SMTP server" in r["last_error"] for r in rows)
    assert all(r["next_try"] > time.time() + 500 for r in rows)
    assert site.mail.flush() == 0  # not due yet: no new attempt
    assert [r["attempts"] for r in site.mail.store.outbox()] == [1, 1]
    site.proxy.close()  # the proxy restarts while the SMTP server is still down
    again = make_site(port=port, retry_interval=600)
    with SMTPServer(port) as smtp:
        assert again.mail.flush() == 0  # still waiting for the retry time
        assert again.mail.flush(retry_now=True) == 2
        assert again.mail.flush(retry_now=True) == 0
        received = smtp.wait_for(2)
        time.sleep(0.1)
        assert len(smtp.messages) == 2
    assert sorted(r.message["Subject"] for r in received) == ["Second", "Your vote"]
    assert [(r["state"], r["attempts"]) for r in again.mail.store.outbox()] == [("sent", 2)] * 2


def test_background_sender_retries_until_the_server_is_back(
    make_site: Callable[..., Site],
) -> None:
    port = free_port()
    site = make_site(
        port=port, send_in_background=True, retry_interval=0.05, max_retry_interval=0.2
    )
    send(site)
    deadline = time.monotonic() + 10
    while site.mail.store.outbox()[0]["attempts"] < 2:
        assert time.monotonic() < deadline, "the sender thread never retried"
        time.sleep(0.05)
    with SMTPServer(port) as smtp:
        smtp.wait_for(1)
        while site.mail.store.outbox()[0]["state"] != "sent":
            assert time.monotonic() < deadline + 10, "never marked sent"
            time.sleep(0.05)
        send(site, subject="Later")  # the API wakes the thread up: no waiting for a timer
        assert smtp.wait_for(2, timeout=5)[1].message["Subject"] == "Later"
    site.proxy.close()
    assert site.mail._threads == []


@pytest.mark.parametrize("queue", ["sqlite", "postgres"])
def test_two_processes_sharing_the_queue_never_send_twice(
    tmp_path: Path, smtp: SMTPServer, request: pytest.FixtureRequest, queue: str
) -> None:
    schema = request.getfixturevalue("pg_schema") if queue == "postgres" else None
    section = {
        "host": "127.0.0.1",
        "port": smtp.port,
        "helo_name": "localhost",
        "sender": SENDER,
        "send_in_background": False,
        **_queue_settings(queue, schema, tmp_path / "shared.sqlite3"),
    }
    settings = read_settings(_config(), section)
    first, second = MailBackend(settings, STRONG_KEY), MailBackend(settings, STRONG_KEY)
    request.addfinalizer(first.close)
    request.addfinalizer(second.close)
    for n in range(30):
        first.store.enqueue(
            service="one",
            sender=SENDER,
            recipients=[STAFF],
            subject=f"mail {n}",
            body="x",
            html=False,
            reply_to=None,
            message_id=email.utils.make_msgid(domain="example.org"),
            max_per_hour=0,
        )
    counts: list[int] = []
    threads = [
        threading.Thread(target=lambda b=backend: counts.append(b.flush()))
        for backend in (first, second, first, second)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sum(counts) == 30
    subjects = [received.message["Subject"] for received in smtp.wait_for(30)]
    assert sorted(subjects) == sorted(f"mail {n}" for n in range(30))


def test_a_proxy_queues_in_postgres_and_delivers(
    make_site: Callable[..., Site], smtp: SMTPServer, pg_schema: str
) -> None:
    """End to end with ``queue = "postgres"``: the API queues in the database (quota included),
    the sender thread delivers to the SMTP server, a second proxy sees the same queue."""
    from plugit_backends.mail_postgres import PostgresMailQueue

    queue = {"queue": "postgres", "queue_dsn": PG_DSN, "queue_schema": pg_schema}
    site = make_site(smtp=smtp, max_per_hour=2, **queue)
    assert isinstance(site.mail.store, PostgresMailQueue)
    first = send(site, response_id="poll-7")
    second = send(site, subject="Second", recipients=[STAFF])
    refused = site.post("one", {"subject": "Third", "message": "x", "dests": MEMBER})
    assert refused.status_code == 429 and refused.json()["error"] == "rate_limited"
    other = make_site(smtp=smtp, send_in_background=True, **queue)  # another proxy process
    received = smtp.wait_for(2, timeout=10)
    assert sorted(r.message["Subject"] for r in received) == ["Second", "Your vote"]
    (vote,) = [r for r in received if r.message["Subject"] == "Your vote"]
    assert vote.rcpt_tos == [MEMBER] and str(vote.message["Reply-To"]).startswith("replies+")
    deadline = time.monotonic() + 10
    while site.mail.status()["outbox"] != {"sent": 2}:
        assert time.monotonic() < deadline, site.mail.store.outbox()
        time.sleep(0.05)
    rows = site.mail.store.outbox()
    assert [(r["id"], r["attempts"]) for r in rows] == [(first, 1), (second, 1)]
    assert site.mail.flush(retry_now=True) == 0 and len(smtp.messages) == 2
    send(other, "two", subject="From the other proxy", recipients=[STAFF])
    assert smtp.wait_for(3, timeout=10)[2].message["Subject"] == "From the other proxy"
    other.proxy.close()
    assert other.mail._threads == []


def test_permanent_refusals_are_not_retried(make_site: Callable[..., Site]) -> None:
    gone = "gone@staff.example.org"
    with SMTPServer(refuse=(gone,)) as smtp:
        site = make_site(smtp=smtp)
        refused = send(site, recipients=[gone])
        partly = send(site, recipients=[gone, STAFF])
        assert site.mail.flush() == 1
        rows = {row["id"]: row for row in site.mail.store.outbox()}
        assert rows[refused]["state"] == "failed" and rows[refused]["attempts"] == 1
        assert "550" in rows[refused]["last_error"]
        assert rows[partly]["state"] == "sent" and gone in rows[partly]["last_error"]
        assert site.mail.flush(retry_now=True) == 0
        assert [r.rcpt_tos for r in smtp.messages] == [[STAFF]]


@pytest.mark.parametrize("tls", ["starttls", "ssl"])
def test_tls_and_login(
    make_site: Callable[..., Site],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    tls: str,
) -> None:
    monkeypatch.setenv("PLUGIT_TEST_SMTP_PASSWORD", "s3cret-smtp")
    with SMTPServer(tls=tls, users={"plugit": "s3cret-smtp"}, cert_dir=tmp_path) as smtp:
        options = {
            "smtp": smtp,
            tls: True,
            "username": "plugit",
            "password": {"env": "PLUGIT_TEST_SMTP_PASSWORD"},
        }
        site = make_site(ca_file=str(smtp.ca_file), **options)
        send(site)
        assert site.mail.flush() == 1
        (received,) = smtp.wait_for(1)
        assert received.login == "plugit" and received.tls
        site.proxy.close()
        # A wrong password and an untrusted certificate: retried later, the reason recorded.
        wrong = make_site(ca_file=str(smtp.ca_file), **{**options, "password": "wrong"})
        untrusted = make_site(**options)
        for other, reason in ((wrong, "535"), (untrusted, "CERTIFICATE_VERIFY_FAILED")):
            send(other)
            assert other.mail.flush(retry_now=True) == 0
            row = other.mail.store.outbox("queued")[0]
            assert reason in row["last_error"], row["last_error"]
            other.proxy.close()
        assert len(smtp.messages) == 1


# -- replies ---------------------------------------------------------------------------------------


def sent_reply_address(site: Site, smtp: SMTPServer, service: str = "one", **fields: Any) -> str:
    """Send a mail asking for replies and return the Reply-To the recipient sees."""
    before = len(smtp.messages)
    send(site, service, **fields)
    site.mail.flush()
    return str(smtp.wait_for(before + 1)[-1].message["Reply-To"])


@pytest.mark.parametrize(
    ("protocol", "tls"),
    [
        pytest.param("imap", None, id="imap"),
        pytest.param("imap", "ssl", id="imaps"),
        pytest.param("pop3", None, id="pop3"),
        pytest.param("pop3", "starttls", id="pop3-stls"),
    ],
)
def test_reply_reaches_the_service(
    make_site: Callable[..., Site],
    smtp: SMTPServer,
    mailbox: Mailbox,
    protocol: str,
    tls: str | None,
) -> None:
    options: dict[str, Any] = {}
    if tls == "ssl":
        port = mailbox.server.imaps_port if protocol == "imap" else mailbox.server.pop3s_port
        options = {"incoming_ssl": True, "incoming_port": port}
    elif tls == "starttls":
        options = {"incoming_starttls": True}
    if tls:
        options["incoming_ca_file"] = str(mailbox.server.ca_file)
    site = make_site(smtp=smtp, mailbox=mailbox, protocol=protocol, **options)
    address = sent_reply_address(site, smtp, response_id="poll-42")
    mailbox.deliver(reply_message(f"PlugIt <{address}>"))
    assert site.mail.check_mail() == {"delivered": 1}
    assert site.inboxes["one"].calls == [("poll-42", "I vote yes.\nCheers, Dana\n")]
    assert site.inboxes["two"].calls == []
    assert mailbox.messages() == []
    assert site.mail.check_mail() == {}
    assert [row["state"] for row in site.mail.store.incoming()] == ["delivered"]


def test_replies_route_to_their_own_service(
    make_site: Callable[..., Site], smtp: SMTPServer, mailbox: Mailbox
) -> None:
    site = make_site(smtp=smtp, mailbox=mailbox)
    to_two = sent_reply_address(site, smtp, "two", response_id="t-1", recipients=[STAFF])
    to_one = sent_reply_address(site, smtp, "one", response_id="o-1")
    mailbox.deliver(reply_message(to_two, "for two"))
    mailbox.deliver(reply_message(f"someone@else.example, {to_one}", "for one"))
    assert site.mail.check_mail() == {"delivered": 2}
    assert site.inboxes["two"].calls == [("t-1", "for two\n")]
    assert site.inboxes["one"].calls == [("o-1", "for one\n")]


AUTO_REPLIES = [
    pytest.param({"Auto-Submitted": "auto-replied"}, id="auto-submitted-replied"),
    pytest.param({"Auto-Submitted": "auto-generated; owner-email=x@y.z"}, id="auto-generated"),
    pytest.param({"X-Auto-Response-Suppress": "All"}, id="x-auto-response-suppress"),
    pytest.param({"Precedence": "bulk"}, id="precedence-bulk"),
    pytest.param({"Precedence": "junk"}, id="precedence-junk"),
    pytest.param({"Precedence": "auto_reply"}, id="precedence-auto-reply"),
    pytest.param({"Precedence": "list"}, id="precedence-list"),
    pytest.param({"X-Precedence": "Bulk"}, id="x-precedence"),
    pytest.param({"X-Autoreply": "yes"}, id="x-autoreply"),
    pytest.param({"X-Autorespond": "Out of office"}, id="x-autorespond"),
    pytest.param({"Return-Path": "<>"}, id="bounce"),
]


@pytest.mark.parametrize("headers", AUTO_REPLIES)
def test_automatic_replies_are_dropped(
    make_site: Callable[..., Site],
    smtp: SMTPServer,
    mailbox: Mailbox,
    headers: dict[str, str],
) -> None:
    site = make_site(smtp=smtp, mailbox=mailbox)
    address = sent_reply_address(site, smtp, response_id="poll-42")
    mailbox.deliver(reply_message(address, "I am out of the office", headers=headers))
    assert site.mail.check_mail() == {"dropped": 1}
    assert site.inboxes["one"].calls == []
    assert mailbox.messages() == []


def test_auto_submitted_no_is_a_person(
    make_site: Callable[..., Site], smtp: SMTPServer, mailbox: Mailbox
) -> None:
    site = make_site(smtp=smtp, mailbox=mailbox)
    address = sent_reply_address(site, smtp, response_id="poll-42")
    mailbox.deliver(reply_message(address, "a person", headers={"Auto-Submitted": "no"}))
    report = EmailMessage()
    report["To"] = address
    report.set_content("delivery report")
    report.make_mixed()
    report.replace_header("Content-Type", 'multipart/report; report-type="delivery-status"')
    mailbox.deliver(report.as_bytes())
    assert site.mail.check_mail() == {"delivered": 1, "dropped": 1}
    assert site.inboxes["one"].calls == [("poll-42", "a person\n")]


def _forged(site: Site, kind: str, monkeypatch: pytest.MonkeyPatch) -> str | None:
    tokens = site.mail.tokens
    if kind == "no-to":
        return None
    if kind == "no-plus":
        return REPLIES
    if kind == "garbage":
        return plus_address(REPLIES, "dfwYm7PvJqUkkQOs9wKKInK_BOYH6g==")  # the original's format
    if kind == "tampered":  # another response id in place of the signed one
        _payload, stamp, signature = tokens.make("one", "poll-42").split(".")
        payload = tokens.make("one", "admin").split(".")[0]
        return plus_address(REPLIES, f"{payload}.{stamp}.{signature}")
    if kind == "expired":
        with monkeypatch.context() as patch:
            patch.setattr(
                TimestampSigner, "get_timestamp", lambda self: int(time.time()) - 31 * 86400
            )
            return plus_address(REPLIES, tokens.make("one", "poll-42"))
    if kind == "other-proxy":
        other = ReplyTokens("the-secret-key-of-another-proxy-0123456789", 86400)
        return plus_address(REPLIES, other.make("one", "poll-42"))
    if kind == "unknown-service":
        return plus_address(REPLIES, tokens.make("ghost", "poll-42"))
    raise AssertionError(kind)


@pytest.mark.parametrize(
    "kind",
    ["no-to", "no-plus", "garbage", "tampered", "expired", "other-proxy", "unknown-service"],
)
def test_invalid_tokens_are_never_delivered_nor_kept_forever(
    make_site: Callable[..., Site],
    mailbox: Mailbox,
    monkeypatch: pytest.MonkeyPatch,
    kind: str,
) -> None:
    site = make_site(mailbox=mailbox)
    mailbox.deliver(reply_message(_forged(site, kind, monkeypatch)))
    assert site.mail.check_mail() == {"rejected": 1}
    assert site.inboxes["one"].calls == [] and site.inboxes["two"].calls == []
    assert mailbox.messages() == []  # logged, recorded and deleted: never re-read (W23)
    (record,) = site.mail.store.incoming()
    assert record["state"] == "rejected" and record["raw"] is None and record["last_error"]


def test_refused_reply_is_kept_then_delivered(
    make_site: Callable[..., Site], smtp: SMTPServer, mailbox: Mailbox
) -> None:
    site = make_site(smtp=smtp, mailbox=mailbox, retry_interval=0.3)
    address = sent_reply_address(site, smtp, response_id="poll-42")
    mailbox.deliver(reply_message(address, "third time lucky"))
    inbox = site.inboxes["one"]
    inbox.answer = "Error"
    assert site.mail.check_mail() == {"kept": 1}
    assert site.mail.check_mail() == {"waiting": 1}  # not asked again before retry_interval
    wait_until_due(site)
    inbox.answer = 500
    assert site.mail.check_mail() == {"kept": 1}
    wait_until_due(site)
    assert len(mailbox.messages()) == 1
    inbox.answer = "Ok"
    assert site.mail.check_mail() == {"delivered": 1}
    assert [call[1] for call in inbox.calls] == ["third time lucky\n"] * 3
    assert mailbox.messages() == []
    (record,) = site.mail.store.incoming()
    assert record["state"] == "delivered" and record["attempts"] == 2


def wait_until_due(site: Site) -> None:
    """Wait for the next try of every kept reply (a fraction of a second in these tests)."""
    deadline = time.monotonic() + 5
    while any((r["next_try"] or 0) > time.time() for r in site.mail.store.incoming()):
        assert time.monotonic() < deadline
        time.sleep(0.02)


def test_reply_refused_too_often_is_moved_aside(
    make_site: Callable[..., Site], smtp: SMTPServer, mailbox: Mailbox
) -> None:
    site = make_site(
        smtp=smtp, mailbox=mailbox, max_delivery_attempts=2, protocol="pop3", retry_interval=0.01
    )
    address = sent_reply_address(site, smtp, response_id="poll-42")
    raw = reply_message(address)
    mailbox.deliver(raw)
    site.inboxes["one"].answer = "Error"
    assert site.mail.check_mail() == {"kept": 1}
    wait_until_due(site)
    assert site.mail.check_mail() == {"undeliverable": 1}
    assert mailbox.messages() == []
    (record,) = site.mail.store.incoming()
    assert record["state"] == "undeliverable" and record["response_id"] == "poll-42"
    assert record["raw"] == raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    assert site.mail.status()["incoming"] == {"undeliverable": 1}


@pytest.mark.parametrize("protocol", ["imap", "pop3"])
def test_long_lines_are_read(
    make_site: Callable[..., Site], mailbox: Mailbox, protocol: str
) -> None:
    site = make_site(mailbox=mailbox, protocol=protocol)
    long_line = "word " * 2000  # 10 kB on one line (poplib alone stops at 2 kB)
    msg = EmailMessage()
    msg["To"] = plus_address(REPLIES, site.mail.tokens.make("one", "long"))
    msg.set_content(long_line, cte="8bit")
    mailbox.deliver(msg.as_bytes())
    assert site.mail.check_mail() == {"delivered": 1}
    assert site.inboxes["one"].calls == [("long", long_line + "\n")]


def test_a_message_that_breaks_every_run_is_removed_in_the_end(
    make_site: Callable[..., Site], mailbox: Mailbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    import plugit_backends.mail_smtp as mail_smtp

    def first_text_or_crash(msg: Any) -> str:
        text = first_text(msg)
        if "poison" in text:
            raise RuntimeError("a bug in the reply parser")
        return text

    monkeypatch.setattr(mail_smtp, "first_text", first_text_or_crash)
    site = make_site(mailbox=mailbox, max_delivery_attempts=2, protocol="pop3")
    address = plus_address(REPLIES, site.mail.tokens.make("one", "p"))
    mailbox.deliver(reply_message(address, "poison"))
    mailbox.deliver(reply_message(address, "fine"))
    assert site.mail.check_mail() == {"errors": 1}  # the run stops at the first message
    assert site.mail.check_mail() == {"errors": 1}
    assert site.mail.check_mail() == {"unreadable": 1, "delivered": 1}
    assert site.inboxes["one"].calls == [("p", "fine\n")]
    assert mailbox.messages() == []


def test_unreachable_service_keeps_the_reply_without_counting(
    make_site: Callable[..., Site], mailbox: Mailbox
) -> None:
    site = make_site(mailbox=mailbox, max_delivery_attempts=1)
    mailbox.deliver(reply_message(plus_address(REPLIES, site.mail.tokens.make("down", "d-1"))))
    assert site.mail.check_mail() == {"kept": 1}
    assert site.mail.check_mail() == {"kept": 1}
    (record,) = site.mail.store.incoming()
    assert record["state"] == "pending" and record["attempts"] == 0
    assert "connection failed" in record["last_error"]
    assert len(mailbox.messages()) == 1


def test_oversized_replies_are_rejected(make_site: Callable[..., Site], mailbox: Mailbox) -> None:
    site = make_site(mailbox=mailbox, max_incoming_bytes=2048)
    address = plus_address(REPLIES, site.mail.tokens.make("one", "big"))
    mailbox.deliver(reply_message(address, "x" * 4000))
    mailbox.deliver(reply_message(address, "small"))
    assert site.mail.check_mail() == {"rejected": 1, "delivered": 1}
    assert site.inboxes["one"].calls == [("big", "small\n")]
    assert mailbox.messages() == []


def test_a_reply_delivered_before_a_crash_is_not_delivered_again(
    make_site: Callable[..., Site], mailbox: Mailbox
) -> None:
    site = make_site(mailbox=mailbox)
    raw = reply_message(plus_address(REPLIES, site.mail.tokens.make("one", "once")))
    mailbox.deliver(raw)
    (stored,) = mailbox.messages()
    # What a run that crashed between the service's Ok and the deletion left behind:
    site.mail.store.record_incoming(message_key(stored), "delivered")
    assert site.mail.check_mail() == {"cleaned": 1}
    assert site.inboxes["one"].calls == [] and mailbox.messages() == []


def test_one_check_at_a_time(make_site: Callable[..., Site], mailbox: Mailbox) -> None:
    site = make_site(mailbox=mailbox)
    other = MailBackend(site.mail.settings, STRONG_KEY)  # another process on the same file
    try:
        assert other.store.acquire_lock("check_mail", 60)
        assert site.mail.check_mail() == {"busy": 1}
        other.store.release_lock("check_mail")
        assert site.mail.check_mail() == {}
    finally:
        other.close()


def test_wrong_mailbox_password_is_an_error(
    make_site: Callable[..., Site], dovecot: Dovecot
) -> None:
    # A Dovecot of its own: after a failed login Dovecot slows every login from the address.
    with Dovecot() as server:
        server.add_user("locked")
        site = make_site(mailbox=Mailbox(server, "locked", "wrong-password"))
        with pytest.raises(MailboxError, match="login"):
            site.mail.check_mail()
    other = MailBackend(site.mail.settings, STRONG_KEY)
    try:
        assert other.store.acquire_lock("check_mail", 60)  # the failed run released its lock
    finally:
        other.close()


def test_background_poller_delivers_replies(
    make_site: Callable[..., Site], mailbox: Mailbox
) -> None:
    site = make_site(mailbox=mailbox, poll_interval=0.1)
    mailbox.deliver(reply_message(plus_address(REPLIES, site.mail.tokens.make("one", "bg"))))
    deadline = time.monotonic() + 10
    while not site.inboxes["one"].calls:
        assert time.monotonic() < deadline, "the poller never delivered"
        time.sleep(0.05)
    assert site.inboxes["one"].calls == [("bg", "I vote yes.\nCheers, Dana\n")]


# -- the command line ------------------------------------------------------------------------------


@pytest.mark.embedded_backends  # reads the SQLite queue the config names
def test_command_line(
    tmp_path: Path,
    smtp: SMTPServer,
    mailbox: Mailbox,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """``plugit mail --config FILE status|flush|check`` (what cron runs)."""
    monkeypatch.setenv("PLUGIT_TEST_IMAP_PASSWORD", mailbox.password)
    queue = tmp_path / "cli.sqlite3"
    inbox = Inbox()
    with serve(PlugItService([], secret=SECRET, mail_callback=inbox)) as url:
        config = tmp_path / "plugit.toml"
        config.write_text(
            f"""
secret_key = "{STRONG_KEY}"
mail = "smtp"

[[services]]
name = "one"
url = "{url}"
secret = "{SECRET}"

[mail_smtp]
host = "127.0.0.1"
port = {smtp.port}
helo_name = "localhost"
sender = "no-reply@example.org"
reply_address = "{REPLIES}"
queue_path = "{queue}"
incoming_protocol = "imap"
incoming_host = "127.0.0.1"
incoming_port = {mailbox.server.imap_port}
incoming_username = "{mailbox.user}"
incoming_password = {{ env = "PLUGIT_TEST_IMAP_PASSWORD" }}
""",
            encoding="utf-8",
        )
        lines: list[str] = []
        assert run_command(config, "status", out=lines.append) == 0
        assert lines == ["outbox: empty", "incoming: empty"]
        other = MailBackend(
            read_settings(_config(), {"sender": SENDER, "queue_path": str(queue)}), STRONG_KEY
        )  # the proxy, queueing a mail in the same file
        other.store.enqueue(
            service="one",
            sender=SENDER,
            recipients=[STAFF],
            subject="from the queue",
            body="x",
            html=False,
            reply_to=None,
            message_id=email.utils.make_msgid(),
            max_per_hour=0,
        )
        token = ReplyTokens(STRONG_KEY, 86400).make("one", "cli")
        mailbox.deliver(reply_message(plus_address(REPLIES, token), "by cron"))
        lines.clear()
        assert run_command(config, "flush", out=lines.append) == 0
        assert lines == ["sent 1, still queued 0"]
        assert smtp.wait_for(1)[0].message["Subject"] == "from the queue"
        lines.clear()
        assert run_command(config, "check", out=lines.append) == 0
        assert lines == ["delivered 1"] and inbox.calls == [("cli", "by cron\n")]
        lines.clear()
        assert run_command(config, "status", out=lines.append) == 0
        assert lines == ["outbox: sent 1", "incoming: delivered 1"]
    # The same through the plugit command (the plugin adds its sub-command).
    capsys.readouterr()
    assert main(["mail", "--config", str(config), "status"]) == 0
    assert capsys.readouterr().out == "outbox: sent 1\nincoming: delivered 1\n"
    port = f"incoming_port = {mailbox.server.imap_port}\n"
    config.write_text(config.read_text().replace(port, "incoming_port = 1\n"))  # nobody there
    assert main(["mail", "--config", str(config), "check"]) == 1
    assert "the reply mailbox failed" in capsys.readouterr().err

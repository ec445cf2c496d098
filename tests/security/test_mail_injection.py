"""A hostile service sends mail through the callback API (``<mount>ebuio_api/mail/``).

It controls every field: ``subject``, ``sender``, ``dests``, ``response_id``, ``message``,
``html_message``, and any other field it cares to add.  Whatever it puts there (CR, LF, NUL,
NEL, U+2028, U+2029, vertical tab, form feed, RFC 2047 encoded words decoding to line breaks in
``q`` or ``b``, any case, folded lines, overlong values, addresses hiding other addresses), the
API either refuses it with a 400 naming the field, or the mail reaches the real SMTP server
(aiosmtpd on loopback) with exactly the headers the site writes, the text shown as the service
typed it, and only the recipients the policy allowed.

A mail the sender cannot send (a row written before these checks existed, a server refusing it
again and again) ends ``failed`` with its reason after a bounded number of attempts, and never
holds back the mail of another service.  Both queue stores (SQLite and PostgreSQL) are attacked.

Self-contained: its own SMTP server, services and proxy (the fixtures of this folder are not used).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import email.utils
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from email import policy
from email.parser import BytesParser
from pathlib import Path
from typing import Any

import pytest
import requests
from postgres_schema import DSN, fresh_schema

from plugit_backends.mail_smtp import MailBackend, run_command
from plugit_core.proxy.app import ProxyApp
from plugit_core.service import PlugItService
from plugit_core.testing import free_port, serve

REQUIRED = os.environ.get("PLUGIT_REQUIRE_SERVERS") == "1"

try:
    from aiosmtpd.controller import Controller
except ImportError as exc:  # aiosmtpd is in the test extra
    if REQUIRED:
        raise
    pytest.skip(f"aiosmtpd is not installed (pip install aiosmtpd): {exc}", allow_module_level=True)

SECRET = "mail-injection-service-secret-0123456789"
STRONG_KEY = "k3y-for-mail-injection-tests-0f1e2d3c4b5a69788796a5b4"
KEYS = {"one": "api-key-of-hostile-service-one-01", "two": "api-key-of-honest-service-two-23"}
SENDER = "PlugIt <no-reply@example.org>"
ALLOWED_SENDER = "news@example.org"
STAFF = "ops@staff.example.org"  # in allowed_recipient_domains
OTHER_STAFF = "dev@staff.example.org"
BUSY = "busy@staff.example.org"  # the SMTP server answers 451 for this one, always
EVIL = "evil@attacker.example"
REPLIES = "replies@example.org"

# The headers the site writes; the service chooses none of them (Reply-To: with a response_id).
SITE_HEADERS = {
    "From",
    "To",
    "Subject",
    "Date",
    "Message-ID",
    "Auto-Submitted",
    "X-PlugIt-Service",
    "MIME-Version",
    "Content-Type",
    "Content-Transfer-Encoding",
}


# -- the SMTP server -------------------------------------------------------------------------------


@dataclass
class Delivery:
    mail_from: str
    rcpt_tos: list[str]
    raw: bytes

    @property
    def head(self) -> bytes:
        return self.raw.partition(b"\r\n\r\n")[0] + b"\r\n"

    @property
    def message(self) -> Any:
        return BytesParser(policy=policy.default).parsebytes(self.raw)


@dataclass
class Sink:
    """aiosmtpd on loopback: keeps every message as received; ``busy`` recipients get 451."""

    busy: set[str] = field(default_factory=lambda: {BUSY})
    port: int = field(default_factory=free_port)
    deliveries: list[Delivery] = field(default_factory=list)
    events: list[str] = field(default_factory=list)  # "refused <rcpt>", "data <rcpts>"
    changed: threading.Condition = field(default_factory=threading.Condition)

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, options: Any
    ) -> str:
        if address.lower() in self.busy:
            with self.changed:
                self.events.append(f"refused {address}")
                self.changed.notify_all()
            return "451 4.3.0 try again later"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        raw = bytes(envelope.original_content or envelope.content)
        with self.changed:
            self.deliveries.append(Delivery(envelope.mail_from, list(envelope.rcpt_tos), raw))
            self.events.append("data " + ",".join(envelope.rcpt_tos))
            self.changed.notify_all()
        return "250 OK"

    def wait_for(self, count: int, timeout: float = 15.0) -> list[Delivery]:
        with self.changed:
            if not self.changed.wait_for(lambda: len(self.deliveries) >= count, timeout):
                raise TimeoutError(f"{len(self.deliveries)} of {count} mails arrived")
            return list(self.deliveries)


@pytest.fixture
def sink() -> Iterator[Sink]:
    server = Sink()
    loop = asyncio.new_event_loop()
    controller = Controller(server, hostname="127.0.0.1", port=server.port, loop=loop)
    controller.start()
    try:
        yield server
    finally:
        controller.stop()
        loop.close()


# -- the site --------------------------------------------------------------------------------------


@pytest.fixture(params=["sqlite", "postgres"])
def queue_settings(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[dict[str, Any]]:
    """The ``[mail_smtp]`` keys of a fresh queue: a SQLite file, or a PostgreSQL schema."""
    if request.param == "sqlite":
        yield {"queue_path": str(tmp_path / "mail.sqlite3")}
        return
    with fresh_schema() as schema:
        yield {"queue": "postgres", "queue_dsn": DSN, "queue_schema": schema}


@dataclass
class Site:
    proxy: ProxyApp
    base: str

    @property
    def mail(self) -> MailBackend:
        return self.proxy.mail

    def post(self, service: str, data: Any, **kwargs: Any) -> requests.Response:
        return requests.post(
            f"{self.base}/{service}/ebuio_api/mail/",
            data=data,
            headers={"Authorization": f"Bearer {KEYS[service]}"},
            timeout=10,
            **kwargs,
        )

    def send(self, service: str, data: dict[str, Any]) -> int:
        response = self.post(service, data)
        assert response.status_code == 202, response.text
        return int(response.json()["queued"])


@pytest.fixture
def make_site(
    tmp_path: Path, sink: Sink, queue_settings: dict[str, Any]
) -> Iterator[Callable[..., Site]]:
    """``make_site(**mail_smtp)``: services ``one`` (hostile) and ``two`` (honest) behind a
    proxy sending mail to :class:`Sink`; no background sender unless asked."""
    with contextlib.ExitStack() as stack:
        urls = {
            name: stack.enter_context(serve(PlugItService([], secret=SECRET)))
            for name in ("one", "two")
        }

        def factory(**settings: Any) -> Site:
            mail = {
                "host": "127.0.0.1",
                "port": sink.port,
                "helo_name": "localhost",
                "timeout": 5,
                "sender": SENDER,
                "allowed_senders": [ALLOWED_SENDER],
                "allowed_recipient_domains": ["staff.example.org"],
                "member_recipients": False,
                "reply_address": REPLIES,
                "send_in_background": False,
                **queue_settings,
                **settings,
            }
            config = {
                "secret_key": STRONG_KEY,
                "services": [
                    {"name": name, "url": url, "secret": SECRET, "api_key": KEYS[name]}
                    for name, url in urls.items()
                ],
                "session_cookie": {"secure": False},
                "mail": "smtp",
                "mail_smtp": mail,
            }
            proxy = ProxyApp(config, load_entry_points=False)
            stack.callback(proxy.close)
            return Site(proxy, stack.enter_context(serve(proxy)))

        yield factory


GOOD = {"subject": "Your vote", "message": "Please vote.", "dests": STAFF}


def assert_site_headers_only(
    delivery: Delivery, *, reply_to: bool = False, recipient: str = STAFF
) -> None:
    """The message as the SMTP server got it carries the site's headers, each once, written in
    7-bit with CRLF line ends, and nothing that decodes to a line break or a control."""
    head = delivery.head
    assert head.isascii(), head
    assert b"\x00" not in head
    assert b"\r" not in head.replace(b"\r\n", b"") and b"\n" not in head.replace(b"\r\n", b"")
    assert all(len(line) <= 998 for line in head.split(b"\r\n")), head
    # compat32 reads header lines as they are (no decoding): the names the site wrote
    names = list(BytesParser(policy=policy.compat32).parsebytes(delivery.raw, headersonly=True))
    expected = SITE_HEADERS | ({"Reply-To"} if reply_to else set())
    if delivery.message.is_multipart():
        expected = expected - {"Content-Transfer-Encoding"}
    assert sorted(names) == sorted(expected), head
    message = delivery.message
    for name in names:
        value = str(message[name])
        assert not any(char in value for char in "\r\n\x00\x0b\x0c\x85\u2028\u2029"), (name, value)
    assert delivery.rcpt_tos == [recipient] and EVIL.encode() not in head.lower()


# -- the API refuses, naming the field -------------------------------------------------------------

B64_CRLF_BCC = base64.b64encode(f"x\r\nBcc: {EVIL}".encode()).decode()

REFUSED = [
    # subject: every kind of line break or control, raw
    *[
        pytest.param({"subject": f"Hi{brk}Bcc: {EVIL}"}, "bad_subject", id=f"subject-{name}")
        for name, brk in [
            ("crlf", "\r\n"),
            ("lf", "\n"),
            ("cr", "\r"),
            ("folded", "\r\n "),
            ("nul", "\x00"),
            ("vt", "\x0b"),
            ("ff", "\x0c"),
            ("nel", "\x85"),
            ("u2028", "\u2028"),
            ("u2029", "\u2029"),
            ("fs", "\x1c"),
            ("tab", "\t"),
            ("del", "\x7f"),
        ]
    ],
    pytest.param({"subject": "x" * 999}, "bad_subject", id="subject-overlong"),
    # sender: line breaks, and forms that hide a second address
    pytest.param({"sender": f"News\r\nBcc: {EVIL} <{ALLOWED_SENDER}>"}, "bad_sender", id="s-crlf"),
    pytest.param({"sender": f"{ALLOWED_SENDER}\r\nBcc: {EVIL}"}, "bad_sender", id="s-crlf-after"),
    pytest.param({"sender": f"News\u2028Bcc: {EVIL} <{ALLOWED_SENDER}>"}, "bad_sender", id="s-ls"),
    pytest.param({"sender": f"News\x85 <{ALLOWED_SENDER}>"}, "bad_sender", id="sender-nel"),
    pytest.param({"sender": f"{ALLOWED_SENDER}\x00"}, "bad_sender", id="sender-nul"),
    pytest.param({"sender": f"{ALLOWED_SENDER}, {EVIL}"}, "bad_sender", id="sender-two"),
    pytest.param({"sender": f"<{ALLOWED_SENDER}>, {EVIL}"}, "bad_sender", id="sender-two-angle"),
    pytest.param({"sender": f"{ALLOWED_SENDER} <{EVIL}>"}, "bad_sender", id="sender-name-address"),
    pytest.param({"sender": f"{EVIL} <{ALLOWED_SENDER}>"}, "bad_sender", id="sender-name-spoof"),
    pytest.param(
        {"sender": f'"News <{EVIL}>" <{ALLOWED_SENDER}>'}, "bad_sender", id="sender-quoted-angle"
    ),
    pytest.param(
        {"sender": f'"News" "x" <{ALLOWED_SENDER}>'}, "bad_sender", id="sender-stray-quotes"
    ),
    pytest.param(
        {"sender": f"{ALLOWED_SENDER} (News <{EVIL}>)"}, "bad_sender", id="sender-comment"
    ),
    pytest.param(
        {"sender": f"Evil <{ALLOWED_SENDER}> <{EVIL}>"}, "bad_sender", id="sender-two-angles"
    ),
    pytest.param(
        {"sender": f"=?utf-8?q?x?=@example.org <{ALLOWED_SENDER}>"}, "bad_sender", id="sender-at"
    ),
    pytest.param({"sender": "N" * 400 + f" <{ALLOWED_SENDER}>"}, "bad_sender", id="sender-long"),
    # recipients: line breaks, encoded words in the address, display names, NUL
    pytest.param({"dests": f"{STAFF}\r\nBcc: {EVIL}"}, "bad_recipient", id="dests-crlf"),
    pytest.param({"dests": f"{STAFF}\u2028Bcc:{EVIL}"}, "bad_recipient", id="dests-u2028"),
    pytest.param({"dests": f"{STAFF}\x00"}, "bad_recipient", id="dests-nul"),
    pytest.param(
        {"dests": "=?utf-8?q?a=0D=0ABcc=3A_evil=40attacker.example?=@staff.example.org"},
        "bad_recipient",
        id="dests-encoded-word",
    ),
    pytest.param({"dests": f"Ops <{STAFF}>"}, "bad_recipient", id="dests-display-name"),
    pytest.param({"dests": f"<{STAFF}>"}, "bad_recipient", id="dests-angle"),
    pytest.param({"dests": f'"{EVIL}"@staff.example.org'}, "bad_recipient", id="dests-quoted"),
    # response_id: one line of at most 128 characters
    pytest.param({"response_id": f"r\r\nBcc: {EVIL}"}, "bad_response_id", id="rid-crlf"),
    pytest.param({"response_id": "r\u2028x"}, "bad_response_id", id="rid-u2028"),
    pytest.param({"response_id": "r\x00"}, "bad_response_id", id="rid-nul"),
    pytest.param({"response_id": "r" * 129}, "bad_response_id", id="rid-overlong"),
    # message: controls other than tab, line ends and form feed
    pytest.param({"message": "hi\x00there"}, "bad_message", id="message-nul"),
    pytest.param({"message": "hi\x85there"}, "bad_message", id="message-nel"),
]


@pytest.mark.parametrize(("fields", "code"), REFUSED)
def test_malformed_fields_are_refused_and_name_the_field(
    make_site: Callable[..., Site], sink: Sink, fields: dict[str, Any], code: str
) -> None:
    site = make_site()
    response = site.post("one", {**GOOD, **fields})
    assert response.status_code == 400, response.text
    assert response.headers["Content-Type"] == "application/json"
    body = response.json()
    assert body["error"] == code and body["status"] == 400 and body["message"]
    assert site.mail.store.outbox() == []
    assert site.mail.flush() == 0 and sink.deliveries == []


# -- what is accepted is inert ---------------------------------------------------------------------

INERT_SUBJECTS = [
    pytest.param(f"=?utf-8?q?x=0D=0AReply-To:_{EVIL}?=", id="q-crlf"),
    pytest.param(f"=?UTF-8?Q?x=0D=0ABcc:_{EVIL}?=", id="Q-crlf-upper"),
    pytest.param(f"=?utf-8?b?{B64_CRLF_BCC}?=", id="b-crlf"),
    pytest.param(f"=?UTF-8?B?{B64_CRLF_BCC}?=", id="B-crlf-upper"),
    pytest.param(f"Hello =?utf-8?q?=0A?= Bcc: {EVIL}", id="q-lf-mid-text"),
    pytest.param("=?utf-8?q?x=00y?=", id="q-nul"),
    pytest.param("=?utf-8?q?x=0By=0Cz?=", id="q-vt-ff"),
    pytest.param(f"=?utf-8?q?x=E2=80=A8Bcc:_{EVIL}?=", id="q-u2028"),
    pytest.param(f"=?utf-8?q?x=C2=85Bcc:_{EVIL}?=", id="q-nel"),
    pytest.param(f"=?iso-8859-1?q?x=85Bcc:_{EVIL}?=", id="latin1-nel"),
    pytest.param(f"=?utf-8?q?x?= =?utf-8?q?=0D=0ABcc:_{EVIL}?=", id="adjacent-words"),
    pytest.param(f"=?utf-8*en?q?x=0D=0ABcc:_{EVIL}?=", id="rfc2231-language"),
    pytest.param("Résultat du vote ✓ " * 20 + "fin", id="long-unicode"),
    pytest.param("word " * 150 + "end", id="long-ascii"),
    pytest.param("x" * 998, id="one-998-char-word"),
]


@pytest.mark.parametrize("subject", INERT_SUBJECTS)
def test_subjects_reach_the_reader_as_typed(
    make_site: Callable[..., Site], sink: Sink, subject: str
) -> None:
    site = make_site()
    site.send("one", {**GOOD, "subject": subject})
    assert site.mail.flush() == 1
    (delivery,) = sink.wait_for(1)
    assert_site_headers_only(delivery)
    assert str(delivery.message["Subject"]) == subject  # decoded once: the literal text


@pytest.mark.parametrize(
    ("sender", "display"),
    [
        pytest.param(
            f"=?utf-8?q?News=0D=0ABcc:_evil=40attacker.example?= <{ALLOWED_SENDER}>",
            "=?utf-8?q?News=0D=0ABcc:_evil=40attacker.example?=",
            id="encoded-word-name",
        ),
        pytest.param(
            f'"=?utf-8?b?{B64_CRLF_BCC}?=" <{ALLOWED_SENDER}>',
            f"=?utf-8?b?{B64_CRLF_BCC}?=",
            id="quoted-encoded-word",
        ),
        pytest.param(
            f'"News, Inc.; \\"Board\\"" <{ALLOWED_SENDER}>',
            'News, Inc.; "Board"',
            id="quoted-specials",
        ),
        pytest.param(f"Zoë Ünïcode ✓ <{ALLOWED_SENDER}>", "Zoë Ünïcode ✓", id="unicode-name"),
        pytest.param(f"News (team) <{ALLOWED_SENDER.upper()}>", "News (team)", id="parentheses"),
    ],
)
def test_sender_names_reach_the_reader_as_typed(
    make_site: Callable[..., Site], sink: Sink, sender: str, display: str
) -> None:
    site = make_site()
    site.send("one", {**GOOD, "sender": sender})
    assert site.mail.flush() == 1
    (delivery,) = sink.wait_for(1)
    assert_site_headers_only(delivery)
    (address,) = delivery.message["From"].addresses
    assert (address.display_name, address.addr_spec) == (display, ALLOWED_SENDER)
    assert delivery.mail_from == "no-reply@example.org"  # bounces go to the site


def test_other_fields_cannot_add_headers_or_recipients(
    make_site: Callable[..., Site], sink: Sink
) -> None:
    site = make_site()
    response_id = f"=?utf-8?q?x=0D=0ABcc:_{EVIL}?="
    site.send(
        "one",
        {
            **GOOD,
            "dests": [f" {STAFF}\u2028", STAFF.upper()],  # trimmed, then one recipient
            "response_id": response_id,
            "html_message": f"true\r\nBcc: {EVIL}",
            "message": f"<p>hi</p>\r\n\r\nBcc: {EVIL}\r\n--boundary\r\nContent-Type: text/x",
            # fields the API does not know are ignored
            "bcc": EVIL,
            "cc": EVIL,
            "reply_to": EVIL,
            "headers": f"Bcc: {EVIL}",
            "to": EVIL,
        },
    )
    assert site.mail.flush() == 1
    (delivery,) = sink.wait_for(1)
    assert_site_headers_only(delivery, reply_to=True)
    message = delivery.message
    assert message["To"] == STAFF
    (reply_to,) = message["Reply-To"].addresses
    token = reply_to.username.partition("+")[2]
    assert site.mail.tokens.verify(token) == ("one", response_id)
    parts = {part.get_content_type(): part.get_content() for part in message.iter_parts()}
    assert set(parts) == {"text/plain", "text/html"}  # the body's fake part stayed text
    assert f"Bcc: {EVIL}" in parts["text/html"]


# -- mails that cannot be sent ---------------------------------------------------------------------


def _enqueue_raw(site: Site, **fields: Any) -> int:
    """A row as a PlugIt without these checks queued it (the API refuses it now)."""
    options: dict[str, Any] = {
        "service": "one",
        "sender": SENDER,
        "recipients": [STAFF],
        "subject": "poison",
        "body": "x",
        "html": False,
        "reply_to": None,
        "message_id": email.utils.make_msgid(domain="example.org"),
        "max_per_hour": 0,
    }
    options.update(fields)
    return site.mail.store.enqueue(**options)


def test_poisoned_mails_fail_without_holding_back_other_services(
    make_site: Callable[..., Site], sink: Sink
) -> None:
    site = make_site()
    poisons = [
        _enqueue_raw(site, recipients=[f"{STAFF}\r\nRCPT TO:<{EVIL}>"]),
        _enqueue_raw(site, recipients=[f"=?utf-8?q?a=0D=0ABcc=3A_{EVIL}?=@staff.example.org"]),
        _enqueue_raw(site, sender=f"Evil\r\nBcc: {EVIL} <{ALLOWED_SENDER}>"),
        _enqueue_raw(site, sender=f"{ALLOWED_SENDER}, {EVIL}"),
        _enqueue_raw(site, message_id="<x>\r\nBcc: evil@attacker.example"),
        # the subject of the issue: it made every pass of the sender loop fail
        _enqueue_raw(site, subject=f"x\u2028Bcc: {EVIL}"),
        _enqueue_raw(site, subject=f"x\x85Bcc: {EVIL}"),
    ]
    good = site.send("two", {**GOOD, "dests": OTHER_STAFF, "subject": "from two"})
    # One pass: the poisons come first in the batch, and the good mail still leaves.
    assert site.mail.flush() == 1
    rows = {row["id"]: row for row in site.mail.store.outbox()}
    for mail_id in poisons:
        row = rows[mail_id]
        assert (row["state"], row["attempts"]) == ("failed", 1), row
        assert row["last_error"].startswith("cannot build the message: ValueError"), row
    assert "U+2028" in rows[poisons[-2]]["last_error"]
    assert rows[good]["state"] == "sent"
    (delivery,) = sink.wait_for(1)
    assert_site_headers_only(delivery, recipient=OTHER_STAFF)
    assert site.mail.flush(retry_now=True) == 0 and len(sink.deliveries) == 1
    assert site.mail.status()["outbox"] == {"failed": len(poisons), "sent": 1}


def test_a_mail_refused_again_and_again_fails_in_the_end_and_delays_no_one(
    make_site: Callable[..., Site], sink: Sink
) -> None:
    """The SMTP server answers 451 for one mail, always; mail of another service goes on."""
    site = make_site(max_attempts=3, retry_interval=600)
    stuck = site.send("one", {**GOOD, "dests": BUSY})
    first = site.send("two", {**GOOD, "dests": OTHER_STAFF, "subject": "first"})
    assert site.mail.flush() == 1
    assert sink.events == [f"refused {BUSY}", f"data {OTHER_STAFF}"]
    row = {row["id"]: row for row in site.mail.store.outbox()}[stuck]
    assert (row["state"], row["attempts"]) == ("queued", 1) and "451" in row["last_error"]
    assert site.mail.flush(retry_now=True) == 0  # attempt 2
    second = site.send("two", {**GOOD, "dests": OTHER_STAFF, "subject": "second"})
    assert site.mail.flush(retry_now=True) == 1  # attempt 3, the last; then the new mail
    rows = {row["id"]: row for row in site.mail.store.outbox()}
    assert (rows[stuck]["state"], rows[stuck]["attempts"]) == ("failed", 3)
    assert "451" in rows[stuck]["last_error"]
    assert rows[first]["state"] == rows[second]["state"] == "sent"
    refusals = [n for n, event in enumerate(sink.events) if event == f"refused {BUSY}"]
    assert len(refusals) == 3 and sink.events.count(f"data {OTHER_STAFF}") == 2
    assert sink.events.index(f"data {OTHER_STAFF}") < refusals[1]  # not held back
    assert site.mail.flush(retry_now=True) == 0 and len(sink.events) == 5  # never again


def test_the_background_sender_goes_on_after_a_poisoned_mail(
    make_site: Callable[..., Site], sink: Sink
) -> None:
    site = make_site(send_in_background=True)  # the sender thread of a proxy process
    poison = _enqueue_raw(site, recipients=[f"{STAFF}\nRCPT TO:<{EVIL}>"])
    good = site.send("two", {**GOOD, "dests": OTHER_STAFF})  # wakes the thread up
    (delivery,) = sink.wait_for(1)
    assert delivery.rcpt_tos == [OTHER_STAFF]
    later = site.send("two", {**GOOD, "dests": OTHER_STAFF, "subject": "later"})
    assert sink.wait_for(2)[1].message["Subject"] == "later"
    deadline = time.monotonic() + 15
    while {row["id"]: row["state"] for row in site.mail.store.outbox()} != {
        poison: "failed",
        good: "sent",
        later: "sent",
    }:
        assert time.monotonic() < deadline, site.mail.store.outbox()
        time.sleep(0.02)


@pytest.mark.embedded_backends  # the command reads the queue this test chose, not the matrix's
def test_failed_mails_are_listed_with_their_reason(
    make_site: Callable[..., Site], sink: Sink, tmp_path: Path, queue_settings: dict[str, Any]
) -> None:
    site = make_site()
    poison = _enqueue_raw(site, recipients=[f"{STAFF}\r\nBcc: {EVIL}"])
    assert site.mail.flush() == 0
    lines = []
    for key, value in queue_settings.items():
        lines.append(f"{key} = {value!r}".replace("'", '"'))
    config = tmp_path / "plugit.toml"
    config.write_text(
        f'secret_key = "{STRONG_KEY}"\nmail = "smtp"\n\n[mail_smtp]\n'
        f'host = "127.0.0.1"\nport = {sink.port}\nsender = "{SENDER}"\n' + "\n".join(lines) + "\n",
        encoding="utf-8",
    )
    out: list[str] = []
    assert run_command(config, "status", out=out.append) == 0
    assert out[0] == "outbox: failed 1"
    assert out[2].startswith(f"failed mail {poison} from one (1 attempt(s)): cannot build")

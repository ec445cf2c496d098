"""Mail for services: the callback API's ``mail/`` endpoint over SMTP, and replies over IMAP or
POP3 delivered to the service's ``mail`` endpoint (PROTOCOL.md sections 2.5, 6 and 7).

Configuration (see docs/mail.md for every setting)::

    mail = "smtp"

    [mail_smtp]
    host = "smtp.example.org"
    port = 587
    starttls = true
    username = "plugit"
    password = { env = "PLUGIT_SMTP_PASSWORD" }
    sender = "PlugIt <no-reply@example.org>"
    reply_address = "replies@example.org"      # replies go to replies+<token>@example.org
    queue_path = "/var/lib/plugit/mail.sqlite3"  # or queue = "postgres" with queue_dsn
    allowed_recipient_domains = ["example.org"]
    max_per_hour = 200
    incoming_protocol = "imap"
    incoming_host = "imap.example.org"
    incoming_ssl = true
    incoming_username = "replies@example.org"
    incoming_password = { env = "PLUGIT_IMAP_PASSWORD" }

Sending: the API checks the request (4xx JSON, nothing written, when it is refused), applies
the anti-relay policy (the sender is the configured one or in ``allowed_senders``; every
recipient is a member of the calling service or in ``allowed_recipient_domains``; at most
``max_per_hour`` recipients per service per rolling hour) and queues the mail in one
transaction of the mail queue (:class:`~.store.MailQueue`: the SQLite file ``queue_path``, or
with ``queue = "postgres"`` the tables of ``plugit_backends.mail_postgres`` in the database
``queue_dsn``, schema ``queue_schema``); a background thread sends it, retrying with backoff
while the SMTP server is unavailable.

Replies: when the service gives a ``response_id``, the mail's ``Reply-To`` is the plus-address
``<reply_address local part>+<token>@<domain>``, where the token is an itsdangerous
``URLSafeTimedSerializer`` signature of ``[service, response_id]`` with the proxy's
``secret_key`` and the salt ``plugit.mail-reply``: authenticated, time-limited
(``token_max_age``), never home-made cryptography.  :meth:`MailBackend.check_mail` reads the
mailbox, drops automatic replies, verifies the token, posts the first text part to the
service's ``mail`` endpoint (signed like every call to it) and deletes the message only once the
service answered ``{"result": "Ok"}``.
"""

from __future__ import annotations

import email.utils
import hashlib
import imaplib
import json
import logging
import smtplib
import sqlite3
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from itsdangerous import BadSignature, SignatureExpired, URLSafeTimedSerializer
from werkzeug.wrappers import Response

from plugit_core.backends import RegisterBackend
from plugit_core.config import ConfigError, ProxyConfig
from plugit_core.hookspecs import hookimpl
from plugit_core.proxy.api import ApiCall, ApiError
from plugit_core.proxy.upstream import ServiceClient, ServiceError, UpstreamRequest
from plugit_core.settings import Section, setting
from plugit_core.stores import StoreUnavailable
from plugit_core.users import SIMULATED_MODES, simulated_user

from .mailbox import Mailbox, MailboxError, open_mailbox, tls_context
from .message import (
    ADDRESS,
    auto_reply_reason,
    build_message,
    first_text,
    format_sender,
    parse,
    plus_address,
    reply_candidates,
    split_sender,
    unsafe_char,
    valid_address,
)
from .monitor import SmtpMonitor
from .store import MailQueue, MailStore, Outgoing, RateLimitedError

if TYPE_CHECKING:
    from plugit_core.proxy.context import PluginContext

__all__ = [
    "QUEUES",
    "TOKEN_SALT",
    "MailBackend",
    "MailQueue",
    "MailSettings",
    "ReplyTokens",
    "open_queue",
    "read_settings",
]

log = logging.getLogger("plugit.mail")

SECTION = "mail_smtp"
TOKEN_SALT = "plugit.mail-reply"  # noqa: S105 (a salt, not a secret)
MAX_RESPONSE_ID = 128
MAX_SUBJECT = 998
MAX_SENDER = 320
FAILED_SHOWN = 20  # failed mails listed by plugit mail status, the latest
UNEXPECTED_ATTEMPTS = 3  # attempts of a mail that fails in an unforeseen way before it fails
BATCH = 50
# The least time a sender cut off from the queue gets, once the queue answers again, to record its
# results before another sender takes its mails: a few of the store guard's trial intervals.
MIN_GRACE = 5.0
QUEUES = ("sqlite", "postgres")  # where the mail queue lives: [mail_smtp] queue
DEFAULT_QUEUE_SCHEMA = "plugit"


# -- settings --------------------------------------------------------------------------------------


def _address(*, display_name: bool = False) -> Callable[[str], str]:
    """A check of an e-mail address (with a display name when ``display_name``)."""

    def check(value: str) -> str:
        try:
            name, _address = split_sender(value)
        except ValueError as exc:
            raise ValueError(f"not an e-mail address: {value!r} ({exc})") from None
        if name and not display_name:
            raise ValueError(f"expected a bare address (no display name), got {value!r}")
        return value

    return check


def _domains(values: tuple[str, ...]) -> tuple[str, ...]:
    domains = tuple(d.lower().lstrip("*") for d in values)
    for domain in domains:
        if "@" in domain or not domain.strip("."):
            raise ValueError(f"not a domain name: {domain!r}")
    return domains


def _senders(values: tuple[str, ...]) -> tuple[str, ...]:
    senders = tuple(s.lower() for s in values)
    for allowed in senders:
        if not (ADDRESS.match(allowed) or ADDRESS.match("x" + allowed)):
            raise ValueError(f"expected addresses or @domain entries, got {allowed!r}")
    return senders


def _tcp_port(value: int) -> int:
    if value > 65535:
        raise ValueError(f"not a TCP port: {value}")
    return value


def _queue(value: str) -> str:
    if value not in QUEUES:
        raise ValueError(f'must be "sqlite" (queue_path) or "postgres" (queue_dsn), not {value!r}')
    return value


def _default_port(values: Mapping[str, Any]) -> int:
    return 465 if values["ssl"] else 587 if values["starttls"] else 25


@dataclass(frozen=True)
class MailSettings:
    """The ``[mail_smtp]`` table, checked (see the module documentation and docs/mail.md)."""

    sender: str = setting(
        check=_address(display_name=True),
        required='is required: the default From address, "no-reply@example.org"',
        help="the default From address",
    )
    host: str = setting("localhost", help="the SMTP server")
    port: int = setting(
        25, default_from=_default_port, check=_tcp_port, help="its port (465 with ssl, ...)"
    )
    ssl: bool = setting(False, help="implicit TLS")
    starttls: bool = setting(False, help="STARTTLS")
    username: str | None = setting(None, help="the SMTP login")
    password: str | None = setting(None, secret=True, help="the SMTP password")
    timeout: float = setting(30.0, minimum=0.1, help="seconds of an SMTP exchange")
    helo_name: str | None = setting(None, help="the name said in HELO")
    ca_file: str | None = setting(None, help="the CA bundle the server is checked against")
    envelope_sender: str | None = setting(None, check=_address(), help="the bounce address")
    reply_address: str | None = setting(None, check=_address(), help="where replies go")
    token_max_age: float = setting(30 * 86400.0, minimum=1, help="seconds a reply is accepted")
    queue_path: str = setting("plugit-mail.sqlite3", help="the SQLite queue's file")
    queue: str = setting("sqlite", check=_queue, help='"sqlite" or "postgres"')
    queue_dsn: str | None = setting(None, secret=True, help="the PostgreSQL queue's database")
    queue_schema: str = setting(DEFAULT_QUEUE_SCHEMA, help="the PostgreSQL queue's schema")
    retry_interval: float = setting(60.0, minimum=0.01, help="seconds before the first retry")
    max_retry_interval: float = setting(3600.0, minimum=0.01, help="the longest retry wait")
    max_attempts: int = setting(100, help="attempts before a mail fails")
    sender_lease: float = setting(10.0, minimum=0.2, help="seconds a sender holds its mails")
    send_in_background: bool = setting(True, help="send from a thread, not the request")
    keep_sent: float = setting(7 * 86400.0, minimum=3600, help="seconds sent mails are kept")
    allowed_recipient_domains: tuple[str, ...] = setting(
        (), non_empty=True, check=_domains, help="the only domains mail may go to"
    )
    member_recipients: bool = setting(True, help="services may mail their members")
    allowed_senders: tuple[str, ...] = setting(
        (), non_empty=True, check=_senders, help="From addresses services may use"
    )
    max_per_hour: int = setting(100, help="mails of one service per hour")
    max_recipients: int = setting(50, minimum=1, help="recipients of one mail")
    max_body_bytes: int = setting(256 * 1024, minimum=1, help="bytes of one mail's body")
    incoming_protocol: str | None = setting(
        None, choices=("imap", "pop3"), help="how replies are fetched"
    )
    incoming_host: str | None = setting(None, help="the mailbox's server")
    incoming_port: int = setting(0, help="its port (0: the protocol's)")
    incoming_ssl: bool = setting(False, help="implicit TLS to the mailbox")
    incoming_starttls: bool = setting(False, help="STARTTLS to the mailbox")
    incoming_username: str | None = setting(None, help="the mailbox login")
    incoming_password: str | None = setting(None, secret=True, help="the mailbox password")
    incoming_mailbox: str = setting("INBOX", help="the folder replies arrive in")
    incoming_ca_file: str | None = setting(None, help="the mailbox's CA bundle")
    poll_interval: float = setting(0.0, help="seconds between mailbox checks (0: never)")
    max_delivery_attempts: int = setting(10, minimum=1, help="attempts to deliver a reply")
    max_incoming_bytes: int = setting(10 * 1024 * 1024, minimum=1024, help="bytes of one reply")
    max_messages_per_run: int = setting(200, minimum=1, help="replies fetched at once")
    smtp_required: bool = setting(False, help="the proxy is not ready while SMTP is down")
    smtp_check_interval: float = setting(5.0, help="seconds between checks of the server")

    @property
    def sender_address(self) -> str:
        return split_sender(self.sender)[1].lower()


def read_settings(config: ProxyConfig, section: Mapping[str, Any]) -> MailSettings:
    """Validate the ``[mail_smtp]`` table; raise :class:`ConfigError` naming the faulty key."""
    settings = config.read(MailSettings, SECTION, section, blank_is_missing=True)
    where = Section(SECTION, config.source)
    if settings.ssl and settings.starttls:
        raise where.error("starttls", "ssl (implicit TLS) and starttls exclude each other")
    if settings.username and settings.password is None:
        raise where.error("password", "is required with username")
    if settings.incoming_ssl and settings.incoming_starttls:
        raise where.error(
            "incoming_starttls", "incoming_ssl and incoming_starttls exclude each other"
        )
    protocol = settings.incoming_protocol
    if protocol is not None:
        for key in ("incoming_host", "incoming_username", "incoming_password"):
            if not getattr(settings, key):
                raise where.error(key, f"is required with incoming_protocol = {protocol!r}")
        if settings.reply_address is None:
            raise where.error("reply_address", "is required to receive replies (incoming_protocol)")
    if settings.poll_interval and protocol is None:
        raise where.error("poll_interval", "needs incoming_protocol")
    if settings.port == 0:  # as if not set
        settings = replace(settings, port=_default_port(vars(settings)))
    return _check_queue(where, section, settings)


def _check_queue(
    where: Section, section: Mapping[str, Any], settings: MailSettings
) -> MailSettings:
    """The ``queue`` settings: ``"sqlite"`` (``queue_path``) or ``"postgres"`` (``queue_dsn``,
    ``queue_schema``), each refusing the other's keys."""
    if settings.queue == "sqlite":
        for key in ("queue_dsn", "queue_schema"):
            if key in section:
                raise where.error(key, 'is for queue = "postgres" (the SQLite queue is queue_path)')
        return settings
    from plugit_backends.sql import postgres as pg

    if "queue_path" in section:
        raise where.error("queue_path", 'is for queue = "sqlite": with "postgres" set queue_dsn')
    if pg.PG_MISSING is not None:
        raise where.error(
            "queue",
            "the postgres queue needs psycopg 3: pip install 'plugit-wsgi[postgres]' "
            f"({pg.PG_MISSING})",
        )
    dsn = settings.queue_dsn
    if dsn is None or not dsn.strip():
        raise where.error(
            "queue_dsn",
            'is required with queue = "postgres": a connection string, '
            'e.g. queue_dsn = { env = "PLUGIT_DATABASE_URL" }',
        )
    try:
        pg.psycopg.conninfo.conninfo_to_dict(dsn)
    except pg.psycopg.ProgrammingError:
        raise where.error("queue_dsn", "not a PostgreSQL connection string") from None
    try:
        pg.check_schema_name(settings.queue_schema)
    except ValueError as exc:
        raise where.error("queue_schema", str(exc)) from None
    return settings


def open_queue(settings: MailSettings, *, clock: Callable[[], float] = time.time) -> MailQueue:
    """The mail queue the settings name (opened, its tables created when missing).

    Raises what the storage raises when it cannot be used (``OSError`` or ``sqlite3.Error``
    for the file, ``psycopg.Error`` or ``pg.SchemaError`` for the database).
    """
    if settings.queue == "postgres":
        from plugit_backends.mail_postgres import PostgresMailQueue

        return PostgresMailQueue(
            settings.queue_dsn or "", schema=settings.queue_schema, clock=clock
        )
    return MailStore(settings.queue_path, clock=clock)


# -- reply tokens ----------------------------------------------------------------------------------


class ReplyTokens:
    """Signed, time-stamped reply tokens carrying ``[service, response_id]``.

    itsdangerous' URL-safe serializer: compact JSON, URL-safe base64, a timestamp and an HMAC
    (SHA-1 within itsdangerous' HMAC construction) keyed by a key derived from ``secret_key``
    and the salt ``plugit.mail-reply``, so the token is of no use anywhere else in PlugIt.
    """

    def __init__(self, secret_key: str, max_age: float) -> None:
        self.max_age = max_age
        self._serializer = URLSafeTimedSerializer(secret_key, salt=TOKEN_SALT)

    def make(self, service: str, response_id: str) -> str:
        return str(self._serializer.dumps([service, response_id]))

    def verify(self, token: str) -> tuple[str, str]:
        """(service, response_id); raises ``BadSignature`` (``SignatureExpired`` when too old)."""
        # (ages are whole seconds: age > max_age is age > int(max_age))
        data = self._serializer.loads(token, max_age=int(self.max_age))
        if (
            not isinstance(data, list)
            or len(data) != 2
            or not all(isinstance(item, str) and item for item in data)
        ):
            raise BadSignature("the token does not carry a service and a response id")
        return data[0], data[1]


# -- the backend -----------------------------------------------------------------------------------


def _json(data: Any, status: int) -> Response:
    response = Response(json.dumps(data), status=status, mimetype="application/json")
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Cache-Control"] = "no-store"
    return response


def _bad_char(text: str, allowed: str = "") -> str | None:
    """``" (U+2028)"``: the first control character, line or paragraph separator or lone
    surrogate of ``text`` outside ``allowed``, for an error message; None when there is none."""
    char = unsafe_char(text, allowed)
    return None if char is None else f" (U+{ord(char):04X})"


def _domain_allowed(domain: str, allowed: tuple[str, ...]) -> bool:
    for entry in allowed:
        if entry.startswith("."):
            if domain.endswith(entry):
                return True
        elif domain == entry:
            return True
    return False


class _PermanentError(Exception):
    """The SMTP server refused the mail for good (a 5xx answer to the mail itself)."""


class MailBackend:
    """Queues, sends and receives mail for the proxy (the ``mail`` backend ``smtp``).

    ``attach(proxy)`` (done by the ``plugit_startup`` hook) gives it the services' clients and
    starts the background threads; ``close()`` stops them.
    """

    def __init__(
        self,
        settings: MailSettings,
        secret_key: str,
        *,
        clock: Callable[[], float] = time.time,
        queue: MailQueue | None = None,
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.tokens = ReplyTokens(secret_key, settings.token_max_age)
        # The mail queue (``store`` for history): given, or the one the settings name.
        self.store: MailQueue = open_queue(settings, clock=clock) if queue is None else queue
        self.proxy: PluginContext | None = None
        self.clients: Mapping[str, ServiceClient] = {}
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._threads: list[threading.Thread] = []
        self._background = threading.local()  # .on: this thread is one of the backend's own
        self._last_purge = 0.0
        # Results the queue could not record (it was unavailable): mail id -> (method, args).
        # A mail the SMTP server took is in here until its mark is written: never sent again.
        self._unrecorded: dict[int, tuple[str, tuple[Any, ...]]] = {}
        self._unrecorded_lock = threading.Lock()
        self._writing = threading.Lock()  # one writer of the unrecorded results at a time
        self._holding = 0  # mails claimed by this object's flushes, not finished yet
        self._beat: threading.Thread | None = None
        self._beat_stop = threading.Event()
        # What is known of the SMTP server (``/_plugit/ready``, the ``plugit_smtp_up`` metric).
        self.smtp = SmtpMonitor(
            f"{settings.host}:{settings.port}",
            self._connect,
            interval=settings.smtp_check_interval,
            timeout=settings.timeout,
            required=settings.smtp_required,
        )
        if settings.username and not (settings.ssl or settings.starttls):
            log.warning(
                "mail_smtp: the SMTP password is sent in clear text to %s (set starttls or ssl)",
                settings.host,
            )

    @property
    def store_guards(self) -> tuple[Any, ...]:
        """The guards of the mail queue (for ``/_plugit/ready`` and ``/_plugit/metrics``)."""
        return tuple(getattr(self.store, "store_guards", ()))

    def smtp_status(self) -> dict[str, Any]:
        """The SMTP server's state for ``/_plugit/ready`` (see :class:`~.monitor.SmtpMonitor`);
        never waits for the server."""
        return self.smtp.status()

    def gauges(self) -> dict[tuple[str, ...], float]:
        """This process's metrics gauges of the mail backend: ``smtp_up``."""
        return self.smtp.gauges()

    # -- life cycle -------------------------------------------------------------------------------

    def attach(self, proxy: PluginContext, *, start: bool = True) -> None:
        """Use ``proxy``'s service clients and users; start the background threads."""
        self.proxy = proxy
        self.clients = proxy.clients
        if self.settings.smtp_required:  # known before a load balancer first asks
            self.smtp.refresh()
        if start:
            self.start()

    def start(self) -> None:
        """Start the sender thread (``send_in_background``) and the reply poller
        (``poll_interval``).  Idempotent."""
        if self._threads:
            return
        self._stop.clear()
        if self.settings.send_in_background:
            self._threads.append(
                threading.Thread(target=self._send_loop, name="plugit-mail-send", daemon=True)
            )
        if self.settings.poll_interval and self.settings.incoming_protocol:
            self._threads.append(
                threading.Thread(target=self._poll_loop, name="plugit-mail-poll", daemon=True)
            )
        for thread in self._threads:
            thread.start()

    def close(self, timeout: float = 10.0) -> None:
        """Stop the background threads (a mail being sent is finished first), then close the
        queue's connections (a later call opens them again)."""
        self._stop.set()
        self._wake.set()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        still = [thread.name for thread in self._threads if thread.is_alive()]
        self._threads = []
        while self.unrecorded and time.monotonic() < deadline:  # the queue may be back
            if not self.write_unrecorded():
                time.sleep(0.2)
        if self.unrecorded:
            log.error(
                "mail: stopping while the mail queue is unavailable: the results of mails %s "
                "are not recorded; the mails the SMTP server took will be sent again",
                ", ".join(map(str, sorted(self.unrecorded))),
            )
        if still:  # a thread stuck in a call: leave it its connections (and its leases)
            log.warning("mail: %s did not stop within %gs", ", ".join(still), timeout)
            return
        self._beat_stop.set()
        beat, self._beat = self._beat, None
        if beat is not None:
            beat.join(max(0.0, deadline - time.monotonic()))
        self.store.close()

    def _send_loop(self) -> None:
        self._background.on = True
        while not self._stop.is_set():
            self._wake.clear()
            wait = 30.0
            try:
                self.flush()
                due = self.store.next_due()
                if due is not None:
                    wait = min(30.0, max(0.05, due - self.clock()))
            except StoreUnavailable as exc:  # an outage, not a bug: no traceback
                wait = 1.0
                log.warning("mail: the sender waits for the mail queue: %s", exc)
            except Exception:
                log.exception("mail: the sender loop failed; trying again in %gs", wait)
            self._wake.wait(wait)

    # -- leases and results the queue could not record -------------------------------------------

    @property
    def unrecorded(self) -> dict[int, str]:
        """The mails whose result is waiting to be written to the queue: id -> the queue method
        (``mark_sent``: the SMTP server took the mail, which is never sent again)."""
        with self._unrecorded_lock:
            return {mail_id: method for mail_id, (method, _) in self._unrecorded.items()}

    def _record(self, mail: Outgoing, method: str, *args: Any) -> Any:
        """``store.<method>(mail.id, *args)``; when the queue fails, the result is kept in
        memory (the claim renewed meanwhile) and written by :meth:`write_unrecorded`."""
        try:
            return getattr(self.store, method)(mail.id, *args)
        except Exception as exc:
            with self._unrecorded_lock:
                self._unrecorded[mail.id] = (method, args)
            log.warning(
                "mail %d from %s: the mail queue did not take its result (%s: %s); "
                "kept in memory, written when the queue answers",
                mail.id,
                mail.service,
                method,
                _why(exc),
            )
            self._start_heartbeat()
            return None

    def write_unrecorded(self) -> bool:
        """Write the results kept in memory, oldest first; True when none is left."""
        with self._writing:
            return self._write_unrecorded()

    def _write_unrecorded(self) -> bool:
        with self._unrecorded_lock:
            pending = list(self._unrecorded.items())
        for mail_id, (method, args) in pending:
            try:
                result = getattr(self.store, method)(mail_id, *args)
            except Exception as exc:
                log.debug("mail %d: its result is still not recorded: %s", mail_id, _why(exc))
                return False
            with self._unrecorded_lock:
                self._unrecorded.pop(mail_id, None)
            if result is False or result == "lost":  # recorded by a cut reply, or taken over
                log.warning(
                    "mail %d: its result (%s) was not written: recorded already (the queue's "
                    "answer was lost) or the mail was taken over by another sender",
                    mail_id,
                    method,
                )
            else:
                log.info("mail %d: its result (%s) is recorded at last", mail_id, method)
        return True

    def _start_heartbeat(self) -> None:
        """Renew this object's leases a few times per ``sender_lease`` while it holds mails,
        and write the results kept in memory (a thread, started on demand)."""
        with self._unrecorded_lock:
            if self._beat is not None and self._beat.is_alive():
                return
            self._beat_stop.clear()
            self._beat = threading.Thread(
                target=self._heartbeat, name="plugit-mail-lease", daemon=True
            )
            self._beat.start()

    def _heartbeat(self) -> None:
        lease = self.settings.sender_lease
        while not self._beat_stop.is_set():
            waiting = bool(self._unrecorded)
            if waiting:
                self.write_unrecorded()
            if self._holding or self._unrecorded:
                try:
                    self.store.renew(lease)
                except Exception as exc:
                    log.warning("mail: the sender's leases could not be renewed: %s", _why(exc))
            self._beat_stop.wait(min(lease / 4, 0.25) if self._unrecorded else lease / 4)

    def _poll_loop(self) -> None:
        self._background.on = True
        while not self._stop.is_set():
            try:
                self.check_mail()
            except Exception:
                log.exception("mail: checking the reply mailbox failed")
            self._stop.wait(self.settings.poll_interval)

    def _stopping(self) -> bool:
        """True in a background thread once :meth:`close` was called."""
        return self._stop.is_set() and getattr(self._background, "on", False)

    # -- the API endpoint -------------------------------------------------------------------------

    def api_send(self, call: ApiCall) -> Response:
        """``POST <mount>ebuio_api/mail/``: check, apply the policy, queue; 202 ``{"queued": id}``.

        Refusals are :class:`ApiError`: 400 (malformed), 413 (too large), 403 (sender or
        recipient not allowed), 429 (hourly quota reached).  Nothing is written then.
        """
        s = self.settings
        form = call.request.form
        subject = form.get("subject")
        if subject is None or not subject.strip():
            raise ApiError(400, "missing_subject", "the subject field is required")
        bad = _bad_char(subject)
        if bad is not None:
            raise ApiError(
                400,
                "bad_subject",
                f"the subject holds a line break or a control character{bad}: "
                "it must be one line of plain text",
            )
        if len(subject) > MAX_SUBJECT:
            raise ApiError(400, "bad_subject", f"the subject is longer than {MAX_SUBJECT} chars")
        message = form.get("message")
        if message is None:
            raise ApiError(400, "missing_message", "the message field is required")
        bad = _bad_char(message, "\t\n\r\f\u2028\u2029")
        if bad is not None:
            raise ApiError(400, "bad_message", f"the message holds a control character{bad}")
        if len(message.encode("utf-8")) > s.max_body_bytes:
            raise ApiError(413, "too_large", f"the message is larger than {s.max_body_bytes} bytes")
        recipients = self._recipients(form.getlist("dests"))
        sender = self._sender(form.get("sender"))
        html = (form.get("html_message") or "").strip().lower() not in ("", "false")
        response_id = form.get("response_id") or None
        reply_to = None
        if response_id is not None:
            if len(response_id) > MAX_RESPONSE_ID or _bad_char(response_id) is not None:
                raise ApiError(
                    400,
                    "bad_response_id",
                    f"response_id must be one line of at most {MAX_RESPONSE_ID} characters",
                )
            if s.reply_address is None:
                raise ApiError(
                    400,
                    "replies_unavailable",
                    "this site receives no replies (no reply_address): send without response_id",
                )
            reply_to = plus_address(s.reply_address, self.tokens.make(call.service, response_id))
        self._check_recipients(call, recipients)
        domain = split_sender(sender)[1].rpartition("@")[2]
        try:
            mail_id = self.store.enqueue(
                service=call.service,
                sender=sender,
                recipients=recipients,
                subject=subject,
                body=message,
                html=html,
                reply_to=reply_to,
                message_id=email.utils.make_msgid(domain=domain),
                max_per_hour=s.max_per_hour,
            )
        except RateLimitedError as exc:
            log.warning("mail from %s refused: hourly quota reached (%s)", call.service, exc)
            raise ApiError(
                429,
                "rate_limited",
                f"this service may send to {exc.limit} recipients per hour; "
                f"try again in {exc.retry_after:.0f} seconds",
            ) from None
        log.info(
            "mail %d queued for %s: %d recipient(s)%s",
            mail_id,
            call.service,
            len(recipients),
            ", replies expected" if reply_to else "",
        )
        self._wake.set()
        return _json({"queued": mail_id}, 202)

    def _recipients(self, values: list[str]) -> list[str]:
        recipients: list[str] = []
        for value in values:
            for item in value.split(","):
                address = item.strip()
                if not address:
                    continue
                if not valid_address(address):
                    raise ApiError(
                        400,
                        "bad_recipient",
                        f"not an e-mail address (plain ASCII local@domain): {address[:200]!r}",
                    )
                if address.lower() not in (r.lower() for r in recipients):
                    recipients.append(address)
        if not recipients:
            raise ApiError(400, "no_recipient", "at least one recipient (dests) is required")
        if len(recipients) > self.settings.max_recipients:
            raise ApiError(
                400,
                "too_many_recipients",
                f"at most {self.settings.max_recipients} recipients per mail",
            )
        return recipients

    def _sender(self, value: str | None) -> str:
        s = self.settings
        if value is None or not value.strip():
            return s.sender
        bad = _bad_char(value)
        if bad is not None:
            raise ApiError(
                400, "bad_sender", f"the sender holds a line break or a control character{bad}"
            )
        if len(value) > MAX_SENDER:
            raise ApiError(400, "bad_sender", f"the sender is longer than {MAX_SENDER} chars")
        try:
            name, address = split_sender(value)
        except ValueError as exc:
            raise ApiError(
                400, "bad_sender", f"expected address or Name <address>: {exc}"
            ) from None
        address = address.lower()
        domain = "@" + address.rpartition("@")[2]
        if address != s.sender_address and not (
            address in s.allowed_senders or domain in s.allowed_senders
        ):
            raise ApiError(
                403, "sender_not_allowed", f"{address} may not be used as sender on this site"
            )
        return format_sender(name, address)

    def _check_recipients(self, call: ApiCall, recipients: list[str]) -> None:
        allowed = self.settings.allowed_recipient_domains
        members: set[str] | None = None
        for address in recipients:
            if _domain_allowed(address.rpartition("@")[2].lower(), allowed):
                continue
            if self.settings.member_recipients:
                if members is None:
                    members = self._member_addresses(call)
                if address.lower() in members:
                    continue
            raise ApiError(
                403,
                "recipient_not_allowed",
                f"{address} is neither a member of this service nor in an allowed domain",
            )

    @staticmethod
    def _member_addresses(call: ApiCall) -> set[str]:
        proxy = call.proxy
        if proxy.config.dev_mode:
            users = [simulated_user(mode) for mode in SIMULATED_MODES if mode != "ano"]
        elif proxy.users is not None:
            users = proxy.users.members(call.service)
        else:
            users = []
        return {user.email.lower() for user in users if user.email}

    # -- sending ----------------------------------------------------------------------------------

    def flush(self, *, retry_now: bool = False) -> int:
        """Send the mails that are due, now, in this thread; return how many were sent.

        ``retry_now`` also sends the mails waiting for their next retry (after the SMTP server
        came back).  Each mail is tried at most once per call.  A queue that is unavailable
        raises :class:`~plugit_core.stores.StoreUnavailable`, unless this pass sent mails
        already (counted, their results kept in memory until the queue answers: see
        :attr:`unrecorded`).
        """
        started = self.clock()
        lease = self.settings.sender_lease  # renewed by the heartbeat while the mails are held
        self._start_heartbeat()
        self.write_unrecorded()
        sent = 0
        while not self._stopping():
            try:
                batch = self.store.claim(
                    BATCH,
                    lease,
                    started=started,
                    retry_now=retry_now,
                    max_attempts=self.settings.max_attempts,  # a sender that died: an attempt
                    grace=max(lease, MIN_GRACE),  # a holder cut off from the queue: time to record
                )
            except StoreUnavailable:
                if not sent:
                    raise
                break  # the queue went away during this pass: what was sent is counted
            if not batch:
                break
            self._holding += len(batch)
            try:
                sent += self._send_batch(batch)
            finally:
                self._holding -= len(batch)
        now = self.clock()
        if now - self._last_purge > 3600:
            try:
                self.store.purge(self.settings.keep_sent)
                self.store.purge_incoming(30 * 86400.0)
            except StoreUnavailable as exc:  # housekeeping: done at the next pass
                if not sent:
                    raise
                log.warning("mail: old mails not purged: %s", exc)
            else:
                self._last_purge = now
        return sent

    def _connect(self, timeout: float | None = None) -> smtplib.SMTP:
        """A connection ready to send (greeting, EHLO, STARTTLS and login as configured),
        each step bounded by ``timeout`` (the settings' by default)."""
        s = self.settings
        helo = s.helo_name
        wait = s.timeout if timeout is None else timeout
        conn: smtplib.SMTP
        if s.ssl:
            conn = smtplib.SMTP_SSL(
                s.host, s.port, helo, timeout=wait, context=tls_context(s.ca_file)
            )
        else:
            conn = smtplib.SMTP(s.host, s.port, helo, timeout=wait)
        try:
            conn.ehlo()
            if s.starttls:
                conn.starttls(context=tls_context(s.ca_file))
                conn.ehlo()
            if s.username:
                conn.login(s.username, s.password or "")
        except BaseException:
            conn.close()
            raise
        return conn

    def _send_batch(self, batch: list[Outgoing]) -> int:
        """Send the claimed mails over one connection; every mail ends sent, queued for a
        retry, failed or (when stopping) released: none is left claimed, whatever it holds."""
        conn: smtplib.SMTP | None = None
        sent = 0
        try:
            for index, mail in enumerate(batch):
                if self._stopping():  # close(): leave the rest to the next start
                    for pending in batch[index:]:
                        self._record(pending, "release")
                    break
                if mail.id in self.unrecorded:  # its result waits in memory: never again
                    self.write_unrecorded()
                    continue
                try:
                    raw = self._message_bytes(mail)
                except Exception as exc:  # it will never be written: no retry can help
                    reason = f"cannot build the message: {_why(exc)}"
                    log.error("mail %d from %s failed: %s", mail.id, mail.service, reason)
                    self._record(mail, "mark_failed", reason)
                    continue
                if conn is None:
                    try:
                        conn = self._connect()
                    except Exception as exc:  # down, refusing, or answering nonsense
                        self.smtp.observe(_why(exc))
                        error = f"cannot reach the SMTP server {self.settings.host}: {_why(exc)}"
                        for pending in batch[index:]:
                            self._retry(pending, error)
                        break
                    self.smtp.observe(None)
                try:
                    refused = self._send_one(conn, mail, raw)
                except _PermanentError as exc:
                    log.error("mail %d from %s refused for good: %s", mail.id, mail.service, exc)
                    self._record(mail, "mark_failed", str(exc))
                    _drop(conn)
                    conn = None
                except (smtplib.SMTPException, OSError) as exc:
                    if isinstance(exc, (smtplib.SMTPServerDisconnected, OSError)):
                        self.smtp.observe(_why(exc))  # the server went away mid-send
                    self._retry(mail, _why(exc))
                    _drop(conn)
                    conn = None
                except Exception as exc:  # not the server's doing: a few tries, then failed
                    log.exception("mail %d from %s: unexpected error", mail.id, mail.service)
                    self._retry(mail, f"unexpected error: {_why(exc)}", UNEXPECTED_ATTEMPTS)
                    _drop(conn)
                    conn = None
                else:
                    note = None
                    if refused:
                        note = "refused recipients: " + ", ".join(
                            f"{address} ({code})" for address, (code, _) in refused.items()
                        )
                        log.warning("mail %d from %s: %s", mail.id, mail.service, note)
                    log.info("mail %d from %s sent", mail.id, mail.service)
                    if self._record(mail, "mark_sent", note) is not False:
                        sent += 1  # recorded, or kept in memory until the queue answers
        finally:
            _drop(conn)
        return sent

    @staticmethod
    def _message_bytes(mail: Outgoing) -> bytes:
        """The mail as it goes on the wire (CRLF, 7-bit); raises for a mail that cannot be
        written (see :func:`~.message.build_message`)."""
        for address in mail.recipients:
            if not valid_address(address):
                raise ValueError(f"not an e-mail address: {address[:200]!r}")
        raw = build_message(
            sender=mail.sender,
            recipients=mail.recipients,
            subject=mail.subject,
            body=mail.body,
            html=mail.html,
            reply_to=mail.reply_to,
            message_id=mail.message_id,
            date=mail.created,
            service=mail.service,
        ).as_bytes()
        if not raw.isascii():
            raise ValueError("the message is not 7-bit")
        return raw

    def _send_one(self, conn: smtplib.SMTP, mail: Outgoing, raw: bytes) -> dict[str, Any]:
        s = self.settings
        envelope = s.envelope_sender or s.sender_address
        try:
            return conn.sendmail(envelope, list(mail.recipients), raw)
        except smtplib.SMTPRecipientsRefused as exc:
            codes = [code for code, _ in exc.recipients.values()]
            if codes and all(code >= 500 for code in codes):
                raise _PermanentError(f"every recipient was refused: {exc.recipients}") from None
            raise
        except smtplib.SMTPResponseException as exc:
            if exc.smtp_code >= 500 and not isinstance(exc, smtplib.SMTPAuthenticationError):
                raise _PermanentError(_why(exc)) from None
            raise

    def _retry(self, mail: Outgoing, error: str, limit: int = 0) -> None:
        """A failed attempt: again after the backoff, or ``failed`` after ``max_attempts``
        attempts (``limit``, when given, bounds them even with ``max_attempts = 0``)."""
        s = self.settings
        delay = min(s.retry_interval * 2 ** min(mail.attempts, 30), s.max_retry_interval)
        most = s.max_attempts if not limit else min(s.max_attempts or limit, limit)
        state = self._record(mail, "mark_retry", error, delay, most)
        if state == "failed":
            log.error(
                "mail %d from %s given up after %d attempts: %s",
                mail.id,
                mail.service,
                mail.attempts + 1,
                error,
            )
        else:
            log.warning(
                "mail %d from %s not sent (%s); next attempt in %gs",
                mail.id,
                mail.service,
                error,
                delay,
            )

    # -- replies ----------------------------------------------------------------------------------

    def verify_reply(self, candidates: list[str]) -> tuple[str, str] | str:
        """(service, response_id) from the first candidate token that verifies, else the reason
        none did."""
        reason = "no reply token in the recipient addresses"
        for token in candidates:
            try:
                return self.tokens.verify(token)
            except SignatureExpired:
                reason = "the reply token has expired"
            except BadSignature:
                if reason != "the reply token has expired":
                    reason = "the reply token is not valid"
        return reason

    def open_mailbox(self) -> Mailbox:
        s = self.settings
        if s.incoming_protocol is None:
            raise ConfigError(
                f"{SECTION}.incoming_protocol", "no reply mailbox is configured (imap or pop3)"
            )
        default = {
            ("imap", False): 143,
            ("imap", True): 993,
            ("pop3", False): 110,
            ("pop3", True): 995,
        }
        return open_mailbox(
            s.incoming_protocol,
            s.incoming_host or "",
            s.incoming_port or default[(s.incoming_protocol, s.incoming_ssl)],
            s.incoming_username or "",
            s.incoming_password or "",
            mailbox=s.incoming_mailbox,
            use_ssl=s.incoming_ssl,
            starttls=s.incoming_starttls,
            ca_file=s.incoming_ca_file,
            timeout=s.timeout,
        )

    def check_mail(self) -> dict[str, int]:
        """Fetch the replies once: deliver, drop or set aside each message (see the module doc).

        Returns counts: ``delivered``, ``kept`` (the service did not take it: tried again after
        ``retry_interval``, doubled at each refusal), ``waiting`` (kept earlier, not due yet),
        ``dropped`` (automatic replies), ``rejected`` (no valid token, unknown service,
        too large), ``undeliverable`` (refused ``max_delivery_attempts`` times: stored in the
        queue file and removed from the mailbox), ``cleaned`` (handled by an earlier run that
        could not delete it), ``errors`` (the run stopped there), ``unreadable`` (removed after
        making ``max_delivery_attempts`` runs fail).  ``busy`` is 1 when another process was
        checking.
        """
        summary: Counter[str] = Counter()
        lease = max(600.0, self.settings.timeout * 20)
        if not self.store.acquire_lock("check_mail", lease):
            log.info("mail: another process is checking the reply mailbox")
            return {"busy": 1}
        try:
            with self.open_mailbox() as box:
                refs = box.messages()[: self.settings.max_messages_per_run]
                for ref, size in refs:
                    if self._stopping():
                        break
                    if self._give_up(box, ref):
                        summary["unreadable"] += 1
                        continue
                    try:
                        summary[self._handle(box, ref, size)] += 1
                    except (OSError, EOFError, imaplib.IMAP4.abort) as exc:  # connection lost
                        log.error("mail: the reply mailbox failed: %s", _why(exc))
                        summary["errors"] += 1
                        break
                    except Exception as exc:  # this message: counted, in the end removed
                        summary["errors"] += 1
                        self._unreadable(box, ref, exc)
                        break
        finally:
            self.store.release_lock("check_mail")
        result = dict(summary)
        if any(result.values()):
            log.info("mail: reply mailbox checked: %s", result)
        return result

    def _unreadable(self, box: Mailbox, ref: Any, error: Exception) -> None:
        """A message that made the run fail: counted by its server key (see :meth:`_give_up`).

        No command is sent to the server: the connection may be out of step after the error.
        """
        log.error("mail: cannot handle a message of the reply mailbox", exc_info=error)
        try:
            key = box.key(ref)
            if key is not None:
                self.store.record_incoming(
                    "box:" + key, "failing", error=_why(error), count_attempt=True
                )
        except Exception as exc:
            log.error("mail: could not record the failure: %s", _why(exc))

    def _give_up(self, box: Mailbox, ref: Any) -> bool:
        """Delete a message that made ``max_delivery_attempts`` runs fail (before touching it)."""
        key = box.key(ref)
        known = None if key is None else self.store.incoming_state("box:" + key)
        if known is None or known[0] != "failing":
            return False
        if known[1] < self.settings.max_delivery_attempts:
            return False
        box.delete(ref)
        self.store.record_incoming("box:" + str(key), "unreadable")
        log.error("mail: message %s removed after %d failed runs", key, known[1])
        return True

    def _handle(self, box: Mailbox, ref: Any, size: int) -> str:
        s = self.settings
        if size > s.max_incoming_bytes:
            key = box.key(ref) or f"size:{size}"
            log.warning("mail: reply of %d bytes rejected (limit %d)", size, s.max_incoming_bytes)
            self.store.record_incoming("box:" + key, "rejected", error="too large")
            box.delete(ref)
            return "rejected"
        raw = box.fetch(ref)
        key = message_key(raw)
        msg = parse(raw)
        message_id = str(msg.get("Message-ID", "") or "").strip() or None
        known = self.store.incoming_state(key)
        if known is not None and known[0] not in ("pending", "failing"):
            box.delete(ref)  # handled by a run that ended before it could delete it
            return "cleaned"
        if known is not None and known[2] is not None and known[2] > self.clock():
            return "waiting"  # its service refused it lately: not before its next try
        reason = auto_reply_reason(msg)
        if reason is not None:
            log.info("mail: automatic reply %s dropped (%s)", message_id, reason)
            self.store.record_incoming(key, "dropped", message_id=message_id, error=reason)
            box.delete(ref)
            return "dropped"
        target = self.verify_reply(reply_candidates(msg))
        if isinstance(target, str) or target[0] not in self.clients:
            why = target if isinstance(target, str) else f"unknown service {target[0]!r}"
            log.warning(
                "mail: message %s from %s rejected and deleted: %s",
                message_id,
                msg.get("From", "?"),
                why,
            )
            self.store.record_incoming(key, "rejected", message_id=message_id, error=why)
            box.delete(ref)
            return "rejected"
        service, response_id = target
        text = first_text(msg)
        try:
            reply = self.clients[service].send(
                UpstreamRequest(
                    "POST", "mail", form=[("response_id", response_id), ("message", text)]
                )
            )
        except ServiceError as exc:  # the service is down: not the message's fault
            log.warning("mail: reply for %s kept, the service failed: %s", service, exc.message)
            self.store.record_incoming(
                key,
                "pending",
                message_id=message_id,
                service=service,
                response_id=response_id,
                error=exc.message,
            )
            return "kept"
        if reply.close is not None:  # a streamed (file) answer: not one a mail endpoint gives
            reply.close()
        answer = _result(reply.status, reply.body)
        if answer == "Ok":
            self.store.record_incoming(
                key, "delivered", message_id=message_id, service=service, response_id=response_id
            )
            box.delete(ref)
            log.info("mail: reply %s delivered to %s", message_id, service)
            return "delivered"
        attempts = self.store.record_incoming(
            key,
            "pending",
            message_id=message_id,
            service=service,
            response_id=response_id,
            error=answer,
            count_attempt=True,
        )
        if attempts < s.max_delivery_attempts:
            delay = min(s.retry_interval * 2 ** min(attempts - 1, 30), s.max_retry_interval)
            self.store.defer_incoming(key, delay)
            log.warning(
                "mail: reply for %s kept (attempt %d of %d, next in %gs): %s",
                service,
                attempts,
                s.max_delivery_attempts,
                delay,
                answer,
            )
            return "kept"
        self.store.record_incoming(key, "undeliverable", raw=raw)
        box.delete(ref)
        log.error(
            "mail: reply %s for %s refused %d times; moved to the queue file (%s)",
            message_id,
            service,
            attempts,
            answer,
        )
        return "undeliverable"

    def status(self) -> dict[str, dict[str, int]]:
        """How many mails are in each state (``outbox`` and ``incoming``)."""
        return self.store.counts()


def message_key(raw: bytes) -> str:
    """The identity of an incoming message in the queue file: the hash of its bytes, line
    endings aside (a Message-ID may be missing, or shared by different messages)."""
    return "sha256:" + hashlib.sha256(raw.replace(b"\r\n", b"\n")).hexdigest()


def _result(status: int, body: bytes) -> str:
    """``"Ok"`` when the service took the reply, else a short description of its answer."""
    try:
        data = json.loads(body) if body else None
    except ValueError:
        data = None
    result = data.get("result") if isinstance(data, dict) else None
    if status == 200 and result == "Ok":
        return "Ok"
    return f"HTTP {status}, result {result!r}"


def _why(exc: BaseException) -> str:
    if isinstance(exc, smtplib.SMTPResponseException):
        message = exc.smtp_error
        text = message.decode("utf-8", "replace") if isinstance(message, bytes) else str(message)
        return f"{exc.smtp_code} {text}"
    return f"{type(exc).__name__}: {exc}"


def _drop(conn: smtplib.SMTP | None) -> None:
    if conn is None:
        return
    try:
        conn.quit()
    except (smtplib.SMTPException, OSError):
        conn.close()


# -- plugin hooks ----------------------------------------------------------------------------------


def _factory(config: ProxyConfig, section: Mapping[str, Any]) -> MailBackend:
    settings = read_settings(config, section)
    if settings.queue == "postgres":
        from plugit_backends.sql import postgres as pg

        try:
            return MailBackend(settings, config.secret_key)
        except (pg.psycopg.Error, pg.SchemaError) as exc:  # PoolTimeout is a psycopg.Error
            text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            where = pg.redact_dsn(settings.queue_dsn or "")  # never the password
            raise ConfigError(
                f"{SECTION}.queue_dsn", f"cannot use {where}: {text}", config.source
            ) from None
    try:
        return MailBackend(settings, config.secret_key)
    except (OSError, sqlite3.Error, ValueError) as exc:  # a missing directory, a bad file
        raise ConfigError(
            f"{SECTION}.queue_path", f"cannot open {settings.queue_path}: {exc}", config.source
        ) from None


@hookimpl(trylast=True)
def plugit_register_backends(register: RegisterBackend) -> None:
    register("mail", "smtp", _factory)


@hookimpl
def plugit_startup(proxy: PluginContext) -> None:
    backend = getattr(proxy, "mail", None)
    if isinstance(backend, MailBackend):
        backend.attach(proxy)


# -- command line ----------------------------------------------------------------------------------


@hookimpl
def plugit_add_commands(commands: Any) -> None:
    """``plugit mail --config FILE check|flush|retry|status``."""
    parser = commands.add_parser("mail", help="the mail queue and the reply mailbox")
    parser.add_argument("--config", required=True, help="TOML configuration file")
    parser.add_argument(
        "action",
        choices=("check", "flush", "retry", "status"),
        help="check: deliver the replies once (run it from a timer); flush: send the mails "
        "that are due; retry: send every queued mail now; status: count mails by state "
        "and list the latest failed ones with their reason",
    )
    parser.set_defaults(handler=lambda args: run_command(args.config, args.action))


def build_backend(config_path: str | Path) -> MailBackend:
    """The mail backend of a configuration file, with clients for its services and no
    background threads (for the ``plugit mail`` command)."""
    from plugit_core.backends import KINDS, Backends
    from plugit_core.config import load_config
    from plugit_core.plugins import make_plugin_manager

    config = load_config(config_path)
    name = getattr(config, "mail", None)
    if not name:
        raise ConfigError("mail", 'no mail backend is configured: set mail = "smtp"', config.source)
    backends = Backends()
    make_plugin_manager().hook.plugit_register_backends.call_historic(
        kwargs={"register": backends.register}
    )
    known = {f"{kind}_{n}" for kind in KINDS for n in backends.names(kind)}
    for section in config.sections:
        if section not in known:
            raise ConfigError(section, "unknown table: no backend of that name is installed")
    backend = backends.build("mail", name, config)
    if not isinstance(backend, MailBackend):
        raise ConfigError("mail", f"the mail backend {name!r} is not the smtp one", config.source)
    backend.clients = {mount.name: ServiceClient(mount) for mount in config.services}
    return backend


def run_command(
    config_path: str | Path,
    action: str,
    *,
    out: Callable[[str], Any] = print,
    err: Callable[[str], Any] | None = None,
) -> int:
    """``plugit mail --config FILE check|flush|retry|status``; returns the exit status.

    ``check`` fetches the replies once (run it from a timer); ``flush`` sends the due mails;
    ``retry`` sends every queued mail now, even those waiting for their next retry; ``status``
    prints how many mails are in each state, then the latest failed mails with their reason.
    A mailbox that cannot be reached or refuses the login is reported on ``err`` (standard
    error) with exit status 1; configuration errors raise :class:`ConfigError`.
    """
    if err is None:

        def err(text: str) -> None:
            print(text, file=sys.stderr)

    backend = build_backend(config_path)
    try:
        return _run_action(backend, action, out, err)
    except StoreUnavailable as exc:  # an outage: one clear line, no traceback
        err(f"plugit mail {action}: {exc}")
        return 1
    finally:
        backend.close()
        for client in backend.clients.values():
            client.close()


def _run_action(
    backend: MailBackend, action: str, out: Callable[[str], Any], err: Callable[[str], Any]
) -> int:
    if action == "check":
        try:
            summary = backend.check_mail()
        except (MailboxError, OSError) as exc:
            err(f"plugit mail check: the reply mailbox failed: {_why(exc)}")
            return 1
        out(", ".join(f"{k} {v}" for k, v in sorted(summary.items())) or "no message")
        return 1 if summary.get("errors") else 0
    if action in ("flush", "retry"):
        sent = backend.flush(retry_now=action == "retry")
        waiting = backend.status()["outbox"].get("queued", 0)
        out(f"sent {sent}, still queued {waiting}")
        return 0
    if action == "status":
        for kind, counts in backend.status().items():
            text = ", ".join(f"{state} {n}" for state, n in sorted(counts.items()))
            out(f"{kind}: {text or 'empty'}")
        failed = backend.store.outbox("failed")
        for row in failed[-FAILED_SHOWN:]:
            out(
                f"failed mail {row['id']} from {row['service']} "
                f"({row['attempts']} attempt(s)): {row['last_error']}"
            )
        return 0
    raise ValueError(f"unknown mail action {action!r} (check, flush, retry or status)")

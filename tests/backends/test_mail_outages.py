"""The mail queue failing while mails are sent: each mail delivered once, dead senders replaced.

* The queue (PostgreSQL behind a loopback relay the test cuts, or the SQLite file locked by
  another connection) stops answering right after the SMTP server accepted a mail: the "sent"
  mark waits in the sender's memory, the mail is never sent again, and the mark is written as
  soon as the queue answers, before any other sender may take the mail.
* A sender process killed while it holds mails: another process takes them over once the
  renewed lease and its grace ran out (seconds, not the former 300 s).

Real servers: aiosmtpd on loopback, PostgreSQL at ``PLUGIT_TEST_POSTGRES_DSN`` (skipped without
it unless ``PLUGIT_REQUIRE_SERVERS=1``), real proxy-like processes for the killed sender.
"""

from __future__ import annotations

import contextlib
import dataclasses
import email.utils
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from postgres_schema import DSN as PG_DSN
from postgres_schema import fresh_schema

from plugit_backends.mail_smtp import MIN_GRACE, MailBackend, MailSettings
from plugit_backends.sql import postgres as pg
from plugit_core.stores import StoreUnavailable

REQUIRED = os.environ.get("PLUGIT_REQUIRE_SERVERS") == "1"

try:
    import aiosmtpd  # noqa: F401 (the SMTP server of these tests)
except ImportError as exc:  # aiosmtpd is in the test extra
    if REQUIRED:
        raise
    pytest.skip(f"aiosmtpd is not installed (pip install aiosmtpd): {exc}", allow_module_level=True)

from mail_servers import SMTPServer  # noqa: E402
from test_outages import Relay  # noqa: E402 (the loopback relay the outage tests cut)

ROOT = Path(__file__).resolve().parents[2]
KEY = "k3y-for-mail-outage-tests-9f8e7d6c5b4a39281706f5e4"
SENDER = "PlugIt <no-reply@example.org>"
LEASE = 1.0  # sender_lease in these tests
BOUND = 30.0  # every loop below ends within this (a loaded machine), or the test fails


def _eventually(check: Callable[[], Any], what: str, seconds: float = BOUND) -> Any:
    """``check()`` until it returns something true (a bounded loop, no fixed sleep)."""
    deadline = time.monotonic() + seconds
    while True:
        result = check()
        if result:
            return result
        assert time.monotonic() < deadline, what
        time.sleep(0.02)


@pytest.fixture
def pg_schema() -> Iterator[str]:
    with fresh_schema(PG_DSN) as name:
        yield name


def _settings(smtp_port: int, queue: dict[str, Any], **options: Any) -> MailSettings:
    values: dict[str, Any] = {
        "sender": SENDER,
        "host": "127.0.0.1",
        "port": smtp_port,
        "helo_name": "localhost",
        "timeout": 5.0,
        "send_in_background": False,
        "sender_lease": LEASE,
        **queue,
    }
    values.update(options)
    return MailSettings(**values)


def _enqueue(backend: MailBackend, subject: str) -> int:
    return backend.store.enqueue(
        service="one",
        sender=SENDER,
        recipients=["ops@staff.example.org"],
        subject=subject,
        body="x",
        html=False,
        reply_to=None,
        message_id=email.utils.make_msgid(domain="example.org"),
        max_per_hour=0,
    )


class _OnAccept(list):  # type: ignore[type-arg]
    """The SMTP server's list of received messages, running ``action`` when the first one is
    appended: after the server took the mail, before the client reads its 250."""

    def __init__(self, action: Callable[[], None]) -> None:
        super().__init__()
        self.action: Callable[[], None] | None = action

    def append(self, item: Any) -> None:
        super().append(item)
        action, self.action = self.action, None
        if action is not None:
            action()


class _Fault:
    """A queue for two senders (``first``, ``second``) that the test makes unavailable to both
    (``cut``), then available again (``restore``), plus ``row(id)`` read behind the fault."""

    first: MailBackend
    second: MailBackend

    def cut(self) -> None: ...

    def restore(self) -> None: ...

    def row(self, mail_id: int) -> dict[str, Any]: ...

    def close(self) -> None:
        for backend in (self.first, self.second):
            backend.close(timeout=2)


class _PostgresDown(_Fault):
    """PostgreSQL stopped: every connection cut, new ones refused, for every process."""

    def __init__(self, smtp_port: int, schema: str) -> None:
        parts = urlsplit(PG_DSN)
        self.relay = Relay((parts.hostname or "127.0.0.1", parts.port or 5432))
        queue = {"queue": "postgres", "queue_dsn": self.relay.dsn(PG_DSN), "queue_schema": schema}
        self.first = MailBackend(_settings(smtp_port, queue), KEY)
        self.second = MailBackend(_settings(smtp_port, queue), KEY)
        self.schema = schema

    def cut(self) -> None:
        self.relay.drop()

    def restore(self) -> None:
        self.relay.resume()

    def row(self, mail_id: int) -> dict[str, Any]:
        with pg.connect(PG_DSN) as conn:
            return dict(
                conn.execute(
                    pg.sql.SQL("SELECT * FROM {}.mail_outbox WHERE id = %s").format(
                        pg.sql.Identifier(self.schema)
                    ),
                    (mail_id,),
                ).fetchone()
            )

    def close(self) -> None:
        super().close()
        self.relay.close()


class _SQLiteLocked(_Fault):
    """The queue file locked by another program's write transaction, past the store's wait."""

    def __init__(self, smtp_port: int, path: Path) -> None:
        queue = {"queue_path": str(path)}
        self.first = MailBackend(_settings(smtp_port, queue), KEY)
        self.second = MailBackend(_settings(smtp_port, queue), KEY)
        self.path = path
        self._locker = sqlite3.connect(path, isolation_level=None, check_same_thread=False)

    def cut(self) -> None:
        self._locker.execute("BEGIN EXCLUSIVE")

    def restore(self) -> None:
        if self._locker.in_transaction:
            self._locker.execute("COMMIT")

    def row(self, mail_id: int) -> dict[str, Any]:
        with contextlib.closing(sqlite3.connect(self.path)) as db:  # WAL: readers pass
            db.row_factory = sqlite3.Row
            return dict(db.execute("SELECT * FROM outbox WHERE id = ?", (mail_id,)).fetchone())

    def close(self) -> None:
        super().close()
        self._locker.close()


@pytest.fixture(params=["postgres", "sqlite"])
def fault(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[_Fault, SMTPServer]]:
    with SMTPServer() as smtp:
        if request.param == "postgres":
            made: _Fault = _PostgresDown(smtp.port, request.getfixturevalue("pg_schema"))
        else:
            made = _SQLiteLocked(smtp.port, tmp_path / "mail.sqlite3")
        try:
            yield made, smtp
        finally:
            made.restore()
            made.close()


def test_a_mark_the_queue_cannot_take_waits_in_memory_and_the_mail_goes_once(
    fault: tuple[_Fault, SMTPServer],
) -> None:
    queue, smtp = fault
    first, second = queue.first, queue.second
    mail_id = _enqueue(first, "only once")
    smtp.messages = _OnAccept(queue.cut)  # the queue goes away as the SMTP server takes it
    assert first.flush() == 1  # taken by the server: counted as sent
    assert len(smtp.messages) == 1
    assert first.unrecorded == {mail_id: "mark_sent"}  # the mark waits in memory
    with pytest.raises(StoreUnavailable):  # nothing to claim from a queue that is away
        first.flush(retry_now=True)
    assert len(smtp.messages) == 1
    with pytest.raises(StoreUnavailable):  # the other sender cannot reach the queue either
        second.flush(retry_now=True)
    claimed = queue.row(mail_id)
    assert (claimed["state"], claimed["owner"]) == ("sending", first.store.owner)
    # The outage outlasts the lease the first sender could not renew.
    _eventually(lambda: time.time() > claimed["lease_until"] + LEASE, "the lease never ended")
    queue.restore()
    # Whoever reaches the queue first, the mail is not taken from a sender that lives: the
    # other sender only notices the ended lease, and the mark is written within the grace.
    with contextlib.suppress(StoreUnavailable):  # the guard may still be in its backoff
        assert second.flush(retry_now=True) == 0
    _eventually(lambda: not first.unrecorded, "the mark was never written")
    row = queue.row(mail_id)
    assert (row["state"], row["attempts"], row["owner"]) == ("sent", 1, None)
    # Nobody sends it again.
    assert _eventually(lambda: _flushed(second), "the queue never answered") == [0]
    assert first.flush(retry_now=True) == 0
    assert len(smtp.messages) == 1 and smtp.messages[0].message["Subject"] == "only once"


def _flushed(backend: MailBackend) -> list[int] | None:
    try:
        return [backend.flush(retry_now=True)]
    except StoreUnavailable:
        return None


# -- a sender that dies ------------------------------------------------------------------------


@pytest.fixture
def mute_smtp() -> Iterator[int]:
    """A port that accepts connections and never answers (the sender blocks in its greeting)."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.1)  # the accepting thread sees ``stop``
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            accepted.append(conn)

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield listener.getsockname()[1]
    stop.set()
    thread.join(5)
    listener.close()
    for conn in accepted:
        conn.close()


DYING_SENDER = textwrap.dedent(
    """
    import json, sys
    from plugit_backends.mail_smtp import MailBackend, MailSettings
    settings = MailSettings(**json.loads(sys.argv[1]))
    backend = MailBackend(settings, "k3y-for-mail-outage-tests-9f8e7d6c5b4a39281706f5e4")
    print("claiming", flush=True)
    backend.flush()  # blocks in the SMTP greeting until the process is killed
    """
)


@pytest.mark.slow  # a lease and its grace while the sender lives, then again once it died
@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_a_dead_senders_mails_are_taken_over_within_seconds(
    kind: str,
    tmp_path: Path,
    mute_smtp: int,
    request: pytest.FixtureRequest,
) -> None:
    import json

    if kind == "postgres":
        queue = {
            "queue": "postgres",
            "queue_dsn": PG_DSN,
            "queue_schema": request.getfixturevalue("pg_schema"),
        }
    else:
        queue = {"queue_path": str(tmp_path / "mail.sqlite3")}
    with SMTPServer() as smtp:
        survivor = MailBackend(_settings(smtp.port, queue), KEY)
        request.addfinalizer(survivor.close)
        mail_id = _enqueue(survivor, "taken over")
        dying = dataclasses.asdict(_settings(mute_smtp, queue, timeout=300.0))
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        process = subprocess.Popen(  # another proxy process, stuck sending the mail
            [sys.executable, "-c", DYING_SENDER, json.dumps(dying)],
            env=env,
            stdout=subprocess.PIPE,
        )
        request.addfinalizer(lambda: process.poll() is None and process.kill())

        def row() -> dict[str, Any]:
            (found,) = [r for r in survivor.store.outbox() if r["id"] == mail_id]
            return found

        held = _eventually(lambda: row()["state"] == "sending" and row(), "never claimed")
        assert held["owner"] != survivor.store.owner
        # While it lives its lease is renewed: the survivor takes nothing, past lease and grace.
        while time.time() < held["lease_until"] + LEASE + MIN_GRACE:
            assert survivor.flush() == 0
            time.sleep(0.05)
        renewed = row()
        assert renewed["owner"] == held["owner"] and renewed["lease_until"] > held["lease_until"]
        assert renewed["stale_since"] is None
        assert len(smtp.messages) == 0
        process.send_signal(signal.SIGKILL)
        process.wait(BOUND)
        assert process.stdout is not None and process.stdout.read() == b"claiming\n"
        process.stdout.close()
        # Dead: the survivor takes the mail once the lease and its grace ran out.
        _eventually(lambda: survivor.flush() == 1, "the mail was never taken over")
        final = row()
        assert (final["state"], final["attempts"]) == ("sent", 2)  # the lost lease: an attempt
        assert len(smtp.messages) == 1 and smtp.messages[0].message["Subject"] == "taken over"
        assert survivor.flush(retry_now=True) == 0 and len(smtp.messages) == 1

"""The mail backend's durable state: one SQLite file (stdlib), shared by every proxy process.

* ``outbox``: every mail the API accepted, until the SMTP server took it.  A mail is written in
  one transaction together with the rate-limit check, so an accepted mail is on disk before the
  API answers and a refused one leaves nothing behind.  Senders *claim* due mails by putting them
  in the ``sending`` state with a lease (an owner and an expiry): two processes sharing the file
  never claim the same mail, and a mail whose sender died is claimed again once its lease ends.
* ``incoming``: what the reply fetcher knows about each incoming message (by Message-ID, or by
  the hash of the message when it has none): delivered, refused and retried, moved aside.
* ``locks``: named leases, so one ``check_mail`` runs at a time across processes.

The file is in WAL mode with ``synchronous=FULL``: a committed mail survives a crash or a power
loss.
"""

from __future__ import annotations

import json
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["SCHEMA_VERSION", "MailStore", "Outgoing", "RateLimitedError"]

SCHEMA_VERSION = 1

SCHEMA = """
BEGIN IMMEDIATE;
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY,
    service TEXT NOT NULL,
    sender TEXT NOT NULL,
    recipients TEXT NOT NULL,
    n_recipients INTEGER NOT NULL,
    subject TEXT NOT NULL,
    body TEXT NOT NULL,
    html INTEGER NOT NULL,
    reply_to TEXT,
    message_id TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'queued',
    attempts INTEGER NOT NULL DEFAULT 0,
    next_try REAL NOT NULL,
    owner TEXT,
    lease_until REAL,
    last_try REAL,
    last_error TEXT,
    created REAL NOT NULL,
    done REAL
);
CREATE INDEX IF NOT EXISTS outbox_due ON outbox (state, next_try);
CREATE INDEX IF NOT EXISTS outbox_rate ON outbox (service, created);
CREATE TABLE IF NOT EXISTS incoming (
    key TEXT PRIMARY KEY,
    message_id TEXT,
    service TEXT,
    response_id TEXT,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_try REAL,
    last_error TEXT,
    first_seen REAL NOT NULL,
    updated REAL NOT NULL,
    raw BLOB
);
CREATE TABLE IF NOT EXISTS locks (
    name TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    until REAL NOT NULL
);
PRAGMA user_version = 1;
COMMIT;
"""


class RateLimitedError(Exception):
    """The service reached its hourly quota; ``retry_after`` is in seconds."""

    def __init__(self, used: int, limit: int, retry_after: float) -> None:
        super().__init__(f"{used} of {limit} recipients used in the last hour")
        self.used = used
        self.limit = limit
        self.retry_after = retry_after


@dataclass(frozen=True)
class Outgoing:
    """One claimed mail of the outbox."""

    id: int
    service: str
    sender: str
    recipients: tuple[str, ...]
    subject: str
    body: str
    html: bool
    reply_to: str | None
    message_id: str
    attempts: int
    created: float


class MailStore:
    """The SQLite file at ``path`` (created with its schema when missing)."""

    def __init__(self, path: str | Path, *, clock: Callable[[], float] = time.time) -> None:
        self.path = str(path)
        if self.path == ":memory:" or self.path.startswith("file::memory:"):
            raise ValueError("the mail queue needs a file: it must outlive the process")
        self.clock = clock
        self.owner = uuid.uuid4().hex  # this process's name in leases
        with self._open() as db:
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise sqlite3.DatabaseError(
                    f"schema version {version} is newer than this PlugIt's ({SCHEMA_VERSION})"
                )
            if db.execute("PRAGMA journal_mode=WAL").fetchone()[0].lower() != "wal":
                raise sqlite3.DatabaseError("the file cannot be put in WAL mode")
            if version < SCHEMA_VERSION:
                db.executescript(SCHEMA)

    # -- connections ------------------------------------------------------------------------------

    @contextmanager
    def _open(self) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
        try:
            db.row_factory = sqlite3.Row
            db.execute("PRAGMA synchronous=FULL")
            yield db
        finally:
            db.close()

    @contextmanager
    def _transaction(self, begin: str = "BEGIN IMMEDIATE") -> Iterator[sqlite3.Connection]:
        with self._open() as db:
            db.execute(begin)
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    # -- outbox -----------------------------------------------------------------------------------

    def enqueue(
        self,
        *,
        service: str,
        sender: str,
        recipients: list[str],
        subject: str,
        body: str,
        html: bool,
        reply_to: str | None,
        message_id: str,
        max_per_hour: int,
    ) -> int:
        """Queue one mail; raise :class:`RateLimitedError` (nothing written) over the quota."""
        now = self.clock()
        with self._transaction() as db:
            if max_per_hour > 0:
                used, oldest = db.execute(
                    "SELECT COALESCE(SUM(n_recipients), 0), MIN(created) FROM outbox "
                    "WHERE service = ? AND created > ?",
                    (service, now - 3600),
                ).fetchone()
                if used + len(recipients) > max_per_hour:
                    retry_after = (oldest + 3600 - now) if oldest is not None else 3600.0
                    raise RateLimitedError(used, max_per_hour, max(1.0, retry_after))
            cursor = db.execute(
                "INSERT INTO outbox (service, sender, recipients, n_recipients, subject, body, "
                "html, reply_to, message_id, next_try, created) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    service,
                    sender,
                    json.dumps(recipients),
                    len(recipients),
                    subject,
                    body,
                    int(html),
                    reply_to,
                    message_id,
                    now,
                    now,
                ),
            )
            return int(cursor.lastrowid or 0)

    def claim(
        self, limit: int, lease: float, *, started: float, retry_now: bool = False
    ) -> list[Outgoing]:
        """Take up to ``limit`` due mails for this process for ``lease`` seconds.

        Due: queued with ``next_try`` reached (any queued mail with ``retry_now``), or sending
        with an expired lease (its sender died).  Mails already tried since ``started`` are
        left alone, so one pass tries each mail at most once.
        """
        now = self.clock()
        with self._transaction() as db:
            rows = db.execute(
                "SELECT * FROM outbox WHERE ((state = 'queued' AND (next_try <= ? OR ?)) "
                "OR (state = 'sending' AND lease_until <= ?)) "
                "AND (last_try IS NULL OR last_try < ?) ORDER BY next_try, id LIMIT ?",
                (now, int(retry_now), now, started, limit),
            ).fetchall()
            for row in rows:
                db.execute(
                    "UPDATE outbox SET state = 'sending', owner = ?, lease_until = ?, "
                    "last_try = ? WHERE id = ?",
                    (self.owner, now + lease, now, row["id"]),
                )
        return [
            Outgoing(
                id=row["id"],
                service=row["service"],
                sender=row["sender"],
                recipients=tuple(json.loads(row["recipients"])),
                subject=row["subject"],
                body=row["body"],
                html=bool(row["html"]),
                reply_to=row["reply_to"],
                message_id=row["message_id"],
                attempts=row["attempts"],
                created=row["created"],
            )
            for row in rows
        ]

    def mark_sent(self, mail_id: int, note: str | None = None) -> bool:
        """The SMTP server took the mail; False when this process no longer held it."""
        with self._transaction() as db:
            cursor = db.execute(
                "UPDATE outbox SET state = 'sent', attempts = attempts + 1, done = ?, "
                "last_error = ?, owner = NULL, lease_until = NULL "
                "WHERE id = ? AND state = 'sending' AND owner = ?",
                (self.clock(), note, mail_id, self.owner),
            )
            return cursor.rowcount == 1

    def mark_retry(self, mail_id: int, error: str, delay: float, max_attempts: int) -> str:
        """A temporary failure: try again after ``delay`` seconds, or give up after
        ``max_attempts`` attempts (0: never give up).  Returns the new state."""
        now = self.clock()
        with self._transaction() as db:
            row = db.execute(
                "SELECT attempts FROM outbox WHERE id = ? AND state = 'sending' AND owner = ?",
                (mail_id, self.owner),
            ).fetchone()
            if row is None:
                return "lost"
            attempts = row["attempts"] + 1
            state = "failed" if max_attempts and attempts >= max_attempts else "queued"
            db.execute(
                "UPDATE outbox SET state = ?, attempts = ?, next_try = ?, last_error = ?, "
                "owner = NULL, lease_until = NULL, done = ? WHERE id = ?",
                (
                    state,
                    attempts,
                    now + delay,
                    error[:1000],
                    now if state == "failed" else None,
                    mail_id,
                ),
            )
            return state

    def mark_failed(self, mail_id: int, error: str) -> None:
        """A permanent failure (the SMTP server refused the mail for good)."""
        with self._transaction() as db:
            db.execute(
                "UPDATE outbox SET state = 'failed', attempts = attempts + 1, last_error = ?, "
                "done = ?, owner = NULL, lease_until = NULL "
                "WHERE id = ? AND state = 'sending' AND owner = ?",
                (error[:1000], self.clock(), mail_id, self.owner),
            )

    def release(self, mail_id: int) -> None:
        """Give a claimed mail back untouched (the process is stopping)."""
        with self._transaction() as db:
            db.execute(
                "UPDATE outbox SET state = 'queued', owner = NULL, lease_until = NULL "
                "WHERE id = ? AND state = 'sending' AND owner = ?",
                (mail_id, self.owner),
            )

    def next_due(self) -> float | None:
        """When the next queued mail is due (a clock value), or None when nothing is queued."""
        with self._open() as db:
            row = db.execute(
                "SELECT MIN(CASE WHEN state = 'queued' THEN next_try ELSE lease_until END) "
                "FROM outbox WHERE state IN ('queued', 'sending')"
            ).fetchone()
        return row[0]

    def purge(self, older_than: float) -> int:
        """Forget sent mails finished more than ``older_than`` seconds ago (failed ones stay)."""
        with self._transaction() as db:
            cursor = db.execute(
                "DELETE FROM outbox WHERE state = 'sent' AND done < ?",
                (self.clock() - older_than,),
            )
            return cursor.rowcount

    def outbox(self, state: str | None = None) -> list[dict[str, Any]]:
        """The outbox rows (for status reports and tests), oldest first."""
        with self._open() as db:
            if state is None:
                rows = db.execute("SELECT * FROM outbox ORDER BY id").fetchall()
            else:
                rows = db.execute(
                    "SELECT * FROM outbox WHERE state = ? ORDER BY id", (state,)
                ).fetchall()
        return [{**dict(row), "recipients": json.loads(row["recipients"])} for row in rows]

    def counts(self) -> dict[str, dict[str, int]]:
        """How many outgoing and incoming mails are in each state."""
        with self._open() as db:
            outbox = db.execute("SELECT state, COUNT(*) FROM outbox GROUP BY state").fetchall()
            incoming = db.execute("SELECT state, COUNT(*) FROM incoming GROUP BY state").fetchall()
        return {
            "outbox": {row[0]: row[1] for row in outbox},
            "incoming": {row[0]: row[1] for row in incoming},
        }

    # -- incoming ---------------------------------------------------------------------------------

    def incoming_state(self, key: str) -> tuple[str, int, float | None] | None:
        """(state, attempts, next try) of an incoming message already seen, or None."""
        with self._open() as db:
            row = db.execute(
                "SELECT state, attempts, next_try FROM incoming WHERE key = ?", (key,)
            ).fetchone()
        return None if row is None else (row["state"], row["attempts"], row["next_try"])

    def defer_incoming(self, key: str, delay: float) -> None:
        """Leave the message alone for ``delay`` seconds (its service refused it)."""
        with self._transaction() as db:
            db.execute(
                "UPDATE incoming SET next_try = ? WHERE key = ?", (self.clock() + delay, key)
            )

    def record_incoming(
        self,
        key: str,
        state: str,
        *,
        message_id: str | None = None,
        service: str | None = None,
        response_id: str | None = None,
        error: str | None = None,
        count_attempt: bool = False,
        raw: bytes | None = None,
    ) -> int:
        """Record what happened to an incoming message; returns its number of attempts."""
        now = self.clock()
        with self._transaction() as db:
            db.execute(
                "INSERT INTO incoming (key, message_id, service, response_id, state, attempts, "
                "last_error, first_seen, updated, raw) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (key) DO UPDATE SET state = excluded.state, "
                "attempts = incoming.attempts + excluded.attempts, "
                "last_error = COALESCE(excluded.last_error, incoming.last_error), "
                "service = COALESCE(excluded.service, incoming.service), "
                "response_id = COALESCE(excluded.response_id, incoming.response_id), "
                "updated = excluded.updated, raw = COALESCE(excluded.raw, incoming.raw)",
                (
                    key,
                    message_id,
                    service,
                    response_id,
                    state,
                    int(count_attempt),
                    None if error is None else error[:1000],
                    now,
                    now,
                    raw,
                ),
            )
            row = db.execute("SELECT attempts FROM incoming WHERE key = ?", (key,)).fetchone()
            return int(row["attempts"])

    def incoming(self, state: str | None = None) -> list[dict[str, Any]]:
        """The incoming records (for status reports and tests)."""
        with self._open() as db:
            if state is None:
                rows = db.execute("SELECT * FROM incoming ORDER BY first_seen").fetchall()
            else:
                rows = db.execute(
                    "SELECT * FROM incoming WHERE state = ? ORDER BY first_seen", (state,)
                ).fetchall()
        return [dict(row) for row in rows]

    def purge_incoming(self, older_than: float) -> int:
        """Forget delivered, dropped and rejected records older than ``older_than`` seconds
        (the messages are gone from the mailbox by then); undeliverable ones stay."""
        with self._transaction() as db:
            cursor = db.execute(
                "DELETE FROM incoming WHERE state IN ('delivered', 'dropped', 'rejected') "
                "AND updated < ?",
                (self.clock() - older_than,),
            )
            return cursor.rowcount

    # -- locks ------------------------------------------------------------------------------------

    def acquire_lock(self, name: str, lease: float) -> bool:
        """Take the named lock for ``lease`` seconds; False when another holder has it."""
        now = self.clock()
        with self._transaction() as db:
            row = db.execute("SELECT owner, until FROM locks WHERE name = ?", (name,)).fetchone()
            if row is not None and row["owner"] != self.owner and row["until"] > now:
                return False
            db.execute(
                "INSERT INTO locks (name, owner, until) VALUES (?, ?, ?) "
                "ON CONFLICT (name) DO UPDATE SET owner = excluded.owner, until = excluded.until",
                (name, self.owner, now + lease),
            )
            return True

    def release_lock(self, name: str) -> None:
        with self._transaction() as db:
            db.execute("DELETE FROM locks WHERE name = ? AND owner = ?", (name, self.owner))

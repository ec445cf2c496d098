"""The mail backend's durable state, the *mail queue*: :class:`MailStore`, the SQLite
implementation (one file, stdlib) of :class:`plugit_core.kinds.mailqueue.MailQueue`
(re-exported here), shared by every proxy process.
``plugit_backends.mail_postgres`` holds the PostgreSQL one; both pass
:class:`plugit_core.kinds.mailqueue.testing.MailQueueConformance`.

* ``outbox``: every mail the API accepted, until the SMTP server took it.  A mail is written in
  one transaction together with the rate-limit check, so an accepted mail is on disk before the
  API answers and a refused one leaves nothing behind.  Senders *claim* due mails by putting them
  in the ``sending`` state with a lease (an owner and an expiry): two processes sharing the file
  never claim the same mail.  A live sender renews its leases (:meth:`MailQueue.renew`, a few
  times per lease); a mail whose lease ended is first *noticed* by another sender, which gives
  the holder a grace period (``stale_since``), then taken over when the holder stayed silent
  through it: a sender cut off from the queue for longer than a lease gets its turn to record
  what it did as soon as the queue answers again, before anyone sends the mail a second time.
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
from pathlib import Path
from typing import Any

from plugit_core.kinds.mailqueue import LEASE_LOST, MailQueue, Outgoing, RateLimitedError
from plugit_core.stores import (
    DEFAULT_MAX_WAITERS,
    DEFAULT_WAIT,
    StoreGuard,
    sqlite_is_outage,
)

__all__ = [
    "LEASE_LOST",
    "SCHEMA_VERSION",
    "MailQueue",
    "MailStore",
    "Outgoing",
    "RateLimitedError",
]

SCHEMA_VERSION = 2

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
# Each step takes the file from version i + 1 to i + 2 (SCHEMA makes version 1).
UPGRADES = (
    """
BEGIN IMMEDIATE;
ALTER TABLE outbox ADD COLUMN stale_since REAL;
PRAGMA user_version = 2;
COMMIT;
""",
)


class MailStore:
    """A :class:`MailQueue` in the SQLite file at ``path`` (created with its schema when
    missing).  Each call opens its own connection: several processes share the file."""

    def __init__(
        self,
        path: str | Path,
        *,
        clock: Callable[[], float] = time.time,
        wait: float = DEFAULT_WAIT,
        max_waiters: int = DEFAULT_MAX_WAITERS,
    ) -> None:
        self.guard = StoreGuard(
            "mail_sqlite",
            "the mail queue",
            wait=wait,
            max_waiters=max_waiters,
            is_outage=sqlite_is_outage,
            probe=self._probe,
            required=False,
        )
        self.store_guards = (self.guard,)
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
            if version < 1:
                db.executescript(SCHEMA)
                version = 1
            for step in UPGRADES[version - 1 :]:
                db.executescript(step)

    def __repr__(self) -> str:
        return f"<MailStore {self.path!r}>"

    def close(self) -> None:
        """Nothing to release: every call opens and closes its own connection."""

    # -- connections ------------------------------------------------------------------------------

    @contextmanager
    def _open(self) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(
            self.path, timeout=self.guard.wait, isolation_level=None, check_same_thread=False
        )
        try:
            db.row_factory = sqlite3.Row
            db.execute("PRAGMA synchronous=FULL")
            yield db
        finally:
            db.close()

    @contextmanager
    def _transaction(self, begin: str = "BEGIN IMMEDIATE") -> Iterator[sqlite3.Connection]:
        with self.guard.call(), self._open() as db:
            db.execute(begin)
            try:
                yield db
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    def _probe(self) -> None:
        with self._open() as db:
            db.execute("SELECT 1 FROM outbox LIMIT 1").fetchall()

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
        self,
        limit: int,
        lease: float,
        *,
        started: float,
        retry_now: bool = False,
        max_attempts: int = 0,
        grace: float = 0.0,
    ) -> list[Outgoing]:
        """Take up to ``limit`` due mails for this process for ``lease`` seconds.

        Due: queued with ``next_try`` reached (any queued mail with ``retry_now``), or sending
        with an expired lease (its sender died: an attempt, with ``max_attempts``; with
        ``grace``, noticed first and taken over once the grace ended too).  Mails already tried
        since ``started`` are left alone, so one pass tries each mail at most once.
        """
        now = self.clock()
        taken = []
        with self._transaction() as db:
            rows = db.execute(
                "SELECT * FROM outbox WHERE ((state = 'queued' AND (next_try <= ? OR ?)) "
                "OR (state = 'sending' AND lease_until <= ?)) "
                "AND (last_try IS NULL OR last_try < ?) ORDER BY next_try, id LIMIT ?",
                (now, int(retry_now), now, started, limit),
            ).fetchall()
            for row in rows:
                attempts, error = row["attempts"], row["last_error"]
                if row["state"] == "sending" and grace > 0 and row["stale_since"] is None:
                    db.execute(  # noticed: its holder gets the grace to show it lives
                        "UPDATE outbox SET stale_since = ?, lease_until = ? WHERE id = ?",
                        (now, now + grace, row["id"]),
                    )
                    continue
                if row["state"] == "sending" and max_attempts > 0:
                    attempts, error = attempts + 1, LEASE_LOST
                    if attempts >= max_attempts:
                        db.execute(
                            "UPDATE outbox SET state = 'failed', attempts = ?, last_error = ?, "
                            "done = ?, owner = NULL, lease_until = NULL, stale_since = NULL "
                            "WHERE id = ?",
                            (attempts, error, now, row["id"]),
                        )
                        continue
                db.execute(
                    "UPDATE outbox SET state = 'sending', owner = ?, lease_until = ?, "
                    "last_try = ?, attempts = ?, last_error = ?, stale_since = NULL WHERE id = ?",
                    (self.owner, now + lease, now, attempts, error, row["id"]),
                )
                taken.append({**dict(row), "attempts": attempts})
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
            for row in taken
        ]

    def renew(self, lease: float) -> list[int]:
        """Extend the leases of the mails this object holds; their ids."""
        now = self.clock()
        with self._transaction() as db:
            db.execute(
                "UPDATE outbox SET lease_until = ?, stale_since = NULL "
                "WHERE state = 'sending' AND owner = ?",
                (now + lease, self.owner),
            )
            rows = db.execute(
                "SELECT id FROM outbox WHERE state = 'sending' AND owner = ? ORDER BY id",
                (self.owner,),
            ).fetchall()
        return [int(row[0]) for row in rows]

    def mark_sent(self, mail_id: int, note: str | None = None) -> bool:
        """The SMTP server took the mail; False when this process no longer held it."""
        with self._transaction() as db:
            cursor = db.execute(
                "UPDATE outbox SET state = 'sent', attempts = attempts + 1, done = ?, "
                "last_error = ?, owner = NULL, lease_until = NULL, stale_since = NULL "
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
                "owner = NULL, lease_until = NULL, stale_since = NULL, done = ? WHERE id = ?",
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
                "done = ?, owner = NULL, lease_until = NULL, stale_since = NULL "
                "WHERE id = ? AND state = 'sending' AND owner = ?",
                (error[:1000], self.clock(), mail_id, self.owner),
            )

    def release(self, mail_id: int) -> None:
        """Give a claimed mail back untouched (the process is stopping)."""
        with self._transaction() as db:
            db.execute(
                "UPDATE outbox SET state = 'queued', owner = NULL, lease_until = NULL, "
                "stale_since = NULL WHERE id = ? AND state = 'sending' AND owner = ?",
                (mail_id, self.owner),
            )

    def next_due(self) -> float | None:
        """When the next queued mail is due (a clock value), or None when nothing is queued."""
        with self.guard.call(), self._open() as db:
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
        with self.guard.call(), self._open() as db:
            if state is None:
                rows = db.execute("SELECT * FROM outbox ORDER BY id").fetchall()
            else:
                rows = db.execute(
                    "SELECT * FROM outbox WHERE state = ? ORDER BY id", (state,)
                ).fetchall()
        return [{**dict(row), "recipients": json.loads(row["recipients"])} for row in rows]

    def counts(self) -> dict[str, dict[str, int]]:
        """How many outgoing and incoming mails are in each state."""
        with self.guard.call(), self._open() as db:
            outbox = db.execute("SELECT state, COUNT(*) FROM outbox GROUP BY state").fetchall()
            incoming = db.execute("SELECT state, COUNT(*) FROM incoming GROUP BY state").fetchall()
        return {
            "outbox": {row[0]: row[1] for row in outbox},
            "incoming": {row[0]: row[1] for row in incoming},
        }

    # -- incoming ---------------------------------------------------------------------------------

    def incoming_state(self, key: str) -> tuple[str, int, float | None] | None:
        """(state, attempts, next try) of an incoming message already seen, or None."""
        with self.guard.call(), self._open() as db:
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
        with self.guard.call(), self._open() as db:
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

"""The mail queue, written once for SQLite (``plugit_backends.mail_smtp.store.MailStore``) and
PostgreSQL (``plugit_backends.mail_postgres.PostgresMailQueue``).

* ``outbox``: every mail the API accepted, until the SMTP server took it.  A mail is written in
  one transaction together with the rate-limit check (under a lock of its service, so two
  processes never both pass the check with the last free recipients): an accepted mail is
  stored before the API answers and a refused one leaves nothing behind.  Senders *claim* due
  mails by putting them in the ``sending`` state with a lease (an owner and an expiry), in one
  transaction that skips the rows another claimer holds: two processes never claim the same
  mail, neither waits.  A live sender renews its leases (:meth:`SQLMailQueue.renew`); a mail
  whose lease ended is first *noticed* by another sender, which gives the holder a grace period
  (``stale_since``), then taken over when the holder stayed silent through it.
* ``incoming``: what the reply fetcher knows about each incoming message: delivered, refused
  and retried, moved aside.
* ``locks``: named leases, so one ``check_mail`` runs at a time across processes.

Times are clock values (seconds since the epoch) read from the queue's ``clock``, never from
the database server's.  The tables are named by the words ``{outbox}``, ``{incoming}`` and
``{locks}`` (``mail_*`` in PostgreSQL, where they may share the directory's schema).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from typing import Any

from plugit_core.kinds.mailqueue import LEASE_LOST, Outgoing, RateLimitedError

from . import Database, Row, json_value

__all__ = ["MAX_ERROR", "SQLMailQueue"]

MAX_ERROR = 1000  # characters of an error kept
_OUTBOX = (
    "SELECT id, service, sender, recipients, n_recipients, subject, body, "
    "CASE WHEN html THEN 1 ELSE 0 END AS html, reply_to, message_id, state, attempts, next_try, "
    "owner, lease_until, last_try, last_error, created, done, stale_since FROM {outbox} "
)
_INCOMING = (
    "SELECT key, message_id, service, response_id, state, attempts, next_try, last_error, "
    "first_seen, updated, raw FROM {incoming} "
)
# Due: queued with next_try reached (any queued mail with retry_now), or sending with an expired
# lease; not tried since the pass started.  Rows another claimer holds are skipped.
_DUE = (
    "SELECT id, service, sender, recipients, subject, body, html, reply_to, message_id, "
    "attempts, created, state, stale_since, last_error FROM {outbox} "
    "WHERE ((state = 'queued' AND (next_try <= ? OR ?)) "
    "OR (state = 'sending' AND lease_until <= ?)) "
    "AND (last_try IS NULL OR last_try < ?) ORDER BY next_try, id LIMIT ?{skip_locked}"
)
_RETRY = (
    "UPDATE {outbox} SET attempts = attempts + 1, "
    "state = CASE WHEN ? > 0 AND attempts + 1 >= ? THEN 'failed' ELSE 'queued' END, "
    "done = CASE WHEN ? > 0 AND attempts + 1 >= ? THEN ? END, "
    "next_try = ?, last_error = ?, owner = NULL, lease_until = NULL, stale_since = NULL "
    "WHERE id = ? AND state = 'sending' AND owner = ? RETURNING state"
)
_RECORD = (
    "INSERT INTO {incoming} AS i (key, message_id, service, response_id, state, attempts, "
    "last_error, first_seen, updated, raw) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
    "ON CONFLICT (key) DO UPDATE SET state = excluded.state, "
    "attempts = i.attempts + excluded.attempts, "
    "last_error = COALESCE(excluded.last_error, i.last_error), "
    "service = COALESCE(excluded.service, i.service), "
    "response_id = COALESCE(excluded.response_id, i.response_id), "
    "updated = excluded.updated, raw = COALESCE(excluded.raw, i.raw) "
    "RETURNING attempts"
)
_LOCK = (
    "INSERT INTO {locks} AS l (name, owner, until) VALUES (?, ?, ?) "
    "ON CONFLICT (name) DO UPDATE SET owner = excluded.owner, until = excluded.until "
    "WHERE l.owner = excluded.owner OR l.until <= ? RETURNING name"
)


def _cut(text: str | None) -> str | None:
    return None if text is None else text[:MAX_ERROR]


def _outgoing(row: Row, attempts: int) -> Outgoing:
    return Outgoing(
        id=row["id"],
        service=row["service"],
        sender=row["sender"],
        recipients=tuple(json_value(row["recipients"])),
        subject=row["subject"],
        body=row["body"],
        html=bool(row["html"]),
        reply_to=row["reply_to"],
        message_id=row["message_id"],
        attempts=attempts,
        created=row["created"],
    )


class SQLMailQueue:
    """A :class:`~plugit_core.kinds.mailqueue.MailQueue` in a SQL
    :class:`~plugit_backends.sql.Database`.  ``incoming_order`` breaks the ties between incoming
    records first seen at the same time (the order they were written in)."""

    def __init__(
        self,
        db: Database,
        *,
        incoming_order: str,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.db = db
        self.guard = db.guard
        self.store_guards = (db.guard,)
        self.clock = clock
        self.owner = uuid.uuid4().hex  # this object's name in leases and locks
        self._incoming_order = f" ORDER BY first_seen, {incoming_order}"

    def close(self) -> None:
        """Close the idle connections; the next call opens new ones."""
        self.db.close()

    def _one(self, query: str, params: tuple[Any, ...] = ()) -> Row | None:
        with self.db.connection() as conn:
            return conn.one(query, params)

    def _all(self, query: str, params: tuple[Any, ...] = ()) -> list[Row]:
        with self.db.connection() as conn:
            return conn.all(query, params)

    def _run(self, query: str, params: tuple[Any, ...] = ()) -> int:
        """One statement, so one transaction; the number of rows it changed."""
        with self.db.connection() as conn:
            return conn.run(query, params)

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
        with self.db.transaction() as conn:
            if max_per_hour > 0:
                conn.lock(f"mail-quota:{service}")  # one check-then-insert of a service at once
                row = conn.one(
                    "SELECT COALESCE(SUM(n_recipients), 0) AS used, MIN(created) AS oldest "
                    "FROM {outbox} WHERE service = ? AND created > ?",
                    (service, now - 3600),
                )
                assert row is not None  # an aggregate without GROUP BY gives one row
                used, oldest = int(row["used"]), row["oldest"]
                if used + len(recipients) > max_per_hour:
                    retry_after = (oldest + 3600 - now) if oldest is not None else 3600.0
                    raise RateLimitedError(used, max_per_hour, max(1.0, retry_after))
            row = conn.one(
                "INSERT INTO {outbox} (service, sender, recipients, n_recipients, subject, body, "
                "html, reply_to, message_id, next_try, created) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
                (
                    service,
                    sender,
                    json.dumps([r.replace("\x00", "") for r in recipients]),
                    len(recipients),
                    subject,
                    body,
                    bool(html),
                    reply_to,
                    message_id,
                    now,
                    now,
                ),
            )
        assert row is not None  # INSERT ... RETURNING gives the row it wrote
        return int(row["id"])

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
        with self.db.transaction() as conn:
            for row in conn.all(_DUE, (now, bool(retry_now), now, started, limit)):
                attempts, error = row["attempts"], row["last_error"]
                if row["state"] == "sending" and grace > 0 and row["stale_since"] is None:
                    conn.run(  # noticed: its holder gets the grace to show it lives
                        "UPDATE {outbox} SET stale_since = ?, lease_until = ? WHERE id = ?",
                        (now, now + grace, row["id"]),
                    )
                    continue
                if row["state"] == "sending" and max_attempts > 0:
                    attempts, error = attempts + 1, LEASE_LOST
                    if attempts >= max_attempts:
                        conn.run(
                            "UPDATE {outbox} SET state = 'failed', attempts = ?, last_error = ?, "
                            "done = ?, owner = NULL, lease_until = NULL, stale_since = NULL "
                            "WHERE id = ?",
                            (attempts, error, now, row["id"]),
                        )
                        continue
                conn.run(
                    "UPDATE {outbox} SET state = 'sending', owner = ?, lease_until = ?, "
                    "last_try = ?, attempts = ?, last_error = ?, stale_since = NULL WHERE id = ?",
                    (self.owner, now + lease, now, attempts, error, row["id"]),
                )
                taken.append(_outgoing(row, attempts))
        return taken

    def renew(self, lease: float) -> list[int]:
        """Extend the leases of the mails this object holds; their ids."""
        rows = self._all(
            "UPDATE {outbox} SET lease_until = ?, stale_since = NULL "
            "WHERE state = 'sending' AND owner = ? RETURNING id",
            (self.clock() + lease, self.owner),
        )
        return sorted(int(row["id"]) for row in rows)

    def mark_sent(self, mail_id: int, note: str | None = None) -> bool:
        """The SMTP server took the mail; False when this process no longer held it."""
        count = self._run(
            "UPDATE {outbox} SET state = 'sent', attempts = attempts + 1, done = ?, "
            "last_error = ?, owner = NULL, lease_until = NULL, stale_since = NULL "
            "WHERE id = ? AND state = 'sending' AND owner = ?",
            (self.clock(), note, mail_id, self.owner),
        )
        return count == 1

    def mark_retry(self, mail_id: int, error: str, delay: float, max_attempts: int) -> str:
        """A temporary failure: try again after ``delay`` seconds, or give up after
        ``max_attempts`` attempts (0: never give up).  Returns the new state."""
        now = self.clock()
        most = max_attempts
        row = self._one(
            _RETRY, (most, most, most, most, now, now + delay, _cut(error), mail_id, self.owner)
        )
        return "lost" if row is None else str(row["state"])

    def mark_failed(self, mail_id: int, error: str) -> None:
        """A permanent failure (the SMTP server refused the mail for good)."""
        self._run(
            "UPDATE {outbox} SET state = 'failed', attempts = attempts + 1, last_error = ?, "
            "done = ?, owner = NULL, lease_until = NULL, stale_since = NULL "
            "WHERE id = ? AND state = 'sending' AND owner = ?",
            (_cut(error), self.clock(), mail_id, self.owner),
        )

    def release(self, mail_id: int) -> None:
        """Give a claimed mail back untouched (the process is stopping)."""
        self._run(
            "UPDATE {outbox} SET state = 'queued', owner = NULL, lease_until = NULL, "
            "stale_since = NULL WHERE id = ? AND state = 'sending' AND owner = ?",
            (mail_id, self.owner),
        )

    def next_due(self) -> float | None:
        """When the next queued mail is due (a clock value), or None when nothing is queued."""
        row = self._one(
            "SELECT MIN(CASE WHEN state = 'queued' THEN next_try ELSE lease_until END) AS due "
            "FROM {outbox} WHERE state IN ('queued', 'sending')"
        )
        due = None if row is None else row["due"]
        return None if due is None else float(due)

    def purge(self, older_than: float) -> int:
        """Forget sent mails finished more than ``older_than`` seconds ago (failed ones stay)."""
        return self._run(
            "DELETE FROM {outbox} WHERE state = 'sent' AND done < ?", (self.clock() - older_than,)
        )

    def outbox(self, state: str | None = None) -> list[dict[str, Any]]:
        """The outbox rows (for status reports and tests), oldest first."""
        if state is None:
            rows = self._all(_OUTBOX + "ORDER BY id")
        else:
            rows = self._all(_OUTBOX + "WHERE state = ? ORDER BY id", (state,))
        return [{**dict(row), "recipients": json_value(row["recipients"])} for row in rows]

    def counts(self) -> dict[str, dict[str, int]]:
        """How many outgoing and incoming mails are in each state."""
        rows = self._all(
            "SELECT 'outbox' AS kind, state, COUNT(*) AS n FROM {outbox} GROUP BY state "
            "UNION ALL SELECT 'incoming', state, COUNT(*) FROM {incoming} GROUP BY state"
        )
        result: dict[str, dict[str, int]] = {"outbox": {}, "incoming": {}}
        for row in rows:
            result[row["kind"]][row["state"]] = int(row["n"])
        return result

    # -- incoming ---------------------------------------------------------------------------------

    def incoming_state(self, key: str) -> tuple[str, int, float | None] | None:
        """(state, attempts, next try) of an incoming message already seen, or None."""
        row = self._one("SELECT state, attempts, next_try FROM {incoming} WHERE key = ?", (key,))
        return None if row is None else (row["state"], row["attempts"], row["next_try"])

    def defer_incoming(self, key: str, delay: float) -> None:
        """Leave the message alone for ``delay`` seconds (its service refused it)."""
        self._run("UPDATE {incoming} SET next_try = ? WHERE key = ?", (self.clock() + delay, key))

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
        row = self._one(
            _RECORD,
            (
                key,
                message_id,
                service,
                response_id,
                state,
                int(count_attempt),
                _cut(error),
                now,
                now,
                None if raw is None else bytes(raw),
            ),
        )
        assert row is not None  # the row written or updated
        return int(row["attempts"])

    def incoming(self, state: str | None = None) -> list[dict[str, Any]]:
        """The incoming records (for status reports and tests)."""
        if state is None:
            rows = self._all(_INCOMING + self._incoming_order)
        else:
            rows = self._all(_INCOMING + "WHERE state = ?" + self._incoming_order, (state,))
        return [dict(row) for row in rows]

    def purge_incoming(self, older_than: float) -> int:
        """Forget delivered, dropped and rejected records older than ``older_than`` seconds
        (the messages are gone from the mailbox by then); undeliverable ones stay."""
        return self._run(
            "DELETE FROM {incoming} WHERE state IN ('delivered', 'dropped', 'rejected') "
            "AND updated < ?",
            (self.clock() - older_than,),
        )

    # -- locks ------------------------------------------------------------------------------------

    def acquire_lock(self, name: str, lease: float) -> bool:
        """Take the named lock for ``lease`` seconds; False when another holder has it."""
        now = self.clock()
        return self._one(_LOCK, (name, self.owner, now + lease, now)) is not None

    def release_lock(self, name: str) -> None:
        self._run("DELETE FROM {locks} WHERE name = ? AND owner = ?", (name, self.owner))

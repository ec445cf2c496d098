"""The mail backend's durable state, the *mail queue*: :class:`MailStore`, the SQLite
implementation (one file, stdlib) of :class:`plugit_core.kinds.mailqueue.MailQueue`
(re-exported here), shared by every proxy process.

The queue is :class:`plugit_backends.sql.mail.SQLMailQueue` (what it keeps and how is said
there), shared with ``plugit_backends.mail_postgres``, on a
:class:`plugit_backends.sql.sqlite.SQLiteDatabase`; both pass
:class:`plugit_core.kinds.mailqueue.testing.MailQueueConformance`.  The file is in WAL mode with
``synchronous=FULL``: a committed mail survives a crash or a power loss.  Each call opens its
own connection (none is kept between calls).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from plugit_backends.sql.mail import SQLMailQueue
from plugit_backends.sql.sqlite import SQLiteDatabase, check_file
from plugit_core.kinds.mailqueue import LEASE_LOST, MailQueue, Outgoing, RateLimitedError
from plugit_core.stores import DEFAULT_MAX_WAITERS, DEFAULT_WAIT

__all__ = [
    "LEASE_LOST",
    "SCHEMA_VERSION",
    "STEPS",
    "MailQueue",
    "MailStore",
    "Outgoing",
    "RateLimitedError",
]

# Version 1: the tables.
SCHEMA = """
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
"""
# Each step takes the file from one version to the next; only ever append.
STEPS = (
    SCHEMA,
    # 2: leases renewed while their sender lives; an expired one is noticed before it is taken
    "ALTER TABLE outbox ADD COLUMN stale_since REAL",
)
SCHEMA_VERSION = len(STEPS)
TABLES = {"outbox": "outbox", "incoming": "incoming", "locks": "locks"}


class MailStore(SQLMailQueue):
    """A :class:`MailQueue` in the SQLite file at ``path`` (created with its schema when
    missing)."""

    def __init__(
        self,
        path: str | Path,
        *,
        clock: Callable[[], float] = time.time,
        wait: float = DEFAULT_WAIT,
        max_waiters: int = DEFAULT_MAX_WAITERS,
    ) -> None:
        self.path = check_file(path, "the mail queue needs a file: it must outlive the process")
        database = SQLiteDatabase(
            self.path,
            STEPS,
            store="mail_sqlite",
            label="the mail queue",
            probe="SELECT 1 FROM outbox LIMIT 1",
            synchronous="FULL",
            tables=TABLES,
            pool_size=0,
            wait=wait,
            max_waiters=max_waiters,
            required=False,
        )
        super().__init__(database, incoming_order="rowid", clock=clock)

    def __repr__(self) -> str:
        return f"<MailStore {self.path!r}>"

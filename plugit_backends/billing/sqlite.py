"""The embedded billing store: plans and subscriptions in one SQLite file (stdlib).

Configuration::

    billing = "sqlite"

    [billing_sqlite]
    path = "plugit-billing.sqlite3"   # relative to the working directory

The store is :class:`plugit_backends.sql.billing.SQLBillingStore`, shared with
``billing_postgres``, on a :class:`plugit_backends.sql.sqlite.SQLiteDatabase`.  Every write of
several statements is one ``BEGIN IMMEDIATE`` transaction, committed with ``synchronous=FULL``
in WAL mode: a write that returned survives a killed process (and a power cut), and one
interrupted half-way leaves nothing behind.

Every grant and cancellation is also written to the ``events`` table, in the same transaction:
an audit trail of who had what, when.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from plugit_backends.sql.billing import SQLITE_COLUMNS, SQLBillingStore
from plugit_backends.sql.sqlite import SQLiteDatabase, check_file
from plugit_core.config import ProxyConfig
from plugit_core.settings import file_path, setting
from plugit_core.stores import DEFAULT_MAX_WAITERS, DEFAULT_WAIT, WaitingGuardSettings

__all__ = ["SCHEMA_VERSION", "STEPS", "SQLiteBillingStore"]

# Version 1: the tables (times are microseconds since the epoch).
SCHEMA = """
CREATE TABLE IF NOT EXISTS plans (
    id INTEGER PRIMARY KEY,
    service TEXT NOT NULL,
    code TEXT NOT NULL,
    label TEXT NOT NULL,
    description TEXT NOT NULL DEFAULT '',
    created_at INTEGER NOT NULL,
    UNIQUE (service, code)
);
CREATE TABLE IF NOT EXISTS subscriptions (
    id INTEGER PRIMARY KEY,
    plan_id INTEGER NOT NULL REFERENCES plans(id),
    user_pk,
    orga_pk,
    start_at INTEGER NOT NULL,
    end_at INTEGER,
    cancelled_at INTEGER,
    created_at INTEGER NOT NULL,
    CHECK ((user_pk IS NULL) <> (orga_pk IS NULL)),
    CHECK (end_at IS NULL OR end_at >= start_at)
);
CREATE INDEX IF NOT EXISTS subscriptions_user ON subscriptions (user_pk);
CREATE INDEX IF NOT EXISTS subscriptions_orga ON subscriptions (orga_pk);
CREATE INDEX IF NOT EXISTS subscriptions_plan ON subscriptions (plan_id);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY,
    subscription_id INTEGER NOT NULL REFERENCES subscriptions(id),
    action TEXT NOT NULL CHECK (action IN ('grant', 'cancel')),
    at INTEGER NOT NULL,
    effective INTEGER
);
CREATE INDEX IF NOT EXISTS events_subscription ON events (subscription_id);
"""
STEPS = (SCHEMA,)
SCHEMA_VERSION = len(STEPS)
TABLES = {"plans": "plans", "subscriptions": "subscriptions", "events": "events"}


def _now() -> datetime:
    return datetime.now(timezone.utc)


class SQLiteBillingStore(SQLBillingStore):
    """A :class:`~plugit_core.kinds.billing.BillingStore` in the SQLite file at ``path``.

    ``clock`` gives the current time as an aware datetime (tests move it).
    """

    def __init__(
        self,
        path: str | Path,
        *,
        clock: Callable[[], datetime] = _now,
        wait: float = DEFAULT_WAIT,
        max_waiters: int = DEFAULT_MAX_WAITERS,
        required: bool = False,
    ) -> None:
        self.path = check_file(path, "the billing store needs a file: its connections share it")
        database = SQLiteDatabase(
            self.path,
            STEPS,
            store="billing_sqlite",
            label="billing",
            probe="SELECT 1 FROM plans LIMIT 1",
            synchronous="FULL",
            tables=TABLES,
            wait=wait,
            max_waiters=max_waiters,
            required=required,
        )
        super().__init__(database, SQLITE_COLUMNS, clock=clock)

    def __repr__(self) -> str:
        return f"<SQLiteBillingStore {self.path!r}>"


@dataclass(frozen=True)
class SQLiteBillingSettings:
    """The ``[billing_sqlite]`` table."""

    path: str = setting("plugit-billing.sqlite3", parse=file_path, help="the database file")
    guard: WaitingGuardSettings = setting(default_factory=WaitingGuardSettings, flatten=True)


def factory(config: ProxyConfig, section: Mapping[str, Any]) -> SQLiteBillingStore:
    """Build the store from ``[billing_sqlite]``."""
    settings = config.read(SQLiteBillingSettings, "billing_sqlite", section)
    path = settings.path
    try:
        return SQLiteBillingStore(path, **settings.guard.options(required=False))
    except sqlite3.Error as exc:
        raise config.error("billing_sqlite.path", f"cannot open {path!r}: {exc}") from None

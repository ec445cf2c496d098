"""The embedded billing store: plans and subscriptions in one SQLite file (stdlib).

Configuration::

    billing = "sqlite"

    [billing_sqlite]
    path = "plugit-billing.sqlite3"   # relative to the working directory

Every write is one ``BEGIN IMMEDIATE`` transaction, committed with ``synchronous=FULL`` in WAL
mode: a write that returned survives a killed process (and a power cut), and one interrupted
half-way leaves nothing behind.  Each thread has its own connection; the connections of threads
that ended are closed when a new thread opens one, and :meth:`SQLiteBillingStore.close` closes
them all.

Every grant and cancellation is also written to the ``events`` table, in the same transaction:
an audit trail of who had what, when.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from plugit_core.config import ProxyConfig
from plugit_core.settings import file_path, setting
from plugit_core.stores import (
    DEFAULT_MAX_WAITERS,
    DEFAULT_WAIT,
    StoreGuard,
    WaitingGuardSettings,
    sqlite_is_outage,
)

from .store import (
    MAX_DESCRIPTION,
    MAX_LABEL,
    ConflictError,
    NotFoundError,
    Plan,
    Subscription,
    check_code,
    check_datetime,
    check_holder,
    check_period,
    check_service,
    check_text,
    derive_state,
    from_micros,
    group_labels,
    to_micros,
)

__all__ = ["SCHEMA_VERSION", "SQLiteBillingStore"]

SCHEMA_VERSION = 1

SCHEMA = """
BEGIN IMMEDIATE;
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
PRAGMA user_version = 1;
COMMIT;
"""

_SELECT = (
    "SELECT s.*, p.service, p.code, p.label FROM subscriptions s JOIN plans p ON p.id = s.plan_id "
)
# Active at :now.  A cancellation brings end_at forward, so the period alone decides.
_ACTIVE = "s.start_at <= :now AND (s.end_at IS NULL OR s.end_at > :now)"
_LABELS = (
    "SELECT DISTINCT p.service, p.label FROM subscriptions s JOIN plans p ON p.id = s.plan_id "
    "WHERE s.start_at <= :now AND (s.end_at IS NULL OR s.end_at > :now) "
    "AND (s.user_pk = :user OR s.orga_pk IN (SELECT value FROM json_each(:orgas))) "
)


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _pk(value: Any) -> Any:
    """A holder pk as stored: integers (and their text form) as integers, other text stripped."""
    if value is None or isinstance(value, int):
        return value
    text = str(value).strip()
    digits = text[1:] if text[:1] == "-" else text
    return int(text) if digits.isdigit() and digits.isascii() else text


class SQLiteBillingStore:
    """A :class:`~plugit_backends.billing.store.BillingStore` in a SQLite file.

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
        self.path = str(path)
        if self.path == ":memory:" or self.path.startswith("file::memory:"):
            raise ValueError("the billing store needs a file: each thread opens its own connection")
        self.guard = StoreGuard(
            "billing_sqlite",
            "billing",
            wait=wait,
            max_waiters=max_waiters,
            is_outage=sqlite_is_outage,
            probe=self._probe,
            required=required,
        )
        self.store_guards = (self.guard,)
        self.clock = clock
        self._lock = threading.Lock()
        self._connections: dict[threading.Thread, sqlite3.Connection] = {}
        db = self._db()
        try:
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise sqlite3.DatabaseError(
                    f"schema version {version} is newer than this PlugIt's ({SCHEMA_VERSION})"
                )
            if db.execute("PRAGMA journal_mode=WAL").fetchone()[0].lower() != "wal":
                raise sqlite3.DatabaseError("the file cannot be put in WAL mode")
            if version < SCHEMA_VERSION:
                db.executescript(SCHEMA)
        except BaseException:
            self.close()
            raise

    # -- connections ------------------------------------------------------------------------------

    def _db(self) -> sqlite3.Connection:
        """This thread's connection (opened on first use)."""
        thread = threading.current_thread()
        with self._lock:
            db = self._connections.get(thread)
            if db is not None:
                return db
            ended = [t for t in self._connections if not t.is_alive()]
            stale = [self._connections.pop(t) for t in ended]
        for old in stale:  # their threads are gone: nobody else uses them
            old.close()
        db = sqlite3.connect(
            self.path, timeout=self.guard.wait, isolation_level=None, check_same_thread=False
        )
        try:
            db.row_factory = sqlite3.Row
            db.execute("PRAGMA foreign_keys=ON")
            db.execute("PRAGMA synchronous=FULL")
        except BaseException:
            db.close()
            raise
        with self._lock:
            self._connections[thread] = db
        return db

    @contextmanager
    def _transaction(self, begin: str) -> Iterator[sqlite3.Connection]:
        with self.guard.call():
            db = self._db()
            db.execute(begin)
            try:
                yield db
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise

    def _fetchall(self, query: str, params: Any) -> list[sqlite3.Row]:
        """One read statement through the guard."""
        with self.guard.call():
            return self._db().execute(query, params).fetchall()

    def _probe(self) -> None:
        self._db().execute("SELECT 1 FROM plans LIMIT 1").fetchall()

    def _write(self) -> Any:
        """One write transaction: it takes the write lock at once, so it never fails half-way
        for a concurrent writer."""
        return self._transaction("BEGIN IMMEDIATE")

    def _read(self) -> Any:
        """One consistent snapshot for several queries."""
        return self._transaction("BEGIN")

    def close(self) -> None:
        """Close every connection (call it when no other thread uses the store any more).

        The store stays usable: the next call opens a new connection.
        """
        with self._lock:
            connections, self._connections = list(self._connections.values()), {}
        for db in connections:
            db.close()

    def _micros_now(self) -> int:
        return to_micros(self.clock())

    # -- plans ------------------------------------------------------------------------------------

    @staticmethod
    def _plan(row: sqlite3.Row) -> Plan:
        return Plan(
            service=row["service"],
            code=row["code"],
            label=row["label"],
            description=row["description"],
            created=from_micros(row["created_at"]),
        )

    def create_plan(self, service: str, code: str, label: str, description: str = "") -> Plan:
        service = check_service(service)
        code = check_code(code)
        label = check_text(label, "label", MAX_LABEL, required=True)
        description = check_text(description, "description", MAX_DESCRIPTION, required=False)
        try:
            with self._write() as db:
                cursor = db.execute(
                    "INSERT INTO plans (service, code, label, description, created_at) "
                    "VALUES (?, ?, ?, ?, ?)",
                    (service, code, label, description, self._micros_now()),
                )
                row = db.execute("SELECT * FROM plans WHERE id = ?", (cursor.lastrowid,)).fetchone()
        except sqlite3.IntegrityError:
            raise ConflictError(f"{service} already has a plan {code!r}") from None
        return self._plan(row)

    def list_plans(self, service: str) -> list[Plan]:
        rows = self._fetchall("SELECT * FROM plans WHERE service = ? ORDER BY code", (service,))
        return [self._plan(row) for row in rows]

    # -- subscriptions ----------------------------------------------------------------------------

    def _subscription(self, row: sqlite3.Row, now: int) -> Subscription:
        start = from_micros(row["start_at"])
        end = from_micros(row["end_at"])
        cancelled = from_micros(row["cancelled_at"])
        assert start is not None
        state, active = derive_state(from_micros(now), start, end, cancelled)  # type: ignore[arg-type]
        created = from_micros(row["created_at"])
        assert created is not None
        return Subscription(
            id=row["id"],
            service=row["service"],
            plan=row["code"],
            label=row["label"],
            user_pk=row["user_pk"],
            orga_pk=row["orga_pk"],
            start=start,
            end=end,
            state=state,
            created=created,
            cancelled=cancelled,
            active=active,
        )

    def _fetch(self, db: sqlite3.Connection, subscription_id: Any) -> sqlite3.Row | None:
        if isinstance(subscription_id, bool) or not isinstance(subscription_id, int):
            return None
        return db.execute(_SELECT + "WHERE s.id = ?", (subscription_id,)).fetchone()

    def _event(
        self,
        db: sqlite3.Connection,
        subscription_id: int,
        action: str,
        at: int,
        effective: int | None = None,
    ) -> None:
        db.execute(
            "INSERT INTO events (subscription_id, action, at, effective) VALUES (?, ?, ?, ?)",
            (subscription_id, action, at, effective),
        )

    def grant(
        self,
        service: str,
        plan_code: str,
        *,
        user_pk: Any = None,
        orga_pk: Any = None,
        start: datetime | None = None,
        end: datetime | None = None,
    ) -> Subscription:
        service = check_service(service)
        plan_code = check_code(plan_code)
        check_holder(user_pk, orga_pk)
        start = check_datetime(start, "start")
        end = check_datetime(end, "end")
        now = self._micros_now()
        start_at = now if start is None else to_micros(start)
        end_at = None if end is None else to_micros(end)
        check_period(from_micros(start_at), end)  # type: ignore[arg-type]
        with self._write() as db:
            plan = db.execute(
                "SELECT id FROM plans WHERE service = ? AND code = ?", (service, plan_code)
            ).fetchone()
            if plan is None:
                raise NotFoundError(f"{service} has no plan {plan_code!r}")
            cursor = db.execute(
                "INSERT INTO subscriptions (plan_id, user_pk, orga_pk, start_at, end_at, "
                "created_at) VALUES (?, ?, ?, ?, ?, ?)",
                (plan["id"], _pk(user_pk), _pk(orga_pk), start_at, end_at, now),
            )
            subscription_id = cursor.lastrowid
            assert subscription_id is not None
            self._event(db, subscription_id, "grant", now)
            row = self._fetch(db, subscription_id)
        assert row is not None
        return self._subscription(row, now)

    def cancel(self, subscription_id: int, *, at: datetime | None = None) -> Subscription:
        at = check_datetime(at, "at")
        now = self._micros_now()
        at_us = now if at is None else to_micros(at)
        with self._write() as db:
            row = self._fetch(db, subscription_id)
            if row is None:
                raise NotFoundError(f"no subscription {subscription_id!r}")
            cancelled = row["cancelled_at"]
            end = row["end_at"]
            if cancelled is not None and cancelled <= now:
                return self._subscription(row, now)  # cancelled already: nothing to do
            if cancelled is None and end is not None and end <= now:
                raise ConflictError(f"subscription {subscription_id} has already expired")
            effective = at_us if cancelled is None else min(cancelled, at_us)
            new_end = max(row["start_at"], effective)  # cancelled before it began: never active
            if end is not None:
                new_end = min(end, new_end)
            db.execute(
                "UPDATE subscriptions SET end_at = ?, cancelled_at = ? WHERE id = ?",
                (new_end, effective, row["id"]),
            )
            self._event(db, row["id"], "cancel", now, effective)
            row = self._fetch(db, row["id"])
        assert row is not None
        return self._subscription(row, now)

    def get(self, subscription_id: int) -> Subscription | None:
        now = self._micros_now()
        with self.guard.call():
            row = self._fetch(self._db(), subscription_id)
        return None if row is None else self._subscription(row, now)

    def subscriptions(
        self,
        service: str,
        *,
        user_pk: Any = None,
        orga_pk: Any = None,
        include_inactive: bool = False,
    ) -> list[Subscription]:
        if user_pk is not None and orga_pk is not None:
            check_holder(user_pk, orga_pk)  # raises: one or the other
        now = self._micros_now()
        where = ["p.service = :service"]
        if user_pk is not None:
            where.append("s.user_pk = :user")
        if orga_pk is not None:
            where.append("s.orga_pk = :orga")
        if not include_inactive:
            where.append(_ACTIVE)
        params = {"service": service, "user": _pk(user_pk), "orga": _pk(orga_pk), "now": now}
        rows = self._fetchall(_SELECT + "WHERE " + " AND ".join(where) + " ORDER BY s.id", params)
        return [self._subscription(row, now) for row in rows]

    # -- labels -----------------------------------------------------------------------------------

    def _holder(self, user_pk: Any, orga_pks: Iterable[Any]) -> dict[str, Any]:
        orgas = [_pk(pk) for pk in orga_pks if pk is not None and not isinstance(pk, bool)]
        return {"user": _pk(user_pk), "orgas": json.dumps(orgas), "now": self._micros_now()}

    def labels(self, service: str, user_pk: Any, orga_pks: Iterable[Any] = ()) -> list[str]:
        params = {**self._holder(user_pk, orga_pks), "service": service}
        rows = self._fetchall(_LABELS + "AND p.service = :service ORDER BY p.label", params)
        return [row["label"] for row in rows]

    def labels_by_service(self, user_pk: Any, orga_pks: Iterable[Any] = ()) -> dict[str, list[str]]:
        """The labels of every service at once (one query), for each request's user."""
        rows = self._fetchall(_LABELS, self._holder(user_pk, orga_pks))
        return group_labels((row["service"], row["label"]) for row in rows)

    def events(self, subscription_id: int) -> list[dict[str, Any]]:
        """The audit trail of one subscription: ``{"action", "at", "effective"}``, oldest first."""
        rows = self._fetchall(
            "SELECT action, at, effective FROM events WHERE subscription_id = ? ORDER BY id",
            (subscription_id,),
        )
        return [
            {
                "action": row["action"],
                "at": from_micros(row["at"]),
                "effective": from_micros(row["effective"]),
            }
            for row in rows
        ]


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

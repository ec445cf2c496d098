"""Billing (plans, subscriptions, their audit trail), written once for SQLite (``billing_sqlite``,
``plugit_backends.billing.sqlite``) and PostgreSQL (``billing_postgres``).

* a grant is one transaction: the plan looked up, the subscription and its ``grant`` event
  inserted;
* a cancellation is one transaction that locks the subscription's row before deciding, so two
  processes cancelling at once apply one after the other;
* "now" is the store's ``clock``, not the server's; times come back as aware UTC datetimes;
* holder pks: an integer (or its text form) comes back as an integer, any other text as the
  stripped text.

How a database's tables hold times and holder pks is its :class:`Columns`: SQLite keeps
microseconds since the epoch as integers and pks as they are (its columns take any type),
PostgreSQL ``timestamptz`` and text.  The tables are named by the words ``{plans}``,
``{subscriptions}`` and ``{events}`` (``billing_*`` in PostgreSQL, where they may share the
directory's schema).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from plugit_core.kinds.billing import (
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
    utc,
)

from . import Connection, Database, Row

__all__ = [
    "POSTGRES_COLUMNS",
    "SQLITE_COLUMNS",
    "Columns",
    "SQLBillingStore",
    "from_micros",
    "group_labels",
    "holder_pk",
    "to_micros",
]

_BIGINT = 2**63
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_SELECT = (
    "SELECT s.id, s.user_pk, s.orga_pk, s.start_at, s.end_at, s.cancelled_at, s.created_at, "
    "p.service, p.code, p.label FROM {subscriptions} s JOIN {plans} p ON p.id = s.plan_id "
)
# Active at now (given twice).  A cancellation brings end_at forward, so the period decides.
_ACTIVE = "s.start_at <= ? AND (s.end_at IS NULL OR s.end_at > ?)"
_LABELS = (
    "SELECT DISTINCT p.service, p.label FROM {subscriptions} s JOIN {plans} p ON p.id = s.plan_id "
)


def to_micros(value: datetime) -> int:
    """Microseconds since the epoch (exact, unlike a float)."""
    return (utc(value) - _EPOCH) // timedelta(microseconds=1)


def from_micros(value: int | None) -> datetime | None:
    return None if value is None else _EPOCH + timedelta(microseconds=int(value))


def _aware(value: datetime | None) -> datetime | None:
    return None if value is None else utc(value)


def group_labels(rows: Iterable[tuple[str, str]]) -> dict[str, list[str]]:
    """``{service: sorted unique labels}`` from ``(service, label)`` pairs."""
    grouped: dict[str, set[str]] = {}
    for service, label in rows:
        grouped.setdefault(service, set()).add(label)
    return {service: sorted(labels) for service, labels in grouped.items()}


def holder_pk(value: Any) -> Any:
    """A holder pk as the stores give it back: integers (and their text form) as integers,
    other text stripped."""
    if value is None or isinstance(value, int):
        return int(value) if isinstance(value, bool) else value
    text = str(value).strip()
    digits = text[1:] if text[:1] == "-" else text
    return int(text) if digits.isdigit() and digits.isascii() else text


def _holder_text(value: Any) -> str | None:
    pk = holder_pk(value)
    return None if pk is None else str(pk)


@dataclass(frozen=True)
class Columns:
    """How one database's billing tables hold times and holder pks: ``time`` and ``holder``
    turn a value into a parameter, ``load_time`` a column back into an aware datetime."""

    time: Callable[[datetime], Any]
    load_time: Callable[[Any], datetime | None]
    holder: Callable[[Any], Any]


SQLITE_COLUMNS = Columns(time=to_micros, load_time=from_micros, holder=holder_pk)
POSTGRES_COLUMNS = Columns(time=utc, load_time=_aware, holder=_holder_text)


def _subscription_id(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int) or not -_BIGINT <= value < _BIGINT:
        return None
    return value


def _now() -> datetime:
    return datetime.now(timezone.utc)


class SQLBillingStore:
    """A :class:`~plugit_core.kinds.billing.BillingStore` in a SQL
    :class:`~plugit_backends.sql.Database` whose tables hold values as ``columns`` says.

    ``clock`` gives the current time as an aware datetime (tests move it).
    """

    def __init__(
        self, db: Database, columns: Columns, *, clock: Callable[[], datetime] = _now
    ) -> None:
        self.db = db
        self.columns = columns
        self.guard = db.guard
        self.store_guards = (db.guard,)
        self.clock = clock

    def close(self) -> None:
        """Close the idle connections; the next call opens new ones."""
        self.db.close()

    def _now(self) -> datetime:
        return utc(self.clock())

    def _time(self, value: Any) -> datetime:
        """A column that is never NULL as an aware datetime."""
        loaded = self.columns.load_time(value)
        assert loaded is not None
        return loaded

    # -- plans ------------------------------------------------------------------------------------

    def _plan(self, row: Row) -> Plan:
        return Plan(
            service=row["service"],
            code=row["code"],
            label=row["label"],
            description=row["description"],
            created=self.columns.load_time(row["created_at"]),
        )

    def create_plan(self, service: str, code: str, label: str, description: str = "") -> Plan:
        service = check_service(service)
        code = check_code(code)
        label = check_text(label, "label", MAX_LABEL, required=True)
        description = check_text(description, "description", MAX_DESCRIPTION, required=False)
        with self.db.connection() as conn:
            row = conn.one(
                "INSERT INTO {plans} (service, code, label, description, created_at) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING "
                "RETURNING service, code, label, description, created_at",
                (service, code, label, description, self.columns.time(self._now())),
            )
        if row is None:
            raise ConflictError(f"{service} already has a plan {code!r}")
        return self._plan(row)

    def list_plans(self, service: str) -> list[Plan]:
        with self.db.connection() as conn:
            rows = conn.all(
                "SELECT service, code, label, description, created_at FROM {plans} "
                "WHERE service = ? ORDER BY code{c}",
                (service,),
            )
        return [self._plan(row) for row in rows]

    # -- subscriptions ----------------------------------------------------------------------------

    def _subscription(self, row: Row, now: datetime) -> Subscription:
        load = self.columns.load_time
        start, created = self._time(row["start_at"]), self._time(row["created_at"])
        end, cancelled = load(row["end_at"]), load(row["cancelled_at"])
        state, active = derive_state(now, start, end, cancelled)
        return Subscription(
            id=row["id"],
            service=row["service"],
            plan=row["code"],
            label=row["label"],
            user_pk=holder_pk(row["user_pk"]),
            orga_pk=holder_pk(row["orga_pk"]),
            start=start,
            end=end,
            state=state,
            created=created,
            cancelled=cancelled,
            active=active,
        )

    @staticmethod
    def _fetch(conn: Connection, number: int) -> Row | None:
        return conn.one(_SELECT + "WHERE s.id = ?", (number,))

    def _event(
        self,
        conn: Connection,
        subscription_id: int,
        action: str,
        at: datetime,
        effective: datetime | None = None,
    ) -> None:
        """Write a grant or cancellation to the audit trail (in the caller's transaction)."""
        time = self.columns.time
        conn.run(
            "INSERT INTO {events} (subscription_id, action, at, effective) VALUES (?, ?, ?, ?)",
            (subscription_id, action, time(at), None if effective is None else time(effective)),
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
        now = self._now()
        start_at = now if start is None else utc(start)
        check_period(start_at, end)
        time, holder = self.columns.time, self.columns.holder
        with self.db.transaction() as conn:
            plan = conn.one(
                "SELECT id FROM {plans} WHERE service = ? AND code = ?", (service, plan_code)
            )
            if plan is None:
                raise NotFoundError(f"{service} has no plan {plan_code!r}")
            row = conn.one(
                "INSERT INTO {subscriptions} (plan_id, user_pk, orga_pk, start_at, end_at, "
                "created_at) VALUES (?, ?, ?, ?, ?, ?) RETURNING id",
                (
                    plan["id"],
                    holder(user_pk),
                    holder(orga_pk),
                    time(start_at),
                    None if end is None else time(end),
                    time(now),
                ),
            )
            assert row is not None
            self._event(conn, row["id"], "grant", now)
            row = self._fetch(conn, row["id"])
        assert row is not None
        return self._subscription(row, now)

    def cancel(self, subscription_id: int, *, at: datetime | None = None) -> Subscription:
        at = check_datetime(at, "at")
        number = _subscription_id(subscription_id)
        time = self.columns.time
        with self.db.transaction() as conn:
            row = None
            if number is not None:
                conn.one("SELECT id FROM {subscriptions} WHERE id = ?{lock}", (number,))
                row = self._fetch(conn, number)
            if row is None or number is None:
                raise NotFoundError(f"no subscription {subscription_id!r}")
            # The time is read once the row is locked: a cancellation that waited for another
            # one sees it as done, not as one scheduled a moment later.
            now = self._now()
            wanted = now if at is None else utc(at)
            cancelled = self.columns.load_time(row["cancelled_at"])
            end = self.columns.load_time(row["end_at"])
            if cancelled is not None and cancelled <= now:
                return self._subscription(row, now)  # cancelled already: nothing to do
            if cancelled is None and end is not None and end <= now:
                raise ConflictError(f"subscription {subscription_id} has already expired")
            effective = wanted if cancelled is None else min(cancelled, wanted)
            new_end = max(self._time(row["start_at"]), effective)  # cancelled before it began
            if end is not None:
                new_end = min(end, new_end)
            conn.run(
                "UPDATE {subscriptions} SET end_at = ?, cancelled_at = ? WHERE id = ?",
                (time(new_end), time(effective), number),
            )
            self._event(conn, number, "cancel", now, effective)
            row = self._fetch(conn, number)
        assert row is not None
        return self._subscription(row, now)

    def get(self, subscription_id: int) -> Subscription | None:
        number = _subscription_id(subscription_id)
        if number is None:
            return None
        now = self._now()
        with self.db.connection() as conn:
            row = self._fetch(conn, number)
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
        now = self._now()
        where, params = ["p.service = ?"], [service]
        if user_pk is not None:
            where.append("s.user_pk = ?")
            params.append(self.columns.holder(user_pk))
        if orga_pk is not None:
            where.append("s.orga_pk = ?")
            params.append(self.columns.holder(orga_pk))
        if not include_inactive:
            where.append(_ACTIVE)
            params += [self.columns.time(now)] * 2
        with self.db.connection() as conn:
            rows = conn.all(_SELECT + "WHERE " + " AND ".join(where) + " ORDER BY s.id", params)
        return [self._subscription(row, now) for row in rows]

    # -- labels -----------------------------------------------------------------------------------

    def _labels(self, user_pk: Any, orga_pks: Iterable[Any], service: str | None) -> list[Row]:
        """The ``(service, label)`` rows of the holder's active subscriptions (one query)."""
        holder = self.columns.holder
        orgas = [holder(pk) for pk in orga_pks if pk is not None and not isinstance(pk, bool)]
        now = self.columns.time(self._now())
        query = _LABELS + "WHERE " + _ACTIVE + " AND (s.user_pk = ?"
        if orgas:
            query += " OR s.orga_pk IN (" + ", ".join("?" * len(orgas)) + ")"
        query += ")"
        params = [now, now, holder(user_pk), *orgas]
        if service is not None:
            query += " AND p.service = ?"
            params.append(service)
        with self.db.connection() as conn:
            return conn.all(query, params)

    def labels(self, service: str, user_pk: Any, orga_pks: Iterable[Any] = ()) -> list[str]:
        return sorted(row["label"] for row in self._labels(user_pk, orga_pks, service))

    def labels_by_service(self, user_pk: Any, orga_pks: Iterable[Any] = ()) -> dict[str, list[str]]:
        """The labels of every service at once (one query), for each request's user."""
        rows = self._labels(user_pk, orga_pks, None)
        return group_labels((row["service"], row["label"]) for row in rows)

    def events(self, subscription_id: int) -> list[dict[str, Any]]:
        """The audit trail of one subscription: ``{"action", "at", "effective"}``, oldest first."""
        number = _subscription_id(subscription_id)
        if number is None:
            return []
        with self.db.connection() as conn:
            rows = conn.all(
                "SELECT action, at, effective FROM {events} WHERE subscription_id = ? ORDER BY id",
                (number,),
            )
        load = self.columns.load_time
        return [
            {"action": row["action"], "at": load(row["at"]), "effective": load(row["effective"])}
            for row in rows
        ]

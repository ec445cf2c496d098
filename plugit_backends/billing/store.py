"""Helpers of the SQL billing stores: times as exact integers, labels grouped by service.

The billing kind itself (plans, subscriptions, errors, the :class:`BillingStore` protocol and
the rules of its values) is ``plugit_core.kinds.billing``; its names are re-exported here for
the stores and for code written against this module before it moved.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta, timezone

from plugit_core.kinds.billing import (
    MAX_DESCRIPTION,
    MAX_LABEL,
    STATES,
    BillingError,
    BillingStore,
    ConflictError,
    InvalidError,
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
    iso,
    parse_datetime,
    utc,
)

__all__ = [
    "MAX_DESCRIPTION",
    "MAX_LABEL",
    "STATES",
    "BillingError",
    "BillingStore",
    "ConflictError",
    "InvalidError",
    "NotFoundError",
    "Plan",
    "Subscription",
    "check_code",
    "check_datetime",
    "check_holder",
    "check_period",
    "check_service",
    "check_text",
    "derive_state",
    "from_micros",
    "group_labels",
    "iso",
    "parse_datetime",
    "to_micros",
    "utc",
]

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def to_micros(value: datetime) -> int:
    """Microseconds since the epoch (exact, unlike a float)."""
    return (utc(value) - _EPOCH) // timedelta(microseconds=1)


def from_micros(value: int | None) -> datetime | None:
    return None if value is None else _EPOCH + timedelta(microseconds=int(value))


def group_labels(rows: Iterable[tuple[str, str]]) -> dict[str, list[str]]:
    """``{service: sorted unique labels}`` from ``(service, label)`` pairs."""
    grouped: dict[str, set[str]] = {}
    for service, label in rows:
        grouped.setdefault(service, set()).add(label)
    return {service: sorted(labels) for service, labels in grouped.items()}

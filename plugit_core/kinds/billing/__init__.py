"""The ``billing`` backend kind: plans, subscriptions, their errors, the rules their values
follow and the :class:`BillingStore` protocol every backend implements (the SQLite and
PostgreSQL ones, or a third-party one registered through ``plugit_register_backends`` as kind
``billing``).  :class:`plugit_core.kinds.billing.testing.BillingStoreConformance` checks an
implementation against it.

Times are timezone-aware UTC :class:`~datetime.datetime` values; a naive one given to a store is
taken as UTC.  A subscription is *active* (gives its plan's label) while ``start <= now < end``
(``end`` None: open-ended).  Its ``state`` is derived when it is read:

* ``cancelled`` once a cancellation took effect (``cancel()`` also brings ``end`` forward);
* ``expired`` once ``end`` has passed without a cancellation;
* ``active`` otherwise, including a subscription that has not started yet (``active`` the field
  is False for it: it gives no label before ``start``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import date, datetime, timezone
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from ...config import ProxyConfig

__all__ = [
    "MAX_DESCRIPTION",
    "MAX_LABEL",
    "STATES",
    "BillingError",
    "BillingFactory",
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
    "iso",
    "parse_datetime",
    "utc",
]

STATES = ("active", "cancelled", "expired")
MAX_LABEL = 200
MAX_DESCRIPTION = 2000
_CODE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_SERVICE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")


# -- errors ----------------------------------------------------------------------------------------


class BillingError(Exception):
    """A refused billing operation; ``message`` says why in one sentence."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:  # KeyError would quote the message
        return self.message


class NotFoundError(BillingError, KeyError):
    """No such plan or subscription (a ``KeyError``)."""


class InvalidError(BillingError, ValueError):
    """Bad input: a malformed code, dates in the wrong order, no or two holders
    (a ``ValueError``)."""


class ConflictError(InvalidError):
    """The operation clashes with what exists: a plan code taken, an ended subscription."""


# -- records ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """A plan a service offers: ``code`` is how services and admins name it, ``label`` is what
    ``subscription_labels`` carries."""

    service: str
    code: str
    label: str
    description: str = ""
    created: datetime | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "service": self.service,
            "code": self.code,
            "label": self.label,
            "description": self.description,
            "created": iso(self.created),
        }


@dataclass(frozen=True)
class Subscription:
    """A plan granted to one user (``user_pk``) or one organisation (``orga_pk``).

    ``state`` and ``active`` are as of when the subscription was read.
    """

    id: int
    service: str
    plan: str
    label: str
    user_pk: Any
    orga_pk: Any
    start: datetime
    end: datetime | None
    state: str
    created: datetime
    cancelled: datetime | None = None
    active: bool = False

    def as_dict(self) -> dict[str, Any]:
        """The JSON form the API answers."""
        return {
            "id": self.id,
            "service": self.service,
            "plan": self.plan,
            "label": self.label,
            "user": self.user_pk,
            "orga": self.orga_pk,
            "start": iso(self.start),
            "end": iso(self.end),
            "state": self.state,
            "active": self.active,
            "cancelled": iso(self.cancelled),
            "created": iso(self.created),
        }


def derive_state(
    now: datetime, start: datetime, end: datetime | None, cancelled: datetime | None
) -> tuple[str, bool]:
    """``(state, active)`` of a subscription at ``now``."""
    if cancelled is not None and cancelled <= now:
        state = "cancelled"
    elif end is not None and end <= now:
        state = "expired"
    else:
        state = "active"
    return state, start <= now and (end is None or now < end)


# -- the protocol ----------------------------------------------------------------------------------


@runtime_checkable
class BillingStore(Protocol):
    """Plans and subscriptions.  Must be safe to use from many threads.

    Holders (``user_pk``, ``orga_pk``) are the directory's pks; the store does not check that
    they exist (the API and the command do).  Errors: :class:`NotFoundError` (a ``KeyError``)
    for an unknown plan or subscription, :class:`InvalidError` / :class:`ConflictError` (both
    ``ValueError``) for bad input.  A refused call changes nothing.
    """

    def create_plan(self, service: str, code: str, label: str, description: str = "") -> Plan:
        """Add a plan to ``service``; ConflictError when ``code`` is taken in that service."""

    def list_plans(self, service: str) -> list[Plan]:
        """The plans of ``service``, by code."""

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
        """Subscribe exactly one holder to a plan of ``service`` from ``start`` (default now)
        until ``end`` (default: open-ended).  InvalidError unless ``start < end``."""

    def cancel(self, subscription_id: int, *, at: datetime | None = None) -> Subscription:
        """End a subscription at ``at`` (default now; a later ``at`` schedules it).

        Cancelling a cancelled subscription changes nothing and returns it; cancelling one that
        has expired is a ConflictError.
        """

    def get(self, subscription_id: int) -> Subscription | None:
        """A subscription by id, or None."""

    def subscriptions(
        self,
        service: str,
        *,
        user_pk: Any = None,
        orga_pk: Any = None,
        include_inactive: bool = False,
    ) -> list[Subscription]:
        """The subscriptions of ``service`` (of one user or one organisation when given), by
        id; only the active ones unless ``include_inactive``."""

    def labels(self, service: str, user_pk: Any, orga_pks: Iterable[Any] = ()) -> list[str]:
        """The labels of the plans of ``service`` with an active subscription for the user
        directly or for one of ``orga_pks``; each once, sorted."""

    def close(self) -> None:
        """Release connections; the store may be used again afterwards."""


#: ``factory(proxy_config, section)``: builds the store from its own table (``[billing_<name>]``).
BillingFactory = Callable[["ProxyConfig", Mapping[str, Any]], BillingStore]

# Optional, for speed: ``labels_by_service(user_pk, orga_pks) -> {service: [labels]}`` answers
# for every service at once (one query); :func:`plugit_backends.billing.with_subscriptions`
# falls back on ``labels`` per service when a store does not have it.


# -- values: what every store accepts, the same way ----------------------------------------------


def utc(value: datetime) -> datetime:
    """``value`` as aware UTC (a naive datetime is taken as UTC)."""
    if value.tzinfo is None:
        return value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc)


def iso(value: datetime | None) -> str | None:
    return None if value is None else utc(value).isoformat()


def parse_datetime(value: Any, field: str = "date") -> datetime | None:
    """An ISO 8601 date or date-time (``2030-01-31``, ``2030-01-31T12:00:00+01:00``, ``...Z``)
    as aware UTC; None for None or ``""``; InvalidError naming ``field`` otherwise."""
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        return utc(value)
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day, tzinfo=timezone.utc)
    if not isinstance(value, str):
        raise InvalidError(f"{field} must be an ISO 8601 date, not {type(value).__name__}")
    text = value.strip()
    if text[-1:] in ("Z", "z"):
        text = text[:-1] + "+00:00"
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise InvalidError(
            f"{field} is not an ISO 8601 date or date-time: {value[:40]!r}"
        ) from None
    return utc(parsed)


def check_datetime(value: Any, field: str) -> datetime | None:
    """A store argument: a datetime (naive = UTC) or None."""
    if value is None:
        return None
    if not isinstance(value, datetime):
        raise InvalidError(f"{field} must be a datetime or None, not {type(value).__name__}")
    return utc(value)


def check_service(service: Any) -> str:
    if not isinstance(service, str) or not _SERVICE.fullmatch(service):
        raise InvalidError(f"not a service name: {str(service)[:70]!r}")
    return service


def check_code(code: Any) -> str:
    if not isinstance(code, str) or not _CODE.fullmatch(code):
        raise InvalidError(
            "a plan code is 1 to 64 letters, digits, '_', '.' or '-', starting with a letter "
            f"or digit: not {str(code)[:70]!r}"
        )
    return code


def check_text(value: Any, field: str, limit: int, *, required: bool) -> str:
    if value is None:
        value = ""
    if not isinstance(value, str):
        raise InvalidError(f"{field} must be text")
    text = value.strip()
    if required and not text:
        raise InvalidError(f"a plan needs a {field}")
    if len(text) > limit:
        raise InvalidError(f"{field} is longer than {limit} characters")
    if any((ord(c) < 32 and c not in "\n\t") or ord(c) == 127 for c in text):
        raise InvalidError(f"{field} cannot contain control characters")
    return text


def check_holder(user_pk: Any, orga_pk: Any) -> None:
    if (user_pk is None) == (orga_pk is None):
        raise InvalidError("a subscription belongs to exactly one user or one organisation")
    for pk in (user_pk, orga_pk):
        if isinstance(pk, bool) or not (pk is None or isinstance(pk, (int, str))):
            raise InvalidError("a user or organisation pk is a number or a text")
        if isinstance(pk, str) and not pk.strip():
            raise InvalidError("a user or organisation pk cannot be empty")


def check_period(start: datetime, end: datetime | None) -> None:
    if end is not None and end <= start:
        raise InvalidError("the end of a subscription must come after its start")

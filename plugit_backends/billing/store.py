"""The billing kind's names, re-exported for code written against this module before it moved.

The billing kind itself (plans, subscriptions, errors, the :class:`BillingStore` protocol and
the rules of its values) is ``plugit_core.kinds.billing``; the SQL stores and their helpers are
``plugit_backends.sql.billing``.
"""

from __future__ import annotations

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
    "iso",
    "parse_datetime",
    "utc",
]

"""Billing: plans per service, subscriptions of users and organisations, their labels.

A built-in plugin.  It offers:

* the billing backend ``sqlite`` (:class:`SQLiteBillingStore`), chosen with ``billing =
  "sqlite"``; another plugin may register its own with ``register("billing", name, factory)``
  (the factory builds any object with the :class:`BillingStore` methods);
* the callback API endpoints ``billing/plans/`` and ``billing/subscriptions/...`` (see
  :mod:`plugit_backends.billing.api`);
* :func:`with_subscriptions`, applied through the hook ``plugit_user_loaded`` to every user
  the proxy identifies or looks up, so that ``subscription_labels`` (``@user_info``,
  ``ebuio_u``, the API's ``subscriptions/<pk>``) carries the labels of the user's active
  subscriptions, direct or through an organisation;
* the ``plugit billing`` command (:mod:`plugit_backends.billing.cli`), added through the hook
  ``plugit_add_commands``.

See docs/billing.md.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import TYPE_CHECKING, Any

from plugit_core.backends import RegisterBackend
from plugit_core.hookspecs import hookimpl
from plugit_core.stores import StoreUnavailable

from .sqlite import SQLiteBillingStore, factory
from .store import (
    STATES,
    BillingError,
    BillingStore,
    ConflictError,
    InvalidError,
    NotFoundError,
    Plan,
    Subscription,
    parse_datetime,
)

if TYPE_CHECKING:
    from plugit_core.proxy.context import PluginContext
    from plugit_core.users import PlugItUser

__all__ = [
    "STATES",
    "BillingError",
    "BillingStore",
    "ConflictError",
    "InvalidError",
    "NotFoundError",
    "Plan",
    "SQLiteBillingStore",
    "Subscription",
    "parse_datetime",
    "with_subscriptions",
]

log = logging.getLogger("plugit.billing")


def with_subscriptions(proxy: PluginContext, user: PlugItUser) -> PlugItUser:
    """``user`` with ``subscriptions`` filled for every mounted service (one query).

    Each mounted service gets the sorted labels of the user's active subscriptions, theirs or
    their organisations'; labels another plugin already put there are kept.  Anonymous users,
    and every user when the proxy has no billing backend, are returned unchanged.  When the
    store fails the error is logged and the user is returned without labels: a billing outage
    takes paid features away, not the site.
    """
    store = getattr(proxy, "billing", None)
    if store is None or not user.is_authenticated or user.pk is None:
        return user
    services = [mount.name for mount in proxy.config.services]
    orgas = [orga.pk for orga in user.orgas]
    try:
        if hasattr(store, "labels_by_service"):
            found = store.labels_by_service(user.pk, orgas)
        else:
            found = {service: store.labels(service, user.pk, orgas) for service in services}
    except StoreUnavailable as exc:  # an outage, logged by the store's guard: no traceback
        log.info("billing: the subscriptions of user %s are left out: %s", user.pk, exc.reason)
        return user
    except Exception:
        log.exception("billing: cannot read the subscriptions of user %s", user.pk)
        return user
    subscriptions = dict(user.subscriptions)
    for service in services:
        labels = (*subscriptions.get(service, ()), *found.get(service, ()))
        subscriptions[service] = tuple(dict.fromkeys(labels))
    return dataclasses.replace(user, subscriptions=subscriptions)


@hookimpl(trylast=True)
def plugit_register_backends(register: RegisterBackend) -> None:
    register("billing", "sqlite", factory)


@hookimpl
def plugit_add_commands(commands: Any) -> None:
    from .cli import add_billing_parser

    add_billing_parser(commands)


@hookimpl
def plugit_user_loaded(user: PlugItUser, proxy: PluginContext) -> dict[str, Any] | None:
    completed = with_subscriptions(proxy, user)
    return None if completed is user else {"subscriptions": completed.subscriptions}


@hookimpl
def plugit_register_api_endpoints(register: Any, proxy: PluginContext) -> None:
    from .api import ENDPOINTS  # here: the proxy imports this package, so no import of it above

    for rule, view, methods in ENDPOINTS:
        register(rule, view, methods)

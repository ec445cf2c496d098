"""``plugit billing``: plans and subscriptions from the command line.

::

    plugit billing --config FILE plan-add SERVICE CODE LABEL [--description TEXT]
    plugit billing --config FILE plans SERVICE
    plugit billing --config FILE grant SERVICE PLAN (--user USERNAME | --orga NAME)
                                       [--start ISO] [--end ISO]
    plugit billing --config FILE cancel ID [--at ISO]
    plugit billing --config FILE list SERVICE [--user USERNAME | --orga NAME] [--all]

Users and organisations are found in the directory (the ``users`` backend) of the same
configuration; only the directory and the billing store are built, no service is contacted.
Also runs as ``python -m plugit_backends.billing``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from typing import Any

from plugit_core.cli import CommandError, find_orga, find_user, installed_backends

from .store import BillingError, parse_datetime

__all__ = ["add_billing_parser", "billing_command", "main"]


def _build(config_path: str) -> tuple[Any, Any, Any]:
    """The configuration, its directory (None without one) and its billing store."""
    from plugit_core.config import load_config

    config = load_config(config_path)
    billing = getattr(config, "billing", None)
    if not billing:
        raise CommandError(f'{config_path} has no billing: set billing = "sqlite"')
    backends = installed_backends(config)
    store = backends.build("billing", billing, config)
    try:
        users = backends.build("users", config.users, config) if config.users else None
    except BaseException:
        _close(store)
        raise
    return config, users, store


def _close(backend: Any) -> None:
    close = getattr(backend, "close", None)
    if close is not None:
        close()


def _directory(users: Any, config_path: str) -> Any:
    if users is None:
        raise CommandError(
            f"{config_path} has no directory to find users and organisations in: "
            'set users = "sqlite" (or auth = ["session"])'
        )
    return users


def _service(config: Any, service: str, config_path: str) -> str:
    known = [mount.name for mount in config.services]
    if service not in known:
        listed = ", ".join(known) or "none"
        raise CommandError(f"no service named {service!r} in {config_path} (known: {listed})")
    return service


def _date(value: str | None, option: str) -> Any:
    try:
        return parse_datetime(value, option)
    except BillingError as exc:
        raise CommandError(exc.message) from None


def _day(value: Any) -> str:
    return "-" if value is None else value.strftime("%Y-%m-%d %H:%M")


def _table(rows: Sequence[tuple[str, ...]]) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row[:-1], widths, strict=True)]
        print("  ".join([*cells, row[-1]]).rstrip())


def billing_command(args: argparse.Namespace) -> int:
    """Run one ``plugit billing`` action; raise CommandError for a user error."""
    config, users, store = _build(args.config)
    try:
        return _action(args, config, users, store)
    except (BillingError, ValueError, KeyError) as exc:
        message = exc.message if isinstance(exc, BillingError) else str(exc)
        raise CommandError(message) from None
    finally:
        _close(store)
        if users is not None:
            _close(users)


def _holder_text(subscription: Any, users: Any, orgas: dict[str, str]) -> str:
    if subscription.user_pk is not None:
        user = users.get_user(subscription.user_pk) if users is not None else None
        return f"user:{user.username if user is not None else subscription.user_pk}"
    return f"orga:{orgas.get(str(subscription.orga_pk), subscription.orga_pk)}"


def _action(args: argparse.Namespace, config: Any, users: Any, store: Any) -> int:
    action = args.action
    if action == "plan-add":
        service = _service(config, args.service, args.config)
        plan = store.create_plan(service, args.code, args.label, args.description or "")
        print(f"added plan {plan.code} ({plan.label}) to {service}")
    elif action == "plans":
        found = store.list_plans(args.service)
        if not found:
            print(f"{args.service} has no plans (plugit billing plan-add creates one)")
            return 0
        _table(
            [("CODE", "LABEL", "DESCRIPTION")]
            + [(p.code, p.label, p.description or "-") for p in found]
        )
    elif action == "grant":
        service = _service(config, args.service, args.config)
        start = _date(args.start, "--start")
        end = _date(args.end, "--end")
        directory = _directory(users, args.config)
        if args.user is not None:
            user = find_user(directory, args.user)
            subscription = store.grant(service, args.plan, user_pk=user.pk, start=start, end=end)
            holder = user.username
            if not user.is_member(service):
                print(
                    f"note: {user.username} is not a member of {service}: "
                    f"plugit users grant {user.username} {service} member",
                    file=sys.stderr,
                )
        else:
            orga = find_orga(directory, args.orga)
            subscription = store.grant(service, args.plan, orga_pk=orga.pk, start=start, end=end)
            holder = orga.name
        until = f" until {_day(subscription.end)}" if subscription.end is not None else ""
        print(
            f"subscription {subscription.id}: {holder} has {subscription.label} in {service} "
            f"from {_day(subscription.start)}{until}"
        )
    elif action == "cancel":
        at = _date(args.at, "--at")
        subscription = store.cancel(args.id, at=at)
        print(
            f"subscription {subscription.id} ({subscription.label} in {subscription.service}) "
            f"is {subscription.state}, ending {_day(subscription.end)}"
        )
    elif action == "list":
        user_pk = orga_pk = None
        if args.user is not None:
            user_pk = find_user(_directory(users, args.config), args.user).pk
        elif args.orga is not None:
            orga_pk = find_orga(_directory(users, args.config), args.orga).pk
        found = store.subscriptions(
            args.service, user_pk=user_pk, orga_pk=orga_pk, include_inactive=args.all
        )
        if not found:
            print(
                "no subscriptions" if args.all else "no active subscriptions (--all for every one)"
            )
            return 0
        orgas = {str(o.pk): o.name for o in users.list_orgas()} if users is not None else {}
        rows = [("ID", "PLAN", "LABEL", "HOLDER", "START", "END", "STATE")]
        for s in found:
            state = s.state if s.active or s.state != "active" else "active (not started)"
            rows.append(
                (
                    str(s.id),
                    s.plan,
                    s.label,
                    _holder_text(s, users, orgas),
                    _day(s.start),
                    _day(s.end),
                    state,
                )
            )
        _table(rows)
    return 0


def _arguments(billing: argparse.ArgumentParser) -> None:
    billing.add_argument("--config", required=True, help="TOML configuration file")
    actions = billing.add_subparsers(dest="action", required=True, metavar="ACTION")
    plan_add = actions.add_parser("plan-add", help="add a plan to a service")
    plan_add.add_argument("service")
    plan_add.add_argument("code", help="how the service names the plan (letters, digits, _.-)")
    plan_add.add_argument("label", help="what subscription_labels carries")
    plan_add.add_argument("--description")
    actions.add_parser("plans", help="the plans of a service").add_argument("service")
    grant = actions.add_parser("grant", help="subscribe a user or an organisation to a plan")
    grant.add_argument("service")
    grant.add_argument("plan", help="the plan's code")
    holder = grant.add_mutually_exclusive_group(required=True)
    holder.add_argument("--user", metavar="USERNAME")
    holder.add_argument("--orga", metavar="NAME", help="the organisation's name (or id)")
    grant.add_argument("--start", metavar="ISO", help="ISO 8601 date or date-time (default: now)")
    grant.add_argument("--end", metavar="ISO", help="ISO 8601 date or date-time (default: never)")
    cancel = actions.add_parser("cancel", help="end a subscription")
    cancel.add_argument("id", type=int)
    cancel.add_argument("--at", metavar="ISO", help="when it ends (default: now)")
    listing = actions.add_parser("list", help="the active subscriptions of a service")
    listing.add_argument("service")
    who = listing.add_mutually_exclusive_group()
    who.add_argument("--user", metavar="USERNAME")
    who.add_argument("--orga", metavar="NAME")
    listing.add_argument("--all", action="store_true", help="also the ended and future ones")
    billing.set_defaults(handler=billing_command)


def add_billing_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``billing`` to the sub-commands of ``plugit`` (its handler: :func:`billing_command`)."""
    billing = subparsers.add_parser(
        "billing", help="manage plans and subscriptions (the billing backend)"
    )
    _arguments(billing)
    return billing


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m plugit_backends.billing --config FILE ACTION ...``, the same as ``plugit
    billing``."""
    from plugit_core.config import ConfigError

    parser = argparse.ArgumentParser(
        prog="python -m plugit_backends.billing", description="Manage plans and subscriptions."
    )
    _arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return billing_command(args)
    except (CommandError, ConfigError) as exc:
        print(f"plugit: error: {exc}", file=sys.stderr)
        return 2

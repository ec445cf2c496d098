"""``plugit users``: the directory (the ``users`` backend) managed from the command line.

::

    plugit users [--config FILE] add USERNAME [--email E] [--first-name F] [--last-name L]
                                 [--superuser] [--password-stdin]
    plugit users [--config FILE] passwd USERNAME [--password-stdin]
    plugit users [--config FILE] grant USERNAME SERVICE member|admin
    plugit users [--config FILE] revoke USERNAME SERVICE
    plugit users [--config FILE] disable|enable USERNAME
    plugit users [--config FILE] orga-add NAME [--codops CODE]
    plugit users [--config FILE] orga-join|orga-leave USERNAME ORGA [--admin]
    plugit users [--config FILE] list

One module for every directory (``users = "sqlite"`` or ``"postgres"``): the commands use only the
user-store interface, on the store the configuration names. Both users backends add the command
through ``plugit_add_commands`` (:func:`add_users_parser`, which adds it once), so it is there
whichever of them is installed. Only the directory and the local-accounts backend are built; no
proxy is made and no service is contacted.
"""

from __future__ import annotations

import argparse
import getpass
import sys
from typing import Any

from plugit_core.cli import CommandError, find_orga, find_user, installed_backends

__all__ = ["add_users_parser", "users_command"]

_ORGA_HINT = " (plugit users orga-add NAME creates one)"


def add_users_parser(commands: Any) -> None:
    """Add ``plugit users`` to the ``plugit`` sub-commands ``commands``, unless it is there.

    Each users backend calls it from its ``plugit_add_commands``: the first one adds the command,
    the others find it (argparse refuses a sub-command added twice).
    """
    if "users" in commands.choices:
        return
    users = commands.add_parser(
        "users", help="manage the directory: local accounts, roles, organisations"
    )
    users.add_argument("--config", help="TOML configuration file")
    actions = users.add_subparsers(dest="action", required=True, metavar="ACTION")
    add = actions.add_parser("add", help="add a local account (asks the password twice)")
    add.add_argument("username")
    add.add_argument("--email")
    add.add_argument("--first-name")
    add.add_argument("--last-name")
    add.add_argument("--superuser", action="store_true", help="member and admin of everything")
    add.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
    passwd = actions.add_parser("passwd", help="set a local account's password")
    passwd.add_argument("username")
    passwd.add_argument("--password-stdin", action="store_true")
    grant = actions.add_parser("grant", help="make a user member or admin of a service")
    grant.add_argument("username")
    grant.add_argument("service", help="a service name, or * for every service")
    grant.add_argument("role", choices=("member", "admin"))
    revoke = actions.add_parser("revoke", help="remove a user's role in a service")
    revoke.add_argument("username")
    revoke.add_argument("service")
    for name, text in (("disable", "refuse logins and end sessions"), ("enable", "allow again")):
        actions.add_parser(name, help=text).add_argument("username")
    orga_add = actions.add_parser("orga-add", help="add an organisation")
    orga_add.add_argument("name")
    orga_add.add_argument("--codops", help="its code (sent to services as ebu_codops)")
    orga_join = actions.add_parser("orga-join", help="make a user member of an organisation")
    orga_join.add_argument("username")
    orga_join.add_argument("orga", help="the organisation's name (or id)")
    orga_join.add_argument("--admin", action="store_true", help="as its administrator")
    orga_leave = actions.add_parser("orga-leave", help="remove a user from an organisation")
    orga_leave.add_argument("username")
    orga_leave.add_argument("orga")
    actions.add_parser("list", help="every user, with state, roles and organisations")
    users.set_defaults(handler=users_command)


def _directory(config_path: str) -> tuple[Any, Any, Any]:
    """The configuration, its directory (``users`` backend) and its local-accounts backend.

    Only the directory is built: no proxy, no service is contacted.  The local-accounts backend
    (``auth`` backend ``session``, for the password rules) is None when it is not installed.
    """
    from plugit_core.config import load_config

    config = load_config(config_path)
    if not config.users:
        raise CommandError(
            f'{config_path} has no directory: set auth = ["session"] (or users = "sqlite")'
        )
    backends = installed_backends(config)
    accounts = None
    if "session" in backends.names("auth"):
        accounts = backends.build("auth", "session", config)
    store = backends.build("users", config.users, config)
    return config, store, accounts


def _read_password(args: argparse.Namespace, accounts: Any) -> str:
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
        if not password:
            raise CommandError("no password on standard input")
    else:
        try:
            password = getpass.getpass("Password: ")
            again = getpass.getpass("Password (again): ")
        except EOFError:
            raise CommandError("no terminal to ask the password: use --password-stdin") from None
        if password != again:
            raise CommandError("the two passwords differ")
    problem = accounts.password_problem(password)
    if problem is not None:
        raise CommandError(problem)
    return password


def _hash(args: argparse.Namespace, accounts: Any, user: Any = None) -> str:
    if accounts is None:
        raise CommandError("local accounts are not installed (auth backend 'session')")
    if user is not None and user.extra.get("source", "local") != "local":
        source = user.extra.get("source")
        raise CommandError(f"{user.username} logs in through {source}: no local password")
    return str(accounts.hash_password(_read_password(args, accounts)))


def _services_text(user: Any) -> str:
    roles = sorted(
        f"{service}:{'admin' if service in user.admin_of else 'member'}"
        for service in user.member_of | user.admin_of
    )
    return ",".join(roles) or "-"


def users_command(args: argparse.Namespace) -> int:
    """Run one ``plugit users`` action on the directory of ``args.config``."""
    config, store, accounts = _directory(args.config)
    try:
        return _users_action(args, config, store, accounts)
    except (ValueError, KeyError) as exc:
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        raise CommandError(str(message)) from None
    finally:
        close = getattr(store, "close", None)
        if close is not None:
            close()


def _users_action(args: argparse.Namespace, config: Any, store: Any, accounts: Any) -> int:
    action = args.action
    if action == "add":
        username = args.username.strip()
        if store.get_by_username(username) is not None:
            raise CommandError(f"the user name {username!r} is taken")
        password_hash = _hash(args, accounts)
        user = store.create_user(
            username,
            email=args.email or "",
            first_name=args.first_name or "",
            last_name=args.last_name or "",
            password_hash=password_hash,
            is_superuser=args.superuser,
        )
        print(f"added {user.username} (id {user.pk}{', superuser' if args.superuser else ''})")
        if "session" not in config.auth:
            print(
                f'note: auth in {args.config} does not list "session": '
                "local accounts cannot log in yet",
                file=sys.stderr,
            )
    elif action == "passwd":
        user = find_user(store, args.username)
        store.set_password_hash(user.pk, _hash(args, accounts, user))
        print(f"password of {user.username} changed (their sessions have ended)")
    elif action == "grant":
        user = find_user(store, args.username)
        known = [mount.name for mount in config.services]
        if args.service != "*" and args.service not in known:
            listed = ", ".join(known) or "none"
            raise CommandError(
                f"no service named {args.service!r} in {args.config} "
                f"(known: {listed}; * means every service)"
            )
        store.grant(user.pk, args.service, args.role)
        print(f"{user.username} is {args.role} of {args.service}")
    elif action == "revoke":
        user = find_user(store, args.username)
        store.revoke(user.pk, args.service)
        print(f"{user.username} has no role in {args.service} any more")
    elif action in ("disable", "enable"):
        user = find_user(store, args.username)
        store.set_active(user.pk, action == "enable")
        print(f"{user.username} is {action}d")
    elif action == "orga-add":
        orga = store.create_orga(args.name, args.codops or "")
        print(f"added organisation {orga.name} (id {orga.pk})")
    elif action == "orga-join":
        user = find_user(store, args.username)
        orga = find_orga(store, args.orga, _ORGA_HINT)
        store.add_to_orga(user.pk, orga.pk, admin=args.admin)
        role = "an administrator" if args.admin else "a member"
        print(f"{user.username} is {role} of {orga.name}")
    elif action == "orga-leave":
        user = find_user(store, args.username)
        orga = find_orga(store, args.orga, _ORGA_HINT)
        store.remove_from_orga(user.pk, orga.pk)
        print(f"{user.username} left {orga.name}")
    elif action == "list":
        _list_users(store)
    return 0


def _list_users(store: Any) -> None:
    rows = [("USERNAME", "ID", "SOURCE", "STATE", "EMAIL", "SERVICES", "ORGANISATIONS")]
    for user in store.list_users():
        state = "active" if store.is_active(user.pk) else "disabled"
        if user.is_superuser:
            state += ",superuser"
        orgas = ",".join(f"{o.name}{':admin' if o.is_admin else ''}" for o in user.orgas)
        rows.append(
            (
                user.username,
                str(user.pk),
                str(user.extra.get("source", "local")),
                state,
                user.email or "-",
                _services_text(user),
                orgas or "-",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row[:-1], widths, strict=True)]
        print("  ".join([*cells, row[-1]]).rstrip())

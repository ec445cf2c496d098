"""The attacking suite's site: its configuration, its users, the context capture.

Imported by name by the test modules and by conftest.py (a conftest module is no place to
import from: every test folder has one, and only one is ``conftest`` at a time).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hostile_site import (
    FAST_HASH,
    PASSWORD,
    Canaries,
    HostileService,
    LeakCheck,
    LogCapture,
    MailSink,
    Seen,
    Visitor,
)
from werkzeug.security import generate_password_hash

from plugit_core.hookspecs import hookimpl
from plugit_core.proxy.app import ProxyApp
from plugit_core.users import PlugItUser

MOUNTS = {"jinja": "/hostile/", "django": "/hostiledj/"}


class ContextCapture:
    """A plugin keeping the exact context the pipeline built for each rendered page."""

    def __init__(self) -> None:
        self.contexts: dict[tuple[str, str], dict[str, Any]] = {}
        self.grabbed: list[tuple[Any, ...]] = []

    @hookimpl
    def plugit_template_context(self, page: Any, context: dict[str, Any]) -> dict[str, Any]:
        self.contexts[(page.mount.name, page.path)] = context  # the dict itself: filled after us
        grabbed = self.grabbed

        def plugit_test_grab(*values: Any) -> str:
            """What a template hands a function (``self``, ``loop``...), for the explorer."""
            grabbed.append(values)
            return ""

        return {"plugit_test_grab": plugit_test_grab}


@dataclass
class Site:
    base: str
    proxy: ProxyApp
    hostile: HostileService
    healthy_url: str
    hostile_url: str
    canaries: Canaries
    users: dict[str, PlugItUser]
    seen: list[Seen]
    logs: LogCapture
    mails: MailSink
    capture: ContextCapture
    check: LeakCheck
    config: dict[str, Any]
    browsers: list[Visitor] = field(default_factory=list, repr=False)

    def browser(self) -> Visitor:
        visitor = Visitor(self.base, self.seen, self.canaries)
        self.browsers.append(visitor)
        return visitor

    def visitor(self) -> Visitor:
        """A browser logged in as ``visitor``, a member of every mount."""
        browser = self.browser()
        browser.login("visitor")
        return browser


def site_config(
    canaries: Canaries, hostile_url: str, healthy_url: str, tmp: Path, smtp_port: int
) -> dict[str, Any]:
    c = canaries
    return {
        "dev_mode": False,
        "secret_key": c.secret_key,
        "site_name": "Attacked site",
        "auth": ["session"],
        "session_cookie": {"secure": False},  # plain HTTP on loopback
        "users_sqlite": {"path": str(tmp / "directory.sqlite3")},
        "auth_session": {"password_method": FAST_HASH},
        "mail": "smtp",
        "mail_smtp": {
            "host": "127.0.0.1",
            "port": smtp_port,
            "sender": "PlugIt <no-reply@site.example>",
            "queue_path": str(tmp / "mail.sqlite3"),
        },
        "services": [
            {
                "name": "hostile",
                "url": hostile_url,
                "mount": "/hostile/",
                "secret": c.hostile_secret,
                "api_key": c.hostile_api_key,
                "timeout": 5,
            },
            {
                "name": "hostiledj",
                "url": hostile_url,
                "mount": "/hostiledj/",
                "secret": c.django_secret,
                "api_key": c.django_api_key,
                "template_dialect": "django",
                "timeout": 5,
            },
            {
                "name": "healthy",
                "url": healthy_url,
                "mount": "/healthy/",
                "secret": c.healthy_secret,
                "api_key": c.healthy_api_key,
            },
        ],
    }


def _users(proxy: ProxyApp, c: Canaries) -> dict[str, PlugItUser]:
    store = proxy.users
    hashed = generate_password_hash(PASSWORD, FAST_HASH)
    visitor = store.create_user(
        "visitor",
        email="visitor@site.example",
        first_name="Vera",
        last_name="Visitor",
        password_hash=hashed,
    )
    buddy = store.create_user(
        "buddy", email="buddy@site.example", first_name="Bud", password_hash=hashed
    )
    stranger = store.create_user(
        c.stranger_username,
        email=c.stranger_email,
        first_name=c.stranger_first_name,
        last_name=c.stranger_last_name,
        password_hash=hashed,
    )
    # (not a superuser: superusers are members of every service, so every service may see them)
    boss = store.create_user(c.boss_username, email=c.boss_email, password_hash=hashed)
    store.grant(boss.pk, "healthy", "admin")
    for service in ("hostile", "hostiledj", "healthy"):
        store.grant(visitor.pk, service, "member")
    for service in ("hostile", "hostiledj"):
        store.grant(buddy.pk, service, "member")
    store.grant(stranger.pk, "healthy", "admin")
    own = store.create_orga("Visitors", codops="vis")
    store.add_to_orga(visitor.pk, own.pk)
    other = store.create_orga(c.stranger_orga, codops="strg")
    store.add_to_orga(stranger.pk, other.pk, admin=True)
    return {
        name: store.get_user(user.pk)
        for name, user in (
            ("visitor", visitor),
            ("buddy", buddy),
            ("stranger", stranger),
            ("boss", boss),
        )
    }

"""Fixtures of the attacking suite: a production-like site whose secrets are canaries.

``hostile_site`` is built once for the folder: a proxy (dev mode off, local accounts in a SQLite
directory, mail through a real SMTP server, three mounts with a secret and an API key each)
served over loopback HTTP, in front of a hostile service mounted twice (``/hostile/`` in the
jinja dialect, ``/hostiledj/`` in the Django dialect) and an honest one (``/healthy/``).  Every
secret of the site is a random canary; every test that uses the site is checked afterwards: no
canary in any response (headers and body, but the visitor's own session cookie), any log line of
any logger at DEBUG, any mail, or any request the hostile service received.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import pytest
from hostile_site import (
    Canaries,
    HostileService,
    LeakCheck,
    LogCapture,
    MailSink,
    Seen,
    Visitor,
    make_healthy_service,
)
from security_site import ContextCapture, Site, _users, site_config
from served_proxy import ServedProxy

from plugit_core.proxy.app import ProxyApp
from plugit_core.testing import serve


@pytest.fixture(scope="session")
def hostile_site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    tmp = tmp_path_factory.mktemp("attacked-site")
    canaries = Canaries()
    hostile = HostileService()
    with contextlib.ExitStack() as stack:
        logs = stack.enter_context(LogCapture())
        mails = stack.enter_context(MailSink())
        hostile_url = stack.enter_context(serve(hostile))
        healthy_url = stack.enter_context(
            serve(make_healthy_service(tmp / "healthy", canaries.healthy_secret))
        )
        config = site_config(canaries, hostile_url, healthy_url, tmp, mails.port)
        capture = ContextCapture()
        proxy = ProxyApp(config, plugins=[capture], load_entry_points=False)
        stack.callback(proxy.close)
        base = stack.enter_context(serve(proxy))
        users = _users(proxy, canaries)
        seen: list[Seen] = []
        check = LeakCheck(canaries, logs, mails, hostile, seen)
        yield Site(
            base=base,
            proxy=proxy,
            hostile=hostile,
            healthy_url=healthy_url,
            hostile_url=hostile_url,
            canaries=canaries,
            users=users,
            seen=seen,
            logs=logs,
            mails=mails,
            capture=capture,
            check=check,
            config=config,
        )


@pytest.fixture
def site(hostile_site: Site) -> Iterator[Site]:
    """The attacked site; after the test, no canary may be anywhere (see :class:`LeakCheck`),
    and no user of the directory may have been changed."""
    before = _directory(hostile_site)
    hostile_site.check.mark()
    yield hostile_site
    while hostile_site.browsers:
        hostile_site.browsers.pop().close()
    hostile_site.check.assert_clean()
    assert _directory(hostile_site) == before, "a service changed the directory"


def _directory(site: Site) -> list[Any]:
    return [
        (u.pk, u.username, u.email, u.is_superuser, sorted(u.member_of), sorted(u.admin_of))
        for u in site.proxy.users.list_users()
    ]


@pytest.fixture
def visitor(site: Site) -> Visitor:
    return site.visitor()


@pytest.fixture(scope="session")
def served(hostile_site: Site, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServedProxy]:
    config = {
        key: value
        for key, value in hostile_site.config.items()
        if key in ("dev_mode", "secret_key", "site_name", "session_cookie")
    }
    config["services"] = hostile_site.config["services"]
    proxy = ServedProxy(config, tmp_path_factory.mktemp("served-proxy"))
    proxy.start()
    yield proxy
    proxy.stop()

"""The hooks of the proxy's life (start-up, shutdown), of the users, and of the command line,
each implemented by a plugin as a third party would."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import requests
from proxy_helpers import proxy_config
from werkzeug.test import Client
from werkzeug.wrappers import Response

from plugit_core.hookspecs import hookimpl
from plugit_core.proxy.app import ProxyApp
from plugit_core.proxy.context import PluginContext
from plugit_core.proxy.routes import Route
from plugit_core.testing import serve
from plugit_core.users import PlugItUser


class ProbeCache:
    """A cache backend that says when it is closed."""

    def __init__(self, events: list[str]) -> None:
        self.events = events
        self.data: dict[str, bytes] = {}

    def get(self, key: str) -> bytes | None:
        return self.data.get(key)

    def set(self, key: str, value: bytes, ttl: float) -> None:
        self.data[key] = value

    def delete(self, key: str) -> None:
        self.data.pop(key, None)

    def clear(self) -> None:
        self.data.clear()

    def close(self) -> None:
        self.events.append("cache closed")


class Recorder:
    """Records its shutdown; ``check`` runs inside it (while the proxy still works)."""

    def __init__(self, name: str, events: list[str], check: Any = None) -> None:
        self.name = name
        self.events = events
        self.check = check

    @hookimpl
    def plugit_shutdown(self, proxy: PluginContext) -> None:
        if self.check is not None:
            self.check(proxy)
        self.events.append(self.name)


def probe_backend(events: list[str]) -> Any:
    class Probe:
        @hookimpl
        def plugit_register_backends(self, register: Any) -> None:
            register("cache", "probe", lambda config, section: ProbeCache(events))

    return Probe()


def test_startup_runs_once_last_after_the_backends_and_routes(service_url: str) -> None:
    """The documented start-up order: backends, session wrapper, site links, API endpoints,
    routes, then ``plugit_startup`` once, with the plugins' context (not the proxy)."""
    seen: list[Any] = []

    class Plugin:
        @hookimpl
        def plugit_session_backend(self, sessions: Any, proxy: PluginContext) -> None:
            seen.append("session_backend")

        @hookimpl
        def plugit_site_links(self, proxy: PluginContext) -> None:
            seen.append("site_links")

        @hookimpl
        def plugit_register_api_endpoints(self, register: Any, proxy: PluginContext) -> None:
            seen.append("api_endpoints")

        @hookimpl
        def plugit_extra_routes(self, proxy: PluginContext) -> list[Route]:
            seen.append("extra_routes")
            return [Route("/_plugit/ping", lambda request: Response("pong"))]

        @hookimpl
        def plugit_startup(self, proxy: PluginContext) -> None:
            seen.append(("startup", type(proxy).__name__, proxy.sessions is not None))

    proxy = ProxyApp(proxy_config(service_url), plugins=[Plugin()], load_entry_points=False)
    try:
        assert seen == [
            "session_backend",
            "site_links",
            "api_endpoints",
            "extra_routes",
            ("startup", "SiteContext", True),
        ]
        ping = Client(proxy).get("/_plugit/ping", environ_base={"REMOTE_ADDR": "127.0.0.1"})
        assert ping.text == "pong"
    finally:
        proxy.close()
    assert len([s for s in seen if isinstance(s, tuple)]) == 1


def test_an_exception_in_startup_stops_the_start_up_with_the_plugins_error(
    service_url: str,
) -> None:
    class Broken:
        @hookimpl
        def plugit_startup(self, proxy: PluginContext) -> None:
            raise RuntimeError("the licence server does not answer")

    events: list[str] = []
    with pytest.raises(RuntimeError, match="licence server"):
        ProxyApp(
            proxy_config(service_url, cache="probe"),
            plugins=[probe_backend(events), Broken()],
            load_entry_points=False,
        )
    assert events == ["cache closed"]  # what the failed start-up had built is released


def test_shutdown_runs_once_last_registered_first_then_the_backends_close(
    service_url: str,
) -> None:
    events: list[str] = []

    def still_serving(proxy: PluginContext) -> None:
        assert "cache closed" not in events  # the backends close after every plugin
        assert proxy.clients["svc"].get("version").status == 200  # the clients still work

    plugins = [
        probe_backend(events),
        Recorder("first", events),
        Recorder("second", events, check=still_serving),
    ]
    proxy = ProxyApp(
        proxy_config(service_url, cache="probe"), plugins=plugins, load_entry_points=False
    )
    assert events == []
    proxy.close()
    assert events == ["second", "first", "cache closed"]


def test_a_failing_shutdown_is_logged_and_the_backends_still_close(
    service_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    events: list[str] = []

    class Broken:
        @hookimpl
        def plugit_shutdown(self, proxy: PluginContext) -> None:
            raise RuntimeError("cannot flush the audit log")

    proxy = ProxyApp(
        proxy_config(service_url, cache="probe"),
        plugins=[probe_backend(events), Broken()],
        load_entry_points=False,
    )
    with caplog.at_level(logging.ERROR, logger="plugit.proxy"):
        proxy.close()  # does not raise
    assert events == ["cache closed"]
    assert "plugit_shutdown" in caplog.text and "cannot flush the audit log" in caplog.text


def test_user_loaded_completes_users_and_the_last_registered_plugin_wins(
    service_url: str,
) -> None:
    """Every plugin is called with the user the proxy identified; when two change the same
    field, the one registered last wins (it is called first, like every hook)."""
    asked: list[str] = []

    class Site:
        @hookimpl
        def plugit_identify_user(self, request: Any, proxy: PluginContext) -> PlugItUser | None:
            if request.headers.get("Authorization") == "Bearer alice":
                return PlugItUser(pk=7, username="alice", is_authenticated=True)
            return None

        @hookimpl
        def plugit_extra_routes(self, proxy: PluginContext) -> list[Route]:
            def me(request: Any) -> Response:
                user = request.user
                return Response(f"{user.username}|{user.first_name}|{user.extra.get('team')}")

            return [Route("/_plugit/me", me)]

    class Directory:
        @hookimpl
        def plugit_user_loaded(self, user: PlugItUser, proxy: PluginContext) -> dict[str, Any]:
            asked.append(f"directory:{user.username}")
            return {"first_name": "Alice (directory)", "extra": {"team": "polls"}}

    class Override:
        @hookimpl
        def plugit_user_loaded(self, user: PlugItUser, proxy: PluginContext) -> dict[str, Any]:
            asked.append(f"override:{user.username}")
            return {"first_name": "Alice"}

    class Silent:
        @hookimpl
        def plugit_user_loaded(self, user: PlugItUser, proxy: PluginContext) -> None:
            asked.append(f"silent:{user.username}")

    proxy = ProxyApp(
        proxy_config(service_url, dev_mode=False, secret_key="k" * 16 + "0123456789abcdef"),
        plugins=[Site(), Directory(), Override(), Silent()],
        load_entry_points=False,
    )
    try:
        with serve(proxy) as base:
            alice = requests.get(
                base + "/_plugit/me", headers={"Authorization": "Bearer alice"}, timeout=10
            )
            assert alice.text == "alice|Alice|polls"
            assert asked == ["silent:alice", "override:alice", "directory:alice"]
            asked.clear()
            anonymous = requests.get(base + "/_plugit/me", timeout=10)
            assert anonymous.status_code == 200
            assert asked == []  # only authenticated users are completed
    finally:
        proxy.close()


def test_an_installed_plugin_adds_a_command(tmp_path: Path) -> None:
    """A package with an entry point in the group ``plugit`` adds ``plugit report``."""
    (tmp_path / "reportplugin.py").write_text(
        "from plugit_core.hookspecs import hookimpl\n"
        "\n"
        "\n"
        "@hookimpl\n"
        "def plugit_add_commands(commands):\n"
        '    report = commands.add_parser("report", help="print the weekly report")\n'
        '    report.add_argument("--week", type=int, required=True)\n'
        '    report.set_defaults(handler=lambda args: print(f"week {args.week}") or 0)\n',
        encoding="utf-8",
    )
    info = tmp_path / "reportplugin-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: reportplugin\nVersion: 1.0\n", encoding="utf-8"
    )
    (info / "entry_points.txt").write_text(
        "[plugit]\nreportplugin = reportplugin\n", encoding="utf-8"
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(tmp_path), *sys.path])))

    def plugit(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "plugit_core.cli", *argv],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    listed = plugit("--help")
    assert listed.returncode == 0, listed.stderr
    assert "print the weekly report" in listed.stdout
    ran = plugit("report", "--week", "3")
    assert (ran.returncode, ran.stdout.strip()) == (0, "week 3"), ran.stderr
    refused = plugit("report")
    assert refused.returncode == 2 and "--week" in refused.stderr

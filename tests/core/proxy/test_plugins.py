"""The plugin manager and the hooks, with a fresh manager per test."""

from __future__ import annotations

import pytest
import requests
from werkzeug.wrappers import Response

from plugit_core import hookspecs
from plugit_core.hookspecs import hookimpl
from plugit_core.plugins import BUILTIN_PLUGINS, PluginError, make_plugin_manager
from plugit_core.proxy.app import ProxyApp
from plugit_core.proxy.routes import Route
from plugit_core.testing import serve
from plugit_core.users import PlugItUser


def test_builtins_are_ordinary_plugins():
    pm = make_plugin_manager(load_entry_points=False)
    names = {pm.get_name(p) for p in pm.get_plugins()}
    assert set(BUILTIN_PLUGINS) <= names


def test_misspelt_hook_fails_at_start_up_naming_the_plugin():
    class Typo:
        @hookimpl
        def plugit_identfy_user(self, request, proxy):
            return None

    with pytest.raises(PluginError, match="plugit_identfy_user"):
        make_plugin_manager([Typo()], load_entry_points=False)


def test_blocked_plugins_are_not_loaded(monkeypatch):
    monkeypatch.setenv("PLUGIT_BLOCK_PLUGINS", "plugit_backends.dev_users")
    pm = make_plugin_manager(load_entry_points=False)
    assert pm.get_plugin("plugit_backends.dev_users") is None


def test_registering_a_backend_twice_is_refused():
    class Dup:
        @hookimpl
        def plugit_register_backends(self, register):
            register("cache", "memory", lambda config, section: None)

    with pytest.raises(ValueError, match=r"cache\.memory is registered twice"):
        ProxyApp({"dev_mode": True}, plugins=[Dup()], load_entry_points=False)


def test_every_hook_is_documented_with_when_and_returns():
    for name in hookspecs.HOOK_NAMES:
        doc = getattr(hookspecs, name).__doc__ or ""
        assert "Called" in doc or "called" in doc, name
        assert "Return" in doc or "return" in doc, name


def test_a_plugin_adds_routes_identifies_users_and_changes_responses(service_url):
    from proxy_helpers import proxy_config

    class Plugin:
        @hookimpl
        def plugit_extra_routes(self, proxy):
            return [
                Route(
                    "/_plugit/hello/<name>",
                    lambda request, name: Response(f"hi {name} {request.user.username}"),
                )
            ]

        @hookimpl
        def plugit_identify_user(self, request, proxy):
            if request.headers.get("Authorization") == "Bearer alice":
                return PlugItUser(pk=7, username="alice", is_authenticated=True)
            return None

        @hookimpl
        def plugit_access_decision(self, page):
            return "closed_on_sundays" if page.request.args.get("sunday") else None

        @hookimpl
        def plugit_upstream_request(self, page, upstream):
            upstream.headers["X-Plugit-Tenant"] = "blue"

        @hookimpl(wrapper=True)
        def plugit_call_service(self, page, upstream):
            reply = yield
            reply.headers["X-Seen-By-Wrapper"] = "yes"
            return reply

        @hookimpl
        def plugit_template_context(self, page, context):
            return {"title": "from plugin", "ebuio_baseUrl": "/hijacked/"}

        @hookimpl
        def plugit_response(self, page, response):
            response.headers["X-Plugin"] = "1"

    proxy = ProxyApp(proxy_config(service_url), plugins=[Plugin()], load_entry_points=False)
    try:
        with serve(proxy) as base:
            assert requests.get(base + "/_plugit/hello/bob", timeout=10).text == "hi bob "
            alice = {"Authorization": "Bearer alice"}
            assert (
                requests.get(base + "/_plugit/hello/bob", headers=alice, timeout=10).text
                == "hi bob alice"
            )
            page = requests.get(base + "/svc/logged", headers=alice, timeout=10)
            assert page.status_code == 200
            assert page.headers["X-Plugin"] == "1"
            assert '<h1 id="title">from plugin</h1>' in page.text
            assert '<p id="base">/svc/</p>' in page.text  # the proxy's own variables win
            echo = requests.get(base + "/svc/echo", headers=alice, timeout=10).json()
            assert echo["headers"]["X-Plugit-Tenant"] == "blue"  # signed along with the rest
            assert ["ebuio_u_username", "alice"] in echo["args"]
            refused = requests.get(base + "/svc/logged?sunday=1", headers=alice, timeout=10)
            assert refused.status_code == 403
            assert "closed_on_sundays" in refused.text
    finally:
        proxy.close()


def test_handle_error_hook_gives_a_fallback(service_url):
    from proxy_helpers import proxy_config

    class Fallback:
        @hookimpl
        def plugit_handle_error(self, page, error):
            return Response(f"fallback for {error.service}: {error.kind}", status=200)

    services = [{"name": "gone", "url": "http://127.0.0.1:9", "mount": "/gone/", "timeout": 0.5}]
    proxy = ProxyApp(
        proxy_config(service_url, services=services), plugins=[Fallback()], load_entry_points=False
    )
    try:
        with serve(proxy) as base:
            response = requests.get(base + "/gone/", timeout=10)
            assert response.text == "fallback for gone: unreachable"
    finally:
        proxy.close()

"""The precedence rules of the hooks, each shown by plugins registered as a user registers them.

docs/hooks.md and ``plugit_core/hookspecs.py`` promise, hook by hook, who is asked and whose
answer wins: pluggy calls the most recently registered plugin first, ``tryfirst`` and ``trylast``
move a plugin to the front or the back, a *first answer wins* hook stops at the first answer that
is not None, and the other hooks ask every plugin and combine the answers in a documented way.
Each test here registers two or more plugins (``ProxyApp(config, plugins=[...])``) whose answers
disagree, so that a change of order or of combination makes it fail.

The other tests of the hooks: ``test_plugins.py`` (each page hook used once),
``test_hook_lifecycle.py`` (start-up, shutdown, users, commands), ``test_fragments.py``,
``test_api.py`` and ``tests/docs/test_docs.py`` (the documented start-up order).
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from proxy_helpers import STRONG_KEY, ScriptedService, proxy_config
from werkzeug.datastructures import Headers
from werkzeug.test import Client
from werkzeug.wrappers import Response

from plugit_core.backends import Backends
from plugit_core.hookspecs import hookimpl
from plugit_core.plugins import make_plugin_manager
from plugit_core.proxy import ProxyApp, Route, ServiceError, ServiceReply
from plugit_core.proxy.context import PluginContext
from plugit_core.testing import serve
from plugit_core.users import PlugItUser

SIGNED_IN = {"dev_mode": False, "secret_key": STRONG_KEY}
UNREACHABLE = {"name": "gone", "url": "http://127.0.0.1:9", "mount": "/gone/", "timeout": 0.5}

MakeClient = Callable[..., Client]


def loopback_client(proxy: ProxyApp) -> Client:
    """A test client of ``proxy`` whose requests come from 127.0.0.1 (dev mode answers only
    loopback clients)."""

    def app(environ: dict[str, Any], start_response: Any) -> Any:
        environ["REMOTE_ADDR"] = "127.0.0.1"
        return proxy(environ, start_response)

    return Client(app)


@pytest.fixture
def make_client(service_url: str) -> Iterator[MakeClient]:
    """``make_client(*plugins, **config)``: a proxy with ``plugins`` (most recently registered
    last, as in ``ProxyApp(plugins=[...])``) and a test client from a loopback address."""
    with contextlib.ExitStack() as stack:

        def factory(*plugins: Any, **top: Any) -> Client:
            proxy = ProxyApp(
                proxy_config(service_url, **top), plugins=list(plugins), load_entry_points=False
            )
            stack.callback(proxy.close)
            return loopback_client(proxy)

        yield factory


def me_route() -> Any:
    """A plugin serving ``/_plugit/me``: the name of the user the proxy identified."""

    class Me:
        @hookimpl
        def plugit_extra_routes(self, proxy: PluginContext) -> list[Route]:
            return [Route("/_plugit/me", lambda request: Response(request.user.username))]

    return Me()


def identifies(name: str | None, asked: list[str] | None = None, **marks: bool) -> Any:
    """A plugin that says every request is ``name`` (None: it does not know)."""

    class Identify:
        @hookimpl(**marks)
        def plugit_identify_user(self, request: Any, proxy: PluginContext) -> PlugItUser | None:
            if asked is not None:
                asked.append(str(name))
            if name is None:
                return None
            return PlugItUser(pk=len(name), username=name, is_authenticated=True)

    return Identify()


# -- start-up hooks --------------------------------------------------------------------------------


def test_register_backends_is_historic_a_plugin_registered_later_is_called_too() -> None:
    """A plugin registered after the manager offered its backends still gets ``register``."""
    backends = Backends()
    pm = make_plugin_manager(load_entry_points=False, builtins=())
    pm.hook.plugit_register_backends.call_historic(kwargs={"register": backends.register})
    assert backends.names("cache") == []

    class Late:
        @hookimpl
        def plugit_register_backends(self, register: Any) -> None:
            register("cache", "late", lambda config, section: None)

    pm.register(Late())
    assert backends.names("cache") == ["late"]


def test_register_refuses_an_unknown_kind_at_once_naming_it(service_url: str) -> None:
    class Odd:
        @hookimpl
        def plugit_register_backends(self, register: Any) -> None:
            register("teleporter", "acme", lambda config, section: None)

    with pytest.raises(ValueError, match="teleporter"):
        ProxyApp(proxy_config(service_url), plugins=[Odd()], load_entry_points=False)


def test_the_backend_a_plugin_registers_is_the_one_the_configuration_names(
    service_url: str,
) -> None:
    built: list[str] = []

    class Caches:
        @hookimpl
        def plugit_register_backends(self, register: Any) -> None:
            for name in ("one", "two"):
                register("cache", name, lambda config, section, name=name: built.append(name))

    proxy = ProxyApp(
        proxy_config(service_url, cache="two"), plugins=[Caches()], load_entry_points=False
    )
    proxy.close()
    assert built == ["two"]


def test_every_plugins_extra_routes_are_served_and_none_adds_nothing(
    make_client: MakeClient,
) -> None:
    def routes(text: str) -> Any:
        class Routes:
            @hookimpl
            def plugit_extra_routes(self, proxy: PluginContext) -> list[Route]:
                return [Route(f"/_plugit/{text}", lambda request: Response(text))]

        return Routes()

    class Nothing:
        @hookimpl
        def plugit_extra_routes(self, proxy: PluginContext) -> None:
            return None

    client = make_client(routes("one"), Nothing(), routes("two"))
    assert client.get("/_plugit/one").text == "one"
    assert client.get("/_plugit/two").text == "two"


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ("/_plugit/clash", "/_plugit/clash"),
        ("/_plugit/clash/<int:a>", "/_plugit/clash/<int:b>"),  # the same URLs, other names
        ("/_plugit/clash/<a>", "/_plugit/clash/<string:b>"),
    ],
)
def test_a_rule_two_plugins_add_is_a_start_up_error(
    service_url: str, first: str, second: str
) -> None:
    def routes(rule: str) -> Any:
        class Routes:
            @hookimpl
            def plugit_extra_routes(self, proxy: PluginContext) -> list[Route]:
                return [Route(rule, lambda request, **values: Response(rule))]

        return Routes()

    with pytest.raises(ValueError, match=r"/_plugit/clash.*added twice"):
        ProxyApp(
            proxy_config(service_url),
            plugins=[routes(first), routes(second)],
            load_entry_points=False,
        ).close()


# -- plugit_identify_user: first answer wins -------------------------------------------------------


def test_identify_user_the_last_registered_answers_first_and_wins(
    make_client: MakeClient,
) -> None:
    asked: list[str] = []
    client = make_client(
        me_route(), identifies("alice", asked), identifies("bob", asked), **SIGNED_IN
    )
    assert client.get("/_plugit/me").text == "bob"
    assert asked == ["bob"]  # the first answer stops the call: alice's plugin is not asked


def test_identify_user_none_lets_the_next_plugin_answer(make_client: MakeClient) -> None:
    asked: list[str] = []
    client = make_client(
        me_route(), identifies("alice", asked), identifies(None, asked), **SIGNED_IN
    )
    assert client.get("/_plugit/me").text == "alice"
    assert asked == ["None", "alice"]


def test_identify_user_nobody_answers_the_user_is_anonymous(make_client: MakeClient) -> None:
    client = make_client(me_route(), identifies(None), **SIGNED_IN)
    assert client.get("/_plugit/me").text == ""


def test_identify_user_tryfirst_and_trylast_move_a_plugin_in_the_order(
    make_client: MakeClient,
) -> None:
    """``tryfirst`` puts an early plugin before later ones; ``trylast`` puts a late one after."""
    first = make_client(
        me_route(), identifies("alice", tryfirst=True), identifies("bob"), **SIGNED_IN
    )
    assert first.get("/_plugit/me").text == "alice"
    last = make_client(
        me_route(), identifies("alice"), identifies("bob", trylast=True), **SIGNED_IN
    )
    assert last.get("/_plugit/me").text == "alice"


def test_an_installed_plugin_answers_before_the_built_in_default(
    make_client: MakeClient,
) -> None:
    """In dev mode the built-in ``dev_users`` (``trylast``) answers every request; a plugin's
    answer comes first."""
    assert make_client(me_route()).get("/_plugit/me").text == ""  # the built-in's anonymous
    assert make_client(me_route(), identifies("alice")).get("/_plugit/me").text == "alice"


# -- page hooks ------------------------------------------------------------------------------------


def refuses(reason: str | None, asked: list[str]) -> Any:
    class Decide:
        @hookimpl
        def plugit_access_decision(self, page: Any) -> str | None:
            asked.append(str(reason))
            return reason

    return Decide()


@pytest.mark.parametrize("refuser_last", [False, True], ids=["refuser-first", "refuser-last"])
def test_access_decision_every_plugin_is_asked_and_any_refusal_wins(
    make_client: MakeClient, refuser_last: bool
) -> None:
    asked: list[str] = []
    plugins = [refuses(None, asked), refuses("closed", asked)]
    if not refuser_last:
        plugins.reverse()
    page = make_client(*plugins).get("/svc/")
    assert page.status_code == 403
    assert sorted(asked) == ["None", "closed"]


def test_access_decision_nobody_refuses_the_page_is_served(make_client: MakeClient) -> None:
    asked: list[str] = []
    page = make_client(refuses(None, asked), refuses(None, asked)).get("/svc/")
    assert page.status_code == 200
    assert asked == ["None", "None"]


def test_upstream_request_every_plugin_adds_to_the_request(make_client: MakeClient) -> None:
    def tags(name: str) -> Any:
        class Tag:
            @hookimpl
            def plugit_upstream_request(self, page: Any, upstream: Any) -> None:
                upstream.headers[f"X-Plugit-{name}"] = name
                upstream.params.append(("seen", name))

        return Tag()

    echo = make_client(tags("First"), tags("Second")).get("/svc/echo").json
    assert echo["headers"]["X-Plugit-First"] == "First"
    assert echo["headers"]["X-Plugit-Second"] == "Second"
    assert [value for name, value in echo["args"] if name == "seen"] == ["Second", "First"]


def wrapper(name: str, events: list[str]) -> Any:
    class Wrap:
        @hookimpl(wrapper=True)
        def plugit_call_service(self, page: Any, upstream: Any) -> Any:
            events.append(f"{name} in")
            reply = yield
            events.append(f"{name} out")
            return reply

    return Wrap()


def test_call_service_wrappers_nest_the_last_registered_outermost(
    make_client: MakeClient,
) -> None:
    events: list[str] = []
    page = make_client(wrapper("inner", events), wrapper("outer", events)).get("/svc/echo")
    assert page.status_code == 200
    assert events == ["outer in", "inner in", "inner out", "outer out"]


def test_call_service_a_plain_answer_replaces_the_call(make_client: MakeClient, calls: Any) -> None:
    events: list[str] = []

    class Canned:
        @hookimpl
        def plugit_call_service(self, page: Any, upstream: Any) -> ServiceReply:
            body = json.dumps({"canned": True}).encode()
            return ServiceReply(200, Headers({"Content-Type": "application/json"}), body)

    page = make_client(Canned(), wrapper("outer", events)).get("/svc/")
    assert page.status_code == 200
    assert calls["home"] == 0  # the service's action never ran
    assert events == ["outer in", "outer out"]  # wrappers still wrap the replacement


def test_call_service_a_wrapper_sees_the_failure_and_may_answer_instead(service_url: str) -> None:
    """The call's ServiceError comes out of ``yield``; a wrapper may return a reply instead."""
    service = ScriptedService()
    service.page("broken", "<p>{{ rescued }}</p>")
    seen: list[str] = []

    released = threading.Event()

    def hanging_actions(environ: dict[str, Any], start_response: Any) -> Any:
        if environ["PATH_INFO"].startswith("/action/"):  # answers after the proxy gave up
            released.wait(30)
        return service(environ, start_response)

    class Rescue:
        @hookimpl(wrapper=True)
        def plugit_call_service(self, page: Any, upstream: Any) -> Any:
            try:
                return (yield)
            except ServiceError as error:
                seen.append(error.kind)
                body = json.dumps({"rescued": f"rescued {error.service}"}).encode()
                return ServiceReply(200, Headers({"Content-Type": "application/json"}), body)

    with serve(hanging_actions) as url:
        services = [{"name": "flaky", "url": url, "mount": "/flaky/", "timeout": 0.5}]
        proxy = ProxyApp(
            proxy_config(service_url, services=services),
            plugins=[Rescue()],
            load_entry_points=False,
        )
        try:
            page = loopback_client(proxy).get("/flaky/broken")
        finally:
            released.set()
            proxy.close()
    assert seen == ["timeout"]
    assert page.status_code == 200 and "<p>rescued flaky</p>" in page.text


def test_template_context_later_answers_overwrite_earlier_ones(
    make_client: MakeClient,
) -> None:
    """Answers are merged in call order: the plugin called last (registered first) wins."""

    def titles(title: str | None) -> Any:
        class Title:
            @hookimpl
            def plugit_template_context(self, page: Any, context: Any) -> dict[str, Any] | None:
                return None if title is None else {"title": title, f"by_{title}": True}

        return Title()

    page = make_client(titles("registered first"), titles(None), titles("registered last"))
    html = page.get("/svc/").text
    assert '<h1 id="title">registered first</h1>' in html


def replaces(text: str | None, events: list[str]) -> Any:
    class Replace:
        @hookimpl
        def plugit_response(self, page: Any, response: Response) -> Response | None:
            events.append(str(text))
            response.headers[f"X-Seen-{len(events)}"] = str(text)
            return None if text is None else Response(text)

    return Replace()


def test_response_every_plugin_is_called_and_the_first_replacement_wins(
    make_client: MakeClient,
) -> None:
    events: list[str] = []
    page = make_client(
        replaces("registered first", events), replaces(None, events), replaces("last", events)
    ).get("/svc/")
    assert page.text == "last"  # called first
    assert events == ["last", "None", "registered first"]


def test_response_changed_in_place_when_nobody_replaces_it(make_client: MakeClient) -> None:
    events: list[str] = []
    page = make_client(replaces(None, events), replaces(None, events)).get("/svc/")
    assert page.status_code == 200 and '<h1 id="title">' in page.text
    assert (page.headers["X-Seen-1"], page.headers["X-Seen-2"]) == ("None", "None")


def falls_back(text: str | None, asked: list[str]) -> Any:
    class Fallback:
        @hookimpl
        def plugit_handle_error(self, page: Any, error: ServiceError) -> Response | None:
            asked.append(str(text))
            return None if text is None else Response(f"{text}: {error.kind}")

    return Fallback()


def test_handle_error_the_first_answer_wins(make_client: MakeClient) -> None:
    asked: list[str] = []
    client = make_client(
        falls_back("registered first", asked),
        falls_back("last", asked),
        services=[UNREACHABLE],
    )
    assert client.get("/gone/").text == "last: unreachable"
    assert asked == ["last"]


def test_handle_error_none_lets_the_next_answer_then_the_error_page(
    make_client: MakeClient,
) -> None:
    asked: list[str] = []
    client = make_client(
        falls_back("first", asked), falls_back(None, asked), services=[UNREACHABLE]
    )
    assert client.get("/gone/").text == "first: unreachable"
    assert asked == ["None", "first"]
    nobody = make_client(falls_back(None, []), services=[UNREACHABLE]).get("/gone/")
    assert nobody.status_code == 502  # the themed error page
    assert "gone" in nobody.text


# -- fragments -------------------------------------------------------------------------------------


def test_fragment_hooks_every_plugin_the_last_registered_first(service_url: str) -> None:
    """``plugit_fragments`` and ``plugit_fragment_rendered`` call every plugin, the most recently
    registered first: the last registered plugin's wrapper is the innermost."""
    service = ScriptedService()
    service.page("news", "<p>news</p>")
    service.page("more", "<p>more</p>")
    order: list[str] = []

    def fragment_plugin(name: str) -> Any:
        class Fragments:
            @hookimpl
            def plugit_fragments(self, request: Any, where: str, fragments: list[Any]) -> None:
                order.append(f"{name}:{[f.path for f in fragments]}")
                if name == "last":
                    fragments[:] = [f for f in fragments if f.path != "more"]

            @hookimpl
            def plugit_fragment_rendered(self, request: Any, result: Any) -> None:
                result.html = f'<div class="{name}">{result.html}</div>'

        return Fragments()

    with serve(service) as url:
        config = proxy_config(
            service_url,
            services=[{"name": "news", "url": url, "mount": "/news/"}],
            pages=[
                {
                    "path": "/dash",
                    "title": "Dashboard",
                    "fragments": [
                        {"service": "news", "path": "news"},
                        {"service": "news", "path": "more"},
                    ],
                }
            ],
        )
        proxy = ProxyApp(
            config,
            plugins=[fragment_plugin("first"), fragment_plugin("last")],
            load_entry_points=False,
        )
        try:
            html = loopback_client(proxy).get("/dash").text
        finally:
            proxy.close()
    # "last" ran first and dropped a fragment: "first" saw the list without it.
    assert order == ["last:['news', 'more']", "first:['news']"]
    assert '<div class="first"><div class="last"><p>news</p></div></div>' in html
    assert "<p>more</p>" not in html


# -- plugit_session_backend: every plugin wraps in turn; plugit_site_links: first answer wins ------


class _Tagged:
    """A session backend wrapping another and marking what it saved (to see who wraps)."""

    def __init__(self, inner: Any, tag: str) -> None:
        self.inner, self.tag = inner, tag

    def open(self, request: Any) -> Any:
        return self.inner.open(request)

    def save(self, session: Any, request: Any, response: Response) -> None:
        response.headers.add("X-Saved-By", self.tag)
        self.inner.save(session, request, response)


def wraps_sessions(tag: str | None, asked: list[str]) -> Any:
    class Wrapper:
        @hookimpl
        def plugit_session_backend(self, sessions: Any, proxy: PluginContext) -> Any:
            asked.append(str(tag))
            return None if tag is None else _Tagged(sessions, tag)

    return Wrapper()


def test_session_backend_every_plugin_wraps_in_turn_and_none_leaves_it(
    make_client: MakeClient,
) -> None:
    asked: list[str] = []

    def writes(request: Any) -> Response:
        request.session["seen"] = True  # a session to save
        return Response("ok")

    class Writer:
        @hookimpl
        def plugit_extra_routes(self, proxy: PluginContext) -> list[Route]:
            return [Route("/_plugit/write", writes)]

    client = make_client(
        Writer(),
        wraps_sessions("first", asked),
        wraps_sessions("second", asked),
        wraps_sessions(None, asked),
    )
    saved = client.get("/_plugit/write")
    # Called last registered first: "second" wraps the cookie sessions, then "first" wraps that.
    assert asked == ["None", "second", "first"]
    assert saved.headers.getlist("X-Saved-By") == ["first", "second"]  # the outer saves first


def test_site_links_the_first_answer_is_the_layouts(make_client: MakeClient) -> None:
    from plugit_core.proxy.routes import SiteLinks

    def offers(url: str | None) -> Any:
        class Links:
            @hookimpl
            def plugit_site_links(self, proxy: PluginContext) -> SiteLinks | None:
                return None if url is None else SiteLinks(login_url=url, logout_url=url + "/out")

        return Links()

    client = make_client(offers("/first"), offers("/second"), offers(None))
    home = client.get("/").get_data(as_text=True)
    assert 'href="/second"' in home and "/first" not in home


def test_a_sessions_wrapper_keeps_the_logins_which_ends_copied_sessions(
    service_url: str, tmp_path: Any
) -> None:
    """The login wraps the sessions so that a logout ends every copy of them; another plugin's
    wrapper must not take its place."""
    from plugit_backends.login import EndableSessions

    asked: list[str] = []
    config = proxy_config(
        service_url,
        dev_mode=False,
        secret_key=STRONG_KEY,
        auth=["session"],
        users="sqlite",
        users_sqlite={"path": str(tmp_path / "users.sqlite3")},
    )
    proxy = ProxyApp(config, plugins=[wraps_sessions("mine", asked)], load_entry_points=False)
    try:
        assert asked == ["mine"]
        assert isinstance(proxy.sessions, EndableSessions)  # the login's, built in: outermost
        assert isinstance(proxy.sessions.inner, _Tagged) and proxy.sessions.inner.tag == "mine"
        assert proxy.context.sessions is proxy.sessions
    finally:
        proxy.close()


def test_the_plugins_context_is_read_only_and_names_the_hook_to_use(service_url: str) -> None:
    class OldStyle:
        @hookimpl
        def plugit_startup(self, proxy: Any) -> None:
            proxy.login_url = "/accounts/login"  # what plugins did before the context

    with pytest.raises(AttributeError, match=r"read-only.*'login_url'.*plugit_site_links"):
        ProxyApp(proxy_config(service_url), plugins=[OldStyle()], load_entry_points=False)


def test_routes_that_differ_only_by_method_or_converter_both_serve(
    make_client: MakeClient,
) -> None:
    def routes(rule: str, text: str, methods: tuple[str, ...] = ("GET",)) -> Any:
        class Routes:
            @hookimpl
            def plugit_extra_routes(self, proxy: PluginContext) -> list[Route]:
                view = lambda request, **values: Response(text)  # noqa: E731
                return [Route(rule, view, methods=methods, csrf=False)]

        return Routes()

    client = make_client(
        routes("/_plugit/item/<int:pk>", "int"),
        routes("/_plugit/item/<name>", "name"),
        routes("/_plugit/item/<int:pk>", "post", methods=("POST",)),
    )
    assert client.get("/_plugit/item/7").text == "int"
    assert client.get("/_plugit/item/seven").text == "name"
    assert client.post("/_plugit/item/7").text == "post"

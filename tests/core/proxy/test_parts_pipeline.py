"""The stages of the page pipeline built and tested alone, without a ProxyApp: the request
sent to a service's action (``UpstreamBuilder``), what is done with its reply
(``ServiceReplies``), the rendering of its template (``ServiceRendering``).

Real services answer on loopback; a page's context is a real ``SiteContext`` over the real
parts (``test_parts_clients.py``).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

import pytest
from markupsafe import Markup
from test_parts import BOOTSTRAP, config_of, hooks_of, saved_cookie
from test_parts_clients import closing_clients, context_of, mount_of, page_of, running_builds
from urllib3 import HTTPHeaderDict as Headers  # what the transports give

from plugit_core.config import ProxyConfig
from plugit_core.hookspecs import hookimpl
from plugit_core.protocol import ActionMeta
from plugit_core.proxy.clients import ServiceClients
from plugit_core.proxy.containment import RAW_POLICY
from plugit_core.proxy.context import SiteContext
from plugit_core.proxy.outgoing import UpstreamBuilder
from plugit_core.proxy.rendering import ServiceRendering
from plugit_core.proxy.replies import MAX_SESSION_KEYS, ServiceReplies, normal_media_path
from plugit_core.proxy.sandbox import RenderBudget
from plugit_core.proxy.templating import CSRF_PLACEHOLDER, ServiceTemplates
from plugit_core.proxy.upstream import ServiceError, ServiceReply
from plugit_core.testing import wait_until
from plugit_core.users import Orga, PlugItUser


@pytest.fixture(scope="module")
def services(tmp_path_factory) -> Iterator[dict[str, Any]]:
    with running_builds(tmp_path_factory.mktemp("pipeline")) as found:
        yield found


@pytest.fixture
def clients_of() -> Iterator[Callable[[ProxyConfig], ServiceClients]]:
    with closing_clients() as factory:
        yield factory


# -- UpstreamBuilder ------------------------------------------------------------------------------


class AddsHeader:
    @hookimpl
    def plugit_upstream_request(self, page, upstream):
        upstream.headers["X-Added"] = page.mount.name


@pytest.fixture
def page_parts(services, clients_of) -> Any:
    """``page_parts(**mount_options)``: (context, clients, hooks) for one mount of the main
    build."""

    def factory(
        *plugins: Any, redirect_hosts: tuple[str, ...] = (), top: Any = None, **options: Any
    ) -> tuple[Any, ...]:
        config = config_of(
            services=[mount_of(services, **options)],
            allowed_redirect_hosts=list(redirect_hosts),
            **(top or {}),
        )
        clients = clients_of(config)
        hooks = hooks_of(*plugins)
        return context_of(config, hooks=hooks, clients=clients), clients, hooks

    return factory


def test_upstream_drops_every_ebuio_name_and_the_csrf_field(page_parts):
    context, clients, hooks = page_parts(top={"user_data": ["pk", "username"]})
    page = page_of(
        context,
        clients,
        method="POST",
        query_string=[("q", "1"), ("ebuio_u_pk", "-3"), ("EBUIO_ORGAPK", "1")],
        data={"a": "2", "csrfmiddlewaretoken": "t", "Ebuio_u_username": "root"},
        user=PlugItUser(pk=4, username="ann", email="ann@example.org", is_authenticated=True),
        meta=ActionMeta(user_info=("username", "email")),  # email is not in user_data
        orga=Orga(7, "Acme"),
    )
    upstream = UpstreamBuilder(context.config, hooks).build(page, "action/page")
    assert upstream.params == [("q", "1")]
    assert upstream.form == [("a", "2"), ("ebuio_u_username", "ann"), ("ebuio_orgapk", "7")]


def test_upstream_headers_carry_the_user_in_proxy_mode_without_line_breaks(page_parts):
    context, clients, hooks = page_parts(AddsHeader(), proxy_mode=True)
    page = page_of(
        context,
        clients,
        user=PlugItUser(pk=4, username="ann\r\nX-Evil: 1", is_authenticated=True),
        script_name="//evil.example",
        environ_base={"REMOTE_ADDR": "192.0.2.9"},
    )
    headers = UpstreamBuilder(context.config, hooks).build(page, "action/page").headers
    assert headers["X-Plugit-User-username"] == "ann  X-Evil: 1"
    assert headers["X-Plugit-Base-Url"] == "/evil.example/svc/"
    assert headers["X-Plugit-Remote-Addr"] == "192.0.2.9"
    assert headers["X-Added"] == "svc"  # plugit_upstream_request
    assert "X-Plugit-Deadline" in headers
    plain = page_parts()
    headers = (
        UpstreamBuilder(plain[0].config, plain[2])
        .build(page_of(plain[0], plain[1], user=page.user), "action/page")
        .headers
    )
    assert not any(name.startswith("X-Plugit-User") for name in headers)
    assert "X-Added" not in headers


@pytest.mark.parametrize(
    ("incoming", "continued"),
    [
        ("00-" + "a" * 32 + "-" + "b" * 16 + "-01", True),
        ("00-" + "0" * 32 + "-" + "b" * 16 + "-01", False),
        ("00-" + "a" * 32 + "-" + "0" * 16 + "-01", False),
        ("garbage", False),
        (None, False),
    ],
)
def test_upstream_continues_a_valid_trace_only(page_parts, incoming, continued):
    context, clients, hooks = page_parts()
    headers = {"traceparent": incoming, "tracestate": "k=v"} if incoming else {"tracestate": "k=v"}
    page = page_of(context, clients, headers=headers)
    sent = UpstreamBuilder(context.config, hooks).build(page, "action/page").headers
    version, trace, span, flags = sent["traceparent"].split("-")
    assert (version, flags) == ("00", "01")
    assert (trace == "a" * 32) is continued and set(trace) != {"0"}
    assert len(trace) == 32 and len(span) == 16 and span != "b" * 16 and set(span) != {"0"}
    assert ("tracestate" in sent) is (incoming is not None)


def test_upstream_sends_the_services_own_session_values_only(page_parts):
    context, clients, hooks = page_parts()
    page = page_of(context, clients)
    page.request.session["svc"] = {"svc": {"cart": "3"}, "other": {"secret": "x"}}
    headers = UpstreamBuilder(context.config, hooks).build(page, "action/page").headers
    assert headers["X-Plugitsession-cart"] == "3"
    assert headers["Cookie"] == "cart=3"
    assert not any("secret" in name for name in headers)


# -- ServiceReplies -------------------------------------------------------------------------------


def reply(status: int = 200, body: bytes = b"{}", **headers: str) -> ServiceReply:
    return ServiceReply(status, Headers({k.replace("_", "-"): v for k, v in headers.items()}), body)


def test_a_services_failures_are_its_own_never_the_browsers(page_parts):
    context, clients, _hooks = page_parts()
    replies = ServiceReplies()
    for status, kind in ((500, "error"), (503, "error"), (302, "bad_reply"), (206, "bad_reply")):
        with pytest.raises(ServiceError) as info:
            replies.special_reply(page_of(context, clients), reply(status))
        assert info.value.kind == kind, status
    page = page_of(context, clients)
    shown = replies.special_reply(
        page, reply(401, WWW_Authenticate="Basic", Set_Cookie="a=1", ETag='"e"')
    )
    assert shown is not None and shown.status_code == 401
    assert shown.headers["WWW-Authenticate"] == "Basic" and shown.headers["ETag"] == '"e"'
    assert "Set-Cookie" not in shown.headers
    assert "Login required" in shown.get_data(as_text=True)
    assert replies.special_reply(page_of(context, clients), reply(200)) is None
    not_modified = replies.special_reply(page_of(context, clients), reply(304, ETag='"e"'))
    assert not_modified is not None and not_modified.status_code == 304
    assert not_modified.headers["ETag"] == '"e"'


@pytest.mark.parametrize(
    ("target", "no_prefix", "location"),
    [
        ("done", False, "/app/svc/done"),
        ("/done", False, "/app/svc/done"),
        ("/elsewhere/", True, "/app/elsewhere/"),
        ("https://partner.example/x", True, "https://partner.example/x"),
        ("https://evil.example/x", True, None),
        ("//evil.example/x", True, None),
        ("/\\evil.example", True, None),
        ("done\r\nSet-Cookie: a=1", False, None),
    ],
)
def test_redirects_asked_by_a_service_are_checked(page_parts, target, no_prefix, location):
    context, clients, _hooks = page_parts(redirect_hosts=("partner.example",))
    page = page_of(context, clients, script_name="/app")
    headers = {"EbuIo-PlugIt-Redirect": target}
    if no_prefix:
        headers["EbuIo-PlugIt-Redirect-NoPrefix"] = "True"
    answer = ServiceReply(200, Headers(headers))
    if location is None:
        with pytest.raises(ServiceError) as info:
            ServiceReplies().special_reply(page, answer)
        assert info.value.kind == "bad_reply"
    else:
        response = ServiceReplies().special_reply(page, answer)
        assert response is not None and response.status_code == 302
        assert response.headers["Location"] == location


def test_session_values_of_a_service_are_bounded_and_its_own(page_parts):
    context, clients, _hooks = page_parts()
    page = page_of(context, clients)
    page.request.session["svc"] = {"other": {"k": "theirs"}}
    headers = {
        "EbuIo-PlugIt-SetSession-Cart": "3",
        "EbuIo-PlugIt-SetSession-bad.name": "x",
        "EbuIo-PlugIt-SetSession-big": "x" * 1025,
        "EbuIo-PlugIt-SetSession-k": "mine",
    }
    ServiceReplies().store_session(page, ServiceReply(200, Headers(headers)))
    stored = page.request.session["svc"]
    assert stored == {"other": {"k": "theirs"}, "svc": {"cart": "3", "k": "mine"}}
    many = {f"EbuIo-PlugIt-SetSession-k{i}": "v" for i in range(MAX_SESSION_KEYS + 5)}
    ServiceReplies().store_session(page, ServiceReply(200, Headers(many)))
    assert len(page.request.session["svc"]["svc"]) == MAX_SESSION_KEYS
    assert page.request.session["svc"]["svc"]["cart"] == "3"  # kept, and updatable
    update = {"EbuIo-PlugIt-SetSession-cart": "4"}
    ServiceReplies().store_session(page, ServiceReply(200, Headers(update)))
    assert page.request.session["svc"]["svc"]["cart"] == "4"
    # the service's values reach the next request only through a saved session
    cookie = saved_cookie(context.sessions, page.request)
    assert page_of(context, clients, cookie=cookie).request.session["svc"]["svc"]["k"] == "mine"


def test_a_file_is_streamed_closed_and_a_sandboxed_services_raw_reply_is_a_sandbox(page_parts):
    context, clients, _hooks = page_parts(trust="sandboxed")
    closed: list[bool] = []
    answer = ServiceReply(
        200,
        Headers(
            {
                "EbuIo-PlugIt-ItAFile": "True",
                "Content-Type": "text/html",
                "Content-Disposition": "attachment",
            }
        ),
        stream=iter([b"<script>"]),
        close=lambda: closed.append(True),
    )
    response = ServiceReplies().special_reply(page_of(context, clients), answer)
    assert response is not None and not closed  # streamed on: closed with the response
    assert response.headers["Content-Security-Policy"] == RAW_POLICY
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["Content-Disposition"] == "attachment"
    response.close()
    assert closed == [True]


def test_a_reply_that_is_not_json_is_the_services_failure(page_parts):
    context, clients, _hooks = page_parts()
    page = page_of(context, clients)
    assert ServiceReplies().json(page, reply(204, b"")) == {}
    with pytest.raises(ServiceError) as info:
        ServiceReplies().json(page, reply(200, b"<html>"))
    assert info.value.kind == "bad_reply"


@pytest.mark.parametrize(
    ("path", "normal"),
    [
        ("a/b.css", "a/b.css"),
        ("a/./b/../c.css", "a/c.css"),
        ("a/", "a/"),
        ("../secret", None),
        ("a/../../secret", None),
        ("..;x/secret", None),
        ("a\\..\\b", None),
        ("a\x00b", None),
        ("a\nb", None),
    ],
)
def test_media_paths_never_climb_out_of_media(path, normal):
    assert normal_media_path(path) == normal


def test_media_files_come_from_the_service_with_a_bounded_cache_life(page_parts, services):
    context, clients, _hooks = page_parts()
    mount = context.config.services[0]
    media = ServiceReplies().media
    request = page_of(context, clients).request
    served = media(request, mount, clients["svc"], "hello.txt")
    with contextlib.closing(served):
        assert served.status_code == 200 and b"".join(served.response) == b"hello"
        assert served.headers["Cache-Control"] == "public, max-age=3600"
    asked = len(services["main"].paths)
    assert media(request, mount, clients["svc"], "../templates/page.html").status_code == 404
    posted = page_of(context, clients, method="POST").request
    assert media(posted, mount, clients["svc"], "hello.txt").status_code == 405
    assert len(services["main"].paths) == asked  # neither was sent to the service


# -- ServiceRendering -----------------------------------------------------------------------------


class AddsToContext:
    @hookimpl
    def plugit_template_context(self, page, context):
        return {"extra": "from a plugin", "csrf_token": "stolen", "ebuio_u": {"pk": 0}, "bad": self}


def rendering_of(context: SiteContext, hooks: Any, **budget: Any) -> ServiceRendering:
    templates = {
        m.name: ServiceTemplates(m.name, BOOTSTRAP, budget=RenderBudget(**budget))
        for m in context.config.services
    }
    return ServiceRendering(
        context.config,
        hooks,
        templates=templates,
        context=context,
        placer=lambda page: lambda *args, **kwargs: Markup("<i>fragment</i>"),
    )


def test_a_template_is_fetched_once_per_tag(page_parts, services):
    context, clients, hooks = page_parts()
    rendering = rendering_of(context, hooks)
    page = page_of(context, clients)
    tag = clients["svc"].meta("page").template_tag
    before = services["main"].asked("/template/page")
    first = rendering.template(page, "page", tag)
    assert first is not None and rendering.template(page, "page", tag) is first
    assert services["main"].asked("/template/page") == before + 1
    assert rendering.template(page, "nothing", "x" * 32) is None
    with pytest.raises(ServiceError) as info:
        rendering.template(page, "broken", clients["svc"].meta("broken").template_tag)
    assert info.value.kind == "bad_reply"


def test_the_template_context_is_data_and_plugins_cannot_replace_the_proxys_values(
    page_parts, caplog
):
    context, clients, hooks = page_parts(AddsToContext())
    rendering = rendering_of(context, hooks)
    user = PlugItUser(pk=4, username="ann", is_authenticated=True)
    page = page_of(context, clients, user=user, script_name="//evil.example")
    with caplog.at_level(logging.WARNING, logger="plugit.proxy"):
        values = rendering.template_context(page, {"title": "t"})
    assert values["title"] == "t" and values["extra"] == "from a plugin"
    assert values["csrf_token"] == CSRF_PLACEHOLDER  # filled per response, never a plugin's
    assert values["ebuio_u"]["username"] == "ann"
    assert values["ebuio_baseUrl"] == "/evil.example/svc/"
    assert "bad" not in values and "plugit_template_context" in caplog.text
    # a page kept in the shared cache is rendered for nobody
    shared = replace(page, cache_key="k", meta=ActionMeta(cache_time=60))
    assert rendering.template_context(shared, {})["ebuio_u"]["username"] is None


def test_a_render_holds_the_placeholder_and_stays_within_its_budget(page_parts):
    context, clients, hooks = page_parts(AddsToContext())
    tag = clients["svc"].meta("page").template_tag
    page = page_of(context, clients)
    rendering = rendering_of(context, hooks)
    template = rendering.template(page, "page", tag)
    html, _menu = rendering.render(page, template, {"title": "<b>t</b>", "loop": [1, 2]})
    assert "<h1>&lt;b&gt;t&lt;/b&gt;</h1>.." in html
    assert CSRF_PLACEHOLDER in html and "from a plugin" in html
    tight = rendering_of(context, hooks, max_iterations=20)
    template = tight.template(page, "page", tag)
    with pytest.raises(ServiceError) as info:
        tight.render(page, template, {"title": "t", "loop": list(range(1000))})
    assert info.value.kind == "over_budget"
    wait_until(lambda: clients["svc"].in_flight == 0)  # the slot is given back

"""The parts of the proxy that serve a service's page, each built and tested alone, without a
ProxyApp: the service clients (variants, shadow, protocol re-checks), the upstream request, the
mapping of a service's reply, the rendering of its template, and what plugins see
(``SiteContext``).

Real services answer on loopback (``PlugItService``); the plugins' context is a real
``SiteContext`` over the real parts.  (The other parts: ``test_parts.py``.)
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest
from markupsafe import Markup
from proxy_helpers import SECRET, STRONG_KEY
from test_parts import BOOTSTRAP, config_of, cookie_sessions, hooks_of, make_request, saved_cookie
from urllib3 import HTTPHeaderDict as Headers  # what the transports give
from werkzeug.wrappers import Response

from plugit_core.backends import Backends
from plugit_core.config import ProxyConfig
from plugit_core.hookspecs import hookimpl
from plugit_core.protocol import ActionMeta
from plugit_core.proxy.clients import ServiceClients
from plugit_core.proxy.containment import RAW_POLICY
from plugit_core.proxy.context import SiteContext
from plugit_core.proxy.csrf import CsrfTokens
from plugit_core.proxy.directory import Directory
from plugit_core.proxy.outgoing import UpstreamBuilder
from plugit_core.proxy.page import PageRequest
from plugit_core.proxy.rendering import ServiceRendering
from plugit_core.proxy.replies import MAX_SESSION_KEYS, ServiceReplies, normal_media_path
from plugit_core.proxy.routes import SiteLinks
from plugit_core.proxy.sandbox import RenderBudget
from plugit_core.proxy.site import SiteRenderer, script_root, site_url
from plugit_core.proxy.templating import CSRF_PLACEHOLDER, ServiceTemplates
from plugit_core.proxy.upstream import ServiceError, ServiceReply, UpstreamRequest
from plugit_core.service import PlugItService, action, json_only
from plugit_core.testing import free_port, serve, wait_until
from plugit_core.users import ANONYMOUS, Orga, PlugItUser

# -- real services --------------------------------------------------------------------------------


class Recorder:
    """A WSGI app in front of a service, recording the paths asked; ``version`` may answer
    another protocol (``speaks``)."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.speaks = "1"
        self.paths: list[tuple[str, str]] = []
        self._lock = threading.Lock()

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        with self._lock:
            self.paths.append((environ["REQUEST_METHOD"], environ["PATH_INFO"]))
        if environ["PATH_INFO"] == "/version" and self.speaks != "1":
            body = f'{{"result": "Ok", "version": "{self.speaks}"}}'
            return Response(body, mimetype="application/json")(environ, start_response)
        return self.app(environ, start_response)

    def asked(self, path: str, method: str = "GET") -> int:
        with self._lock:
            return self.paths.count((method, path))


def build_service(build: str, root: Any) -> Recorder:
    @action("/")
    @json_only()
    def home(request):
        return {"build": build}

    @action("/page", template="page.html")
    def page(request):
        return {"title": "<b>t</b>", "loop": list(range(50))}

    @action("/broken", template="broken.html")
    def broken(request):
        return {}

    return Recorder(PlugItService([home, page, broken], root=str(root), secret=SECRET))


@pytest.fixture(scope="module")
def services(tmp_path_factory) -> Iterator[dict[str, Any]]:
    """Three builds of one service (main, canary, shadow), each recorded, and their URLs."""
    root = tmp_path_factory.mktemp("parts")
    (root / "templates").mkdir()
    (root / "templates" / "page.html").write_text(
        "<h1>{{ title }}</h1>{% for i in loop %}.{% endfor %}"
        "<form>{{ csrf_token }}</form><a href='{{ ebuio_baseUrl }}'>{{ extra }}</a>"
    )
    (root / "templates" / "broken.html").write_text("{% if %}")
    (root / "media").mkdir()
    (root / "media" / "hello.txt").write_text("hello")
    with contextlib.ExitStack() as stack:
        found: dict[str, Any] = {}
        for build in ("main", "canary", "shadow"):
            recorder = build_service(build, root)
            found[build] = recorder
            found[f"{build}_url"] = stack.enter_context(serve(recorder))
        yield found


def mount_of(services: dict[str, Any], **options: Any) -> dict[str, Any]:
    return {
        "name": "svc",
        "url": services["main_url"],
        "mount": "/svc/",
        "secret": SECRET,
        "title": "Service",
        **options,
    }


@pytest.fixture
def clients_of() -> Iterator[Any]:
    """``clients_of(config)``: the service clients of ``config``, closed after the test."""
    with contextlib.ExitStack() as stack:

        def factory(config: ProxyConfig) -> ServiceClients:
            clients = ServiceClients(config)
            stack.callback(clients.close)
            return clients

        yield factory


def drain(clients: ServiceClients) -> None:
    """Wait until every shadow copy handed to the pool was sent."""
    clients._shadow_pool.shutdown(wait=True)


# -- ServiceClients -------------------------------------------------------------------------------


VARIANT = {
    "name": "canary",
    "roles": ["admin"],
    "users": ["Member"],
    "orgas": ["Acme"],
    "cookie": "canary=1",
}


def test_a_client_per_service_variant_and_shadow(services, clients_of):
    config = config_of(
        services=[
            mount_of(
                services,
                shadow_url=services["shadow_url"],
                variants=[{**VARIANT, "url": services["canary_url"]}],
            ),
            {"name": "other", "url": services["main_url"], "secret": SECRET},
        ]
    )
    clients = clients_of(config)
    assert sorted(clients) == ["other", "svc", "svc:canary", "svc:shadow"]
    assert len(clients) == 4
    assert clients["svc:canary"].mount.url == services["canary_url"]
    assert clients["svc:shadow"].mount.max_concurrency == 4
    with pytest.raises(KeyError):
        clients["svc:other"]


@pytest.mark.parametrize(
    ("user", "cookie", "build"),
    [
        pytest.param(ANONYMOUS, None, "main", id="anonymous"),
        pytest.param(ANONYMOUS, "canary=1", "canary", id="cookie"),
        pytest.param(ANONYMOUS, "canary=0", "main", id="other-cookie-value"),
        pytest.param(PlugItUser(username="Member"), None, "main", id="name-not-logged-in"),
        pytest.param(
            PlugItUser(username="Member", is_authenticated=True), None, "canary", id="by-name"
        ),
        pytest.param(
            PlugItUser(username="x", is_authenticated=True, admin_of=frozenset({"svc"})),
            None,
            "canary",
            id="by-role",
        ),
        pytest.param(
            PlugItUser(username="x", is_authenticated=True, admin_of=frozenset({"news"})),
            None,
            "main",
            id="admin-elsewhere",
        ),
        pytest.param(
            PlugItUser(username="x", is_authenticated=True, orgas=(Orga(9, "Acme"),)),
            None,
            "canary",
            id="by-orga",
        ),
    ],
)
def test_select_routes_each_user_to_their_build(services, clients_of, user, cookie, build):
    config = config_of(
        services=[mount_of(services, variants=[{**VARIANT, "url": services["canary_url"]}])]
    )
    clients = clients_of(config)
    client, variant = clients.select(config.services[0], make_request(cookie=cookie), user)
    assert variant == ("" if build == "main" else build)
    assert client.get("action/").json() == {"build": build}


def test_shadow_gets_a_copy_of_reads_only(services, clients_of):
    config = config_of(services=[mount_of(services, shadow_url=services["shadow_url"])])
    clients = clients_of(config)
    mount = config.services[0]
    shadow = services["shadow"]
    before = shadow.asked("/action/"), shadow.asked("/action/", "POST")
    upstream = UpstreamRequest("GET", "action/", headers={"X-Test": "1"})
    clients.shadow(mount, upstream)
    clients.shadow(mount, UpstreamRequest("POST", "action/", form=[("a", "1")]))
    clients.shadow(mount, UpstreamRequest("DELETE", "action/"))
    upstream.headers["X-Test"] = "changed"  # the copy was taken when it was handed over
    drain(clients)
    assert (shadow.asked("/action/"), shadow.asked("/action/", "POST")) == (
        before[0] + 1,
        before[1],
    )
    assert shadow.asked("/action/", "DELETE") == 0


def test_shadow_is_dropped_when_the_shadow_is_busy(services, clients_of):
    config = config_of(services=[mount_of(services, shadow_url=services["shadow_url"])])
    clients = clients_of(config)
    before = services["shadow"].asked("/action/")
    clients["svc:shadow"].in_flight = clients["svc:shadow"].mount.max_concurrency
    clients.shadow(config.services[0], UpstreamRequest("GET", "action/"))
    drain(clients)
    assert services["shadow"].asked("/action/") == before


def test_no_shadow_without_a_shadow_target(services, clients_of):
    config = config_of(services=[mount_of(services)])
    clients = clients_of(config)
    before = len(services["main"].paths)
    clients.shadow(config.services[0], UpstreamRequest("GET", "action/"))
    drain(clients)
    assert len(services["main"].paths) == before


def test_a_service_unreachable_at_start_is_asked_again_once_due(tmp_path, clients_of):
    port = free_port()
    config = config_of(
        services=[{"name": "late", "url": f"http://127.0.0.1:{port}", "secret": SECRET}]
    )
    clients = clients_of(config)
    ok, _message = clients.check_all()["late"]
    client = clients["late"]
    assert not ok and client.compatible is None
    clients.check_compatible(client)  # unknown is not refused
    late = build_service("late", tmp_path)
    with serve(late, port=port):
        clients.recheck_unknown = 3600.0
        clients.check_compatible(client)
        assert client.compatible is None and late.asked("/version") == 0  # not due yet
        clients.recheck_unknown = 0.0
        clients.check_compatible(client)
        assert client.compatible is True and late.asked("/version") == 1
        clients.recheck_refused = 0.0
        clients.check_compatible(client)  # a compatible service is never asked again
        assert late.asked("/version") == 1


def test_a_refused_service_stays_refused_until_it_is_due_again(tmp_path, clients_of):
    other = build_service("other", tmp_path)
    other.speaks = "2"
    with serve(other) as url:
        clients = clients_of(config_of(services=[{"name": "old", "url": url, "secret": SECRET}]))
        assert clients.check_all()["old"][0] is False
        client = clients["old"]
        assert client.compatible is False
        with pytest.raises(ServiceError) as info:
            clients.check_compatible(client)
        assert info.value.kind == "incompatible"
        other.speaks = "1"  # fixed and redeployed
        clients.recheck_refused = 3600.0
        with pytest.raises(ServiceError):
            clients.check_compatible(client)
        assert other.asked("/version") == 1
        clients.recheck_refused = 0.0
        clients.check_compatible(client)
        assert client.compatible is True and other.asked("/version") == 2


# -- what plugins see, and a page -----------------------------------------------------------------


def context_of(config: ProxyConfig, *, hooks: Any = None, clients: Any = None) -> SiteContext:
    """The plugins' context over the real parts of a proxy of ``config``."""
    hooks = hooks or hooks_of()
    sessions = cookie_sessions()
    directory = Directory(users=None, dev_mode=config.dev_mode, hooks=hooks)
    csrf = CsrfTokens(lambda: sessions, SiteLinks())
    site = SiteRenderer(
        config,
        theme=BOOTSTRAP,
        themes={"bootstrap": BOOTSTRAP},
        csrf=csrf,
        identify=directory.identify,
    )
    context = SiteContext(
        config=config,
        backends=Backends(),
        auth=(),
        users=None,
        billing=None,
        mail=None,
        sessions=sessions,
        clients=clients or {},
        identify=directory.identify,
        lookup_user=directory.lookup_user,
        lookup_orga=directory.lookup_orga,
        list_orgas=directory.list_orgas,
        base_path=script_root,
        site_url=site_url,
        client_address=lambda request: request.remote_addr,
        csrf_token=csrf.token,
        csrf_valid=csrf.valid,
        render_site_page=site.render_page,
        error_page=site.error_page,
    )
    hooks.bind(context)
    return context


def page_of(
    context: SiteContext,
    clients: Any,
    path: str = "page",
    *,
    user: PlugItUser = ANONYMOUS,
    meta: ActionMeta | None = None,
    orga: Orga | None = None,
    **request: Any,
) -> PageRequest:
    mount = context.config.services[0]
    proxy_request = make_request(context.sessions, mount.mount + path, **request)
    proxy_request.proxy = context
    return PageRequest(
        request=proxy_request,
        proxy=context,
        mount=mount,
        client=clients[mount.name],
        path=path,
        user=user,
        orga=orga,
        meta=meta or ActionMeta(),
    )


def test_the_plugins_context_checks_redirects_and_hides_the_secret():
    config = config_of(dev_mode=False, allowed_redirect_hosts=["partner.example"])
    context = context_of(config)
    request = make_request(base_url="https://site.example")
    assert context.redirect_allowed(request, "https://site.example/x")
    assert context.redirect_allowed(request, "https://partner.example/x")
    assert not context.redirect_allowed(request, "https://evil.example/x")
    assert not context.redirect_allowed(request, "https://site.example.evil.example/")
    assert context.is_local_path("/x") and not context.is_local_path("//evil.example/x")
    assert not context.is_local_path("/\\evil.example")
    assert STRONG_KEY not in repr(context)
    done: list[int] = []
    context.when_session_saved(request, lambda: done.append(1))
    assert request.__dict__["_plugit_when_saved"][0]() is None and done == [1]


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

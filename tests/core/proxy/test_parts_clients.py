"""The proxy's service clients built and tested alone, without a ProxyApp: a client per
service, variant and shadow, which one answers a user, the shadow copies, the re-checks of a
service's protocol; and the plugins' context (``SiteContext``) over real parts.

Real services answer on loopback (``PlugItService``).  What the other parts' tests share of
these: the builds, the clients, the context and a page (``test_parts_pipeline.py``).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from proxy_helpers import SECRET, STRONG_KEY
from test_parts import BOOTSTRAP, config_of, cookie_sessions, hooks_of, make_request
from werkzeug.wrappers import Response

from plugit_core.backends import Backends
from plugit_core.config import ProxyConfig
from plugit_core.protocol import ActionMeta
from plugit_core.proxy.clients import ServiceClients
from plugit_core.proxy.context import SiteContext
from plugit_core.proxy.csrf import CsrfTokens
from plugit_core.proxy.directory import Directory
from plugit_core.proxy.page import PageRequest
from plugit_core.proxy.routes import SiteLinks
from plugit_core.proxy.site import SiteRenderer, script_root, site_url
from plugit_core.proxy.upstream import ServiceError, UpstreamRequest
from plugit_core.service import PlugItService, action, json_only
from plugit_core.testing import free_port, serve
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


@contextlib.contextmanager
def running_builds(root: Path) -> Iterator[dict[str, Any]]:
    """Three builds of one service (main, canary, shadow), each recorded, and their URLs."""
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


@pytest.fixture(scope="module")
def services(tmp_path_factory) -> Iterator[dict[str, Any]]:
    with running_builds(tmp_path_factory.mktemp("parts")) as found:
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


@contextlib.contextmanager
def closing_clients() -> Iterator[Callable[[ProxyConfig], ServiceClients]]:
    """A maker of the service clients of a configuration, every one closed at the end."""
    with contextlib.ExitStack() as stack:

        def factory(config: ProxyConfig) -> ServiceClients:
            clients = ServiceClients(config)
            stack.callback(clients.close)
            return clients

        yield factory


@pytest.fixture
def clients_of() -> Iterator[Callable[[ProxyConfig], ServiceClients]]:
    """``clients_of(config)``: the service clients of ``config``, closed after the test."""
    with closing_clients() as factory:
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

"""The site's pages and URLs (``SiteRenderer``, ``script_root``, ``site_url``) and the status
URLs (``HealthRoutes``) built and tested alone, without a ProxyApp: the Bootstrap theme, the
real CSRF part, real service clients, store guards marked down.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Iterator
from typing import Any

import pytest
from markupsafe import Markup
from test_parts import BOOTSTRAP, Guarded, config_of, csrf_of, down_guard, make_request
from werkzeug.test import EnvironBuilder
from werkzeug.wrappers import Request, Response

from plugit_core.proxy.clients import ServiceClients
from plugit_core.proxy.site import SiteRenderer, script_root, site_url
from plugit_core.proxy.status import HealthRoutes
from plugit_core.stores import StoreGuard, StoreUnavailable
from plugit_core.testing import serve
from plugit_core.users import ANONYMOUS, PlugItUser

# -- the site's URLs and pages --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("script_name", "root"),
    [
        ("", ""),
        ("/", ""),
        ("/app", "/app"),
        ("/app/", "/app"),
        ("//evil.example", "/evil.example"),
        ("///evil.example/x", "/evil.example/x"),
        ("/a b/<i>", "/a%20b/%3Ci%3E"),
        ('/"onload=x', "/%22onload=x"),
    ],
)
def test_script_root_is_always_a_local_path(script_name, root):
    request = Request(EnvironBuilder(path="/x").get_environ() | {"SCRIPT_NAME": script_name})
    assert script_root(request) == root
    url = site_url(request, "/polls/")
    assert url == root + "/polls/"
    assert not url.startswith("//")


def test_site_url_leaves_absolute_urls_alone():
    request = Request(EnvironBuilder(path="/x").get_environ() | {"SCRIPT_NAME": "/app"})
    assert site_url(request, "https://other.example/x") == "https://other.example/x"
    assert site_url(request, "//other.example/x") == "//other.example/x"
    assert site_url(request, "relative") == "relative"


MOUNT = {"name": "polls", "url": "http://127.0.0.1:1", "mount": "/polls/", "title": "Polls"}


def renderer_of(*, dev_mode: bool = True, identify: Any = None, **top: Any) -> SiteRenderer:
    config = config_of(dev_mode=dev_mode, services=[MOUNT], **top)
    return SiteRenderer(
        config,
        theme=BOOTSTRAP,
        themes={"bootstrap": BOOTSTRAP},
        csrf=csrf_of(),
        identify=identify or (lambda request: ANONYMOUS),
    )


def test_the_error_page_is_themed_fills_its_values_and_leaks_no_marker():
    site = renderer_of()
    request = make_request()
    response = site.error_page(request, 404)
    html = response.get_data(as_text=True)
    assert response.status_code == 404
    assert "Page not found" in html and "\x00" not in html
    assert f"'nonce-{request.csp_nonce}'" in response.headers["Content-Security-Policy"]


@pytest.mark.parametrize("dev_mode", [True, False])
def test_the_error_pages_reason_is_shown_in_dev_mode_only(dev_mode):
    request = make_request()
    html = renderer_of(dev_mode=dev_mode).error_page(
        request, 403, reason="csrf", detail="secret-detail"
    )
    assert ("secret-detail" in html.get_data(as_text=True)) is dev_mode


def test_a_services_failure_page_names_the_service_and_what_happened():
    site = renderer_of()
    mount = site.config.services[0]
    html = site.error_page(make_request(), 502, reason="unreachable", mount=mount).get_data(
        as_text=True
    )
    assert "Service unreachable" in html and "Polls: This service cannot be reached" in html


def test_the_layout_is_rendered_per_visitor_and_its_path_escaped():
    site = renderer_of()
    mount = site.config.services[0]

    def layout(user: PlugItUser, content: str, script_name: str = "", **builder: Any) -> str:
        return site.render_layout(
            make_request(path="/polls/x", script_name=script_name, **builder),
            mount=mount,
            content=Markup(content),
            menu=Markup(""),
            orga=None,
            orgas=(),
            user=user,
            dev_user_mode=None,
        )

    ann = PlugItUser(pk=1, username="ann", first_name="Ann", is_authenticated=True)
    bob = PlugItUser(pk=2, username="bob", first_name="Bob", is_authenticated=True)
    first = layout(ann, "<p>one</p>")
    second = layout(bob, "<p>two</p>")
    assert "Ann" in first and "<p>one</p>" in first
    assert "Bob" in second and "Ann" not in second and "<p>one</p>" not in second
    again = layout(ann, "<p>three</p>", query_string={"q": '"><script>x</script>'})
    assert "<p>three</p>" in again and "<p>one</p>" not in again
    assert "<script>x</script>" not in again and "%3Cscript%3E" in again
    # the path arrives decoded (PATH_INFO): escaped where the layout shows it
    raw = site.render_layout(
        make_request(path="/polls/%22%3E%3Cscript%3Ey%3C/script%3E"),
        mount=mount,
        content=Markup(""),
        menu=Markup(""),
        orga=None,
        orgas=(),
        user=ann,
        dev_user_mode=None,
    )
    assert "<script>y</script>" not in raw and "&lt;script&gt;y" in raw
    below = layout(ann, "", script_name="/site")
    assert 'href="/site/_plugit/static/' in below
    assert 'href="/_plugit/static/' not in below
    marks = site.csrf.marks
    for html in (first, second, again, below):
        # the layout fills what is per page; the per-response values are filled last
        assert not {marks.content, marks.menu, marks.path} & set(
            re.findall("\x00[^\x00]+\x00", html)
        )
        assert "\x00" not in site.csrf.fill(make_request(), html, "polls")


def test_the_layout_asks_who_the_user_is_only_when_not_told():
    asked = []

    def identify(request):
        asked.append(request)
        return PlugItUser(pk=5, username="eve", first_name="Eve", is_authenticated=True)

    site = renderer_of(identify=identify)
    html = site.render_page(make_request(), "plugit/home.html").get_data(as_text=True)
    assert "Eve" in html and len(asked) == 1
    site.context(make_request(), None, ANONYMOUS)
    assert len(asked) == 1


def test_static_files_of_the_theme_and_nothing_beside_them():
    site = renderer_of()
    served = site.static(make_request(), "plugit.css")
    with contextlib.closing(served):
        assert served.status_code == 200
        assert served.headers["X-Content-Type-Options"] == "nosniff"
    for climb in (
        "../templates/plugit/layout.html",
        "/etc/passwd",
        "../../etc/passwd",
        "bootstrap",
    ):
        refused = site.static(make_request(), climb)
        assert refused.status_code == 404, climb


def test_the_outage_page_names_the_store_and_asks_to_retry(caplog):
    site = renderer_of()
    request = make_request()
    exc = StoreUnavailable("users_sqlite", "the user directory", "database is locked")
    with caplog.at_level(logging.WARNING, logger="plugit.proxy"):
        response = site.outage_page(request, exc)
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "1"
    assert response.headers["Cache-Control"] == "no-store"
    assert "the user directory" in response.get_data(as_text=True)
    assert request.__dict__["_plugit_outage"] is True  # its session is not saved
    assert "users_sqlite" in caplog.text


# -- HealthRoutes ---------------------------------------------------------------------------------


def wrong_protocol(environ, start_response):
    return Response('{"result": "Ok", "version": "2"}', mimetype="application/json")(
        environ, start_response
    )


@pytest.fixture
def health_of(monkeypatch) -> Iterator[Any]:
    """``health_of(stores, **mount_options)``: status routes over one service that speaks
    another protocol (its clients checked) and the given stores."""
    monkeypatch.delenv("PLUGIT_METRICS_DIR", raising=False)
    with contextlib.ExitStack() as stack:
        url = stack.enter_context(serve(wrong_protocol))

        def factory(stores: list[object], **mount: Any) -> HealthRoutes:
            config = config_of(services=[{"name": "svc", "url": url, **mount}])
            clients = ServiceClients(config)
            stack.callback(clients.close)
            clients.check_all()
            routes = HealthRoutes(config, clients=clients, stores=lambda: stores, mail=None)
            stack.callback(routes.close)
            return routes

        yield factory


def test_ready_is_503_when_a_required_store_is_down(health_of):
    routes = health_of([Guarded(down_guard("users_test"), StoreGuard("cache_test", "the cache"))])
    response = routes.ready(make_request())
    body = response.json
    assert response.status_code == 503
    assert body["status"] == "unavailable" and body["unavailable"] == ["users_test"]
    assert body["stores"]["users_test"]["ready"] is False
    assert body["stores"]["cache_test"]["ready"] is True
    assert response.headers["Cache-Control"] == "no-store"


def test_ready_stays_200_for_an_optional_store_or_service_that_is_down(health_of):
    routes = health_of([Guarded(down_guard("cache_test", required=False))])
    response = routes.ready(make_request())
    body = response.json
    assert response.status_code == 200 and body["status"] == "ok"
    assert body["stores"]["cache_test"]["ready"] is False
    assert body["services"]["svc"] == {
        "ready": False,
        "protocol": "incompatible",
        "circuit": "closed",
        "in_flight": 0,
        "required": False,
    }


def test_ready_is_503_when_a_required_service_cannot_serve(health_of):
    response = health_of([], required=True).ready(make_request())
    assert response.status_code == 503
    assert response.json["unavailable"] == ["service:svc"]


def test_health_answers_while_everything_else_is_down(health_of):
    response = health_of([Guarded(down_guard("users_test"))], required=True).health(make_request())
    assert response.status_code == 200 and response.json == {"status": "ok"}


def test_metrics_name_every_service_and_store_in_the_prometheus_format(health_of):
    routes = health_of([Guarded(down_guard("users_test"), StoreGuard("cache_test", "the cache"))])
    response = routes.metrics(make_request())
    text = response.get_data(as_text=True)
    assert response.mimetype == "text/plain"
    assert response.headers["Cache-Control"] == "no-store"
    assert 'plugit_service_requests_total{service="svc"} 1' in text  # the version check
    assert 'plugit_store_up{store="users_test"} 0' in text
    assert 'plugit_store_up{store="cache_test"} 1' in text
    assert re.search(r'plugit_store_errors_total\{store="users_test",kind="error"\} 1\b', text)
    for line in text.splitlines():
        assert line.startswith("# ") or re.fullmatch(r"plugit_[a-z_]+(\{[^}]*\})? \S+", line), line

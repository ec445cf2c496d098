"""Errors that teach: a missing template or an unknown action is named with the URL tried (log
and dev mode's page), the action of a missing template is not called, a dead service is called
unreachable (not busy) even once its circuit breaker is open."""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from proxy_helpers import SECRET, STRONG_KEY, proxy_config
from werkzeug.wrappers import Request, Response

from plugit_core.proxy.app import ProxyApp
from plugit_core.testing import free_port, serve


class TemplateLost:
    """A service whose action ``page`` names a template (its meta has a tag) it cannot serve."""

    def __init__(self) -> None:
        self.actions_called = 0

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        path = Request(environ).path
        if path == "/version":
            body = {"result": "Ok", "version": "1", "protocol": "EBUio-PlugIt"}
        elif path == "/meta/page":
            body = {"template_tag": "0123456789abcdef0123456789abcdef"}
        elif path == "/action/page":
            self.actions_called += 1
            body = {}
        else:
            return Response("no", status=404)(environ, start_response)
        return Response(json.dumps(body), mimetype="application/json")(environ, start_response)


@pytest.fixture
def lost() -> Iterator[tuple[str, TemplateLost, ProxyApp]]:
    service = TemplateLost()
    with contextlib.ExitStack() as stack:
        url = stack.enter_context(serve(service))
        proxy = ProxyApp(proxy_config(url), load_entry_points=False)
        stack.callback(proxy.close)
        yield stack.enter_context(serve(proxy)), service, proxy


def test_a_missing_template_is_named_and_its_action_not_called(lost, caplog):
    base, service, proxy = lost
    url = proxy.config.services[0].url
    with caplog.at_level(logging.INFO, logger="plugit.proxy"):
        page = requests.get(base + "/svc/page", timeout=10)
    assert page.status_code == 404
    assert service.actions_called == 0
    # dev mode's page says what is missing and where it was asked
    assert "template: the template of &#39;page&#39; is missing" in page.text
    assert f"{url}/template/page" in page.text
    (record,) = [r for r in caplog.records if "names a template" in r.getMessage()]
    assert record.levelno == logging.WARNING
    assert f"{url}/template/page answered 404" in record.getMessage()
    assert "svc" in record.getMessage() and "not called" in record.getMessage()


def test_an_unknown_action_is_named_with_the_url_tried(lost, caplog):
    base, _, proxy = lost
    url = proxy.config.services[0].url
    with caplog.at_level(logging.INFO, logger="plugit.proxy"):
        page = requests.get(base + "/svc/nowhere/3", timeout=10)
    assert page.status_code == 404
    assert "no action at &#39;nowhere/3&#39;" in page.text and f"{url}/meta/nowhere/3" in page.text
    assert any(
        f"{url}/meta/nowhere/3 answered 404" in r.getMessage() and "svc" in r.getMessage()
        for r in caplog.records
    )


def test_outside_dev_mode_the_page_says_nothing_of_the_service(lost):
    _, _, dev_proxy = lost
    url = dev_proxy.config.services[0].url
    config = proxy_config(url, dev_mode=False, secret_key=STRONG_KEY)
    config["session_cookie"] = {"secure": False}
    proxy = ProxyApp(config, load_entry_points=False)
    with contextlib.ExitStack() as stack:
        stack.callback(proxy.close)
        base = stack.enter_context(serve(proxy))
        page = requests.get(base + "/svc/page", timeout=10)
    assert page.status_code == 404
    assert url not in page.text and "template/page" not in page.text


def test_a_dead_service_is_unreachable_not_busy():
    dead = f"http://127.0.0.1:{free_port()}"
    services = [
        {"name": "gone", "url": dead, "mount": "/gone/", "secret": SECRET, "title": "Gone",
         "breaker_failures": 2, "breaker_reset": 60, "timeout": 1},
    ]  # fmt: skip
    proxy = ProxyApp(proxy_config(dead, services=services), load_entry_points=False)
    with contextlib.ExitStack() as stack:
        stack.callback(proxy.close)
        base = stack.enter_context(serve(proxy))
        pages = [requests.get(base + "/gone/", timeout=10) for _ in range(3)]
        # the start-up version check failed too: the breaker opens after the first page
        assert [p.status_code for p in pages] == [502, 503, 503]
        assert proxy.clients["gone"].breaker.state == "open"
        for page in pages:
            assert "Service unreachable" in page.text
            assert "cannot be reached" in page.text
            assert "busy" not in page.text.lower()
        # dev mode says the circuit is open because of what the service did
        assert "the last time: unreachable" in pages[-1].text


def test_the_service_library_names_a_missing_template_and_runs_no_action(tmp_path, caplog):
    """The same through this library's own service: its template file is missing."""
    from plugit_core.service import PlugItService, action

    ran: list[str] = []

    @action("/", template="home.html")
    def home(request):
        ran.append("home")
        return {"title": "Polls"}

    (tmp_path / "templates").mkdir()
    service = PlugItService([home], secret=SECRET, templates=str(tmp_path / "templates"))
    with contextlib.ExitStack() as stack:
        url = stack.enter_context(serve(service))
        proxy = ProxyApp(proxy_config(url), load_entry_points=False)
        stack.callback(proxy.close)
        base = stack.enter_context(serve(proxy))
        with caplog.at_level(logging.INFO):
            page = requests.get(base + "/svc/", timeout=10)
        assert page.status_code == 404
        assert ran == []  # not by the proxy, and the service refuses it anyway
        assert f"is missing ({url}/template/)" in page.text  # dev mode's reason: where asked
        service_log = [r.getMessage() for r in caplog.records if r.name == "plugit.service"]
        assert any(
            "'home.html' is missing" in m and str(tmp_path / "templates") in m for m in service_log
        )
        # An unknown action: the service's log names it and says which actions there are.
        assert requests.get(base + "/svc/nope", timeout=10).status_code == 404
        assert any(
            r.name == "plugit.service"
            and "no action at /meta/nope (the actions: /)" in r.getMessage()
            for r in caplog.records
        )
        # Added, the template shows at once in dev mode (no meta or template kept).
        (tmp_path / "templates" / "home.html").write_text("<h1>{{ title }}</h1>")
        assert "<h1>Polls</h1>" in requests.get(base + "/svc/", timeout=10).text
        assert ran == ["home"]


def test_dev_mode_keeps_no_meta_so_an_edited_template_shows_at_once(tmp_path):
    from plugit_core.service import PlugItService, action

    @action("/", template="home.html")
    def home(request):
        return {"title": "Polls"}

    (tmp_path / "home.html").write_text("<h1>{{ title }}</h1>")
    service = PlugItService([home], secret=SECRET, templates=str(tmp_path))  # meta: 300 s
    with contextlib.ExitStack() as stack:
        url = stack.enter_context(serve(service))
        for dev_mode, shows_edit in ((True, True), (False, False)):
            top = {} if dev_mode else {"dev_mode": False, "secret_key": STRONG_KEY}
            (tmp_path / "home.html").write_text("<h1>{{ title }}</h1>")
            proxy = ProxyApp(proxy_config(url, **top), load_entry_points=False)
            stack.callback(proxy.close)
            base = stack.enter_context(serve(proxy))
            assert "<h1>Polls</h1>" in requests.get(base + "/svc/", timeout=10).text
            (tmp_path / "home.html").write_text("<h2>{{ title }}</h2>")
            edited = "<h2>Polls</h2>" in requests.get(base + "/svc/", timeout=10).text
            assert edited is shows_edit, dev_mode

"""Services written for the original PlugIt, as they are: their protocol name, their habits."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
from proxy_helpers import Browser, ScriptedService

from plugit_core.proxy.app import ProxyApp
from plugit_core.testing import serve


@pytest.fixture
def original() -> Iterator[tuple[ScriptedService, Browser]]:
    service = ScriptedService()
    service.version = {"result": "Ok", "version": "1", "protocol": "plugit-sample"}
    service.page("", "<p id='home'>polls</p>")
    with serve(service) as url:
        config = {"dev_mode": True, "services": [{"name": "polls", "url": url}]}
        proxy = ProxyApp(config, load_entry_points=False)
        try:
            with serve(proxy) as base, Browser(base, proxy) as browser:
                yield service, browser
        finally:
            proxy.close()


def test_any_protocol_name_with_version_1_is_accepted_with_a_warning(original, caplog) -> None:
    _service, browser = original
    with caplog.at_level(logging.WARNING, logger="plugit.proxy.upstream"):
        for _ in range(2):
            assert browser.get("/polls/").status_code == 200
        browser.proxy.check_services()  # asked again: still one warning
    records = caplog.get_records("setup") + caplog.records  # the proxy checks at start-up
    warnings = [r for r in records if "names its protocol" in r.getMessage()]
    assert len(warnings) == 1
    assert "'plugit-sample'" in warnings[0].getMessage()


def test_a_refused_service_is_checked_again_later(original) -> None:
    service, browser = original
    proxy = browser.proxy
    service.version = {"result": "Ok", "version": "2", "protocol": "EBUio-PlugIt"}
    proxy.check_services()
    refused = browser.get("/polls/")
    assert refused.status_code == 502
    assert "incompatible" in refused.text
    service.version = {"result": "Ok", "version": "1", "protocol": "EBUio-PlugIt"}  # redeployed
    assert browser.get("/polls/").status_code == 502  # not before its next check is due
    proxy.clients.recheck_refused = 0.0
    assert browser.get("/polls/").status_code == 200
    assert proxy.clients["polls"].compatible is True


def test_the_csrftoken_cookie_holds_the_mounts_token_for_scripts(make_browser) -> None:
    browser = make_browser()
    browser.as_user("log")
    page = browser.get("/svc/")
    token = browser.csrf("/svc/")
    cookie = next(c for c in browser.cookies if c.name == "csrftoken")
    assert cookie.value == token
    assert cookie.path == "/svc/"  # no other mount's page sees it
    assert "httponly" not in {k.lower() for k in cookie._rest}  # scripts read it
    assert "csrftoken=" in page.headers["Set-Cookie"]
    # What client code written for the original does: send it back as X-CSRFToken.
    posted = browser.post("/svc/echo", data={"x": "1"}, headers={"X-CSRFToken": cookie.value})
    assert posted.status_code == 200
    assert ["x", "1"] in posted.json()["form"]
    forged = browser.post("/svc/echo", data={"x": "1"}, headers={"X-CSRFToken": "forged"})
    assert forged.status_code == 403
    # Set once: a page that finds the browser's copy right does not set it again.
    assert "csrftoken" not in browser.get("/svc/").headers.get("Set-Cookie", "")

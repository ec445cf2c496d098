"""A service written for the original PlugIt, in Chromium, through the legacy theme.

The service (tests/data/original_polls/) is written as original services were: decorated
actions with the original's vocabulary, its settings in config.py (protocol name
``plugit-sample``), Django-syntax templates extending ``plugIt/base.html`` with Bootstrap 3
markup and jQuery code, media files. It is served by ``plugit service actions.py`` and mounted
by ``plugit proxy`` twice: ``trust = "full"`` (its scripts run, as with the original proxy) and
``trust = "sandboxed"`` (its scripts are removed, its pages still work).
"""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
from browser_helpers import all_css, click_to_load, css, switch_user, wait_for, wait_until

from plugit_core.testing import free_port, wait_for_port

pytestmark = pytest.mark.browser

SERVICE = Path(__file__).resolve().parents[1] / "data" / "original_polls"
LEGACY = "/_plugit/themes/legacy/"


@dataclass
class Site:
    url: str
    data: Path
    logs: list[Path]

    def server_errors(self) -> list[str]:
        """Access-log lines of the proxy and the service with a 5xx status."""
        lines = []
        for log in self.logs:
            for line in log.read_text(errors="replace").splitlines():
                if re.search(r'" 5\d\d ', line) or "Traceback" in line:
                    lines.append(line)
        return lines


def _start(command: list[str], log: Path, cwd: Path, env: dict[str, str]) -> subprocess.Popen:
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "plugit_core.cli", *command],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **env},
        )


def _stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    data = tmp_path_factory.mktemp("original-polls")
    service_port, proxy_port = free_port(), free_port()
    (data / "plugit.toml").write_text(
        f"""
dev_mode = true
site_name = "Original services"

[[services]]
name = "polls"
url = "http://127.0.0.1:{service_port}"
mount = "/polls/"
theme = "legacy"
trust = "full"
template_dialect = "django"
layout = "menu"

[[services]]
name = "sandboxed_polls"
title = "Polls (sandboxed)"
url = "http://127.0.0.1:{service_port}"
mount = "/sandboxed-polls/"
theme = "legacy"
template_dialect = "django"
layout = "menu"
"""
    )
    service_log, proxy_log = data / "service.log", data / "proxy.log"
    # served as its author serves it: `plugit service actions.py`, its config.py beside it
    processes = [
        _start(
            ["service", str(SERVICE / "actions.py"), "--port", str(service_port)],
            service_log,
            data,
            {"POLLS_DATABASE": str(data / "polls.db"), "POLLS_EXPORTS": str(data / "exports")},
        )
    ]
    try:
        wait_for_port("127.0.0.1", service_port, timeout=60)
        processes.append(
            _start(
                ["proxy", "--config", str(data / "plugit.toml"), "--port", str(proxy_port)],
                proxy_log,
                data,
                {},
            )
        )
        wait_for_port("127.0.0.1", proxy_port, timeout=60)
        yield Site(f"http://127.0.0.1:{proxy_port}", data, [service_log, proxy_log])
    finally:
        for process in processes:
            _stop(process)
        for log in (service_log, proxy_log):
            print(f"--- {log.name}\n{log.read_text(errors='replace')[-3000:]}")


# -- browser helpers ------------------------------------------------------------------------------


def console(driver: Any) -> list[dict[str, Any]]:
    """The console's messages since the last call (errors, warnings, logs)."""
    return driver.get_log("browser")


def errors(entries: list[dict[str, Any]]) -> list[str]:
    return [e["message"] for e in entries if e["level"] == "SEVERE"]


def row(driver: Any, title: str) -> Any:
    """The results table row of the response called ``title``."""
    for tr in all_css(driver, "#poll table tr"):
        if tr.find_element("css selector", "td").text == title:
            return tr
    raise AssertionError(f"no response {title!r} on the page")


def votes(driver: Any) -> dict[str, int]:
    counts = {}
    for tr in all_css(driver, "#poll table tr"):
        cells = tr.find_elements("css selector", "td")
        counts[cells[0].text] = int(tr.find_element("css selector", ".votes").text)
    return counts


def fetch(driver: Any, url: str, method: str = "GET", body: str | None = None, headers=None):
    """``fetch()`` in the page: (status, content type, text)."""
    return driver.execute_async_script(
        """
        const [url, method, body, headers, done] = arguments;
        fetch(url, {method, body, headers, credentials: 'same-origin'})
            .then(r => r.text().then(t => done([r.status, r.headers.get('content-type'), t])))
            .catch(e => done([0, null, String(e)]));
        """,
        url,
        method,
        body,
        headers or {},
    )


def xstatic_file(module: str, path: str) -> bytes:
    import importlib

    return (Path(importlib.import_module(module).BASE_DIR) / path).read_bytes()


# -- the tests ------------------------------------------------------------------------------------


def test_list_show_vote_json_file_and_media(driver, site, tmp_path):
    """An original service in the legacy theme, its own scripts running: the list, a poll, a
    vote by form and one by AJAX (the csrftoken cookie sent as X-CSRFToken), the JSON action
    read by jQuery and by the page, a file download, media files; no error in the console."""
    polls = site.url + "/polls/"
    driver.get(polls)
    console(driver)  # what earlier pages left
    driver.get(polls)
    entries = console(driver)
    assert errors(entries) == [], errors(entries)  # e.g. "ReferenceError: $ is not defined"
    # the service's inline $(function () {...}) ran
    assert css(driver, "#poll-list").get_attribute("data-ready") == "yes"
    assert [i.find_element("css selector", "a").text for i in all_css(driver, ".poll-item")][
        -2:
    ] == ["Best editor", "Lunch on Friday?"]

    # jQuery, jQuery Migrate and Bootstrap 3 are the theme's, served by the proxy from the
    # XStatic packages; nothing comes from another host
    loaded = driver.execute_script(
        """
        return {
            jquery: window.jQuery ? jQuery.fn.jquery : null,
            migrate: window.jQuery ? jQuery.migrateVersion : null,
            bootstrap: window.jQuery && jQuery.fn.tooltip ? jQuery.fn.tooltip.Constructor.VERSION
                                                           : null,
            scripts: Array.from(document.scripts).filter(s => s.src).map(s => s.src),
            resources: performance.getEntriesByType('resource').map(e => e.name),
        };
        """
    )
    assert loaded["jquery"].startswith("3.")
    assert loaded["migrate"].startswith("3.")
    assert loaded["bootstrap"] == "3.3.7"
    assert loaded["scripts"] == [
        site.url + LEGACY + "jquery/jquery.min.js",
        site.url + LEGACY + "jquery-migrate/jquery-migrate.min.js",
        site.url + LEGACY + "bootstrap3/js/bootstrap.min.js",
    ]
    assert all(r.startswith(site.url + "/") for r in loaded["resources"]), loaded["resources"]
    assert site.url + LEGACY + "bootstrap3/css/bootstrap.min.css" in loaded["resources"]
    with requests.Session() as http:
        assert http.get(site.url + LEGACY + "jquery/jquery.min.js").content == xstatic_file(
            "xstatic.pkg.jquery", "jquery.min.js"
        )
        assert http.get(
            site.url + LEGACY + "bootstrap3/js/bootstrap.min.js"
        ).content == xstatic_file("xstatic.pkg.bootstrap", "js/bootstrap.min.js")

    # Bootstrap 3 styles and glyphicons apply; the service's media (its stylesheet and an
    # image) load through the mount
    assert (
        css(driver, "nav.navbar").value_of_css_property("background-color") == "rgba(34, 34, 34, 1)"
    )
    glyphicons = driver.execute_async_script(
        """
        const done = arguments[0];
        document.fonts.ready.then(() => done(Array.from(document.fonts)
            .filter(f => f.family.includes('Glyphicons')).map(f => f.status)));
        """
    )
    assert "loaded" in glyphicons
    badge = css(driver, ".poll-item .badge")
    assert badge.value_of_css_property("background-color") == "rgba(51, 122, 183, 1)"  # polls.css
    logo = css(driver, "#polls-logo")
    assert logo.get_attribute("src") == polls + "media/ballot.svg"
    assert driver.execute_script("return arguments[0].complete && arguments[0].naturalWidth", logo)
    assert driver.execute_script("return arguments[0].naturalWidth", logo) == 32

    # the menu block (through {% plugitInclude "menu" %}) in the left column
    assert css(driver, "#plugit-menu #menu-list").text.strip() == "All polls"
    assert not all_css(driver, "#plugit-menu #menu-create")  # anonymous: no "New poll"

    # show a poll; anonymous visitors get no vote buttons; an unknown poll is abort(404)
    click_to_load(driver, driver.find_element("link text", "Lunch on Friday?"))
    assert wait_for(driver, "#poll-title").text == "Lunch on Friday?"
    assert not all_css(driver, ".vote-form")
    poll_url = driver.current_url
    assert poll_url == polls + "show/1"
    entries += console(driver)
    assert errors(entries) == [], errors(entries)
    driver.get(polls + "show/999")
    assert css(driver, "#plugit-error").get_attribute("data-status") == "404"
    assert [m.split(" - ")[0] for m in errors(console(driver))] == [polls + "show/999"]

    # a member votes with the form: the service's PlugItRedirect brings the poll back
    driver.get(poll_url)
    switch_user(driver, "mem")
    assert css(driver, "#plugit-menu #menu-create")
    click_to_load(driver, row(driver, "Sushi").find_element("css selector", ".vote-button"))
    wait_for(driver, "#poll tr.voted")
    assert driver.current_url == poll_url
    assert votes(driver) == {"Pizza": 0, "Sushi": 1, "Salad": 0}
    assert css(driver, "#total-votes").text == "1"

    # the csrftoken cookie: JavaScript-readable, for this mount only
    cookie = driver.get_cookie("csrftoken")
    assert cookie is not None and cookie["path"] == "/polls/" and not cookie["httpOnly"]

    # a vote by AJAX, as jQuery code written for the original sends it ($.post with the
    # cookie as X-CSRFToken, then .success() restored by jQuery Migrate): the page updates
    # without reloading, the earlier vote is replaced
    page = css(driver, "html")
    row(driver, "Pizza").find_element("css selector", ".ajax-vote").click()
    message = wait_for(driver, "#vote-message.alert-success")
    wait_until(driver, lambda d: message.is_displayed())
    assert message.text == "Your vote was counted."
    assert votes(driver) == {"Pizza": 1, "Sushi": 0, "Salad": 0}
    assert "voted" in row(driver, "Pizza").get_attribute("class")
    assert "voted" not in (row(driver, "Sushi").get_attribute("class") or "")
    assert page.is_displayed()  # the same document: no reload
    restored = " ".join(driver.execute_script("return jQuery.migrateWarnings"))
    assert "jQuery.trim is deprecated" in restored  # the cookie reader of Django's docs
    assert "jQXHR.success is deprecated" in restored
    driver.refresh()
    wait_for(driver, "#poll-title")
    assert votes(driver) == {"Pizza": 1, "Sushi": 0, "Salad": 0}

    entries += console(driver)
    assert errors(entries) == [], errors(entries)

    # the same AJAX post without the token, or with another one, is refused before the service
    # sees it
    token = cookie["value"]
    for headers in ({}, {"X-CSRFToken": token[::-1]}):
        status, _, _ = fetch(
            driver,
            polls + "ajax/vote/1",
            "POST",
            "response=3",
            {"Content-Type": "application/x-www-form-urlencoded", **headers},
        )
        assert status == 403
    status, _, _ = fetch(
        driver,
        polls + "ajax/vote/1",
        "POST",
        "response=3",
        {"Content-Type": "application/x-www-form-urlencoded", "X-CSRFToken": token},
    )
    assert status == 200
    assert [m.split(" - ")[0] for m in errors(console(driver))] == [polls + "ajax/vote/1"] * 2

    # the JSON action: read by the page's $.getJSON (Refresh) and by fetch()
    css(driver, "#refresh").click()
    wait_for(driver, '#poll[data-refreshed="yes"]')
    assert votes(driver) == {"Pizza": 0, "Sushi": 0, "Salad": 1}
    status, content_type, text = fetch(driver, polls + "results/1")
    assert (status, content_type) == (200, "application/json")
    data = json.loads(text)
    assert data["total"] == 1
    assert [(r["title"], r["votes"], r["percent"]) for r in data["responses"]] == [
        ("Pizza", 0, 0),
        ("Sushi", 0, 0),
        ("Salad", 1, 100),
    ]

    # a file: PlugItSendFile as an attachment, downloaded by the browser
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    driver.execute_cdp_cmd(
        "Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)}
    )
    css(driver, "#export").click()
    saved = downloads / "poll-1.csv"
    wait_until(driver, lambda d: saved.exists() and not list(downloads.glob("*.crdownload")))
    with saved.open(newline="") as f:
        assert list(csv.reader(f)) == [
            ["response", "votes"],
            ["Pizza", "0"],
            ["Sushi", "0"],
            ["Salad", "1"],
        ]

    # an administrator also sees who voted (the service reads ebuio_u_ebuio_admin == "True")
    assert not all_css(driver, "#voters")
    switch_user(driver, "adm")
    assert [v.text for v in all_css(driver, "#voters li")] == ["Member"]

    # no script error on any page
    entries += console(driver)
    assert errors(entries) == [], errors(entries)
    # the service's protocol name was accepted, with a warning in the proxy's log
    assert "'plugit-sample'" in site.logs[1].read_text()
    assert site.server_errors() == []


def test_create_a_poll_with_a_row_added_by_plus(driver, site):
    """The create form: its "+" button (jQuery code using .size(), which jQuery 3 removed and
    jQuery Migrate restores) adds a response row; the poll is created with every row."""
    polls = site.url + "/polls/"
    driver.get(polls + "create/")
    console(driver)
    switch_user(driver, "mem")
    wait_for(driver, "#create-form")
    assert len(all_css(driver, "#responses input")) == 2

    # too few responses: the form comes back with the errors and what was typed
    css(driver, "#title").send_keys("Team outing")
    all_css(driver, "#responses input")[0].send_keys("Bowling")
    click_to_load(driver, css(driver, "#create-submit"))
    assert "Give at least two responses." in wait_for(driver, "#errors").text
    assert css(driver, "#title").get_attribute("value") == "Team outing"

    css(driver, "#add-response").click()
    wait_until(driver, lambda d: len(all_css(d, "#responses .response-row")) == 3)
    labels = [e.text for e in all_css(driver, "#responses .response-row label")]
    assert labels == ["Response 1", "Response 2", "Response 3"]
    inputs = all_css(driver, "#responses input")
    assert [i.get_attribute("value") for i in inputs] == ["Bowling", "", ""]
    restored = driver.execute_script("return jQuery.migrateWarnings")
    assert any("jQuery.fn.size() is deprecated" in w for w in restored), restored
    assert driver.switch_to.active_element == inputs[2]  # the new row has the focus
    inputs[1].send_keys("Karaoke")
    inputs[2].send_keys("Escape room")
    css(driver, "#description").send_keys("Friday afternoon")
    click_to_load(driver, css(driver, "#create-submit"))

    assert wait_for(driver, "#poll-title").text == "Team outing"
    assert re.fullmatch(re.escape(polls) + r"show/\d+", driver.current_url)
    assert votes(driver) == {"Bowling": 0, "Karaoke": 0, "Escape room": 0}
    driver.get(polls)
    wait_for(driver, '#poll-list[data-ready="yes"]')
    assert css(driver, ".poll-item a").text == "Team outing"  # newest first

    entries = console(driver)
    assert errors(entries) == [], errors(entries)
    assert site.server_errors() == []


def test_sandboxed_mount_removes_the_scripts_and_still_works(driver, site):
    """The same service mounted trust = "sandboxed": its pages show without its scripts and
    stylesheet, under the strict policy, and its forms still work without JavaScript."""
    sandboxed = site.url + "/sandboxed-polls/"
    with requests.Session() as http:
        for path in ("", "show/2", "results/2"):
            reply = http.get(sandboxed + path)
            assert reply.status_code == 200, path
            assert "Content-Security-Policy" in reply.headers
        page = http.get(sandboxed + "show/2").text
        content = page[page.index('id="plugit-content"') :]
        assert "<script" not in content and "$(document)" not in content
        assert "nonce-" in http.get(sandboxed).headers["Content-Security-Policy"]

    driver.get(sandboxed)
    console(driver)
    switch_user(driver, "mem")
    wait_for(driver, "#poll-list")
    assert len(all_css(driver, ".poll-item")) >= 2
    assert css(driver, "#poll-list").get_attribute("data-ready") is None  # its script is gone
    assert not all_css(driver, "#plugit-content script, #plugit-content link")
    assert driver.execute_script("return window.jQuery.fn.jquery").startswith("3.")  # the theme's
    badge = css(driver, ".poll-item .badge")
    assert badge.value_of_css_property("background-color") != "rgba(51, 122, 183, 1)"

    # "+" does nothing without the service's script; the form still creates a poll
    driver.get(sandboxed + "create/")
    wait_for(driver, "#create-form")
    css(driver, "#add-response").click()
    assert len(all_css(driver, "#responses input")) == 2
    css(driver, "#title").send_keys("Sandboxed poll")
    inputs = all_css(driver, "#responses input")
    inputs[0].send_keys("Yes")
    inputs[1].send_keys("No")
    click_to_load(driver, css(driver, "#create-submit"))
    assert wait_for(driver, "#poll-title").text == "Sandboxed poll"

    # voting with the form needs no script
    click_to_load(driver, row(driver, "No").find_element("css selector", ".vote-button"))
    wait_for(driver, "#poll tr.voted")
    assert votes(driver) == {"Yes": 0, "No": 1}
    row(driver, "Yes").find_element("css selector", ".ajax-vote").click()  # no handler: nothing
    assert css(driver, "#vote-message").text == ""
    assert votes(driver) == {"Yes": 0, "No": 1}

    entries = console(driver)
    assert errors(entries) == [], errors(entries)
    assert site.server_errors() == []

"""A page composed of fragments of several services, in a real browser.

The demo as users start it (``plugit demo``): its home is a site page of fragments of the voting
and news services, and its theme shows the news headlines, a fragment, beside every page.  Then
the same site, served in-process, with the news service hung on the home's fragment: the page
still arrives, by that fragment's timeout, with the fragment's fallback and everything else.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from browser_helpers import all_css, click_to_load, css, switch_user, wait_for

from plugit_contrib.demo import DemoTheme, demo_config, make_demo_theme
from plugit_contrib.examples.news import create_app as create_news
from plugit_contrib.examples.voting import create_app as create_voting
from plugit_contrib.examples.voting.db import seed
from plugit_core.proxy.app import ProxyApp
from plugit_core.testing import serve

pytestmark = pytest.mark.browser


def console_errors(driver: Any) -> list[dict[str, Any]]:
    return [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def fragment(driver: Any, name: str) -> Any:
    return css(driver, f'section.plugit-fragment[data-plugit-fragment="{name}"]')


def test_the_demo_home_is_composed_of_both_services_and_the_sidebar(driver, demo) -> None:
    driver.get_log("browser")  # start with an empty console
    driver.get(demo + "/")
    wait_for(driver, "#plugit-page-title")
    assert css(driver, "#plugit-page-title").text == "Welcome"
    assert driver.title.startswith("Welcome")

    # the voting service's fragment: the seeded polls, newest first, linking to their pages
    polls = fragment(driver, "voting/latest")
    assert polls.find_element("css selector", ".plugit-fragment-title").text == "Latest polls"
    links = polls.find_elements("css selector", ".latest-poll a")
    assert [a.text for a in links] == [
        "Where should the next team meeting be?",
        "Which editor do you use?",
    ]
    assert links[0].get_attribute("href") == demo + "/voting/show/2"

    # the news service's fragment, beside it
    news = fragment(driver, "news/latest")
    assert news.find_element("css selector", ".plugit-fragment-title").text == "News"
    items = news.find_elements("css selector", ".news-latest-item h3 a")
    assert len(items) == 3
    assert items[0].text == "Pages composed of several services"
    assert "back soon" not in news.text  # no fallback: the service answered

    # the theme's sidebar region: the news headlines, a fragment of its own
    headlines = all_css(driver, "#demo-sidebar .news-headline a")
    assert [a.text for a in headlines] == [a.text for a in items]

    # both fragments asked for the news stylesheet: it is in the head once, and applied
    assert len(all_css(driver, 'head link[rel="stylesheet"][href$="/news/media/news.css"]')) == 1
    assert len(all_css(driver, 'head link[rel="stylesheet"][href$="voting.css"]')) == 1
    assert (
        css(driver, "#news-headlines li:last-child").value_of_css_property("border-bottom-style")
        == "none"
    )
    assert console_errors(driver) == []  # under the page's strict CSP

    # the same sidebar on the services' own pages
    click_to_load(driver, headlines[1])
    title = wait_for(driver, "#news-title")
    assert title.text == "New coffee machine on the second floor"
    assert len(all_css(driver, "#demo-sidebar .news-headline")) == 3
    driver.get(demo + "/voting/")
    wait_for(driver, "#poll-list")
    assert len(all_css(driver, "#demo-sidebar .news-headline")) == 3
    assert console_errors(driver) == []


def test_news_posted_by_a_member_reaches_the_home_and_the_sidebar(driver, demo) -> None:
    driver.get(demo + "/news/")
    wait_for(driver, "#news-list")
    switch_user(driver, "mem")
    driver.get(demo + "/news/post")
    wait_for(driver, "#post-form")
    css(driver, "#news-title-input").send_keys("Fragments <everywhere>")
    css(driver, "#news-summary-input").send_keys("Posted from the test")
    click_to_load(driver, css(driver, "#post-submit"))
    assert wait_for(driver, "#news-title").text == "Fragments <everywhere>"
    switch_user(driver, "ano")

    # on the home page and in the sidebar once the fragments' cache entries (5 s) have expired
    def shown(driver: Any) -> bool:
        driver.get(demo + "/")
        latest = fragment(driver, "news/latest").find_elements("css selector", "h3 a")
        sidebar = all_css(driver, "#demo-sidebar .news-headline a")
        return bool(latest and sidebar) and latest[0].text == sidebar[0].text == (
            "Fragments <everywhere>"
        )

    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, 20, poll_frequency=0.5).until(shown)


class Hang:
    """A service that never answers one action: the call waits until the test releases it
    (longer than the browser waits for a page), every other request is the service's."""

    def __init__(self, app: Callable[..., Any], path: str) -> None:
        self.app = app
        self.path = path
        self.release = threading.Event()
        self.started = 0
        self.finished = 0
        self._lock = threading.Lock()

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        if environ.get("PATH_INFO") == self.path:
            with self._lock:
                self.started += 1
            try:
                self.release.wait(120)
            finally:
                with self._lock:
                    self.finished += 1
        return self.app(environ, start_response)


@pytest.fixture
def hung_site(tmp_path: Path) -> Iterator[tuple[str, Hang]]:
    """The demo's site served in-process, its news service hung on ``/latest`` (the home's
    fragment, 1 s timeout) while its mount allows 90 s: longer than the browser waits."""
    database = tmp_path / "voting.sqlite3"
    seed(str(database))
    voting_secret, news_secret = "voting-secret-" + "v" * 32, "news-secret-" + "n" * 32
    news = Hang(create_news(secret=news_secret), "/action/latest")
    with contextlib.ExitStack() as stack:
        voting_url = stack.enter_context(serve(create_voting(database, secret=voting_secret)))
        news_url = stack.enter_context(serve(news))
        config = demo_config(voting_url, voting_secret, news_url, news_secret, fragment_timeout=1.0)
        for mount in config["services"]:
            mount["timeout"] = 90
        proxy = ProxyApp(
            config, plugins=(DemoTheme(make_demo_theme(tmp_path)),), load_entry_points=False
        )
        stack.callback(proxy.close)
        stack.callback(news.release.set)  # before the proxy and the services stop
        yield stack.enter_context(serve(proxy)), news


def test_a_hung_fragment_leaves_the_page_its_fallback_within_its_timeout(driver, hung_site) -> None:
    url, news = hung_site
    driver.get_log("browser")
    # The browser gives up on a page after 30 s and the news mount's timeout is 90 s: the page
    # can only arrive by the fragment's own timeout (1 s).
    driver.get(url + "/")
    assert css(driver, "#plugit-page-title").text == "Welcome"
    assert news.started == 1 and news.finished == 0  # still hung when the page was shown

    hung = fragment(driver, "news/latest")
    assert hung.text.splitlines() == ["News", "The news will be back soon."]
    assert not hung.find_elements("css selector", ".news-latest-item")

    # the rest of the page: the other service's fragment and the same service's sidebar
    polls = fragment(driver, "voting/latest").find_elements("css selector", ".latest-poll a")
    assert [a.text for a in polls] == [
        "Where should the next team meeting be?",
        "Which editor do you use?",
    ]
    assert len(all_css(driver, "#demo-sidebar .news-headline")) == 3
    assert console_errors(driver) == []

    # the service's other pages answer meanwhile
    driver.get(url + "/news/")
    assert len(all_css(driver, "#news-list .news-item")) == 3
    assert news.finished == 0

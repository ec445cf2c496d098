"""The demo in a real browser: `plugit demo` started as users start it, then clicked through."""

from __future__ import annotations

import pytest
from browser_helpers import all_css, click_to_load, css, switch_user, wait_for

pytestmark = pytest.mark.browser


def test_switch_user_create_a_poll_and_vote(driver, demo, tmp_path):
    driver.get(demo + "/voting/")
    wait_for(driver, "#poll-list")
    assert "Polls" in driver.title
    seeded = len(all_css(driver, ".poll-item"))
    assert seeded >= 1
    assert css(driver, "#plugit-user").get_attribute("data-authenticated") == "false"

    # anonymous visitors may not create polls
    driver.get(demo + "/voting/create/")
    assert css(driver, "#plugit-error").get_attribute("data-status") == "403"

    # become a member through the dev bar, then create a poll
    switch_user(driver, "mem")
    assert css(driver, "#plugit-user").get_attribute("data-authenticated") == "true"
    driver.get(demo + "/voting/create/")
    wait_for(driver, "#create-form")
    css(driver, 'input[name="title"]').send_keys("Where do we eat <today>?")
    css(driver, 'textarea[name="description"]').send_keys("Friday lunch")
    answers = all_css(driver, 'input[name="rep[]"]')
    answers[0].send_keys("Pizza")
    answers[1].send_keys("Sushi")
    click_to_load(driver, css(driver, "#create-submit"))
    title = wait_for(driver, "#poll-title")
    assert title.text == "Where do we eat <today>?"  # shown as text, escaped in the HTML
    assert css(driver, "#total-votes").text == "0"

    # vote for Sushi
    buttons = all_css(driver, "form.vote-form button")
    sushi = next(b for b in buttons if "Sushi" in b.find_element("xpath", "ancestor::li").text)
    click_to_load(driver, sushi)
    wait_for(driver, ".result-mine")
    assert css(driver, "#total-votes").text == "1"
    mine = css(driver, ".result-mine")
    assert "Sushi" in mine.text
    assert mine.find_element("css selector", ".result-count").text.startswith("1")

    # the new poll is on the list for everyone, anonymous included, once the list's page-cache
    # entry (5 s) has expired
    switch_user(driver, "ano")

    def listed(driver):
        driver.get(demo + "/voting/")
        return len(all_css(driver, ".poll-item")) == seeded + 1

    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, 20, poll_frequency=0.5).until(listed)
    assert "Where do we eat <today>?" in css(driver, "#poll-list").text
    driver.save_screenshot(str(tmp_path / "demo.png"))

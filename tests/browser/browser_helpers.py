"""What the browser tests share besides fixtures (imported by name: a conftest module is no
place to import from)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def css(driver: Any, selector: str) -> Any:
    """The element of the page matching the CSS ``selector``."""
    from selenium.webdriver.common.by import By

    return driver.find_element(By.CSS_SELECTOR, selector)


def all_css(driver: Any, selector: str) -> list[Any]:
    """Every element of the page matching the CSS ``selector``."""
    from selenium.webdriver.common.by import By

    return driver.find_elements(By.CSS_SELECTOR, selector)


def wait_until(driver: Any, condition: Callable[[Any], Any], timeout: float = 15) -> Any:
    """The first true value of ``condition(driver)``, polled every 0.1 s."""
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.1).until(condition)


def wait_for(driver: Any, selector: str, timeout: float = 15) -> Any:
    """The element matching ``selector``, once the page has one."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions

    return wait_until(
        driver,
        expected_conditions.presence_of_element_located((By.CSS_SELECTOR, selector)),
        timeout,
    )


def click_to_load(driver: Any, element: Any, timeout: float = 15) -> None:
    """Click ``element`` and wait until another document has replaced this one.

    The old document is recognised by a mark set in its window, never by one of its elements:
    asking Chrome about an element while its document is being replaced can fail with an error
    other than "stale element" ("Node with given id does not belong to the document")."""
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.support.ui import WebDriverWait

    driver.execute_script("window.plugitTestOldDocument = true;")
    element.click()

    def loaded(d: Any) -> bool:
        return bool(
            d.execute_script(
                "return window.plugitTestOldDocument === undefined"
                " && document.readyState !== 'loading';"
            )
        )

    # while the documents change hands, a script may not run: that is "not yet", not a failure
    WebDriverWait(
        driver, timeout, poll_frequency=0.1, ignored_exceptions=(WebDriverException,)
    ).until(loaded)


def switch_user(driver: Any, mode: str) -> None:
    """Become a simulated user with the dev bar (``ano``, ``log``, ``mem``, ``adm``)."""
    button = css(driver, f'#plugit-devbar button[data-plugit-mode="{mode}"]')
    if "active" in (button.get_attribute("class") or ""):
        return
    click_to_load(driver, button)
    wait_for(driver, f'#plugit-devbar button[data-plugit-mode="{mode}"].active')

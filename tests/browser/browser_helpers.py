"""What the browser tests share besides fixtures (imported by name: a conftest module is no
place to import from)."""

from __future__ import annotations

from typing import Any


def css(driver: Any, selector: str) -> Any:
    """The element of the page matching the CSS ``selector``."""
    from selenium.webdriver.common.by import By

    return driver.find_element(By.CSS_SELECTOR, selector)

"""Fixtures for the proxy tests: a real service and real proxies on loopback ports."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import proxy_service
import pytest
from proxy_helpers import SECRET, Browser, proxy_config

from plugit_core.proxy.app import ProxyApp
from plugit_core.testing import serve


@pytest.fixture(scope="session")
def service_url() -> Iterator[str]:
    with serve(proxy_service.make_app(secret=SECRET)) as url:
        yield url


@pytest.fixture
def calls() -> Any:
    proxy_service.calls.clear()
    return proxy_service.calls


@pytest.fixture
def make_browser(service_url: str) -> Iterator[Callable[..., Browser]]:
    """``make_browser(**config)``: a proxy built from ``config`` served over HTTP, and a client."""
    with contextlib.ExitStack() as stack:

        def factory(
            config: dict[str, Any] | None = None, plugins: tuple[Any, ...] = (), **top: Any
        ) -> Browser:
            proxy = ProxyApp(
                config or proxy_config(service_url, **top), plugins=plugins, load_entry_points=False
            )
            stack.callback(proxy.close)
            base = stack.enter_context(serve(proxy))
            browser = Browser(base, proxy)
            stack.callback(browser.close)
            return browser

        yield factory


@pytest.fixture
def browser(make_browser: Callable[..., Browser]) -> Browser:
    return make_browser()

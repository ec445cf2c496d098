"""Fixtures for the proxy tests: a real service and real proxies on loopback ports."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import proxy_service
import pytest
import requests

from plugit_core.proxy.app import ProxyApp
from plugit_core.testing import serve

SECRET = "service-secret-for-tests-0123456789"
STRONG_KEY = "k3y-for-tests-9f8e7d6c5b4a39281706f5e4d3c2b1a0"


@pytest.fixture(scope="session")
def service_url() -> Iterator[str]:
    with serve(proxy_service.make_app(secret=SECRET)) as url:
        yield url


@pytest.fixture
def calls() -> Any:
    proxy_service.calls.clear()
    return proxy_service.calls


def proxy_config(service_url: str, **top: Any) -> dict[str, Any]:
    services = top.pop("services", None)
    mount_options = top.pop("mount_options", {})
    config: dict[str, Any] = {
        "dev_mode": True,
        "services": services
        or [
            {"name": "svc", "url": service_url, "mount": "/svc/", "secret": SECRET, **mount_options}
        ],
    }
    config.update(top)
    return config


class Browser(requests.Session):
    """A requests session bound to a proxy's base URL, that never follows redirects."""

    def __init__(self, base: str, proxy: ProxyApp) -> None:
        super().__init__()
        self.base = base
        self.proxy = proxy

    def request(self, method: str, url: str, *args: Any, **kwargs: Any) -> requests.Response:  # type: ignore[override]
        kwargs["allow_redirects"] = False
        kwargs.setdefault("timeout", 10)
        return super().request(method, self.base + url, *args, **kwargs)

    def as_user(self, mode: str, mount: str = "/svc/") -> None:
        response = self.get(f"{mount}ebuio_setUser", params={"mode": mode})
        assert response.status_code == 200, response.text

    def csrf(self) -> str:
        """Load a page holding the CSRF field and return the token."""
        page = self.get("/svc/")
        marker = 'name="csrfmiddlewaretoken" value="'
        start = page.text.index(marker) + len(marker)
        return page.text[start : page.text.index('"', start)]


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

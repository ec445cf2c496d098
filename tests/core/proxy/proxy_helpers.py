"""What the proxy tests share besides fixtures: the service secret, configurations, a client.

Imported by name (``from proxy_helpers import ...``): a conftest module is no place to import
from, since every test folder has one.
"""

from __future__ import annotations

from typing import Any

import requests

from plugit_core.proxy.app import ProxyApp

SECRET = "service-secret-for-tests-0123456789"
STRONG_KEY = "k3y-for-tests-9f8e7d6c5b4a39281706f5e4d3c2b1a0"


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

    def csrf(self, mount: str = "/svc/") -> str:
        """Load a page of ``mount`` and return its CSRF token (each mount has its own)."""
        page = self.get(mount)
        marker = '<meta name="plugit-csrf-token" content="'
        start = page.text.index(marker) + len(marker)
        return page.text[start : page.text.index('"', start)]

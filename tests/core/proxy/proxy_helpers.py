"""What the proxy tests share besides fixtures: the service secret, configurations, a client.

Imported by name (``from proxy_helpers import ...``): a conftest module is no place to import
from, since every test folder has one.
"""

from __future__ import annotations

import hashlib
import json
import threading
from typing import Any

import requests
from werkzeug.wrappers import Request, Response

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


class ScriptedService:
    """A PlugIt service whose pages are given by the test: path -> meta, template, data."""

    def __init__(self) -> None:
        self.version: dict[str, Any] = {"result": "Ok", "version": "1", "protocol": "EBUio-PlugIt"}
        self.pages: dict[str, dict[str, Any]] = {}
        self.reply_headers: dict[str, str] = {}  # added to every action's reply
        self.seen: list[str] = []
        self._lock = threading.Lock()

    def page(self, path: str, template: str | None = "", data: Any = None, **meta: Any) -> None:
        self.pages[path] = {"template": template, "data": data or {}, "meta": meta}

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        request = Request(environ)
        with self._lock:
            self.seen.append(request.path)
        kind, _, path = request.path.lstrip("/").partition("/")
        if kind == "version":
            body: Any = self.version
        elif kind == "media":
            return Response(f"media {path}", mimetype="text/html")(environ, start_response)
        elif path not in self.pages or kind not in ("meta", "template", "action"):
            return Response("no", status=404)(environ, start_response)
        else:
            page = self.pages[path]
            template = page["template"] or ""
            if kind == "meta":
                tag = hashlib.md5(template.encode()).hexdigest() if template else ""
                body = {"template_tag": tag, **page["meta"]}
            elif kind == "template":
                return Response(template)(environ, start_response)
            else:
                body = page["data"]
                reply = Response(json.dumps(body), mimetype="application/json")
                reply.headers.update(self.reply_headers)
                return reply(environ, start_response)
        return Response(json.dumps(body), mimetype="application/json")(environ, start_response)

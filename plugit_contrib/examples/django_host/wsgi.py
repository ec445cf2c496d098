"""WSGI entry point of the Django host example: Django wrapped with the PlugIt proxy.

``application`` (what ``runserver``, gunicorn or any WSGI server loads) is built on first use
from ``settings.PLUGIT``; :func:`create_application` builds one from another configuration.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

from plugit_contrib.django import PlugItDjangoMiddleware, wrap_django_wsgi
from plugit_core.config import ProxyConfig

__all__ = ["create_application"]  # and `application`, built on first use

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "plugit_contrib.examples.django_host.settings")

_lock = threading.Lock()
_application: PlugItDjangoMiddleware | None = None


def create_application(
    plugit_config: ProxyConfig | dict[str, Any] | str | Path | None = None, **options: Any
) -> PlugItDjangoMiddleware:
    """Django's WSGI application behind the PlugIt proxy (``settings.PLUGIT`` by default)."""
    from django.conf import settings
    from django.core.wsgi import get_wsgi_application
    from django.urls import reverse

    django_app = get_wsgi_application()  # sets Django up first
    config = settings.PLUGIT if plugit_config is None else plugit_config
    options.setdefault("login_url", settings.LOGIN_URL)
    # The layout's "Log out" posts there with the visitor's Django CSRF token.
    options.setdefault("logout_url", reverse("logout"))
    return wrap_django_wsgi(django_app, config, **options)


def __getattr__(name: str) -> Any:
    # ``application`` is built when a server first asks for it, not when the module is imported
    # (so importing this module contacts no service).
    global _application
    if name != "application":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    with _lock:
        if _application is None:
            _application = create_application()
        return _application

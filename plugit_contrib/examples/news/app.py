"""Build the news service: :func:`create_app` returns a ready WSGI application."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from werkzeug.wrappers import Response

from plugit_core.service import PlugItService, ServiceRequest

from . import actions
from .store import NewsStore

__all__ = ["MEDIA_DIR", "TEMPLATES_DIR", "NewsService", "create_app"]

HERE = Path(__file__).resolve().parent
TEMPLATES_DIR = HERE / "templates"
MEDIA_DIR = HERE / "media"


class NewsService(PlugItService):
    """The news actions served with their items (``service.store``)."""

    def __init__(self, store: NewsStore, **settings: Any) -> None:
        self.store = store
        super().__init__(actions, **settings)

    def handle(self, request: ServiceRequest) -> Response:
        request.environ[actions.STORE_ENVIRON_KEY] = self.store
        return super().handle(request)


def create_app(store: NewsStore | None = None, **settings: Any) -> NewsService:
    """The news service, with ``store`` (a new one holding the sample items by default).

    ``settings`` are the service's (:class:`plugit_core.service.ServiceConfig`): ``secret``,
    ``debug``, ``allowed_networks`` ...; the templates and media folders default to the ones
    beside this module.
    """
    settings = {key: value for key, value in settings.items() if value is not None}
    settings.setdefault("templates", str(TEMPLATES_DIR))
    settings.setdefault("media", str(MEDIA_DIR))
    settings.setdefault("project_name", "News")
    return NewsService(store if store is not None else NewsStore(), **settings)

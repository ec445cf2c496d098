"""Build the voting service: :func:`create_app` returns a ready WSGI application."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from werkzeug.wrappers import Response

from plugit_core.service import PlugItService, ServiceRequest

from . import actions
from .db import Database

__all__ = [
    "DATABASE_ENV",
    "DEFAULT_DATABASE",
    "MEDIA_DIR",
    "TEMPLATES_DIR",
    "VotingService",
    "create_app",
]

HERE = Path(__file__).resolve().parent
TEMPLATES_DIR = HERE / "templates"
MEDIA_DIR = HERE / "media"
DATABASE_ENV = "PLUGIT_DATABASE"
DEFAULT_DATABASE = "voting.sqlite3"


class VotingService(PlugItService):
    """The voting actions served with their database (``service.db``)."""

    def __init__(self, db: Database, **settings: Any) -> None:
        self.db = db
        super().__init__(actions, mail_callback=actions.mail_callback, **settings)

    def handle(self, request: ServiceRequest) -> Response:
        request.environ[actions.DB_ENVIRON_KEY] = self.db
        return super().handle(request)


def create_app(database: str | os.PathLike[str] | None = None, **settings: Any) -> VotingService:
    """The voting service, storing its data in the SQLite file ``database``.

    ``database`` defaults to the environment variable ``PLUGIT_DATABASE``, else
    ``voting.sqlite3`` in the current directory; the file and its tables are created on first
    use.  ``settings`` are the service's (:class:`plugit_core.service.ServiceConfig`): ``secret``,
    ``debug``, ``allowed_networks``, ``base_url`` ...; the templates and media folders default to
    the ones beside this module.
    """
    if database is None:
        database = os.environ.get(DATABASE_ENV) or DEFAULT_DATABASE
    settings = {key: value for key, value in settings.items() if value is not None}
    settings.setdefault("templates", str(TEMPLATES_DIR))
    settings.setdefault("media", str(MEDIA_DIR))
    settings.setdefault("project_name", "SimplePolls")
    return VotingService(Database(database), **settings)

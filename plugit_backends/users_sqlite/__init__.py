"""The embedded directory: users, organisations and memberships in one SQLite file (stdlib).

Configuration::

    users = "sqlite"          # the default as soon as an auth backend is configured

    [users_sqlite]
    path = "plugit.sqlite3"   # relative to the working directory

The store is :class:`plugit_backends.sql.users.SQLUserStore`, shared with ``users_postgres``,
on a :class:`plugit_backends.sql.sqlite.SQLiteDatabase`: the file is in WAL mode so readers never
wait for the writer, a write of several statements is one ``BEGIN IMMEDIATE`` transaction, and
connections come from a small pool shared by the threads.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from plugit_backends.sql.sqlite import SQLiteDatabase, check_file
from plugit_backends.sql.users import FAILURE_RETENTION, SQLUserStore
from plugit_core.backends import RegisterBackend
from plugit_core.config import ProxyConfig
from plugit_core.hookspecs import hookimpl
from plugit_core.settings import file_path, setting
from plugit_core.stores import (
    DEFAULT_MAX_WAITERS,
    DEFAULT_WAIT,
    WaitingGuardSettings,
)

__all__ = ["FAILURE_RETENTION", "SCHEMA_VERSION", "STEPS", "SQLiteUserStore"]

# Version 1: the tables.
SCHEMA = """
CREATE TABLE IF NOT EXISTS users (
    id INTEGER PRIMARY KEY,
    uuid TEXT NOT NULL UNIQUE,
    username TEXT NOT NULL UNIQUE COLLATE NOCASE,
    email TEXT NOT NULL DEFAULT '',
    first_name TEXT NOT NULL DEFAULT '',
    last_name TEXT NOT NULL DEFAULT '',
    password_hash TEXT,
    source TEXT NOT NULL DEFAULT 'local',
    external_id TEXT,
    is_superuser INTEGER NOT NULL DEFAULT 0,
    active INTEGER NOT NULL DEFAULT 1,
    created REAL NOT NULL,
    UNIQUE (source, external_id)
);
CREATE TABLE IF NOT EXISTS orgas (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE COLLATE NOCASE,
    codops TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS service_roles (
    user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    service TEXT NOT NULL,
    role TEXT NOT NULL CHECK (role IN ('member', 'admin')),
    source TEXT NOT NULL DEFAULT 'local',
    PRIMARY KEY (user_id, service, source)
);
CREATE INDEX IF NOT EXISTS service_roles_service ON service_roles (service);
CREATE TABLE IF NOT EXISTS orga_members (
    user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    orga_id INTEGER NOT NULL REFERENCES orgas(id) ON DELETE CASCADE,
    admin INTEGER NOT NULL DEFAULT 0,
    source TEXT NOT NULL DEFAULT 'local',
    PRIMARY KEY (user_id, orga_id, source)
);
CREATE TABLE IF NOT EXISTS login_failures (
    key TEXT NOT NULL,
    at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS login_failures_key ON login_failures (key, at);
CREATE INDEX IF NOT EXISTS login_failures_at ON login_failures (at);
"""
# Each step takes the tables from one version to the next; only ever append.
STEPS = (
    SCHEMA,
    # 2: the session generation, bumped by a logout to end every session opened before it
    "ALTER TABLE users ADD COLUMN session_generation INTEGER NOT NULL DEFAULT 0",
)
SCHEMA_VERSION = len(STEPS)


class SQLiteUserStore(SQLUserStore):
    """A :class:`plugit_core.identity.UserStore` in the SQLite file at ``path``.

    ``clock`` gives the time for the failed-login records (tests step it forward).
    """

    def __init__(
        self,
        path: str | Path,
        *,
        clock: Callable[[], float] = time.time,
        pool_size: int = 8,
        wait: float = DEFAULT_WAIT,
        max_waiters: int = DEFAULT_MAX_WAITERS,
        required: bool = True,
    ) -> None:
        self.path = check_file(path, "the user store needs a file: its connections share it")
        database = SQLiteDatabase(
            self.path,
            STEPS,
            store="users_sqlite",
            label="the user directory",
            probe="SELECT 1 FROM users LIMIT 1",
            pool_size=pool_size,
            wait=wait,
            max_waiters=max_waiters,
            required=required,
        )
        super().__init__(database, clock=clock)

    def __repr__(self) -> str:
        return f"<SQLiteUserStore {self.path!r}>"


@dataclass(frozen=True)
class SQLiteUsersSettings:
    """The ``[users_sqlite]`` table."""

    path: str = setting("plugit.sqlite3", parse=file_path, help="the database file")
    guard: WaitingGuardSettings = setting(default_factory=WaitingGuardSettings, flatten=True)


def _factory(config: ProxyConfig, section: Mapping[str, Any]) -> SQLiteUserStore:
    settings = config.read(SQLiteUsersSettings, "users_sqlite", section)
    path = settings.path
    try:
        return SQLiteUserStore(path, **settings.guard.options(required=True))
    except sqlite3.Error as exc:
        raise config.error("users_sqlite.path", f"cannot open {path!r}: {exc}") from None


@hookimpl(trylast=True)
def plugit_register_backends(register: RegisterBackend) -> None:
    register("users", "sqlite", _factory)


@hookimpl
def plugit_add_commands(commands: Any) -> None:
    from plugit_backends.users_cli import add_users_parser

    add_users_parser(commands)

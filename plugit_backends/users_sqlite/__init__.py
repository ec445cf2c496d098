"""The embedded directory: users, organisations and memberships in one SQLite file (stdlib).

Configuration::

    users = "sqlite"          # the default as soon as an auth backend is configured

    [users_sqlite]
    path = "plugit.sqlite3"   # relative to the working directory

Every write is one transaction; the file is in WAL mode so readers never wait for a writer.
Each thread has its own connection.
"""

from __future__ import annotations

import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from plugit_core.config import ConfigError, ProxyConfig
from plugit_core.hookspecs import hookimpl
from plugit_core.identity import ROLES
from plugit_core.users import ALL, Orga, PlugItUser

__all__ = ["SQLiteUserStore"]

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
    name TEXT NOT NULL UNIQUE,
    codops TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS service_roles (
    user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    service TEXT NOT NULL,
    role TEXT NOT NULL CHECK (role IN ('member', 'admin')),
    source TEXT NOT NULL DEFAULT 'local',
    PRIMARY KEY (user_id, service)
);
CREATE TABLE IF NOT EXISTS orga_members (
    user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    orga_id INTEGER NOT NULL REFERENCES orgas(id) ON DELETE CASCADE,
    admin INTEGER NOT NULL DEFAULT 0,
    source TEXT NOT NULL DEFAULT 'local',
    PRIMARY KEY (user_id, orga_id)
);
CREATE TABLE IF NOT EXISTS login_failures (
    key TEXT NOT NULL,
    at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS login_failures_key ON login_failures (key, at);
"""


class SQLiteUserStore:
    """A :class:`plugit_core.identity.UserStore` in a SQLite file."""

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        if self.path == ":memory:":
            raise ValueError("the user store needs a file: each thread opens its own connection")
        self._local = threading.local()
        with self._write() as db:
            db.executescript(SCHEMA)

    # -- connections ------------------------------------------------------------------------------

    def _db(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(
                self.path, timeout=30, isolation_level=None, check_same_thread=True
            )
            db.row_factory = sqlite3.Row
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA foreign_keys=ON")
            db.execute("PRAGMA synchronous=NORMAL")
            self._local.db = db
        return db

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        db = self._db()
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    def close(self) -> None:
        """Close this thread's connection."""
        db = getattr(self._local, "db", None)
        if db is not None:
            db.close()
            self._local.db = None

    # -- users ------------------------------------------------------------------------------------

    def _row(self, where: str, value: Any) -> sqlite3.Row | None:
        return self._db().execute(f"SELECT * FROM users WHERE {where}", (value,)).fetchone()  # noqa: S608 (fixed column names)

    def _user(self, row: sqlite3.Row | None) -> PlugItUser | None:
        if row is None:
            return None
        db = self._db()
        roles = db.execute(
            "SELECT service, role FROM service_roles WHERE user_id = ?", (row["id"],)
        ).fetchall()
        orgas = db.execute(
            "SELECT o.id, o.name, o.codops, m.admin FROM orga_members m JOIN orgas o ON o.id = m.orga_id "
            "WHERE m.user_id = ? ORDER BY o.name",
            (row["id"],),
        ).fetchall()
        return PlugItUser(
            pk=row["id"],
            username=row["username"],
            first_name=row["first_name"],
            last_name=row["last_name"],
            email=row["email"],
            is_authenticated=True,
            is_superuser=bool(row["is_superuser"]),
            member_of=frozenset(r["service"] for r in roles),
            admin_of=frozenset(r["service"] for r in roles if r["role"] == "admin"),
            orgas=tuple(
                Orga(o["id"], o["name"], o["codops"], is_admin=bool(o["admin"])) for o in orgas
            ),
            extra={"uuid": row["uuid"], "source": row["source"]},
            backend=row["source"],
        )

    def get_user(self, pk: Any) -> PlugItUser | None:
        if isinstance(pk, int) or (isinstance(pk, str) and pk.lstrip("-").isdigit()):
            return self._user(self._row("id = ?", int(pk)))
        if isinstance(pk, str):
            return self._user(self._row("uuid = ?", pk))
        return None

    def get_by_username(self, username: str) -> PlugItUser | None:
        return self._user(self._row("username = ?", username))

    def create_user(
        self,
        username: str,
        *,
        email: str = "",
        first_name: str = "",
        last_name: str = "",
        password_hash: str | None = None,
        source: str = "local",
        external_id: str | None = None,
        is_superuser: bool = False,
    ) -> PlugItUser:
        username = username.strip()
        if not username:
            raise ValueError("a user needs a user name")
        try:
            with self._write() as db:
                cursor = db.execute(
                    "INSERT INTO users (uuid, username, email, first_name, last_name, password_hash, "
                    "source, external_id, is_superuser, created) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        str(uuid.uuid4()),
                        username,
                        email,
                        first_name,
                        last_name,
                        password_hash,
                        source,
                        external_id,
                        int(is_superuser),
                        time.time(),
                    ),
                )
        except sqlite3.IntegrityError:
            raise ValueError(f"the user name {username!r} is taken") from None
        user = self.get_user(cursor.lastrowid)
        assert user is not None
        return user

    def sync_external_user(
        self, source: str, external_id: str, fields: Mapping[str, Any]
    ) -> PlugItUser:
        profile = {k: str(fields.get(k) or "") for k in ("email", "first_name", "last_name")}
        wanted = str(fields.get("username") or external_id)
        with self._write() as db:
            row = db.execute(
                "SELECT id, username FROM users WHERE source = ? AND external_id = ?",
                (source, external_id),
            ).fetchone()
            if row is None:
                username = wanted
                if db.execute("SELECT 1 FROM users WHERE username = ?", (username,)).fetchone():
                    username = f"{wanted}@{source}"  # never take over another account's name
                cursor = db.execute(
                    "INSERT INTO users (uuid, username, email, first_name, last_name, source, external_id, "
                    "created) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        str(uuid.uuid4()),
                        username,
                        *profile.values(),
                        source,
                        external_id,
                        time.time(),
                    ),
                )
                pk = cursor.lastrowid
            else:
                pk = row["id"]
                db.execute(
                    "UPDATE users SET email = ?, first_name = ?, last_name = ? WHERE id = ?",
                    (*profile.values(), pk),
                )
            if "services" in fields:
                db.execute(
                    "DELETE FROM service_roles WHERE user_id = ? AND source = ?", (pk, source)
                )
                for service, role in dict(fields["services"]).items():
                    _check_role(role)
                    db.execute(
                        "INSERT INTO service_roles (user_id, service, role, source) VALUES (?, ?, ?, ?) "
                        "ON CONFLICT (user_id, service) DO UPDATE SET role = excluded.role, source = excluded.source "
                        "WHERE excluded.role = 'admin' OR service_roles.source = excluded.source",
                        (pk, service, role, source),
                    )
            if "orgas" in fields:
                db.execute(
                    "DELETE FROM orga_members WHERE user_id = ? AND source = ?", (pk, source)
                )
                for name, role in dict(fields["orgas"]).items():
                    _check_role(role)
                    db.execute(
                        "INSERT INTO orgas (name) VALUES (?) ON CONFLICT (name) DO NOTHING", (name,)
                    )
                    orga_id = db.execute("SELECT id FROM orgas WHERE name = ?", (name,)).fetchone()[
                        "id"
                    ]
                    db.execute(
                        "INSERT INTO orga_members (user_id, orga_id, admin, source) VALUES (?, ?, ?, ?) "
                        "ON CONFLICT (user_id, orga_id) DO UPDATE SET admin = max(orga_members.admin, excluded.admin)",
                        (pk, orga_id, int(role == "admin"), source),
                    )
        user = self.get_user(pk)
        assert user is not None
        return user

    def password_hash(self, pk: Any) -> str | None:
        row = self._row("id = ?", int(pk))
        return None if row is None else row["password_hash"]

    def set_password_hash(self, pk: Any, password_hash: str) -> None:
        with self._write() as db:
            if (
                db.execute(
                    "UPDATE users SET password_hash = ? WHERE id = ?", (password_hash, int(pk))
                ).rowcount
                != 1
            ):
                raise KeyError(pk)

    def set_active(self, pk: Any, active: bool) -> None:
        with self._write() as db:
            if (
                db.execute(
                    "UPDATE users SET active = ? WHERE id = ?", (int(active), int(pk))
                ).rowcount
                != 1
            ):
                raise KeyError(pk)

    def set_superuser(self, pk: Any, superuser: bool) -> None:
        with self._write() as db:
            if (
                db.execute(
                    "UPDATE users SET is_superuser = ? WHERE id = ?", (int(superuser), int(pk))
                ).rowcount
                != 1
            ):
                raise KeyError(pk)

    def is_active(self, pk: Any) -> bool:
        user = self.get_user(pk)
        if user is None:
            return False
        row = self._row("id = ?", user.pk)
        return bool(row and row["active"])

    # -- memberships ------------------------------------------------------------------------------

    def grant(self, pk: Any, service: str, role: str) -> None:
        _check_role(role)
        with self._write() as db:
            self._require_user(db, pk)
            db.execute(
                "INSERT INTO service_roles (user_id, service, role, source) VALUES (?, ?, ?, 'local') "
                "ON CONFLICT (user_id, service) DO UPDATE SET role = excluded.role, source = 'local'",
                (int(pk), service, role),
            )

    def revoke(self, pk: Any, service: str) -> None:
        with self._write() as db:
            db.execute(
                "DELETE FROM service_roles WHERE user_id = ? AND service = ?", (int(pk), service)
            )

    def members(self, service: str) -> list[PlugItUser]:
        rows = (
            self._db()
            .execute(
                "SELECT DISTINCT u.* FROM users u JOIN service_roles r ON r.user_id = u.id "
                "WHERE r.service IN (?, ?) AND u.active = 1 ORDER BY u.username",
                (service, ALL),
            )
            .fetchall()
        )
        return [user for user in (self._user(row) for row in rows) if user is not None]

    # -- organisations ----------------------------------------------------------------------------

    def create_orga(self, name: str, codops: str = "") -> Orga:
        try:
            with self._write() as db:
                cursor = db.execute(
                    "INSERT INTO orgas (name, codops) VALUES (?, ?)", (name, codops)
                )
        except sqlite3.IntegrityError:
            raise ValueError(f"the organisation {name!r} exists") from None
        return Orga(cursor.lastrowid, name, codops)

    def get_orga(self, pk: Any) -> Orga | None:
        try:
            row = self._db().execute("SELECT * FROM orgas WHERE id = ?", (int(pk),)).fetchone()
        except (TypeError, ValueError):
            return None
        return None if row is None else Orga(row["id"], row["name"], row["codops"])

    def get_orga_by_name(self, name: str) -> Orga | None:
        row = self._db().execute("SELECT * FROM orgas WHERE name = ?", (name,)).fetchone()
        return None if row is None else Orga(row["id"], row["name"], row["codops"])

    def list_orgas(self) -> list[Orga]:
        rows = self._db().execute("SELECT * FROM orgas ORDER BY name").fetchall()
        return [Orga(row["id"], row["name"], row["codops"]) for row in rows]

    def add_to_orga(self, pk: Any, orga_pk: Any, *, admin: bool = False) -> None:
        with self._write() as db:
            self._require_user(db, pk)
            if db.execute("SELECT 1 FROM orgas WHERE id = ?", (int(orga_pk),)).fetchone() is None:
                raise KeyError(f"no organisation {orga_pk}")
            db.execute(
                "INSERT INTO orga_members (user_id, orga_id, admin, source) VALUES (?, ?, ?, 'local') "
                "ON CONFLICT (user_id, orga_id) DO UPDATE SET admin = excluded.admin, source = 'local'",
                (int(pk), int(orga_pk), int(admin)),
            )

    def remove_from_orga(self, pk: Any, orga_pk: Any) -> None:
        with self._write() as db:
            db.execute(
                "DELETE FROM orga_members WHERE user_id = ? AND orga_id = ?",
                (int(pk), int(orga_pk)),
            )

    # -- failed logins ----------------------------------------------------------------------------

    def record_failure(self, key: str) -> None:
        now = time.time()
        with self._write() as db:
            db.execute("INSERT INTO login_failures (key, at) VALUES (?, ?)", (key, now))
            db.execute("DELETE FROM login_failures WHERE at < ?", (now - 86400,))  # keep it small

    def count_failures(self, key: str, window: float) -> int:
        row = (
            self._db()
            .execute(
                "SELECT count(*) AS n FROM login_failures WHERE key = ? AND at >= ?",
                (key, time.time() - window),
            )
            .fetchone()
        )
        return int(row["n"])

    def clear_failures(self, key: str) -> None:
        with self._write() as db:
            db.execute("DELETE FROM login_failures WHERE key = ?", (key,))

    @staticmethod
    def _require_user(db: sqlite3.Connection, pk: Any) -> None:
        if db.execute("SELECT 1 FROM users WHERE id = ?", (int(pk),)).fetchone() is None:
            raise KeyError(f"no user {pk}")


def _check_role(role: str) -> None:
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}, not {role!r}")


def _factory(config: ProxyConfig, section: Mapping[str, Any]) -> SQLiteUserStore:
    unknown = set(section) - {"path"}
    if unknown:
        raise ConfigError(f"users_sqlite.{sorted(unknown)[0]}", "unknown setting", config.source)
    path = section.get("path", "plugit.sqlite3")
    if not isinstance(path, str) or not path or path == ":memory:":
        raise ConfigError(
            "users_sqlite.path", "expected the path of a database file", config.source
        )
    try:
        return SQLiteUserStore(path)
    except sqlite3.Error as exc:
        raise ConfigError(
            "users_sqlite.path", f"cannot open {path!r}: {exc}", config.source
        ) from None


@hookimpl(trylast=True)
def plugit_register_backends(register: Any) -> None:
    register("users", "sqlite", _factory)

"""The embedded directory: users, organisations and memberships in one SQLite file (stdlib).

Configuration::

    users = "sqlite"          # the default as soon as an auth backend is configured

    [users_sqlite]
    path = "plugit.sqlite3"   # relative to the working directory

Every write is one ``BEGIN IMMEDIATE`` transaction and every multi-query read one snapshot; the
file is in WAL mode so readers never wait for the writer.  Connections come from a small pool
shared by the threads (each connection is used by one thread at a time), so a server that starts
a thread per request does not open a connection per request; :meth:`SQLiteUserStore.close`
closes them all.

Memberships remember who granted them: ``local`` (the ``plugit users`` command, the API) or an
external directory (``oidc``, ``ldap``) through :meth:`SQLiteUserStore.sync_external_user`.  A
user's rights are the union of every source's grants, and a sync replaces only the grants of its
own source.
"""

from __future__ import annotations

import re
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from plugit_core.config import ProxyConfig
from plugit_core.hookspecs import hookimpl
from plugit_core.identity import check_role, check_username, gravatar_url
from plugit_core.stores import (
    DEFAULT_MAX_WAITERS,
    DEFAULT_WAIT,
    GUARD_KEYS,
    StoreGuard,
    read_guard_settings,
    sqlite_is_outage,
)
from plugit_core.users import ALL, Orga, PlugItUser

__all__ = ["FAILURE_RETENTION", "SCHEMA_VERSION", "SQLiteUserStore"]

SCHEMA_VERSION = 2
LOCAL = "local"
FAILURE_RETENTION = 86400.0  # failed logins older than this are forgotten (seconds)
_CHUNK = 500  # ids per IN (...) query

SCHEMA = """
BEGIN IMMEDIATE;
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
PRAGMA user_version = 1;
COMMIT;
"""
# Each step takes the tables from one version to the next (the key); only ever add.
MIGRATIONS = {
    # the session generation, bumped by a logout to end every session opened before it
    2: "ALTER TABLE users ADD COLUMN session_generation INTEGER NOT NULL DEFAULT 0",
}

_DIGITS = re.compile(r"-?[0-9]+")


def _int_pk(pk: Any) -> int | None:
    """A pk as the integer id, or None when it cannot be one (a UUID, garbage, a bool)."""
    if isinstance(pk, bool):
        return None
    if isinstance(pk, int):
        number = pk
    elif isinstance(pk, str) and _DIGITS.fullmatch(pk.strip()):
        number = int(pk)
    else:
        return None
    return number if -(2**63) <= number < 2**63 else None  # what SQLite's INTEGER can hold


class SQLiteUserStore:
    """A :class:`plugit_core.identity.UserStore` in a SQLite file.

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
        self.path = str(path)
        if self.path == ":memory:" or self.path.startswith("file::memory:"):
            raise ValueError("the user store needs a file: its connections share it")
        self.guard = StoreGuard(
            "users_sqlite",
            "the user directory",
            wait=wait,
            max_waiters=max_waiters,
            is_outage=sqlite_is_outage,
            probe=self._probe,
            required=required,
        )
        self.store_guards = (self.guard,)
        self.clock = clock
        self._pool_size = pool_size
        self._idle: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._generation = 0
        db = self._open()
        try:
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise sqlite3.DatabaseError(
                    f"schema version {version} is newer than this PlugIt's ({SCHEMA_VERSION})"
                )
            if db.execute("PRAGMA journal_mode=WAL").fetchone()[0].lower() != "wal":
                raise sqlite3.DatabaseError("the file cannot be put in WAL mode")
            if version < 1:
                db.executescript(SCHEMA)
            for step in range(2, SCHEMA_VERSION + 1):
                db.execute("BEGIN IMMEDIATE")  # another process may be migrating too
                if db.execute("PRAGMA user_version").fetchone()[0] < step:
                    db.execute(MIGRATIONS[step])
                    db.execute(f"PRAGMA user_version = {step}")
                db.execute("COMMIT")
        except BaseException:
            db.close()
            raise
        self._release(db, self._generation)

    # -- connections ------------------------------------------------------------------------------

    def _open(self) -> sqlite3.Connection:
        db = sqlite3.connect(
            self.path, timeout=self.guard.wait, isolation_level=None, check_same_thread=False
        )
        try:
            db.row_factory = sqlite3.Row
            db.execute("PRAGMA foreign_keys=ON")
            db.execute("PRAGMA synchronous=NORMAL")
        except BaseException:
            db.close()
            raise
        return db

    def _acquire(self) -> tuple[sqlite3.Connection, int]:
        with self._lock:
            generation = self._generation
            if self._idle:
                return self._idle.pop(), generation
        return self._open(), generation

    def _release(self, db: sqlite3.Connection, generation: int) -> None:
        if db.in_transaction:  # an interrupted statement: never hand out a dirty connection
            try:
                db.execute("ROLLBACK")
            except sqlite3.Error:
                db.close()
                return
        with self._lock:
            if generation == self._generation and len(self._idle) < self._pool_size:
                self._idle.append(db)
                return
        db.close()

    @contextmanager
    def _connection(self, begin: str) -> Iterator[sqlite3.Connection]:
        """A pooled connection inside one transaction (``BEGIN`` or ``BEGIN IMMEDIATE``),
        through the guard: a file locked past the wait is a StoreUnavailable."""
        with self.guard.call():
            db, generation = self._acquire()
            try:
                db.execute(begin)
                try:
                    yield db
                except BaseException:
                    if db.in_transaction:
                        db.execute("ROLLBACK")
                    raise
                db.execute("COMMIT")
            finally:
                self._release(db, generation)

    def _probe(self) -> None:
        db, generation = self._acquire()
        try:
            db.execute("SELECT 1 FROM users LIMIT 1").fetchall()
        finally:
            self._release(db, generation)

    def _write(self) -> Any:
        return self._connection("BEGIN IMMEDIATE")

    def _read(self) -> Any:
        return self._connection("BEGIN")

    def close(self) -> None:
        """Close every pooled connection (those in use close when given back).

        The store stays usable: the next call opens a new connection.
        """
        with self._lock:
            self._generation += 1
            idle, self._idle = self._idle, []
        for db in idle:
            db.close()

    # -- reading users ----------------------------------------------------------------------------

    @staticmethod
    def _find(db: sqlite3.Connection, pk: Any) -> sqlite3.Row | None:
        number = _int_pk(pk)
        if number is not None:
            return db.execute("SELECT * FROM users WHERE id = ?", (number,)).fetchone()
        if isinstance(pk, str) and pk:
            return db.execute("SELECT * FROM users WHERE uuid = ?", (pk.strip(),)).fetchone()
        return None

    @staticmethod
    def _require_user(db: sqlite3.Connection, pk: Any) -> int:
        row = SQLiteUserStore._find(db, pk)
        if row is None:
            raise KeyError(f"no user {pk!r}")
        return int(row["id"])

    @staticmethod
    def _users(db: sqlite3.Connection, rows: Iterable[sqlite3.Row]) -> list[PlugItUser]:
        """Users with their memberships, loaded with a few queries whatever their number."""
        rows = list(rows)
        roles: dict[int, list[sqlite3.Row]] = {}
        orgas: dict[int, list[sqlite3.Row]] = {}
        ids = [row["id"] for row in rows]
        for start in range(0, len(ids), _CHUNK):
            chunk = ids[start : start + _CHUNK]
            marks = ", ".join("?" * len(chunk))
            for role in db.execute(
                f"SELECT user_id, service, role FROM service_roles WHERE user_id IN ({marks})",  # noqa: S608
                chunk,
            ):
                roles.setdefault(role["user_id"], []).append(role)
            for orga in db.execute(
                "SELECT m.user_id, o.id, o.name, o.codops, max(m.admin) AS admin "  # noqa: S608
                "FROM orga_members m JOIN orgas o ON o.id = m.orga_id "
                f"WHERE m.user_id IN ({marks}) GROUP BY m.user_id, o.id ORDER BY o.name, o.id",
                chunk,
            ):
                orgas.setdefault(orga["user_id"], []).append(orga)
        users = []
        for row in rows:
            mine = roles.get(row["id"], [])
            users.append(
                PlugItUser(
                    pk=row["id"],
                    username=row["username"],
                    first_name=row["first_name"],
                    last_name=row["last_name"],
                    email=row["email"],
                    is_authenticated=True,
                    is_superuser=bool(row["is_superuser"]),
                    member_of=frozenset(r["service"] for r in mine),
                    admin_of=frozenset(r["service"] for r in mine if r["role"] == "admin"),
                    orgas=tuple(
                        Orga(o["id"], o["name"], o["codops"], is_admin=bool(o["admin"]))
                        for o in orgas.get(row["id"], [])
                    ),
                    extra={
                        "uuid": row["uuid"],
                        "source": row["source"],
                        "gravatar": gravatar_url(row["email"]),
                    },
                    backend=row["source"],
                )
            )
        return users

    def _one(self, db: sqlite3.Connection, row: sqlite3.Row | None) -> PlugItUser | None:
        return None if row is None else self._users(db, [row])[0]

    def get_user(self, pk: Any) -> PlugItUser | None:
        with self._read() as db:
            return self._one(db, self._find(db, pk))

    def get_by_username(self, username: str) -> PlugItUser | None:
        if not isinstance(username, str):
            return None
        with self._read() as db:
            row = db.execute(
                "SELECT * FROM users WHERE username = ?", (username.strip(),)
            ).fetchone()
            return self._one(db, row)

    def list_users(self) -> list[PlugItUser]:
        with self._read() as db:
            return self._users(db, db.execute("SELECT * FROM users ORDER BY username, id"))

    def members(self, service: str) -> list[PlugItUser]:
        with self._read() as db:
            rows = db.execute(
                "SELECT * FROM users WHERE active = 1 AND id IN "
                "(SELECT user_id FROM service_roles WHERE service IN (?, ?)) "
                "ORDER BY username, id",
                (service, ALL),
            )
            return self._users(db, rows)

    def password_hash(self, pk: Any) -> str | None:
        with self._read() as db:
            row = self._find(db, pk)
        if row is None or row["source"] != LOCAL:
            return None
        return row["password_hash"]

    def is_active(self, pk: Any) -> bool:
        with self._read() as db:
            row = self._find(db, pk)
        return bool(row is not None and row["active"])

    def session_generation(self, pk: Any) -> int:
        with self._read() as db:
            row = self._find(db, pk)
        return 0 if row is None else int(row["session_generation"])

    def end_sessions(self, pk: Any) -> None:
        with self._write() as db:
            user_id = self._require_user(db, pk)
            db.execute(
                "UPDATE users SET session_generation = session_generation + 1 WHERE id = ?",
                (user_id,),
            )

    # -- writing users ----------------------------------------------------------------------------

    def create_user(
        self,
        username: str,
        *,
        email: str = "",
        first_name: str = "",
        last_name: str = "",
        password_hash: str | None = None,
        source: str = LOCAL,
        external_id: str | None = None,
        is_superuser: bool = False,
    ) -> PlugItUser:
        username = check_username(username)
        if not source:
            raise ValueError("a user needs a source")
        try:
            with self._write() as db:
                cursor = db.execute(
                    "INSERT INTO users (uuid, username, email, first_name, last_name, "
                    "password_hash, source, external_id, is_superuser, created) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        str(uuid.uuid4()),
                        username,
                        email or "",
                        first_name or "",
                        last_name or "",
                        password_hash,
                        source,
                        external_id,
                        int(bool(is_superuser)),
                        time.time(),
                    ),
                )
                user = self._one(db, self._find(db, cursor.lastrowid))
        except sqlite3.IntegrityError:
            with self._read() as db:
                taken = db.execute("SELECT 1 FROM users WHERE username = ?", (username,)).fetchone()
            if taken:
                raise ValueError(f"the user name {username!r} is taken") from None
            raise ValueError(f"{source} already has a user {external_id!r}") from None
        assert user is not None
        return user

    def sync_external_user(
        self, source: str, external_id: str, fields: Mapping[str, Any]
    ) -> PlugItUser:
        if not source or source == LOCAL:
            raise ValueError("sync_external_user is for external directories, not 'local'")
        if not external_id:
            raise ValueError("an external user needs an id")
        services = dict(fields.get("services") or {})
        orgas = dict(fields.get("orgas") or {})
        for role in (*services.values(), *orgas.values()):
            check_role(role)
        profile = {
            key: str(fields[key])
            for key in ("email", "first_name", "last_name")
            if fields.get(key) is not None
        }
        with self._write() as db:
            row = db.execute(
                "SELECT id FROM users WHERE source = ? AND external_id = ?",
                (source, external_id),
            ).fetchone()
            if row is None:
                pk = self._insert_external(db, source, external_id, fields, profile)
            else:
                pk = row["id"]
                if profile:
                    assignments = ", ".join(f"{key} = ?" for key in profile)
                    db.execute(
                        f"UPDATE users SET {assignments} WHERE id = ?",  # noqa: S608 (fixed names)
                        (*profile.values(), pk),
                    )
            if "services" in fields:
                db.execute(
                    "DELETE FROM service_roles WHERE user_id = ? AND source = ?", (pk, source)
                )
                db.executemany(
                    "INSERT INTO service_roles (user_id, service, role, source) "
                    "VALUES (?, ?, ?, ?)",
                    [(pk, str(service), role, source) for service, role in services.items()],
                )
            if "orgas" in fields:
                db.execute(
                    "DELETE FROM orga_members WHERE user_id = ? AND source = ?", (pk, source)
                )
                for name, role in orgas.items():
                    db.execute(
                        "INSERT INTO orgas (name) VALUES (?) ON CONFLICT (name) DO NOTHING",
                        (str(name),),
                    )
                    orga_id = db.execute(
                        "SELECT id FROM orgas WHERE name = ?", (str(name),)
                    ).fetchone()["id"]
                    db.execute(
                        "INSERT INTO orga_members (user_id, orga_id, admin, source) "
                        "VALUES (?, ?, ?, ?)",
                        (pk, orga_id, int(role == "admin"), source),
                    )
            user = self._one(db, self._find(db, pk))
        assert user is not None
        return user

    @staticmethod
    def _insert_external(
        db: sqlite3.Connection,
        source: str,
        external_id: str,
        fields: Mapping[str, Any],
        profile: Mapping[str, str],
    ) -> int:
        wanted = check_username(str(fields.get("username") or external_id))
        username = wanted
        n = 1
        # Never take over another account's name: alice from LDAP beside a local alice is
        # "alice@ldap" (then "alice@ldap-2", ...).
        while db.execute("SELECT 1 FROM users WHERE username = ?", (username,)).fetchone():
            n += 1
            username = f"{wanted}@{source}" if n == 2 else f"{wanted}@{source}-{n - 1}"
        cursor = db.execute(
            "INSERT INTO users (uuid, username, email, first_name, last_name, source, "
            "external_id, created) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                str(uuid.uuid4()),
                username,
                profile.get("email", ""),
                profile.get("first_name", ""),
                profile.get("last_name", ""),
                source,
                external_id,
                time.time(),
            ),
        )
        assert cursor.lastrowid is not None
        return cursor.lastrowid

    def _update(self, pk: Any, column: str, value: Any) -> None:
        with self._write() as db:
            user_id = self._require_user(db, pk)
            db.execute(f"UPDATE users SET {column} = ? WHERE id = ?", (value, user_id))  # noqa: S608

    def set_password_hash(self, pk: Any, password_hash: str) -> None:
        self._update(pk, "password_hash", password_hash)

    def set_active(self, pk: Any, active: bool) -> None:
        self._update(pk, "active", int(bool(active)))

    def set_superuser(self, pk: Any, superuser: bool) -> None:
        self._update(pk, "is_superuser", int(bool(superuser)))

    # -- memberships ------------------------------------------------------------------------------

    def grant(self, pk: Any, service: str, role: str) -> None:
        check_role(role)
        if not service:
            raise ValueError("a grant needs a service name (or * for every service)")
        with self._write() as db:
            user_id = self._require_user(db, pk)
            db.execute(
                "INSERT INTO service_roles (user_id, service, role, source) "
                "VALUES (?, ?, ?, 'local') "
                "ON CONFLICT (user_id, service, source) DO UPDATE SET role = excluded.role",
                (user_id, service, role),
            )

    def revoke(self, pk: Any, service: str) -> None:
        with self._write() as db:
            row = self._find(db, pk)
            if row is not None:
                db.execute(
                    "DELETE FROM service_roles WHERE user_id = ? AND service = ?",
                    (row["id"], service),
                )

    # -- organisations ----------------------------------------------------------------------------

    @staticmethod
    def _orga(row: sqlite3.Row | None) -> Orga | None:
        return None if row is None else Orga(row["id"], row["name"], row["codops"])

    def create_orga(self, name: str, codops: str = "") -> Orga:
        name = name.strip() if isinstance(name, str) else ""
        if not name:
            raise ValueError("an organisation needs a name")
        try:
            with self._write() as db:
                cursor = db.execute(
                    "INSERT INTO orgas (name, codops) VALUES (?, ?)", (name, codops or "")
                )
        except sqlite3.IntegrityError:
            raise ValueError(f"the organisation {name!r} exists") from None
        assert cursor.lastrowid is not None
        return Orga(cursor.lastrowid, name, codops or "")

    def get_orga(self, pk: Any) -> Orga | None:
        number = _int_pk(pk)
        if number is None:
            return None
        with self._read() as db:
            return self._orga(db.execute("SELECT * FROM orgas WHERE id = ?", (number,)).fetchone())

    def get_orga_by_name(self, name: str) -> Orga | None:
        with self._read() as db:
            return self._orga(db.execute("SELECT * FROM orgas WHERE name = ?", (name,)).fetchone())

    def list_orgas(self) -> list[Orga]:
        with self._read() as db:
            rows = db.execute("SELECT * FROM orgas ORDER BY name, id").fetchall()
        return [Orga(row["id"], row["name"], row["codops"]) for row in rows]

    def add_to_orga(self, pk: Any, orga_pk: Any, *, admin: bool = False) -> None:
        with self._write() as db:
            user_id = self._require_user(db, pk)
            number = _int_pk(orga_pk)
            found = None
            if number is not None:
                found = db.execute("SELECT id FROM orgas WHERE id = ?", (number,)).fetchone()
            if found is None:
                raise KeyError(f"no organisation {orga_pk!r}")
            db.execute(
                "INSERT INTO orga_members (user_id, orga_id, admin, source) "
                "VALUES (?, ?, ?, 'local') "
                "ON CONFLICT (user_id, orga_id, source) DO UPDATE SET admin = excluded.admin",
                (user_id, number, int(bool(admin))),
            )

    def remove_from_orga(self, pk: Any, orga_pk: Any) -> None:
        number = _int_pk(orga_pk)
        with self._write() as db:
            row = self._find(db, pk)
            if row is not None and number is not None:
                db.execute(
                    "DELETE FROM orga_members WHERE user_id = ? AND orga_id = ?",
                    (row["id"], number),
                )

    # -- failed logins ----------------------------------------------------------------------------

    def record_failure(self, key: str) -> None:
        now = self.clock()
        with self._write() as db:
            db.execute("INSERT INTO login_failures (key, at) VALUES (?, ?)", (key, now))
            db.execute("DELETE FROM login_failures WHERE at < ?", (now - FAILURE_RETENTION,))

    def count_failures(self, key: str, window: float) -> int:
        with self._read() as db:
            row = db.execute(
                "SELECT count(*) FROM login_failures WHERE key = ? AND at > ?",
                (key, self.clock() - window),
            ).fetchone()
        return int(row[0])

    def clear_failures(self, key: str) -> None:
        with self._write() as db:
            db.execute("DELETE FROM login_failures WHERE key = ?", (key,))


def _factory(config: ProxyConfig, section: Mapping[str, Any]) -> SQLiteUserStore:
    reader = config.reader("users_sqlite", section)
    reader.known({"path", *GUARD_KEYS})
    path = reader.path("path", "plugit.sqlite3")
    guard = read_guard_settings(reader)
    try:
        return SQLiteUserStore(path, **guard)
    except sqlite3.Error as exc:
        raise reader.error("path", f"cannot open {path!r}: {exc}") from None


@hookimpl(trylast=True)
def plugit_register_backends(register: Any) -> None:
    register("users", "sqlite", _factory)


@hookimpl
def plugit_add_commands(commands: Any) -> None:
    from plugit_backends.users_cli import add_users_parser

    add_users_parser(commands)

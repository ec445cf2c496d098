"""The directory (users, organisations, memberships, failed logins), written once for SQLite
(``users_sqlite``) and PostgreSQL (``users_postgres``).

How it stays correct when threads or processes share the database:

* every read is one statement, so it sees one snapshot: a user comes back with its memberships
  and organisations in the same query;
* a write of one statement (``INSERT ... ON CONFLICT``, ``UPDATE ... RETURNING``) runs alone;
  one of several statements is one transaction (``BEGIN IMMEDIATE`` in SQLite);
* user names and organisation names are unique whatever their case (``COLLATE NOCASE`` columns
  in SQLite, unique indexes on ``lower(name)`` in PostgreSQL); a name taken concurrently is
  reported as taken, never as a server error;
* :meth:`SQLUserStore.sync_external_user` locks the user's row before replacing its source's
  grants (PostgreSQL: two logins of one user through one directory apply one after the other),
  and creates the organisations it names in one order whoever asks (no deadlock).

Memberships remember who granted them: ``local`` (the ``plugit users`` command, the API) or an
external directory (``oidc``, ``ldap``) through :meth:`SQLUserStore.sync_external_user`.  A
user's rights are the union of every source's grants, and a sync replaces only the grants of its
own source.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any

from plugit_core.identity import check_role, check_username, gravatar_url
from plugit_core.users import ALL, Orga, PlugItUser

from . import Connection, Database, Row, json_value

__all__ = ["FAILURE_RETENTION", "LOCAL", "SQLUserStore"]

LOCAL = "local"
FAILURE_RETENTION = 86400.0  # failed logins older than this are forgotten (seconds)
_BIGINT = 2**63  # what SQLite's INTEGER and PostgreSQL's bigint hold
_DIGITS = re.compile(r"-?[0-9]+")

# Users with their memberships in one statement (one snapshot).  {where} is a fixed fragment
# chosen by the methods below, never user input.
_USERS = """
SELECT u.id, u.uuid, u.username, u.email, u.first_name, u.last_name, u.source, u.is_superuser,
    (
        SELECT {json_list}({json_array}(r.service, r.role)) FROM {s}.service_roles r
        WHERE r.user_id = u.id
    ) AS roles,
    (
        SELECT {json_list}({json_array}(o.id, o.name, o.codops, m.admin, lower(o.name)))
        FROM (
            SELECT orga_id, max(CASE WHEN admin THEN 1 ELSE 0 END) AS admin
            FROM {s}.orga_members WHERE user_id = u.id GROUP BY orga_id
        ) m
        JOIN {s}.orgas o ON o.id = m.orga_id
    ) AS orgas
FROM {s}.users u
WHERE {where}
ORDER BY {fold}(u.username){c}, u.id
"""


def int_pk(pk: Any) -> int | None:
    """A pk as the integer id, or None when it cannot be one (a UUID, garbage, a bool, or a
    number the database's integer cannot hold)."""
    if isinstance(pk, bool):
        return None
    if isinstance(pk, int):
        number = pk
    elif isinstance(pk, str) and _DIGITS.fullmatch(pk.strip()):
        number = int(pk)
    else:
        return None
    return number if -_BIGINT <= number < _BIGINT else None


def _where(query: str, condition: str) -> str:
    """``query`` with ``{where}`` replaced by ``condition``: fixed text chosen by the store's
    methods, never user input."""
    return query.replace("{where}", condition)


def _match(pk: Any) -> tuple[str, Any] | None:
    """The condition on ``u`` finding the user ``pk`` (id or UUID) and its parameter, or None."""
    number = int_pk(pk)
    if number is not None:
        return "u.id = ?", number
    if isinstance(pk, str) and pk:
        return "u.uuid = ?", pk.strip()
    return None


def _user(row: Row) -> PlugItUser:
    roles = json_value(row["roles"])
    # Sorted as the names compare whatever their case, byte by byte, then by id.
    orgas = sorted(json_value(row["orgas"]), key=lambda o: (o[4], o[0]))
    return PlugItUser(
        pk=row["id"],
        username=row["username"],
        first_name=row["first_name"],
        last_name=row["last_name"],
        email=row["email"],
        is_authenticated=True,
        is_superuser=bool(row["is_superuser"]),
        member_of=frozenset(service for service, _ in roles),
        admin_of=frozenset(service for service, role in roles if role == "admin"),
        orgas=tuple(
            Orga(pk, name, codops, is_admin=bool(admin)) for pk, name, codops, admin, _ in orgas
        ),
        extra={
            "uuid": row["uuid"],
            "source": row["source"],
            "gravatar": gravatar_url(row["email"]),
        },
        backend=row["source"],
    )


def _orga(row: Row | None) -> Orga | None:
    return None if row is None else Orga(row["id"], row["name"], row["codops"])


class SQLUserStore:
    """A :class:`plugit_core.identity.UserStore` in a SQL :class:`~plugit_backends.sql.Database`.

    ``clock`` gives the time of the failed-login records (tests step it forward).  :meth:`close`
    closes the idle connections; the store stays usable.
    """

    def __init__(self, db: Database, *, clock: Callable[[], float] = time.time) -> None:
        self.db = db
        self.guard = db.guard
        self.store_guards = (db.guard,)
        self.clock = clock

    def close(self) -> None:
        """Close every pooled connection (those in use close when given back).  The store stays
        usable: the next call opens a new connection."""
        self.db.close()

    # -- reading users ----------------------------------------------------------------------------

    @staticmethod
    def _select(conn: Connection, where: str, params: tuple[Any, ...]) -> list[PlugItUser]:
        return [_user(row) for row in conn.all(_where(_USERS, where), params)]

    def _select_user(self, conn: Connection, pk: Any) -> PlugItUser | None:
        match = _match(pk)
        if match is None:
            return None
        users = self._select(conn, match[0], (match[1],))
        return users[0] if users else None

    def _user_row(self, pk: Any) -> Row | None:
        match = _match(pk)
        if match is None:
            return None
        with self.db.connection() as conn:
            return conn.one(
                _where(
                    "SELECT source, password_hash, active, session_generation "
                    "FROM {s}.users u WHERE {where}",
                    match[0],
                ),
                (match[1],),
            )

    def get_user(self, pk: Any) -> PlugItUser | None:
        with self.db.connection() as conn:
            return self._select_user(conn, pk)

    def get_by_username(self, username: str) -> PlugItUser | None:
        if not isinstance(username, str):
            return None
        with self.db.connection() as conn:
            users = self._select(conn, "{fold}(u.username) = {fold}(?)", (username.strip(),))
        return users[0] if users else None

    def list_users(self) -> list[PlugItUser]:
        with self.db.connection() as conn:
            return self._select(conn, "1 = 1", ())

    def members(self, service: str) -> list[PlugItUser]:
        with self.db.connection() as conn:
            return self._select(
                conn,
                "u.active AND u.id IN "
                "(SELECT user_id FROM {s}.service_roles WHERE service IN (?, ?))",
                (service, ALL),
            )

    def password_hash(self, pk: Any) -> str | None:
        row = self._user_row(pk)
        if row is None or row["source"] != LOCAL:
            return None
        return row["password_hash"]

    def is_active(self, pk: Any) -> bool:
        row = self._user_row(pk)
        return bool(row is not None and row["active"])

    def session_generation(self, pk: Any) -> int:
        row = self._user_row(pk)
        return 0 if row is None else int(row["session_generation"])

    def end_sessions(self, pk: Any) -> None:
        self._update(pk, "session_generation = session_generation + 1", ())

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
        with self.db.connection() as conn:
            # One statement: the row, or nothing when the name (or the external id) is taken,
            # also by a concurrent transaction (ON CONFLICT waits for it to end).
            row = conn.one(
                "INSERT INTO {s}.users (uuid, username, email, first_name, last_name, "
                "password_hash, source, external_id, is_superuser, created) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, {now}) ON CONFLICT DO NOTHING RETURNING id",
                (
                    str(uuid.uuid4()),
                    username,
                    email or "",
                    first_name or "",
                    last_name or "",
                    password_hash,
                    source,
                    external_id,
                    bool(is_superuser),
                ),
            )
            if row is not None:
                user = self._select_user(conn, row["id"])
                assert user is not None
                return user
            taken = conn.one(
                "SELECT 1 FROM {s}.users WHERE {fold}(username) = {fold}(?)", (username,)
            )
        if taken:
            raise ValueError(f"the user name {username!r} is taken")
        raise ValueError(f"{source} already has a user {external_id!r}")

    def sync_external_user(
        self, source: str, external_id: str, fields: Mapping[str, Any]
    ) -> PlugItUser:
        if not source or source == LOCAL:
            raise ValueError("sync_external_user is for external directories, not 'local'")
        if not external_id:
            raise ValueError("an external user needs an id")
        services = {str(k): v for k, v in dict(fields.get("services") or {}).items()}
        orgas = {str(k): v for k, v in dict(fields.get("orgas") or {}).items()}
        for role in (*services.values(), *orgas.values()):
            check_role(role)
        profile = {
            key: str(fields[key])
            for key in ("email", "first_name", "last_name")
            if fields.get(key) is not None
        }
        with self.db.transaction() as conn:
            pk = self._lock_external(conn, source, external_id)
            created = False
            if pk is None:
                pk, created = self._insert_external(conn, source, external_id, fields, profile)
            if profile and not created:
                assignments = ", ".join(f"{key} = ?" for key in profile)  # fixed names
                query = "UPDATE {s}.users SET {set} WHERE id = ?".replace("{set}", assignments)
                conn.run(query, (*profile.values(), pk))
            if "services" in fields:
                conn.run(
                    "DELETE FROM {s}.service_roles WHERE user_id = ? AND source = ?", (pk, source)
                )
                conn.run_many(
                    "INSERT INTO {s}.service_roles (user_id, service, role, source) "
                    "VALUES (?, ?, ?, ?)",
                    [(pk, service, role, source) for service, role in services.items()],
                )
            if "orgas" in fields:
                conn.run(
                    "DELETE FROM {s}.orga_members WHERE user_id = ? AND source = ?", (pk, source)
                )
                for orga_id, role in self._orga_ids(conn, orgas):
                    conn.run(
                        "INSERT INTO {s}.orga_members (user_id, orga_id, admin, source) "
                        "VALUES (?, ?, ?, ?) ON CONFLICT (user_id, orga_id, source) "
                        "DO UPDATE SET admin = {s}.orga_members.admin OR excluded.admin",
                        (pk, orga_id, role == "admin", source),
                    )
            user = self._select_user(conn, pk)
        assert user is not None
        return user

    @staticmethod
    def _lock_external(conn: Connection, source: str, external_id: str) -> int | None:
        """The id of the user ``source`` knows as ``external_id``, its row locked until the end
        of the transaction (concurrent syncs of the user wait; grants do not)."""
        row = conn.one(
            "SELECT id FROM {s}.users WHERE source = ? AND external_id = ?{lock}",
            (source, external_id),
        )
        return None if row is None else int(row["id"])

    def _insert_external(
        self,
        conn: Connection,
        source: str,
        external_id: str,
        fields: Mapping[str, Any],
        profile: Mapping[str, str],
    ) -> tuple[int, bool]:
        """Insert the user: ``(id, True)``; or ``(id, False)`` when a concurrent sync of the same
        user got there first (its row is then locked)."""
        wanted = check_username(str(fields.get("username") or external_id))
        username = wanted
        n = 1
        while True:
            row = conn.one(
                "INSERT INTO {s}.users (uuid, username, email, first_name, last_name, "
                "source, external_id, created) VALUES (?, ?, ?, ?, ?, ?, ?, {now}) "
                "ON CONFLICT DO NOTHING RETURNING id",
                (
                    str(uuid.uuid4()),
                    username,
                    profile.get("email", ""),
                    profile.get("first_name", ""),
                    profile.get("last_name", ""),
                    source,
                    external_id,
                ),
            )
            if row is not None:
                return int(row["id"]), True
            pk = self._lock_external(conn, source, external_id)
            if pk is not None:
                return pk, False
            # Never take over another account's name: alice from LDAP beside a local alice is
            # "alice@ldap" (then "alice@ldap-2", ...).
            n += 1
            username = f"{wanted}@{source}" if n == 2 else f"{wanted}@{source}-{n - 1}"

    @staticmethod
    def _orga_ids(conn: Connection, orgas: Mapping[str, str]) -> list[tuple[int, str]]:
        """``(orga id, role)`` for organisation names, creating the missing ones.  Names are
        inserted in one order whoever asks, so concurrent logins cannot deadlock."""
        # Sorted by lower-case name; a stable sort keeps the given order between spellings of
        # one name, so the first one given is the one created.
        ids: dict[str, int] = {}
        for name in sorted(orgas, key=str.lower):
            conn.run("INSERT INTO {s}.orgas (name) VALUES (?) ON CONFLICT DO NOTHING", (name,))
            # A separate statement: in PostgreSQL its snapshot includes the row a concurrent
            # transaction committed while the INSERT waited for it.
            row = conn.one("SELECT id FROM {s}.orgas WHERE {fold}(name) = {fold}(?)", (name,))
            assert row is not None
            ids[name] = int(row["id"])
        return [(ids[name], role) for name, role in orgas.items()]

    def _update(self, pk: Any, assignment: str, params: tuple[Any, ...]) -> None:
        """``UPDATE`` the user ``pk`` (``assignment`` is fixed text), or KeyError."""
        match = _match(pk)
        row = None
        if match is not None:
            with self.db.connection() as conn:
                query = "UPDATE {s}.users AS u SET {set} WHERE {where} RETURNING id"
                row = conn.one(
                    _where(query.replace("{set}", assignment), match[0]), (*params, match[1])
                )
        if row is None:
            raise KeyError(f"no user {pk!r}")

    def set_password_hash(self, pk: Any, password_hash: str) -> None:
        self._update(pk, "password_hash = ?", (password_hash,))

    def set_active(self, pk: Any, active: bool) -> None:
        self._update(pk, "active = ?", (bool(active),))

    def set_superuser(self, pk: Any, superuser: bool) -> None:
        self._update(pk, "is_superuser = ?", (bool(superuser),))

    # -- memberships ------------------------------------------------------------------------------

    def grant(self, pk: Any, service: str, role: str) -> None:
        check_role(role)
        if not service:
            raise ValueError("a grant needs a service name (or * for every service)")
        match = _match(pk)
        row = None
        if match is not None:
            with self.db.connection() as conn:
                query = (
                    "INSERT INTO {s}.service_roles (user_id, service, role, source) "
                    "SELECT u.id, ?, ?, 'local' FROM {s}.users u WHERE {where} "
                    "ON CONFLICT (user_id, service, source) DO UPDATE SET role = excluded.role "
                    "RETURNING user_id"
                )
                row = conn.one(_where(query, match[0]), (service, role, match[1]))
        if row is None:
            raise KeyError(f"no user {pk!r}")

    def revoke(self, pk: Any, service: str) -> None:
        match = _match(pk)
        if match is None:
            return
        with self.db.connection() as conn:
            query = (
                "DELETE FROM {s}.service_roles WHERE service = ? AND user_id IN "
                "(SELECT u.id FROM {s}.users u WHERE {where})"
            )
            conn.run(_where(query, match[0]), (service, match[1]))

    # -- organisations ----------------------------------------------------------------------------

    def create_orga(self, name: str, codops: str = "") -> Orga:
        name = name.strip() if isinstance(name, str) else ""
        if not name:
            raise ValueError("an organisation needs a name")
        with self.db.connection() as conn:
            row = conn.one(
                "INSERT INTO {s}.orgas (name, codops) VALUES (?, ?) "
                "ON CONFLICT DO NOTHING RETURNING id, name, codops",
                (name, codops or ""),
            )
        if row is None:
            raise ValueError(f"the organisation {name!r} exists")
        return Orga(int(row["id"]), row["name"], row["codops"])

    def get_orga(self, pk: Any) -> Orga | None:
        number = int_pk(pk)
        if number is None:
            return None
        with self.db.connection() as conn:
            return _orga(conn.one("SELECT id, name, codops FROM {s}.orgas WHERE id = ?", (number,)))

    def get_orga_by_name(self, name: str) -> Orga | None:
        if not isinstance(name, str):
            return None
        with self.db.connection() as conn:
            return _orga(
                conn.one(
                    "SELECT id, name, codops FROM {s}.orgas WHERE {fold}(name) = {fold}(?)",
                    (name,),
                )
            )

    def list_orgas(self) -> list[Orga]:
        with self.db.connection() as conn:
            rows = conn.all("SELECT id, name, codops FROM {s}.orgas ORDER BY {fold}(name){c}, id")
        return [Orga(row["id"], row["name"], row["codops"]) for row in rows]

    def add_to_orga(self, pk: Any, orga_pk: Any, *, admin: bool = False) -> None:
        match = _match(pk)
        number = int_pk(orga_pk)
        with self.db.connection() as conn:
            if match is not None and number is not None:
                query = (
                    "INSERT INTO {s}.orga_members (user_id, orga_id, admin, source) "
                    "SELECT u.id, o.id, ?, 'local' FROM {s}.users u "
                    "JOIN {s}.orgas o ON o.id = ? WHERE {where} "
                    "ON CONFLICT (user_id, orga_id, source) "
                    "DO UPDATE SET admin = excluded.admin RETURNING user_id"
                )
                row = conn.one(_where(query, match[0]), (bool(admin), number, match[1]))
                if row is not None:
                    return
            user_found = self._select_user(conn, pk) is not None
        if not user_found:
            raise KeyError(f"no user {pk!r}")
        raise KeyError(f"no organisation {orga_pk!r}")

    def remove_from_orga(self, pk: Any, orga_pk: Any) -> None:
        match = _match(pk)
        number = int_pk(orga_pk)
        if match is None or number is None:
            return
        with self.db.connection() as conn:
            query = (
                "DELETE FROM {s}.orga_members WHERE orga_id = ? AND user_id IN "
                "(SELECT u.id FROM {s}.users u WHERE {where})"
            )
            conn.run(_where(query, match[0]), (number, match[1]))

    # -- failed logins ----------------------------------------------------------------------------

    def record_failure(self, key: str) -> None:
        now = self.clock()
        with self.db.transaction() as conn:  # the record, and the old ones forgotten
            conn.run("INSERT INTO {s}.login_failures (key, at) VALUES (?, ?)", (key, now))
            conn.run("DELETE FROM {s}.login_failures WHERE at < ?", (now - FAILURE_RETENTION,))

    def count_failures(self, key: str, window: float) -> int:
        with self.db.connection() as conn:
            row = conn.one(
                "SELECT count(*) AS n FROM {s}.login_failures WHERE key = ? AND at > ?",
                (key, self.clock() - window),
            )
        assert row is not None
        return int(row["n"])

    def clear_failures(self, key: str) -> None:
        with self.db.connection() as conn:
            conn.run("DELETE FROM {s}.login_failures WHERE key = ?", (key,))

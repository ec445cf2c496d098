"""PostgreSQL as a :class:`~plugit_backends.sql.Database` (psycopg 3, the ``postgres`` extra).

* :func:`read_settings` reads a ``[<kind>_postgres]`` table (``dsn``, ``schema``, ``pool_size``,
  ``pool_timeout``, ``connect_timeout``); ``{ env = "NAME" }`` takes a value from the
  environment, and every error is a :class:`~plugit_core.config.ConfigError` naming the key.
* :class:`StorePool` hands out autocommit connections whose rows are dicts (a store runs a
  one-statement write as is and wraps a multi-statement write in ``conn.transaction()``), each
  call through a :class:`~plugit_core.stores.StoreGuard`: bounded, capped, failing fast with
  :class:`~plugit_core.stores.StoreUnavailable` while the database is unavailable.
* :func:`migrate` brings one component's tables (``users``, ``billing``, ``mail``) in a schema up
  to date, under an advisory lock, in one transaction, and records the version in the schema's
  ``schema_version`` table.  Two processes starting at once do not race; a database written by
  a newer PlugIt is refused with :class:`SchemaError`.

* :class:`PostgresDatabase` is a schema's tables of one component, migrated, over a
  :class:`StorePool`: what a SQL store of ``plugit_backends.sql`` runs on.

Nothing here imports psycopg at module level: without the extra, :data:`PG_MISSING` holds the
ImportError and the stores' factories turn it into a configuration error.
"""

from __future__ import annotations

import hashlib
import os
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from functools import partial
from typing import TYPE_CHECKING, Any

from plugit_core.config import ConfigError, ProxyConfig
from plugit_core.settings import read_section, setting
from plugit_core.stores import DEFAULT_MAX_WAITERS, GuardSettings, StoreGuard

from . import Connection as SQLConnection
from . import Dialect

try:
    import psycopg
    from psycopg import sql
    from psycopg.rows import dict_row
except ImportError as exc:  # the optional ``postgres`` extra is not installed
    PG_MISSING: ImportError | None = exc
else:
    PG_MISSING = None

if TYPE_CHECKING:
    from psycopg import Connection

__all__ = [
    "DEFAULT_SCHEMA",
    "PG_MISSING",
    "PgSettings",
    "PostgresDatabase",
    "PostgresDialect",
    "SchemaError",
    "StorePool",
    "build_store",
    "connect",
    "is_outage",
    "migrate",
    "read_settings",
    "redact_dsn",
]

DEFAULT_SCHEMA = "plugit"
DEFAULT_POOL_SIZE = 10
DEFAULT_POOL_TIMEOUT = 2.0  # seconds a store call may take: a free connection, then the query
DEFAULT_CONNECT_TIMEOUT = 2.0  # seconds to establish one connection (libpq's minimum)
_SCHEMA_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")


class SchemaError(Exception):
    """The tables cannot be used: written by a newer PlugIt, or the schema name is invalid."""


def require_psycopg(store: str | None = None) -> None:
    """Raise RuntimeError when psycopg 3 or psycopg_pool is missing, naming ``store`` (the
    backend that needs it) when given."""
    if PG_MISSING is not None:
        needs = (
            f"{store} needs psycopg 3"
            if store
            else "the PostgreSQL stores need psycopg 3 and psycopg_pool"
        )
        raise RuntimeError(f"{needs}: pip install 'plugit-wsgi[postgres]' ({PG_MISSING})")


def check_schema_name(schema: Any) -> str:
    """``schema`` if it is a plain identifier (letters, digits, ``_``; at most 63), else raise
    ValueError: a name that needs no quoting is the same in psql, pg_dump and the docs."""
    if not isinstance(schema, str) or not _SCHEMA_NAME.fullmatch(schema):
        raise ValueError(
            f"a schema name is a letter or _ then letters, digits or _ (at most 63), not {schema!r}"
        )
    if schema.lower().startswith("pg_"):
        raise ValueError(f"schema names starting with pg_ are reserved, not {schema!r}")
    return schema


def redact_dsn(dsn: str) -> str:
    """What a DSN points at (user, host, port, database), never its password, for messages."""
    try:
        require_psycopg()
        parts = psycopg.conninfo.conninfo_to_dict(dsn)
    except Exception:
        return "<unreadable PostgreSQL DSN>"
    host = parts.get("host") or parts.get("hostaddr") or "(default host)"
    port = f":{parts['port']}" if parts.get("port") else ""
    user = f"{parts['user']}@" if parts.get("user") else ""
    dbname = parts.get("dbname") or "(default database)"
    return f"postgresql://{user}{host}{port}/{dbname}"


def _connect_kwargs(connect_timeout: float) -> dict[str, Any]:
    return {
        "autocommit": True,
        "row_factory": dict_row,
        # libpq counts whole seconds and treats anything below 2 as 2.
        "connect_timeout": max(2, round(connect_timeout)),
    }


def connect(dsn: str, *, connect_timeout: float = DEFAULT_CONNECT_TIMEOUT) -> Connection[Any]:
    """One autocommit connection with dict rows (for migrations and tools)."""
    require_psycopg()
    return psycopg.connect(dsn, **_connect_kwargs(connect_timeout))


class StorePool:
    """A store's connections, each call through a :class:`~plugit_core.stores.StoreGuard`.

    At most ``max_size`` connections; a call waits at most ``timeout`` seconds for a free one,
    connects on demand (``connect_timeout``), checks an idle connection with an empty query as
    it hands it out (a database restart costs a reconnection, not a failed request), and is cut
    (its socket closed) when it lasts longer than the guard's wait: a frozen server holds a
    thread for the wait at most.  Refused, unreachable, too slow or known to be down, a call
    raises :class:`~plugit_core.stores.StoreUnavailable`; reconnection is attempted on demand,
    at most a second apart while the database is down.

    The first connection is made at once (bad settings show at start-up).  :meth:`close`
    closes the idle connections (those in use close when given back); the pool is used again
    on demand after that, like the SQLite stores.
    """

    def __init__(
        self,
        dsn: str,
        *,
        max_size: int = DEFAULT_POOL_SIZE,
        timeout: float = DEFAULT_POOL_TIMEOUT,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        name: str | None = None,
        store: str = "postgres",
        label: str = "the database",
        max_waiters: int = DEFAULT_MAX_WAITERS,
        required: bool = True,
    ) -> None:
        require_psycopg()
        if max_size < 1:
            raise ValueError("a pool needs at least one connection")
        self.max_size = max_size
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.name = name or store
        self.guard = StoreGuard(
            store,
            label,
            wait=timeout,
            max_waiters=max_waiters,
            is_outage=is_outage,
            probe=self._probe,
            required=required,
        )
        self._dsn = dsn
        self._lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(max_size)
        self._idle: list[Connection[Any]] = []
        self._generation = 0
        self._closed = False
        conn = self._connect()
        self._idle.append(conn)

    def _connect(self) -> Connection[Any]:
        return psycopg.connect(self._dsn, **_connect_kwargs(self.connect_timeout))

    def _probe(self) -> None:
        """An empty query on a pooled connection (run by the guard's :meth:`check`)."""
        deadline = time.monotonic() + self.guard.wait
        conn, generation = self._take(deadline)
        try:
            with self.guard.watch(partial(_cut, conn), deadline - time.monotonic()):
                conn.execute("SELECT 1")
        finally:
            self._give(conn, generation)

    def current(self) -> StorePool:
        """The pool itself (kept for callers of the former psycopg_pool wrapper)."""
        return self

    def _take(self, deadline: float) -> tuple[Connection[Any], int]:
        if not self._slots.acquire(timeout=max(0.0, deadline - time.monotonic())):
            raise self.guard.unavailable(
                f"all {self.max_size} connections stayed busy for {self.timeout:g}s (pool_size)"
            )
        try:
            with self._lock:
                self._closed = False
                generation = self._generation
                conn = self._idle.pop() if self._idle else None
            if conn is not None:
                try:
                    with self.guard.watch(partial(_cut, conn), deadline - time.monotonic()):
                        conn.execute("")  # alive?  (a restarted server closed it)
                    return conn, generation
                except psycopg.Error:
                    conn.close()
            return self._connect(), generation
        except BaseException:
            self._slots.release()
            raise

    def _give(self, conn: Connection[Any], generation: int) -> None:
        try:
            reusable = (
                not conn.closed
                and not conn.broken
                and conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
            )
            with self._lock:
                if reusable and generation == self._generation and not self._closed:
                    self._idle.append(conn)
                    return
            conn.close()
        finally:
            self._slots.release()

    @contextmanager
    def connection(self) -> Iterator[Connection[Any]]:
        """A pooled autocommit connection, given back at the end of the block.

        A database that refuses writes (read-only, its disk full) makes a write raise
        :class:`~plugit_core.stores.StoreUnavailable` (a 503 naming the store), while the store
        stays up for the reads it still answers."""
        try:
            with self.guard.call():
                deadline = time.monotonic() + self.guard.wait
                conn, generation = self._take(deadline)
                try:
                    with self.guard.watch(partial(_cut, conn), deadline - time.monotonic()):
                        yield conn
                finally:
                    self._give(conn, generation)
        except WRITES_REFUSED as exc:
            reason = f"refuses writes ({type(exc).__name__}: {str(exc).strip()[:200]})"
            self.guard.metrics.refused("read_only")
            self.guard.warn("%s (%s) %s", self.guard.label, self.guard.store, reason)
            raise self.guard.unavailable(reason) from None

    @contextmanager
    def transaction(self) -> Iterator[Connection[Any]]:
        """A pooled connection inside one transaction: committed at the end of the block, rolled
        back when it raises."""
        with self.connection() as conn, conn.transaction():
            yield conn

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        with self._lock:
            self._generation += 1
            self._closed = True
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()


def _cut(conn: Connection[Any]) -> None:
    """Close a connection's socket under a thread blocked on it (it then fails at once)."""
    fd = conn.pgconn.socket
    sock = socket.socket(fileno=os.dup(fd))
    try:
        sock.shutdown(socket.SHUT_RDWR)
    finally:
        sock.close()


# A database that answers but refuses writes: the call is refused (a 503), the store is not down.
WRITES_REFUSED: tuple[type[BaseException], ...] = (
    ()
    if PG_MISSING is not None
    else (psycopg.errors.ReadOnlySqlTransaction, psycopg.errors.DiskFull)
)


def is_outage(exc: BaseException) -> bool:
    """Does this error mean the database is unavailable (rather than a statement's mistake)?"""
    if PG_MISSING is not None:
        return isinstance(exc, OSError)
    if isinstance(exc, psycopg.errors.TransactionRollback):  # a conflict, answered at once
        return False
    if isinstance(exc, WRITES_REFUSED):  # it answers reads: see StorePool.connection
        return False
    return isinstance(exc, (psycopg.OperationalError, psycopg.InterfaceError, OSError))


def advisory_key(text: str) -> int:
    """A stable signed 64-bit key for ``pg_advisory_xact_lock``."""
    digest = hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def migrate(conn: Connection[Any], schema: str, component: str, steps: Sequence[str]) -> int:
    """Bring ``component``'s tables in ``schema`` to version ``len(steps)``; return it.

    ``steps[i]`` is the SQL (several statements, no parameters) taking the component from
    version ``i`` to ``i + 1``; ``{schema}`` in it is replaced by the quoted schema name.  Steps
    only ever get appended.  Everything runs in one transaction under an advisory lock, so two
    processes starting together apply each step once, and a failed step leaves nothing behind.
    The schema is created when missing (a schema made beforehand by an administrator is used as
    is: no CREATE right on the database is needed then).
    """
    require_psycopg()
    check_schema_name(schema)
    ident = sql.Identifier(schema)
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (advisory_key(f"plugit:{schema}"),))
        exists = conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (schema,)).fetchone()
        if exists is None:
            conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(ident))
        conn.execute(
            sql.SQL(
                "CREATE TABLE IF NOT EXISTS {}.schema_version ("
                "component text PRIMARY KEY, version integer NOT NULL, "
                "updated timestamptz NOT NULL DEFAULT now())"
            ).format(ident)
        )
        row = conn.execute(
            sql.SQL("SELECT version FROM {}.schema_version WHERE component = %s").format(ident),
            (component,),
        ).fetchone()
        current = 0 if row is None else int(row["version"])
        wanted = len(steps)
        if current > wanted:
            raise SchemaError(
                f"the {component} tables in schema {schema!r} are at version {current}, "
                f"newer than this PlugIt's ({wanted})"
            )
        for step in steps[current:]:
            conn.execute(sql.SQL(step).format(schema=ident))
        if current < wanted:
            conn.execute(
                sql.SQL(
                    "INSERT INTO {}.schema_version (component, version) VALUES (%s, %s) "
                    "ON CONFLICT (component) DO UPDATE "
                    "SET version = excluded.version, updated = now()"
                ).format(ident),
                (component, wanted),
            )
    return wanted


class PostgresDialect(Dialect):
    """PostgreSQL's words for the stores' statements (see ``plugit_backends.sql``), in
    ``schema``; a named lock is a transaction-level advisory lock."""

    def __init__(self, schema: str) -> None:
        self.schema = check_schema_name(schema)
        super().__init__(
            {
                "s": f'"{self.schema}"',
                "fold": "lower",
                "c": ' COLLATE "C"',
                "now": "now()",
                "lock": " FOR NO KEY UPDATE",
                "skip_locked": " FOR UPDATE SKIP LOCKED",
                "json_list": "json_agg",
                "json_array": "json_build_array",
            },
            pyformat=True,
            drop_nul=True,
        )

    def named_lock(self, name: str) -> tuple[str, tuple[Any, ...]]:
        return "SELECT pg_advisory_xact_lock(?)", (advisory_key(f"plugit:{self.schema}:{name}"),)


class PostgresDatabase:
    """The tables of ``component`` in ``schema``, migrated to version ``len(steps)`` (see
    :func:`migrate`), reached through a :class:`StorePool`.

    ``store`` and ``label`` name it in the guard; ``tables`` names the store's tables for its
    statements (see :meth:`~plugit_backends.sql.Dialect.with_tables`); the other arguments are
    the pool's."""

    def __init__(
        self,
        dsn: str,
        steps: Sequence[str],
        *,
        component: str,
        store: str,
        label: str,
        schema: str = DEFAULT_SCHEMA,
        tables: Mapping[str, str] | None = None,
        pool_size: int = DEFAULT_POOL_SIZE,
        pool_timeout: float = DEFAULT_POOL_TIMEOUT,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        max_waiters: int = DEFAULT_MAX_WAITERS,
        required: bool = True,
    ) -> None:
        require_psycopg()
        self.schema = check_schema_name(schema)
        self.dialect = PostgresDialect(schema).with_tables(tables or {})
        with connect(dsn, connect_timeout=connect_timeout) as conn:
            migrate(conn, schema, component, steps)
        self.pool = StorePool(
            dsn,
            max_size=pool_size,
            timeout=pool_timeout,
            connect_timeout=connect_timeout,
            name=f"plugit-{component}-{schema}",
            store=store,
            label=label,
            max_waiters=max_waiters,
            required=required,
        )
        self.guard = self.pool.guard

    def __repr__(self) -> str:
        return f"<PostgresDatabase schema={self.schema!r}>"

    @contextmanager
    def connection(self) -> Iterator[SQLConnection]:
        """A pooled autocommit connection: each statement is its own transaction."""
        with self.pool.connection() as conn:
            yield SQLConnection(conn, self.dialect)

    @contextmanager
    def transaction(self) -> Iterator[SQLConnection]:
        """A pooled connection inside one transaction (committed, or rolled back on error)."""
        with self.pool.transaction() as conn:
            yield SQLConnection(conn, self.dialect)

    def close(self) -> None:
        """Close the pool's idle connections (those in use close when given back); the next
        call opens new ones."""
        self.pool.close()


def _dsn(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError("expected a PostgreSQL connection string (postgresql://... or key=value)")
    if PG_MISSING is None:
        try:
            psycopg.conninfo.conninfo_to_dict(value)
        except psycopg.ProgrammingError:
            raise ValueError("not a PostgreSQL connection string") from None
    return value


def _schema(value: Any) -> str:
    check_schema_name(value)
    return str(value)


@dataclass(frozen=True)
class PgSettings:
    """A ``[<kind>_postgres]`` table, checked."""

    dsn: str = setting(
        parse=_dsn,
        secret=True,
        required='is required: a connection string, e.g. dsn = { env = "PLUGIT_DATABASE_URL" }',
        help="the database's connection string",
    )
    schema: str = setting(DEFAULT_SCHEMA, parse=_schema, help="the schema of the tables")
    pool_size: int = setting(DEFAULT_POOL_SIZE, minimum=1, text=True, help="pooled connections")
    pool_timeout: float = setting(
        DEFAULT_POOL_TIMEOUT, minimum=0.1, text=True, help="seconds to wait for a connection"
    )
    connect_timeout: float = setting(
        DEFAULT_CONNECT_TIMEOUT, minimum=1, text=True, help="seconds to connect"
    )
    guard: GuardSettings = setting(default_factory=GuardSettings, flatten=True)

    @property
    def max_waiters(self) -> int:
        return self.guard.max_waiters

    @property
    def required(self) -> bool:
        return self.guard.required is not False

    def store_kwargs(self) -> dict[str, Any]:
        return {
            "schema": self.schema,
            "pool_size": self.pool_size,
            "pool_timeout": self.pool_timeout,
            "connect_timeout": self.connect_timeout,
            "max_waiters": self.max_waiters,
            "required": self.required,
        }


def read_settings(
    config: ProxyConfig,
    section: Mapping[str, Any],
    name: str,
    *,
    extra: Sequence[str] = (),
    required: bool = True,
) -> PgSettings:
    """Check the ``[name]`` table (``users_postgres``, ...).  ``extra`` are further keys the
    caller reads itself; ``required`` is the default of the ``required`` key (is the proxy
    ready without this store?)."""
    settings = read_section(PgSettings, section, name, config.source, extra_keys=extra)
    guard = settings.guard
    if guard.required is None:
        settings = replace(settings, guard=replace(guard, required=required))
    return settings


def build_store(
    config: ProxyConfig,
    section: Mapping[str, Any],
    name: str,
    make: Callable[[PgSettings], Any],
    *,
    required: bool = True,
) -> Any:
    """A store from the ``[name]`` table: ``make(settings)``, with a missing psycopg, a server
    that cannot be reached and a newer schema turned into a ConfigError (the password never
    shown)."""
    if PG_MISSING is not None:
        raise ConfigError(
            name.split("_")[0],
            f"the {name} backend needs psycopg 3: pip install 'plugit-wsgi[postgres]' "
            f"({PG_MISSING})",
            config.source,
        )
    settings = read_settings(config, section, name, required=required)
    try:
        return make(settings)
    except (psycopg.Error, SchemaError) as exc:  # psycopg_pool.PoolTimeout is a psycopg.Error
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(
            f"{name}.dsn", f"cannot use {redact_dsn(settings.dsn)}: {text}", config.source
        ) from None

"""Shared helpers of the PostgreSQL stores (psycopg 3, the ``postgres`` extra).

* :func:`read_settings` reads a ``[<kind>_postgres]`` table (``dsn``, ``schema``, ``pool_size``,
  ``pool_timeout``, ``connect_timeout``); ``{ env = "NAME" }`` takes a value from the
  environment, and every error is a :class:`~plugit_core.config.ConfigError` naming the key.
* :func:`open_pool` opens a ``psycopg_pool.ConnectionPool`` of autocommit connections whose rows
  are dicts: a store runs a one-statement write as is and wraps a multi-statement write in
  ``conn.transaction()``.
* :func:`migrate` brings one component's tables (``users``, ``billing``, ``mail``) in a schema up
  to date, under an advisory lock, in one transaction, and records the version in the schema's
  ``schema_version`` table.  Two processes starting at once do not race; a database written by
  a newer PlugIt is refused with :class:`SchemaError`.

Nothing here imports psycopg at module level: without the extra, :data:`PG_MISSING` holds the
ImportError and the stores' factories turn it into a configuration error.
"""

from __future__ import annotations

import hashlib
import re
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from plugit_core.config import ConfigError, ProxyConfig

try:
    import psycopg
    from psycopg import sql
    from psycopg.rows import dict_row
    from psycopg_pool import ConnectionPool
except ImportError as exc:  # the optional ``postgres`` extra is not installed
    PG_MISSING: ImportError | None = exc
else:
    PG_MISSING = None

if TYPE_CHECKING:
    from psycopg import Connection
    from psycopg_pool import ConnectionPool as Pool

__all__ = [
    "DEFAULT_SCHEMA",
    "PG_MISSING",
    "PgSettings",
    "SchemaError",
    "StorePool",
    "build_store",
    "connect",
    "migrate",
    "open_pool",
    "read_settings",
    "redact_dsn",
]

DEFAULT_SCHEMA = "plugit"
DEFAULT_POOL_SIZE = 10
DEFAULT_POOL_TIMEOUT = 10.0  # seconds a request waits for a free connection
DEFAULT_CONNECT_TIMEOUT = 10.0  # seconds to establish one connection
SETTINGS = ("dsn", "schema", "pool_size", "pool_timeout", "connect_timeout")
_SCHEMA_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")


class SchemaError(Exception):
    """The tables cannot be used: written by a newer PlugIt, or the schema name is invalid."""


def require_psycopg() -> None:
    """Raise RuntimeError when psycopg 3 or psycopg_pool is missing."""
    if PG_MISSING is not None:
        raise RuntimeError(
            "the PostgreSQL stores need psycopg 3 and psycopg_pool: "
            f"pip install 'plugit[postgres]' ({PG_MISSING})"
        )


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


def open_pool(
    dsn: str,
    *,
    max_size: int = DEFAULT_POOL_SIZE,
    timeout: float = DEFAULT_POOL_TIMEOUT,
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
    name: str | None = None,
) -> Pool[Any]:
    """An open pool of 1 to ``max_size`` autocommit, dict-row connections.

    A connection is checked (an empty query) when it is handed out, so a pool survives a
    database restart without failing the next request; ``timeout`` is how long a caller waits
    for a free connection before ``psycopg_pool.PoolTimeout``.  Raises ``psycopg.Error`` (or
    ``PoolTimeout``) when the first connection cannot be made.
    """
    require_psycopg()
    if max_size < 1:
        raise ValueError("a pool needs at least one connection")
    pool: Pool[Any] = ConnectionPool(
        dsn,
        min_size=1,
        max_size=max_size,
        kwargs=_connect_kwargs(connect_timeout),
        open=False,
        check=ConnectionPool.check_connection,
        timeout=timeout,
        name=name,
    )
    try:
        pool.open(wait=True, timeout=max(connect_timeout, 1.0))
    except BaseException:
        pool.close()
        raise
    return pool


class StorePool:
    """A store's pool: opened at once (bad settings show at start-up), closed by :meth:`close`,
    and opened again on demand after that (a store may be used again once closed, like the
    SQLite stores).  Connections in use when it closes are closed when given back."""

    def __init__(
        self,
        dsn: str,
        *,
        max_size: int = DEFAULT_POOL_SIZE,
        timeout: float = DEFAULT_POOL_TIMEOUT,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        name: str | None = None,
    ) -> None:
        self._options = {
            "max_size": max_size,
            "timeout": timeout,
            "connect_timeout": connect_timeout,
            "name": name,
        }
        self._dsn = dsn
        self._lock = threading.Lock()
        self._pool: Pool[Any] | None = None
        self.current()

    def current(self) -> Pool[Any]:
        """The open pool (opening a new one after :meth:`close`)."""
        with self._lock:
            if self._pool is None:
                self._pool = open_pool(self._dsn, **self._options)  # type: ignore[arg-type]
            return self._pool

    @contextmanager
    def connection(self) -> Iterator[Connection[Any]]:
        """A pooled autocommit connection, given back at the end of the block."""
        with self.current().connection() as conn:
            yield conn

    @contextmanager
    def transaction(self) -> Iterator[Connection[Any]]:
        """A pooled connection inside one transaction: committed at the end of the block, rolled
        back when it raises."""
        with self.current().connection() as conn, conn.transaction():
            yield conn

    @property
    def closed(self) -> bool:
        return self._pool is None

    def close(self) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.close()


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
            conn.execute(sql.SQL(step).format(schema=ident))  # type: ignore[arg-type]
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


def schema_version(conn: Connection[Any], schema: str, component: str) -> int:
    """The recorded version of ``component`` in ``schema`` (0 when none)."""
    check_schema_name(schema)
    table = sql.SQL("{}.schema_version").format(sql.Identifier(schema))
    found = conn.execute(
        "SELECT 1 FROM pg_tables WHERE schemaname = %s AND tablename = 'schema_version'",
        (schema,),
    ).fetchone()
    if found is None:
        return 0
    row = conn.execute(
        sql.SQL("SELECT version FROM {} WHERE component = %s").format(table), (component,)
    ).fetchone()
    return 0 if row is None else int(row["version"])


@dataclass(frozen=True)
class PgSettings:
    """A ``[<kind>_postgres]`` table, checked."""

    dsn: str
    schema: str = DEFAULT_SCHEMA
    pool_size: int = DEFAULT_POOL_SIZE
    pool_timeout: float = DEFAULT_POOL_TIMEOUT
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT

    def store_kwargs(self) -> dict[str, Any]:
        return {
            "schema": self.schema,
            "pool_size": self.pool_size,
            "pool_timeout": self.pool_timeout,
            "connect_timeout": self.connect_timeout,
        }


def read_settings(
    config: ProxyConfig, section: Mapping[str, Any], name: str, *, extra: Sequence[str] = ()
) -> PgSettings:
    """Check the ``[name]`` table (``users_postgres``, ...).  ``extra`` are further keys the
    caller reads itself."""
    reader = config.reader(name, section)
    reader.known({*SETTINGS, *extra})
    if "dsn" not in section:
        raise reader.error(
            "dsn",
            'is required: a connection string, e.g. dsn = { env = "PLUGIT_DATABASE_URL" }',
        )
    dsn = reader.raw("dsn")
    if not isinstance(dsn, str) or not dsn.strip():
        raise reader.error(
            "dsn", "expected a PostgreSQL connection string (postgresql://... or key=value)"
        )
    if PG_MISSING is None:
        try:
            psycopg.conninfo.conninfo_to_dict(dsn)
        except psycopg.ProgrammingError:
            raise reader.error("dsn", "not a PostgreSQL connection string") from None
    schema = reader.raw("schema", DEFAULT_SCHEMA)
    try:
        check_schema_name(schema)
    except ValueError as exc:
        raise reader.error("schema", str(exc)) from None
    return PgSettings(
        dsn=dsn,
        schema=schema,
        pool_size=reader.number("pool_size", DEFAULT_POOL_SIZE, minimum=1, integer=True, text=True),
        pool_timeout=float(
            reader.number("pool_timeout", DEFAULT_POOL_TIMEOUT, minimum=0.1, text=True)
        ),
        connect_timeout=float(
            reader.number("connect_timeout", DEFAULT_CONNECT_TIMEOUT, minimum=1, text=True)
        ),
    )


def build_store(
    config: ProxyConfig,
    section: Mapping[str, Any],
    name: str,
    make: Callable[[PgSettings], Any],
) -> Any:
    """A store from the ``[name]`` table: ``make(settings)``, with a missing psycopg, a server
    that cannot be reached and a newer schema turned into a ConfigError (the password never
    shown)."""
    if PG_MISSING is not None:
        raise ConfigError(
            name.split("_")[0],
            f"the {name} backend needs psycopg 3: pip install 'plugit[postgres]' ({PG_MISSING})",
            config.source,
        )
    settings = read_settings(config, section, name)
    try:
        return make(settings)
    except (psycopg.Error, SchemaError) as exc:  # psycopg_pool.PoolTimeout is a psycopg.Error
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(
            f"{name}.dsn", f"cannot use {redact_dsn(settings.dsn)}: {text}", config.source
        ) from None

"""The PostgreSQL test server, and schemas of a test's own on it, dropped afterwards.

Imported by name (``from postgres_schema import DSN, fresh_schema``): a conftest module is no
place to import from, and ``tests/`` is on the path of every test.  The server is
``PLUGIT_TEST_POSTGRES_DSN`` (default ``postgresql://postgres@127.0.0.1:5432/test``).  Without
psycopg or a reachable server a test that needs it is skipped, or fails when
``PLUGIT_REQUIRE_SERVERS=1`` (CI).
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Iterator

import pytest

from plugit_backends.sql import postgres as pg

DSN = os.environ.get("PLUGIT_TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test")
REQUIRED = os.environ.get("PLUGIT_REQUIRE_SERVERS") == "1"


@functools.cache
def server_problem(dsn: str = DSN) -> str | None:
    """Why the server at ``dsn`` cannot be used (asked once per run), or None."""
    if pg.PG_MISSING is not None:
        return f"psycopg is not installed: pip install 'plugit-wsgi[postgres]' ({pg.PG_MISSING})"
    try:
        pg.connect(dsn, connect_timeout=3).close()
    except pg.psycopg.Error as exc:
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        where = pg.redact_dsn(dsn)
        return f"PostgreSQL at {where} is not reachable ({text}); set PLUGIT_TEST_POSTGRES_DSN"
    return None


def require_server(dsn: str = DSN, *, module: bool = False) -> None:
    """Skip the test (``module``: the whole module, at its top) when the server cannot be
    used; fail instead when the servers are required."""
    problem = server_problem(dsn)
    if problem is None:
        return
    if REQUIRED:
        pytest.fail(problem, pytrace=False)
    pytest.skip(problem, allow_module_level=module)


def drop_schema(name: str, dsn: str = DSN) -> None:
    with pg.connect(dsn) as conn:
        conn.execute(pg.sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(pg.sql.Identifier(name)))


@contextlib.contextmanager
def fresh_schema(dsn: str = DSN) -> Iterator[str]:
    """The name of a new schema on the server at ``dsn`` (created by the store that uses it),
    dropped with everything in it when the block ends."""
    require_server(dsn)
    name = f"plugit_test_{os.urandom(6).hex()}"
    try:
        yield name
    finally:
        drop_schema(name, dsn)

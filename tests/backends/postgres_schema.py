"""A schema of a test's own on the PostgreSQL test server, dropped afterwards.

Imported by name (``from postgres_schema import fresh_schema``): a conftest module is no place to
import from.  Without a reachable server the test is skipped, or fails when
``PLUGIT_REQUIRE_SERVERS=1`` (CI).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import pytest

from plugit_backends.sql import postgres as pg


def _problem(dsn: str) -> str | None:
    if pg.PG_MISSING is not None:
        return f"psycopg is not installed ({pg.PG_MISSING})"
    try:
        pg.connect(dsn, connect_timeout=3).close()
    except pg.psycopg.Error as exc:
        return f"PostgreSQL at {pg.redact_dsn(dsn)} is not reachable: {exc}".strip()
    return None


@contextlib.contextmanager
def fresh_schema(dsn: str) -> Iterator[str]:
    """The name of a new schema on the server at ``dsn`` (created by the store that uses it),
    dropped with everything in it when the block ends."""
    problem = _problem(dsn)
    if problem is not None:
        if os.environ.get("PLUGIT_REQUIRE_SERVERS") == "1":
            pytest.fail(problem)
        pytest.skip(problem)
    name = f"plugit_test_{os.urandom(6).hex()}"
    try:
        yield name
    finally:
        with pg.connect(dsn) as conn:
            conn.execute(
                pg.sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(pg.sql.Identifier(name))
            )

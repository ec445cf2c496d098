"""The SQL stores' common ground: one store class per kind runs on SQLite and on PostgreSQL.

A store is written once against a :class:`Database` (``sql.sqlite.SQLiteDatabase`` or
``sql.postgres.PostgresDatabase``).  It writes its statements in one spelling and the
database's :class:`Dialect` turns them into what the driver wants:

* ``?`` marks a parameter (``%s`` for psycopg);
* ``{s}.table`` names a table (``main.table`` in SQLite, ``"schema".table`` in PostgreSQL);
* ``{fold}(expr)`` compares or sorts names whatever their case: ``lower(expr)`` in PostgreSQL,
  the expression itself in SQLite, whose name columns are ``COLLATE NOCASE``; ``{c}`` after it
  in an ``ORDER BY`` sorts the folded text byte by byte (``COLLATE "C"`` in PostgreSQL);
* ``{now}`` is the current time in the dialect's own type, ``{lock}`` locks the rows a
  ``SELECT`` of a transaction read (``FOR NO KEY UPDATE``; nothing in SQLite, whose write
  transactions hold the whole file), ``{skip_locked}`` locks them and leaves out the rows
  another transaction locked (``FOR UPDATE SKIP LOCKED``), ``{json_list}`` and ``{json_array}``
  build JSON (see :func:`json_value`).

Both databases hand out a :class:`Connection`: :meth:`Database.connection` runs each statement
as its own transaction, :meth:`Database.transaction` runs the block as one (committed at its
end, rolled back when it raises).  Every call goes through the database's
:class:`~plugit_core.stores.StoreGuard`: an unavailable database is a
:class:`~plugit_core.stores.StoreUnavailable`, whatever the driver.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Any, Protocol

from plugit_core.stores import StoreGuard

__all__ = ["Connection", "Database", "Dialect", "Row", "json_value"]

Row = Mapping[str, Any]
_WORD = re.compile(r"\{(\w+)\}")


class Dialect:
    """What differs in the text of a statement and its parameters between two databases.

    ``words`` are the ``{name}`` substitutions (see the module docstring); ``pyformat`` means
    the driver wants ``%s`` (then a literal ``%`` is doubled); ``drop_nul`` removes NUL
    characters from text parameters (PostgreSQL's text cannot hold them).
    """

    def __init__(
        self, words: Mapping[str, str], *, pyformat: bool = False, drop_nul: bool = False
    ) -> None:
        self.words = dict(words)
        self.pyformat = pyformat
        self.drop_nul = drop_nul
        self._cache: dict[str, str] = {}

    def sql(self, text: str) -> str:
        """``text`` in this dialect (cached: a store has a fixed set of statements)."""
        done = self._cache.get(text)
        if done is None:
            done = _WORD.sub(lambda m: self.words[m.group(1)], text)
            if self.pyformat:
                done = done.replace("%", "%%").replace("?", "%s")
            if len(self._cache) < 1000:
                self._cache[text] = done
        return done

    def with_tables(self, tables: Mapping[str, str]) -> Dialect:
        """This dialect with a word per table of a store: ``{name}`` is the table ``tables[name]``
        in the schema (the same store may name its tables differently in two databases)."""
        clone = copy.copy(self)
        clone.words = {
            **self.words,
            **{name: f"{self.words['s']}.{t}" for name, t in tables.items()},
        }
        clone._cache = {}
        return clone

    def named_lock(self, name: str) -> tuple[str, tuple[Any, ...]] | None:
        """The statement that takes the lock ``name`` until the end of the transaction, or None
        where a write transaction holds the whole database already (SQLite)."""
        return None

    def params(self, params: Sequence[Any]) -> Sequence[Any]:
        """``params`` as the database can hold them."""
        if not self.drop_nul:
            return params
        return tuple(p.replace("\x00", "") if isinstance(p, str) else p for p in params)


class Connection:
    """A driver connection seen through a dialect: statements in, rows (mappings) out."""

    def __init__(self, raw: Any, dialect: Dialect) -> None:
        self.raw = raw
        self.dialect = dialect

    def _execute(self, query: str, params: Sequence[Any]) -> Any:
        return self.raw.execute(self.dialect.sql(query), self.dialect.params(params))

    def all(self, query: str, params: Sequence[Any] = ()) -> list[Row]:
        """Every row of the statement."""
        return list(self._execute(query, params).fetchall())

    def one(self, query: str, params: Sequence[Any] = ()) -> Row | None:
        """The first row of the statement, or None (every row is read: a write's ``RETURNING``
        is complete, in SQLite too, when this returns)."""
        rows = self.all(query, params)
        return rows[0] if rows else None

    def run(self, query: str, params: Sequence[Any] = ()) -> int:
        """Run a statement that returns no rows; the number of rows it changed."""
        return int(self._execute(query, params).rowcount)

    def lock(self, name: str) -> None:
        """Serialise the write transactions that take the lock ``name`` (until their end)."""
        statement = self.dialect.named_lock(name)
        if statement is not None:
            self.run(*statement)

    def run_many(self, query: str, rows: Iterable[Sequence[Any]]) -> None:
        """Run a statement once per parameter row."""
        text = self.dialect.sql(query)
        cursor = self.raw.cursor()
        try:
            cursor.executemany(text, [self.dialect.params(row) for row in rows])
        finally:
            cursor.close()


class Database(Protocol):
    """What a SQL store needs of its database: guarded connections, and closing them."""

    guard: StoreGuard

    def connection(self) -> AbstractContextManager[Connection]:
        """A connection on which each statement is its own transaction."""

    def transaction(self) -> AbstractContextManager[Connection]:
        """A connection inside one write transaction (committed at the end of the block)."""

    def close(self) -> None:
        """Close the idle connections; the database is used again on demand."""


def json_value(value: Any) -> Any:
    """A ``{json_list}`` column as Python values: SQLite gives JSON text, psycopg parses it;
    an aggregate over no row is NULL in PostgreSQL (an empty list here)."""
    if value is None:
        return []
    if isinstance(value, (str, bytes)):
        return json.loads(value)
    return value

"""A SQLite file as a :class:`~plugit_backends.sql.Database` (stdlib ``sqlite3``).

The file is in WAL mode, so readers never wait for the writer; a write transaction is ``BEGIN
IMMEDIATE`` (it takes the write lock at once, or waits for it at most the guard's wait: a file
locked longer is a :class:`~plugit_core.stores.StoreUnavailable`).  Connections come from a
small pool shared by the threads (each used by one thread at a time), so a server that starts a
thread per request does not open a connection per request.  The tables' version is the file's
``PRAGMA user_version``.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

from plugit_core.stores import DEFAULT_MAX_WAITERS, DEFAULT_WAIT, StoreGuard, sqlite_is_outage

from . import Connection, Dialect

__all__ = ["DIALECT", "SQLiteDatabase", "check_file"]

DIALECT = Dialect(
    {
        "s": "main",
        "fold": "",
        "c": "",
        "now": "((julianday('now') - 2440587.5) * 86400.0)",
        "lock": "",
        "skip_locked": "",
        "json_list": "json_group_array",
        "json_array": "json_array",
    }
)


def check_file(path: str | Path, why: str) -> str:
    """``path`` as text, or ValueError for an in-memory database (``why`` says what needs a
    file)."""
    text = str(path)
    if text == ":memory:" or text.startswith("file::memory:"):
        raise ValueError(why)
    return text


def statements(script: str) -> Iterator[str]:
    """The statements of a script, one by one (``sqlite3`` runs one per call)."""
    buffer = ""
    for part in script.split(";"):
        buffer += part + ";"
        if sqlite3.complete_statement(buffer):
            if buffer.strip(" \t\n;"):
                yield buffer.strip()
            buffer = ""


class SQLiteDatabase:
    """The SQLite file at ``path``, its tables brought to version ``len(steps)``.

    ``steps[i]`` takes the tables from version ``i`` to ``i + 1``; each runs in its own ``BEGIN
    IMMEDIATE`` transaction that checks the version again (another process may be migrating
    the file too).  A file of a newer version is refused (``sqlite3.DatabaseError``).
    ``store`` and ``label`` name it in the guard; ``probe`` is the readiness check's query;
    ``synchronous`` is ``NORMAL`` or ``FULL`` (a committed write survives a power cut);
    ``tables`` names the store's tables for its statements (see :meth:`Dialect.with_tables`).
    """

    def __init__(
        self,
        path: str,
        steps: Sequence[str],
        *,
        store: str,
        label: str,
        probe: str,
        synchronous: str = "NORMAL",
        tables: Mapping[str, str] | None = None,
        pool_size: int = 8,
        wait: float = DEFAULT_WAIT,
        max_waiters: int = DEFAULT_MAX_WAITERS,
        required: bool = True,
    ) -> None:
        self.path = path
        self.guard = StoreGuard(
            store,
            label,
            wait=wait,
            max_waiters=max_waiters,
            is_outage=sqlite_is_outage,
            probe=self._probe,
            required=required,
        )
        self.dialect = DIALECT.with_tables(tables or {})
        self._probe_query = probe
        self._synchronous = synchronous
        self._pool_size = pool_size
        self._idle: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._generation = 0
        db = self._open()
        try:
            self._migrate(db, steps)
        except BaseException:
            db.close()
            raise
        self._release(db, self._generation)

    def __repr__(self) -> str:
        return f"<SQLiteDatabase {self.path!r}>"

    @staticmethod
    def _migrate(db: sqlite3.Connection, steps: Sequence[str]) -> None:
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version > len(steps):
            raise sqlite3.DatabaseError(
                f"schema version {version} is newer than this PlugIt's ({len(steps)})"
            )
        if db.execute("PRAGMA journal_mode=WAL").fetchone()[0].lower() != "wal":
            raise sqlite3.DatabaseError("the file cannot be put in WAL mode")
        for number, step in enumerate(steps[version:], version + 1):
            db.execute("BEGIN IMMEDIATE")
            try:
                if db.execute("PRAGMA user_version").fetchone()[0] < number:
                    for statement in statements(step):
                        db.execute(statement)
                    db.execute(f"PRAGMA user_version = {number}")
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise

    # -- the pool ---------------------------------------------------------------------------------

    def _open(self) -> sqlite3.Connection:
        db = sqlite3.connect(
            self.path, timeout=self.guard.wait, isolation_level=None, check_same_thread=False
        )
        try:
            db.row_factory = sqlite3.Row
            db.execute("PRAGMA foreign_keys=ON")
            db.execute(f"PRAGMA synchronous={self._synchronous}")
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

    def _probe(self) -> None:
        db, generation = self._acquire()
        try:
            db.execute(self._probe_query).fetchall()
        finally:
            self._release(db, generation)

    @contextmanager
    def connection(self) -> Iterator[Connection]:
        """A pooled connection in autocommit mode, through the guard."""
        with self.guard.call():
            db, generation = self._acquire()
            try:
                yield Connection(db, self.dialect)
            finally:
                self._release(db, generation)

    @contextmanager
    def transaction(self) -> Iterator[Connection]:
        """A pooled connection inside one ``BEGIN IMMEDIATE`` transaction, through the guard."""
        with self.connection() as conn:
            db = conn.raw
            db.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    def close(self) -> None:
        """Close every pooled connection (those in use close when given back).

        The database stays usable: the next call opens a new connection.
        """
        with self._lock:
            self._generation += 1
            idle, self._idle = self._idle, []
        for db in idle:
            db.close()

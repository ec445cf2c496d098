"""The voting service's data: a small layer over the standard library's :mod:`sqlite3`.

Tables: ``poll``, ``response`` (the answers a poll offers), ``vote`` (one per user and poll) and
``reply`` (mail replies delivered by the proxy).  The schema is created on first use.

Every method opens its own connection and closes it before returning, so a :class:`Database` can
be shared by any number of threads (and processes: the file is in WAL mode, writers wait for each
other up to ``timeout`` seconds).  Foreign keys are enforced and every statement is parameterised.

Sample data for the demo::

    python -m plugit_contrib.examples.voting.db --seed voting.sqlite3
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

__all__ = ["Database", "main", "seed"]

SCHEMA = """
CREATE TABLE IF NOT EXISTS poll (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    title       TEXT NOT NULL,
    description TEXT NOT NULL DEFAULT '',
    created_at  TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP
);
CREATE TABLE IF NOT EXISTS response (
    id       INTEGER PRIMARY KEY AUTOINCREMENT,
    poll_id  INTEGER NOT NULL REFERENCES poll (id) ON DELETE CASCADE,
    title    TEXT NOT NULL,
    position INTEGER NOT NULL DEFAULT 0,
    UNIQUE (id, poll_id)
);
CREATE INDEX IF NOT EXISTS response_by_poll ON response (poll_id, position);
CREATE TABLE IF NOT EXISTS vote (
    poll_id     INTEGER NOT NULL REFERENCES poll (id) ON DELETE CASCADE,
    response_id INTEGER NOT NULL,
    user_pk     TEXT NOT NULL,
    username    TEXT NOT NULL DEFAULT '',
    voted_at    TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP,
    PRIMARY KEY (poll_id, user_pk),
    FOREIGN KEY (response_id, poll_id) REFERENCES response (id, poll_id) ON DELETE CASCADE
);
CREATE INDEX IF NOT EXISTS vote_by_response ON vote (response_id, poll_id);
CREATE TABLE IF NOT EXISTS reply (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    response_id TEXT NOT NULL,
    message     TEXT NOT NULL,
    received_at TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP
);
CREATE INDEX IF NOT EXISTS reply_by_response ON reply (response_id);
"""

SAMPLE_POLLS: tuple[tuple[str, str, tuple[str, ...], tuple[tuple[str, str, int], ...]], ...] = (
    (
        "Which editor do you use?",
        "Pick the one you spend most of your day in.",
        ("Vim", "Emacs", "VS Code", "Something else"),
        (("seed-1", "alice", 2), ("seed-2", "carol", 2), ("seed-3", "dave", 0)),
    ),
    (
        "Where should the next team meeting be?",
        "We will book the most popular place.",
        ("Geneva", "Brussels", "Online"),
        (("seed-1", "alice", 2), ("seed-2", "carol", 0)),
    ),
)


class Database:
    """The voting data in the SQLite file at ``path``."""

    def __init__(self, path: str | os.PathLike[str], *, timeout: float = 10.0) -> None:
        path = os.fspath(path)
        if not path or path == ":memory:" or path.startswith("file::memory:"):
            raise ValueError("the voting database needs a file: every call opens a new connection")
        self.path = path
        self.timeout = timeout
        self._ready = False
        self._ready_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"Database({self.path!r})"

    # -- connections ------------------------------------------------------------------------------

    def _open(self) -> sqlite3.Connection:
        # isolation_level=None: transactions are begun and ended explicitly below.
        conn = sqlite3.connect(self.path, timeout=self.timeout, isolation_level=None)
        try:
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA foreign_keys = ON")
        except BaseException:
            conn.close()
            raise
        return conn

    def ensure_schema(self) -> None:
        """Create the file's tables unless done already (safe to call from many threads)."""
        if self._ready:
            return
        with self._ready_lock:
            if self._ready:
                return
            conn = self._open()
            try:
                conn.execute("PRAGMA journal_mode = WAL")
                conn.executescript(SCHEMA)
            finally:
                conn.close()
            self._ready = True

    @contextlib.contextmanager
    def transaction(self, *, write: bool = False) -> Iterator[sqlite3.Connection]:
        """A connection inside one transaction, committed on success and always closed.

        Reads see one consistent snapshot; writes take the write lock up front (``BEGIN
        IMMEDIATE``) so two writers never deadlock upgrading their locks.
        """
        self.ensure_schema()
        conn = self._open()
        try:
            conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
        finally:
            conn.close()

    # -- polls ------------------------------------------------------------------------------------

    def list_polls(self) -> list[dict[str, Any]]:
        """Every poll (oldest first) with its number of responses and of votes."""
        with self.transaction() as conn:
            rows = conn.execute(
                "SELECT p.id, p.title, p.description,"
                " (SELECT COUNT(*) FROM response r WHERE r.poll_id = p.id) AS response_count,"
                " (SELECT COUNT(*) FROM vote v WHERE v.poll_id = p.id) AS total_votes"
                " FROM poll p ORDER BY p.id"
            ).fetchall()
        return [dict(row) for row in rows]

    def count_polls(self) -> int:
        with self.transaction() as conn:
            return int(conn.execute("SELECT COUNT(*) FROM poll").fetchone()[0])

    def get_poll(self, poll_id: int) -> dict[str, Any] | None:
        """A poll with its responses (``id``, ``title``, ``votes``) and its votes, or None.

        ``votes`` lists every vote as ``response_id``, ``user_pk``, ``username``.
        """
        with self.transaction() as conn:
            row = conn.execute(
                "SELECT id, title, description, created_at FROM poll WHERE id = ?", (poll_id,)
            ).fetchone()
            if row is None:
                return None
            poll = dict(row)
            poll["responses"] = [
                dict(r)
                for r in conn.execute(
                    "SELECT r.id, r.title,"
                    " (SELECT COUNT(*) FROM vote v WHERE v.response_id = r.id) AS votes"
                    " FROM response r WHERE r.poll_id = ? ORDER BY r.position, r.id",
                    (poll_id,),
                )
            ]
            poll["votes"] = [
                dict(v)
                for v in conn.execute(
                    "SELECT response_id, user_pk, username FROM vote WHERE poll_id = ?"
                    " ORDER BY voted_at, username",
                    (poll_id,),
                )
            ]
        return poll

    def summary(self) -> list[dict[str, Any]]:
        """Every poll with its responses and their vote counts (for the JSON and XML exports)."""
        with self.transaction() as conn:
            polls = [
                dict(row)
                for row in conn.execute(
                    "SELECT p.id, p.title, p.description,"
                    " (SELECT COUNT(*) FROM vote v WHERE v.poll_id = p.id) AS total_votes"
                    " FROM poll p ORDER BY p.id"
                )
            ]
            by_poll: dict[int, list[dict[str, Any]]] = {poll["id"]: [] for poll in polls}
            for row in conn.execute(
                "SELECT r.poll_id, r.id, r.title,"
                " (SELECT COUNT(*) FROM vote v WHERE v.response_id = r.id) AS votes"
                " FROM response r ORDER BY r.poll_id, r.position, r.id"
            ):
                if row["poll_id"] in by_poll:
                    by_poll[row["poll_id"]].append(
                        {"id": row["id"], "title": row["title"], "votes": row["votes"]}
                    )
        for poll in polls:
            poll["responses"] = by_poll[poll["id"]]
        return polls

    def create_poll(self, title: str, description: str, responses: Iterable[str]) -> int:
        """Store a poll and its responses (in the given order); return the poll's id."""
        answers = [str(r) for r in responses]
        with self.transaction(write=True) as conn:
            cursor = conn.execute(
                "INSERT INTO poll (title, description) VALUES (?, ?)", (title, description or "")
            )
            poll_id = cursor.lastrowid
            assert poll_id is not None
            conn.executemany(
                "INSERT INTO response (poll_id, title, position) VALUES (?, ?, ?)",
                [(poll_id, answer, position) for position, answer in enumerate(answers)],
            )
        return int(poll_id)

    # -- votes ------------------------------------------------------------------------------------

    def vote(self, poll_id: int, response_id: int, user_pk: str, username: str = "") -> bool:
        """Record the user's vote: one per user and poll, a new vote replaces the previous one.

        Returns False (and records nothing) when the poll has no such response.
        """
        with self.transaction(write=True) as conn:
            found = conn.execute(
                "SELECT 1 FROM response WHERE id = ? AND poll_id = ?", (response_id, poll_id)
            ).fetchone()
            if found is None:
                return False
            conn.execute(
                "INSERT INTO vote (poll_id, response_id, user_pk, username) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (poll_id, user_pk) DO UPDATE SET"
                " response_id = excluded.response_id, username = excluded.username,"
                " voted_at = CURRENT_TIMESTAMP",
                (poll_id, response_id, str(user_pk), username or ""),
            )
        return True

    def user_vote(self, poll_id: int, user_pk: str) -> int | None:
        """The response the user voted for in this poll, or None."""
        with self.transaction() as conn:
            row = conn.execute(
                "SELECT response_id FROM vote WHERE poll_id = ? AND user_pk = ?",
                (poll_id, str(user_pk)),
            ).fetchone()
        return None if row is None else int(row[0])

    # -- mail replies -----------------------------------------------------------------------------

    def add_reply(self, response_id: str, message: str) -> int:
        """Store a mail reply delivered by the proxy; return its id."""
        with self.transaction(write=True) as conn:
            cursor = conn.execute(
                "INSERT INTO reply (response_id, message) VALUES (?, ?)", (response_id, message)
            )
            reply_id = cursor.lastrowid
        assert reply_id is not None
        return int(reply_id)

    def replies(self, response_id: str) -> list[dict[str, Any]]:
        """The replies received for ``response_id``, oldest first."""
        with self.transaction() as conn:
            rows = conn.execute(
                "SELECT id, response_id, message, received_at FROM reply"
                " WHERE response_id = ? ORDER BY id",
                (response_id,),
            ).fetchall()
        return [dict(row) for row in rows]


def seed(database: Database | str | os.PathLike[str]) -> list[int]:
    """Create the two sample polls (and a few votes) in an empty database.

    Returns the new polls' ids; a database that already holds polls is left as it is (``[]``).
    """
    db = database if isinstance(database, Database) else Database(database)
    if db.count_polls():
        return []
    created = []
    for title, description, responses, votes in SAMPLE_POLLS:
        poll_id = db.create_poll(title, description, responses)
        response_ids = [r["id"] for r in (db.get_poll(poll_id) or {}).get("responses", [])]
        for user_pk, username, index in votes:
            db.vote(poll_id, response_ids[index], user_pk, username)
        created.append(poll_id)
    return created


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m plugit_contrib.examples.voting.db",
        description="Create the voting service's database, with sample polls.",
    )
    parser.add_argument(
        "--seed", metavar="PATH", required=True, help="the SQLite file to create or complete"
    )
    args = parser.parse_args(argv)
    created = seed(args.seed)
    if created:
        print(f"{args.seed}: created the sample polls {', '.join(map(str, created))}")
    else:
        print(f"{args.seed}: already holds polls, nothing added")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

# Polls, their responses and the votes, kept in a SQLite file (config.DATABASE).
import sqlite3

import config

SCHEMA = """
CREATE TABLE IF NOT EXISTS poll (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    title TEXT NOT NULL,
    description TEXT NOT NULL DEFAULT '',
    author TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS response (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    poll_id INTEGER NOT NULL REFERENCES poll(id),
    title TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS vote (
    poll_id INTEGER NOT NULL REFERENCES poll(id),
    response_id INTEGER NOT NULL REFERENCES response(id),
    user_pk TEXT NOT NULL,
    username TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (poll_id, user_pk)
);
"""

SAMPLES = [
    ("Lunch on Friday?", "Where shall we go after the meeting?", ["Pizza", "Sushi", "Salad"]),
    ("Best editor", "", ["vim", "emacs"]),
]


def connect():
    db = sqlite3.connect(config.DATABASE, timeout=10, isolation_level=None)
    db.row_factory = sqlite3.Row
    return db


def init_db():
    db = connect()
    try:
        db.executescript(SCHEMA)
        db.execute("BEGIN IMMEDIATE")
        if db.execute("SELECT COUNT(*) FROM poll").fetchone()[0] == 0:
            for title, description, responses in SAMPLES:
                _insert(db, title, description, responses, "")
        db.execute("COMMIT")
    finally:
        db.close()


def _insert(db, title, description, responses, author):
    cursor = db.execute(
        "INSERT INTO poll (title, description, author) VALUES (?, ?, ?)",
        (title, description, author),
    )
    for response in responses:
        db.execute(
            "INSERT INTO response (poll_id, title) VALUES (?, ?)", (cursor.lastrowid, response)
        )
    return cursor.lastrowid


class Poll:
    def __init__(self, row, responses=None):
        self.id = row["id"]
        self.title = row["title"]
        self.description = row["description"]
        self.author = row["author"]
        self.responses = responses or []

    @property
    def total(self):
        return sum(r["votes"] for r in self.responses)

    @classmethod
    def all(cls):
        db = connect()
        try:
            rows = db.execute(
                "SELECT poll.*, (SELECT COUNT(*) FROM vote WHERE vote.poll_id = poll.id) AS votes"
                " FROM poll ORDER BY poll.id DESC"
            ).fetchall()
        finally:
            db.close()
        polls = []
        for row in rows:
            poll = cls(row)
            poll.votes = row["votes"]
            polls.append(poll)
        return polls

    @classmethod
    def get(cls, pk):
        db = connect()
        try:
            row = db.execute("SELECT * FROM poll WHERE id = ?", (pk,)).fetchone()
            if row is None:
                return None
            responses = db.execute(
                "SELECT response.id, response.title, COUNT(vote.user_pk) AS votes"
                " FROM response LEFT JOIN vote ON vote.response_id = response.id"
                " WHERE response.poll_id = ? GROUP BY response.id ORDER BY response.id",
                (pk,),
            ).fetchall()
            voters = db.execute(
                "SELECT response_id, user_pk, username FROM vote WHERE poll_id = ?", (pk,)
            ).fetchall()
        finally:
            db.close()
        poll = cls(row, [dict(r) for r in responses])
        poll.voters = [dict(v) for v in voters]
        return poll

    @classmethod
    def create(cls, title, description, responses, author):
        db = connect()
        try:
            db.execute("BEGIN IMMEDIATE")
            pk = _insert(db, title, description, responses, author)
            db.execute("COMMIT")
        finally:
            db.close()
        return pk


def vote(poll_id, response_id, user_pk, username):
    """Record the user's vote (replacing an earlier one in the same poll); False when the
    response is not one of the poll's."""
    db = connect()
    try:
        db.execute("BEGIN IMMEDIATE")
        found = db.execute(
            "SELECT 1 FROM response WHERE id = ? AND poll_id = ?", (response_id, poll_id)
        ).fetchone()
        if found is None:
            db.execute("ROLLBACK")
            return False
        db.execute(
            "INSERT OR REPLACE INTO vote (poll_id, response_id, user_pk, username)"
            " VALUES (?, ?, ?, ?)",
            (poll_id, response_id, str(user_pk), username or ""),
        )
        db.execute("COMMIT")
    finally:
        db.close()
    return True

"""The mail queue: the MailQueue contract for SQLite and PostgreSQL, plus what is particular to
each and how ``[mail_smtp] queue`` picks one.

The PostgreSQL tests run against a real server: ``PLUGIT_TEST_POSTGRES_DSN`` (default
``postgresql://postgres@127.0.0.1:5432/test``).  Each test gets a schema of its own, dropped
afterwards.  Without psycopg or a reachable server they are skipped, or fail when
``PLUGIT_REQUIRE_SERVERS=1`` (CI); the SQLite tests always run.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from postgres_schema import DSN, fresh_schema

from plugit_backends.mail_smtp import (
    MailBackend,
    MailQueue,
    _factory,
    open_queue,
    read_settings,
)
from plugit_backends.mail_smtp.store import LEASE_LOST, MailStore
from plugit_backends.sql import postgres as pg
from plugit_core.config import ConfigError, ProxyConfig
from plugit_core.kinds.mailqueue.testing import MailQueueConformance
from plugit_core.testing import FakeClock

STRONG_KEY = "k3y-for-mail-queue-tests-9f8e7d6c5b4a39281706f5e4"
SENDER = "PlugIt <no-reply@example.org>"


@pytest.fixture
def schema() -> Iterator[str]:
    """A fresh schema name on the test server (the PostgreSQL tests skip without one); the
    schema is dropped afterwards."""
    with fresh_schema() as name:
        yield name


@pytest.fixture
def admin(schema: str) -> Iterator[Any]:
    """A plain autocommit connection, to look at the tables behind the queue's back."""
    import psycopg

    with psycopg.connect(DSN, autocommit=True) as conn:
        yield conn


# -- the contract ----------------------------------------------------------------------------------


class TestSQLiteMailQueue(MailQueueConformance):
    @pytest.fixture
    def queue(self, tmp_path: Path) -> Iterator[MailStore]:
        queue = MailStore(tmp_path / "mail.sqlite3")
        yield queue
        queue.close()

    @pytest.fixture
    def other_queue(self, queue: MailStore) -> Iterator[MailStore]:
        other = MailStore(queue.path)
        yield other
        other.close()


class TestPostgresMailQueue(MailQueueConformance):
    @pytest.fixture
    def queue(self, schema: str) -> Iterator[Any]:
        from plugit_backends.mail_postgres import PostgresMailQueue

        queue = PostgresMailQueue(DSN, schema=schema)
        yield queue
        queue.close()

    @pytest.fixture
    def other_queue(self, queue: Any, schema: str) -> Iterator[Any]:
        from plugit_backends.mail_postgres import PostgresMailQueue

        other = PostgresMailQueue(DSN, schema=schema, pool_size=2)
        yield other
        other.close()


@pytest.fixture(params=["sqlite", "postgres"])
def two_queues(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Any, Any]]:
    """Two queue objects on one fresh storage (two proxy processes), of each kind."""
    if request.param == "sqlite":
        first: Any = MailStore(tmp_path / "mail.sqlite3")
        second: Any = MailStore(tmp_path / "mail.sqlite3")
    else:
        from plugit_backends.mail_postgres import PostgresMailQueue

        schema = request.getfixturevalue("schema")
        first = PostgresMailQueue(DSN, schema=schema)
        second = PostgresMailQueue(DSN, schema=schema, pool_size=2)
    clock = FakeClock(1_700_000_000.0)
    first.clock = second.clock = clock
    yield first, second
    first.close()
    second.close()


def _enqueue(queue: Any, subject: str) -> int:
    return int(
        queue.enqueue(
            service="polls",
            sender=SENDER,
            recipients=["dana@example.org"],
            subject=subject,
            body="x",
            html=False,
            reply_to=None,
            message_id="<m@example.org>",
            max_per_hour=0,
        )
    )


def test_a_mail_whose_sender_keeps_dying_fails_in_the_end(two_queues: tuple[Any, Any]) -> None:
    """With ``max_attempts``, each expired lease is an attempt: a mail that kills whoever
    sends it is not claimed for ever, and the other mails go on."""
    dying, alive = two_queues
    clock = dying.clock
    poison = _enqueue(dying, "kills its sender")
    (mail,) = dying.claim(10, 60, started=clock.now, max_attempts=3)
    assert (mail.id, mail.attempts) == (poison, 0)
    for attempt in (1, 2):
        clock.advance(61)  # the sender died: its lease ended
        (mail,) = alive.claim(10, 60, started=clock.now, max_attempts=3)
        assert (mail.id, mail.attempts) == (poison, attempt)
        row = {row["id"]: row for row in alive.outbox()}[poison]
        assert (row["state"], row["owner"], row["last_error"]) == (
            "sending",
            alive.owner,
            LEASE_LOST,
        )
    good = _enqueue(alive, "an honest one")
    clock.advance(61)  # the third death: failed, and the honest mail is taken
    assert [mail.id for mail in alive.claim(10, 60, started=clock.now, max_attempts=3)] == [good]
    rows = {row["id"]: row for row in alive.outbox()}
    assert (rows[poison]["state"], rows[poison]["attempts"]) == ("failed", 3)
    assert (rows[poison]["done"], rows[poison]["owner"]) == (clock.now, None)
    assert rows[poison]["last_error"] == LEASE_LOST
    assert alive.mark_sent(good) is True
    clock.advance(3600)
    assert alive.claim(10, 60, started=clock.now, max_attempts=3) == []
    assert alive.counts()["outbox"] == {"failed": 1, "sent": 1}


def test_without_max_attempts_an_expired_lease_costs_nothing(
    two_queues: tuple[Any, Any],
) -> None:
    dying, alive = two_queues
    clock = dying.clock
    mail_id = _enqueue(dying, "x")
    dying.claim(1, 60, started=clock.now)
    for _ in range(5):
        clock.advance(61)
        (mail,) = alive.claim(1, 60, started=clock.now)
        assert (mail.id, mail.attempts) == (mail_id, 0)
    assert alive.outbox()[0]["last_error"] is None


# -- PostgreSQL particulars ------------------------------------------------------------------------


def test_tables_are_in_their_schema_with_a_version(schema: str, admin: Any) -> None:
    from psycopg import sql

    from plugit_backends.mail_postgres import SCHEMA_VERSION, PostgresMailQueue

    queue = PostgresMailQueue(DSN, schema=schema)
    again = PostgresMailQueue(DSN, schema=schema)  # a second process: nothing migrated twice
    queue.close()
    again.close()
    tables = {
        row[0]
        for row in admin.execute("SELECT tablename FROM pg_tables WHERE schemaname = %s", (schema,))
    }
    assert tables == {"schema_version", "mail_outbox", "mail_incoming", "mail_locks"}
    versions = admin.execute(
        sql.SQL("SELECT component, version FROM {}.schema_version").format(sql.Identifier(schema))
    ).fetchall()
    assert versions == [("mail", SCHEMA_VERSION)]


def test_a_newer_schema_is_refused(schema: str, admin: Any) -> None:
    from psycopg import sql

    from plugit_backends.mail_postgres import SCHEMA_VERSION, PostgresMailQueue

    PostgresMailQueue(DSN, schema=schema).close()
    admin.execute(
        sql.SQL("UPDATE {}.schema_version SET version = %s WHERE component = 'mail'").format(
            sql.Identifier(schema)
        ),
        (SCHEMA_VERSION + 1,),
    )
    with pytest.raises(pg.SchemaError, match="newer"):
        PostgresMailQueue(DSN, schema=schema)


def test_nul_characters_do_not_break_postgres(schema: str) -> None:
    from plugit_backends.mail_postgres import PostgresMailQueue

    queue = PostgresMailQueue(DSN, schema=schema)
    try:
        queue.record_incoming("k", "rejected", message_id="<a\x00b@x>", error="bad\x00header")
        (record,) = queue.incoming()
        assert (record["message_id"], record["last_error"]) == ("<ab@x>", "badheader")
    finally:
        queue.close()


# -- choosing the queue ----------------------------------------------------------------------------


def _config() -> ProxyConfig:
    return ProxyConfig.from_mapping({"dev_mode": True, "secret_key": STRONG_KEY})


@pytest.mark.parametrize(
    ("section", "key", "message"),
    [
        pytest.param({"queue": "redis"}, "queue", "sqlite", id="unknown-queue"),
        pytest.param({"queue": 1}, "queue", "string", id="not-a-string"),
        pytest.param({"queue_dsn": "postgresql://x/y"}, "queue_dsn", "postgres", id="dsn-sqlite"),
        pytest.param({"queue_schema": "mail"}, "queue_schema", "postgres", id="schema-sqlite"),
        pytest.param({"queue": "postgres"}, "queue_dsn", "required", id="no-dsn"),
        pytest.param(
            {"queue": "postgres", "queue_dsn": {"env": "PLUGIT_TEST_UNSET_VARIABLE"}},
            "queue_dsn",
            "not set",
            id="unset-env",
        ),
        pytest.param(
            {"queue": "postgres", "queue_dsn": "host=x port"}, "queue_dsn", "not a", id="bad-dsn"
        ),
        pytest.param(
            {"queue": "postgres", "queue_dsn": DSN, "queue_schema": "pg_mail"},
            "queue_schema",
            "reserved",
            id="bad-schema",
        ),
        pytest.param(
            {"queue": "postgres", "queue_dsn": DSN, "queue_path": "mail.sqlite3"},
            "queue_path",
            "sqlite",
            id="path-with-postgres",
        ),
    ],
)
def test_bad_queue_settings_name_the_key(section: dict[str, Any], key: str, message: str) -> None:
    if pg.PG_MISSING is not None and section.get("queue") == "postgres":
        pytest.skip("psycopg is not installed")
    with pytest.raises(ConfigError) as error:
        read_settings(_config(), {"sender": SENDER, **section})
    assert error.value.key == f"mail_smtp.{key}"
    assert message in str(error.value)


def test_sqlite_is_the_default_queue(tmp_path: Path) -> None:
    settings = read_settings(
        _config(), {"sender": SENDER, "queue_path": str(tmp_path / "q.sqlite3")}
    )
    assert (settings.queue, settings.queue_dsn) == ("sqlite", None)
    queue = open_queue(settings)
    assert isinstance(queue, MailStore) and isinstance(queue, MailQueue)
    backend = MailBackend(settings, STRONG_KEY)
    assert isinstance(backend.store, MailStore)
    given = MailStore(tmp_path / "given.sqlite3")
    assert MailBackend(settings, STRONG_KEY, queue=given).store is given


def test_a_queue_file_of_version_1_is_upgraded_in_place(tmp_path: Path) -> None:
    import sqlite3

    from plugit_backends.mail_smtp.store import SCHEMA, SCHEMA_VERSION

    path = tmp_path / "old.sqlite3"
    with sqlite3.connect(path, isolation_level=None) as db:  # as the previous release left it
        db.executescript(SCHEMA + "PRAGMA user_version = 1;")  # the version 1 tables
        db.execute(
            "INSERT INTO outbox (service, sender, recipients, n_recipients, subject, body, html, "
            "message_id, state, owner, lease_until, next_try, created) "
            "VALUES ('polls', 's@example.org', '[\"d@example.org\"]', 1, 'Old', 'x', 0, '<o@x>', "
            "'sending', 'dead', 1.0, 1.0, 1.0)"
        )
    db.close()
    queue = MailStore(path)
    (row,) = queue.outbox()
    assert (row["subject"], row["state"], row["stale_since"]) == ("Old", "sending", None)
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 2
    db.close()
    assert [m.subject for m in queue.claim(5, 10, started=2.0, grace=5)] == []  # noticed
    assert queue.outbox()[0]["stale_since"] is not None
    assert MailStore(path).outbox() == queue.outbox()  # opened again: nothing to upgrade


@pytest.mark.parametrize("lease", [0, 0.1, "10", True])
def test_sender_lease_is_checked(lease: Any) -> None:
    with pytest.raises(ConfigError) as error:
        read_settings(_config(), {"sender": SENDER, "sender_lease": lease})
    assert error.value.key == "mail_smtp.sender_lease"


def test_an_unusable_queue_file_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "q.sqlite3").write_bytes(b"this is not a database" * 100)
    with pytest.raises(ConfigError) as error:
        _factory(_config(), {"sender": SENDER, "queue_path": str(tmp_path / "q.sqlite3")})
    assert error.value.key == "mail_smtp.queue_path"
    assert "cannot open" in str(error.value)


def test_postgres_queue_from_the_environment(schema: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from plugit_backends.mail_postgres import PostgresMailQueue

    monkeypatch.setenv("PLUGIT_TEST_MAIL_DSN", DSN)
    section = {
        "sender": SENDER,
        "queue": "postgres",
        "queue_dsn": {"env": "PLUGIT_TEST_MAIL_DSN"},
        "queue_schema": schema,
    }
    backend = _factory(_config(), section)
    try:
        assert isinstance(backend.store, PostgresMailQueue)
        assert backend.settings.queue_dsn == DSN and backend.store.schema == schema
        assert backend.status() == {"outbox": {}, "incoming": {}}
    finally:
        backend.close()
    assert backend.status() == {"outbox": {}, "incoming": {}}  # reconnects after close
    backend.close()


def test_an_unreachable_database_is_a_config_error_without_the_password() -> None:
    if pg.PG_MISSING is not None:
        pytest.skip("psycopg is not installed")
    from mail_servers import free_port

    dsn = f"postgresql://plugit:s3cret-pw@127.0.0.1:{free_port()}/mail?connect_timeout=2"
    with pytest.raises(ConfigError) as error:
        _factory(_config(), {"sender": SENDER, "queue": "postgres", "queue_dsn": dsn})
    assert error.value.key == "mail_smtp.queue_dsn"
    assert "s3cret-pw" not in str(error.value)
    assert "postgresql://plugit@127.0.0.1" in str(error.value)


def test_without_psycopg_the_postgres_queue_explains(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pg, "PG_MISSING", ImportError("No module named 'psycopg'"))
    section = {"sender": SENDER, "queue": "postgres", "queue_dsn": DSN}
    with pytest.raises(ConfigError) as error:
        read_settings(_config(), section)
    assert error.value.key == "mail_smtp.queue"
    assert "pip install 'plugit-wsgi[postgres]'" in str(error.value)

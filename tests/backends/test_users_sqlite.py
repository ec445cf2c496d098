"""The SQLite directory: the UserStore contract, plus what is particular to SQLite."""

from __future__ import annotations

import concurrent.futures
import contextlib
import sqlite3
import threading

import pytest

from plugit_backends.users_sqlite import SCHEMA_VERSION, SQLiteUserStore, _factory
from plugit_core.config import ConfigError, ProxyConfig
from plugit_core.kinds.users.testing import UserStoreConformance

STRONG_KEY = "k3y-for-tests-9f8e7d6c5b4a39281706f5e4d3c2b1a0"


class TestSQLiteUserStore(UserStoreConformance):
    @pytest.fixture
    def store(self, tmp_path):
        store = SQLiteUserStore(tmp_path / "directory.sqlite3")
        yield store
        store.close()


@pytest.fixture
def store(tmp_path):
    store = SQLiteUserStore(tmp_path / "directory.sqlite3")
    yield store
    store.close()


def test_the_file_is_in_wal_mode_with_a_schema_version(store, tmp_path):
    with sqlite3.connect(tmp_path / "directory.sqlite3") as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    db.close()


def test_reopening_keeps_the_data(store, tmp_path):
    alice = store.create_user("alice", password_hash="h")
    store.grant(alice.pk, "polls", "admin")
    store.close()
    again = SQLiteUserStore(tmp_path / "directory.sqlite3")
    try:
        user = again.get_by_username("alice")
        assert user.pk == alice.pk and user.is_admin("polls")
        assert again.password_hash(alice.pk) == "h"
    finally:
        again.close()


def test_a_newer_schema_is_refused(tmp_path):
    path = tmp_path / "future.sqlite3"
    with sqlite3.connect(path) as db:
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.close()
    with pytest.raises(sqlite3.DatabaseError, match="newer"):
        SQLiteUserStore(path)


def test_memory_databases_are_refused():
    with pytest.raises(ValueError, match="needs a file"):
        SQLiteUserStore(":memory:")


def test_close_closes_every_pooled_connection_and_the_store_reopens(store):
    barrier = threading.Barrier(4)

    def work(n):
        barrier.wait()
        return store.create_user(f"u{n}").pk

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        assert len(set(pool.map(work, range(4)))) == 4
    assert store.db._idle  # connections went back to the pool
    store.close()
    assert store.db._idle == []
    assert len(store.list_users()) == 4  # a new connection, opened on demand


def test_a_connection_in_use_during_close_is_closed_when_given_back(store):
    db, generation = store.db._acquire()
    store.close()
    store.db._release(db, generation)
    assert db not in store.db._idle
    with pytest.raises(sqlite3.ProgrammingError):
        db.execute("SELECT 1")


def test_a_failed_write_leaves_nothing_behind(store):
    alice = store.create_user("alice")
    with pytest.raises(ValueError):
        store.sync_external_user("oidc", "sub", {"username": "x", "services": {"a": "boss"}})
    assert [u.username for u in store.list_users()] == ["alice"]
    with pytest.raises(KeyError):
        store.add_to_orga(alice.pk, 4242)
    assert store.get_user(alice.pk).orgas == ()


def test_users_carry_uuid_source_and_gravatar(store):
    user = store.create_user("alice", email=" Alice@Example.org ")
    assert user.extra["source"] == "local"
    assert user.extra["gravatar"].startswith("https://www.gravatar.com/avatar/")
    assert user.extra["gravatar"].endswith("?d=retro")
    bob = store.create_user("bob", email="alice@example.org")
    assert bob.extra["gravatar"] == user.extra["gravatar"]  # trimmed, lower-cased e-mail


@pytest.mark.parametrize("bad", ["a\nb", "x" * 151, "tab\there"])
def test_user_names_are_checked(store, bad):
    with pytest.raises(ValueError):
        store.create_user(bad)


def test_set_superuser(store):
    alice = store.create_user("alice")
    store.set_superuser(alice.pk, True)
    assert store.get_user(alice.pk).is_admin("anything")
    with pytest.raises(KeyError):
        store.set_superuser(4242, True)


def test_old_failures_are_forgotten(store):
    now = [1_000_000.0]
    store.clock = lambda: now[0]
    store.record_failure("old")
    now[0] += 2 * 86400
    store.record_failure("new")
    with store.db.connection() as db:
        keys = [row["key"] for row in db.all("SELECT key FROM login_failures")]
    assert keys == ["new"]


def test_many_readers_while_writing(store):
    """WAL: readers see a consistent user while another thread writes."""
    alice = store.create_user("alice")
    stop = threading.Event()
    errors = []

    def writer():
        n = 0
        while not stop.is_set():
            n += 1
            store.grant(alice.pk, f"svc{n % 5}", "admin" if n % 2 else "member")
            store.record_failure("w")

    def reader():
        for _ in range(50):
            user = store.get_user(alice.pk)
            if user is None or not user.admin_of <= user.member_of:
                errors.append(user)

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            list(pool.map(lambda _: reader(), range(4)))
    finally:
        stop.set()
        thread.join()
    assert errors == []


def _config(**sections):
    return ProxyConfig.from_mapping({"secret_key": STRONG_KEY, **sections})


def test_factory_settings(tmp_path):
    path = str(tmp_path / "x.sqlite3")
    store = _factory(_config(), {"path": path})
    try:
        assert store.path == path
    finally:
        store.close()
    with pytest.raises(ConfigError, match=r"users_sqlite\.colour"):
        _factory(_config(), {"path": path, "colour": 1})
    for bad in ("", ":memory:", 3):
        with pytest.raises(ConfigError, match=r"users_sqlite\.path"):
            _factory(_config(), {"path": bad})
    with pytest.raises(ConfigError, match="cannot open"):
        _factory(_config(), {"path": str(tmp_path / "no" / "such" / "dir.sqlite3")})


def test_a_version_1_file_gets_the_session_generation(tmp_path):
    """A directory written before logouts ended sessions everywhere (schema 1) is migrated at
    start-up, its users kept, with a generation of 0 (their sessions stay valid)."""
    from plugit_backends.users_sqlite import SCHEMA

    path = tmp_path / "old.sqlite3"
    db = sqlite3.connect(path, isolation_level=None)
    db.executescript(SCHEMA + "PRAGMA user_version = 1;")  # the version 1 tables
    db.execute("INSERT INTO users (uuid, username, created) VALUES ('u-1', 'alice', 0)")
    db.close()
    store = SQLiteUserStore(path)
    try:
        alice = store.get_by_username("alice")
        assert alice is not None and store.session_generation(alice.pk) == 0
        store.end_sessions(alice.pk)
        assert store.session_generation(alice.pk) == 1
    finally:
        store.close()
    with contextlib.closing(sqlite3.connect(path)) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 2
    SQLiteUserStore(path).close()  # opening a migrated file again changes nothing

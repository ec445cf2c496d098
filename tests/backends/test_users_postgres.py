"""The PostgreSQL directory: the UserStore contract, plus what is particular to PostgreSQL.

Runs against a real server: ``PLUGIT_TEST_POSTGRES_DSN`` (default
``postgresql://postgres@127.0.0.1:5432/test``).  Each test gets a schema of its own, dropped
afterwards.  Without psycopg or a reachable server the tests are skipped, or fail when
``PLUGIT_REQUIRE_SERVERS=1`` (CI).
"""

from __future__ import annotations

import concurrent.futures
import threading

import pytest
from postgres_schema import DSN, fresh_schema, require_server

from plugit_backends.sql import postgres as pg
from plugit_core.config import ConfigError, ProxyConfig
from plugit_core.kinds.users.testing import UserStoreConformance

STRONG_KEY = "k3y-for-pg-tests-9f8e7d6c5b4a39281706f5e4d3c2b1a0"

require_server(module=True)

import psycopg  # noqa: E402
from psycopg import sql  # noqa: E402

from plugit_backends.users_postgres import (  # noqa: E402
    SCHEMA_VERSION,
    PostgresUserStore,
    _factory,
    plugit_register_backends,
)


@pytest.fixture
def schema():
    """A fresh schema name for this test; the schema is dropped afterwards."""
    with fresh_schema() as name:
        yield name


@pytest.fixture
def admin():
    """A plain autocommit connection, to look at the tables behind the store's back."""
    with psycopg.connect(DSN, autocommit=True) as conn:
        yield conn


class TestPostgresUserStore(UserStoreConformance):
    @pytest.fixture
    def store(self, schema):
        store = PostgresUserStore(DSN, schema=schema)
        yield store
        store.close()


@pytest.fixture
def store(schema):
    store = PostgresUserStore(DSN, schema=schema)
    yield store
    store.close()


@pytest.fixture
def second(store, schema):
    """Another store on the same schema, with its own pool: another proxy process."""
    other = PostgresUserStore(DSN, schema=schema, pool_size=4)
    yield other
    other.close()


# -- schema and migrations -------------------------------------------------------------------------


def test_tables_are_in_their_schema_with_a_version(store, schema, admin):
    tables = {
        row[0]
        for row in admin.execute("SELECT tablename FROM pg_tables WHERE schemaname = %s", (schema,))
    }
    assert tables == {
        "schema_version",
        "users",
        "orgas",
        "service_roles",
        "orga_members",
        "login_failures",
    }
    versions = admin.execute(
        sql.SQL("SELECT component, version FROM {}.schema_version").format(sql.Identifier(schema))
    ).fetchall()
    assert versions == [("users", SCHEMA_VERSION)]


def test_reopening_keeps_the_data(store, schema):
    alice = store.create_user("alice", password_hash="h")
    store.grant(alice.pk, "polls", "admin")
    store.close()
    again = PostgresUserStore(DSN, schema=schema)
    try:
        user = again.get_by_username("ALICE")
        assert user.pk == alice.pk and user.is_admin("polls")
        assert again.password_hash(alice.pk) == "h"
    finally:
        again.close()


def test_a_newer_schema_is_refused(store, schema, admin):
    admin.execute(
        sql.SQL("UPDATE {}.schema_version SET version = %s WHERE component = 'users'").format(
            sql.Identifier(schema)
        ),
        (SCHEMA_VERSION + 1,),
    )
    with pytest.raises(pg.SchemaError, match="newer"):
        PostgresUserStore(DSN, schema=schema)


def test_a_schema_made_by_an_administrator_is_used(schema, admin):
    admin.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
    store = PostgresUserStore(DSN, schema=schema)
    try:
        store.create_user("alice")
        assert [u.username for u in store.list_users()] == ["alice"]
    finally:
        store.close()


def test_processes_starting_together_migrate_once(schema):
    barrier = threading.Barrier(6)

    def start(_):
        barrier.wait()
        return PostgresUserStore(DSN, schema=schema, pool_size=1)

    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        stores = list(pool.map(start, range(6)))
    try:
        stores[0].create_user("alice")
        assert all(s.get_by_username("alice") is not None for s in stores)
    finally:
        for s in stores:
            s.close()


@pytest.mark.parametrize("bad", ["", "1abc", "with space", 'quo"te', "pg_catalog", "x" * 64, 3])
def test_bad_schema_names_are_refused(bad):
    with pytest.raises(ValueError, match="schema"):
        PostgresUserStore(DSN, schema=bad)


def test_close_closes_the_pool_and_the_store_reopens(schema):
    store = PostgresUserStore(DSN, schema=schema)
    store.create_user("alice")
    pool = store.db.pool.current()
    store.close()
    assert pool.closed and store.db.pool.closed
    assert store.get_by_username("alice") is not None  # a new pool, opened on demand
    assert not store.db.pool.closed
    store.close()


# -- two processes ---------------------------------------------------------------------------------


def test_two_stores_see_each_others_writes(store, second):
    alice = store.create_user("alice", email="a@x")
    assert second.get_user(alice.pk).email == "a@x"
    second.grant(alice.pk, "polls", "admin")
    rts = second.create_orga("RTS", "chrts")
    store.add_to_orga(alice.pk, rts.pk, admin=True)
    user = store.get_user(alice.pk)
    assert user.is_admin("polls") and user.orga(rts.pk).is_admin
    assert second.get_user(alice.extra["uuid"]).orgas == user.orgas
    store.set_active(alice.pk, False)
    assert second.is_active(alice.pk) is False
    assert second.members("polls") == []
    with pytest.raises(ValueError):
        second.create_user("ALICE")
    with pytest.raises(ValueError):
        second.create_orga("rts")
    store.record_failure("k")
    second.record_failure("k")
    assert store.count_failures("k", 60) == 2
    second.clear_failures("k")
    assert store.count_failures("k", 60) == 0


def test_two_stores_racing(store, second):
    barrier = threading.Barrier(8)

    def create(n):
        barrier.wait()
        try:
            (store if n % 2 else second).create_user("Contested")
        except ValueError:
            return False
        return True

    def sync(n):
        target = store if n % 2 else second
        fields = {
            "username": "ivy",
            "services": {f"svc{n % 3}": "member"},
            "orgas": {"Zeta": "member", "Alpha": "admin", f"Orga{n % 4}": "member"},
        }
        return target.sync_external_user("oidc", "sub-ivy", fields).pk

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        assert list(pool.map(create, range(8))).count(True) == 1
        pks = set(pool.map(sync, range(24)))
    assert len(pks) == 1
    ivy = second.get_user(pks.pop())
    assert len(ivy.member_of) == 1 and len(ivy.orgas) == 3  # one sync's grants, not a mix
    assert sorted(u.username for u in store.list_users()) == ["Contested", "ivy"]
    names = [o.name for o in store.list_orgas()]
    assert names[:1] == ["Alpha"] and len(names) == len(set(names))


# -- particular to this store ----------------------------------------------------------------------


def test_a_failed_write_leaves_nothing_behind(store):
    alice = store.create_user("alice")
    with pytest.raises(ValueError):
        store.sync_external_user("oidc", "sub", {"username": "x", "services": {"a": "boss"}})
    assert [u.username for u in store.list_users()] == ["alice"]
    with pytest.raises(KeyError):
        store.add_to_orga(alice.pk, 4242)
    with pytest.raises(KeyError, match="no user"):
        store.add_to_orga(4242, 4242)
    assert store.get_user(alice.pk).orgas == ()


def test_a_sync_failing_midway_is_rolled_back(store, monkeypatch):
    fields = {"username": "gus", "services": {"a": "admin"}}
    pk = store.sync_external_user("ldap", "uid=gus", fields).pk

    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(store, "_orga_ids", broken)
    with pytest.raises(RuntimeError):
        store.sync_external_user(
            "ldap", "uid=gus", {"email": "new@x", "services": {}, "orgas": {"RTS": "member"}}
        )
    user = store.get_user(pk)
    assert user.email == "" and user.is_admin("a")  # the profile and grants of before


def test_users_carry_uuid_source_and_gravatar(store):
    user = store.create_user("alice", email=" Alice@Example.org ")
    assert user.extra["source"] == "local"
    assert user.extra["gravatar"].startswith("https://www.gravatar.com/avatar/")
    bob = store.create_user("bob", email="alice@example.org")
    assert bob.extra["gravatar"] == user.extra["gravatar"]
    assert store.get_user(user.pk) == user  # what create_user returns is what is stored


@pytest.mark.parametrize("bad", ["a\nb", "x" * 151, "tab\there"])
def test_user_names_are_checked(store, bad):
    with pytest.raises(ValueError):
        store.create_user(bad)


def test_odd_keys_find_nothing(store):
    alice = store.create_user("alice")
    for key in (10**30, str(-(10**25)), "nul\x00", True, 3.5, " ", b"1"):
        assert store.get_user(key) is None
        assert store.is_active(key) is False
        store.revoke(key, "polls")
        store.remove_from_orga(key, 10**30)
        with pytest.raises(KeyError):
            store.grant(key, "polls", "member")
    assert store.get_user(f" {alice.pk} ").pk == alice.pk
    assert store.get_orga(10**30) is None
    with pytest.raises(KeyError):
        store.add_to_orga(alice.pk, 10**30)


def test_set_superuser_and_orga_by_name(store):
    alice = store.create_user("alice")
    store.set_superuser(alice.pk, True)
    assert store.get_user(alice.pk).is_admin("anything")
    with pytest.raises(KeyError):
        store.set_superuser(4242, True)
    rts = store.create_orga("RTS")
    assert store.get_orga_by_name("rts") == rts
    assert store.get_orga_by_name("nope") is None


def test_sync_with_names_differing_in_case(store):
    user = store.sync_external_user(
        "ldap", "uid=kim", {"username": "kim", "orgas": {"rts": "member", "RTS": "admin"}}
    )
    assert [(o.name, o.is_admin) for o in user.orgas] == [("rts", True)]  # one orga


def test_old_failures_are_forgotten(store, schema, admin):
    now = [1_000_000.0]
    store.clock = lambda: now[0]
    store.record_failure("old")
    now[0] += 2 * 86400
    store.record_failure("new")
    keys = admin.execute(
        sql.SQL("SELECT key FROM {}.login_failures").format(sql.Identifier(schema))
    ).fetchall()
    assert keys == [("new",)]


# -- configuration ---------------------------------------------------------------------------------


def _config():
    return ProxyConfig.from_mapping({"secret_key": STRONG_KEY})


def test_factory_builds_a_store(schema, monkeypatch):
    monkeypatch.setenv("PLUGIT_TEST_DB_URL", DSN)
    section = {
        "dsn": {"env": "PLUGIT_TEST_DB_URL"},
        "schema": schema,
        "pool_size": 3,
        "pool_timeout": 2.5,
        "connect_timeout": 5,
    }
    store = _factory(_config(), section)
    try:
        assert store.schema == schema
        pool = store.db.pool.current()
        assert pool.max_size == 3 and pool.timeout == 2.5
        store.create_user("alice")
    finally:
        store.close()


@pytest.mark.parametrize(
    ("section", "key", "message"),
    [
        ({}, "dsn", "required"),
        ({"dsn": ""}, "dsn", "connection string"),
        ({"dsn": 5}, "dsn", "connection string"),
        ({"dsn": "not a dsn"}, "dsn", "connection string"),
        ({"dsn": {"env": "PLUGIT_NO_SUCH_VARIABLE"}}, "dsn", "not set"),
        ({"dsn": DSN, "colour": 1}, "colour", "unknown"),
        ({"dsn": DSN, "schema": "bad name"}, "schema", "schema name"),
        ({"dsn": DSN, "pool_size": 0}, "pool_size", "at least 1"),
        ({"dsn": DSN, "pool_size": 2.5}, "pool_size", "whole number"),
        ({"dsn": DSN, "pool_size": True}, "pool_size", "number"),
        ({"dsn": DSN, "pool_timeout": "soon"}, "pool_timeout", "number"),
        ({"dsn": DSN, "connect_timeout": float("inf")}, "connect_timeout", "number"),
    ],
)
def test_factory_refuses_bad_settings(section, key, message):
    with pytest.raises(ConfigError, match=message) as info:
        _factory(_config(), section)
    assert info.value.key == f"users_postgres.{key}"


def test_an_unreachable_server_is_a_config_error_without_the_password():
    dsn = "postgresql://plugit:s3cret-pw@127.0.0.1:1/nowhere"
    with pytest.raises(ConfigError) as info:
        _factory(_config(), {"dsn": dsn, "connect_timeout": 2})
    assert info.value.key == "users_postgres.dsn"
    assert "s3cret-pw" not in str(info.value)
    assert "127.0.0.1:1/nowhere" in str(info.value)


def test_the_backend_registers_as_users_postgres():
    seen = []
    plugit_register_backends(lambda kind, name, factory: seen.append((kind, name, factory)))
    assert seen == [("users", "postgres", _factory)]


def test_without_psycopg_the_backends_still_register_and_explain():
    import subprocess
    import sys

    code = """
import sys
sys.modules["psycopg"] = None  # as if the postgres extra were not installed
sys.modules["psycopg_pool"] = None
from plugit_backends.billing_postgres import factory as billing_factory
from plugit_backends.users_postgres import _factory as users_factory
from plugit_core.config import ConfigError, ProxyConfig
config = ProxyConfig.from_mapping({"secret_key": sys.argv[1]})
for make in (users_factory, billing_factory):
    try:
        make(config, {"dsn": "postgresql://x@127.0.0.1/db"})
    except ConfigError as exc:
        print(exc.key, "|", exc)
"""
    done = subprocess.run(
        [sys.executable, "-W", "error", "-c", code, STRONG_KEY],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert [line.split(" |")[0] for line in lines] == ["users", "billing"]
    assert all("pip install 'plugit-wsgi[postgres]'" in line for line in lines)


def test_a_proxy_uses_the_directory_in_postgres(schema, monkeypatch):
    from plugit_backends import users_postgres
    from plugit_core.proxy.app import ProxyApp

    monkeypatch.setenv("PLUGIT_TEST_DB_URL", DSN)
    config = {
        "secret_key": STRONG_KEY,
        "users": "postgres",
        "users_postgres": {"dsn": {"env": "PLUGIT_TEST_DB_URL"}, "schema": schema},
    }
    proxy = ProxyApp(config, plugins=[users_postgres], load_entry_points=False)
    try:
        assert isinstance(proxy.users, PostgresUserStore) and proxy.users.schema == schema
        proxy.users.create_user("alice")
    finally:
        proxy.close()
    assert proxy.users.db.pool.closed

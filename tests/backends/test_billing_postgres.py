"""Billing in PostgreSQL: the BillingStore contract, plus what is particular to PostgreSQL.

Runs against a real server: ``PLUGIT_TEST_POSTGRES_DSN`` (default
``postgresql://postgres@127.0.0.1:5432/test``).  Each test gets a schema of its own, dropped
afterwards.  Without psycopg or a reachable server the tests are skipped, or fail when
``PLUGIT_REQUIRE_SERVERS=1`` (CI).
"""

from __future__ import annotations

import concurrent.futures
import threading
from datetime import datetime, timedelta, timezone

import pytest
from postgres_schema import DSN, fresh_schema, require_server

from plugit_core.config import ConfigError, ProxyConfig
from plugit_core.kinds.billing.testing import BillingStoreConformance

STRONG_KEY = "k3y-for-pg-tests-9f8e7d6c5b4a39281706f5e4d3c2b1a0"
DAY = timedelta(days=1)

require_server(module=True)

import psycopg  # noqa: E402
from psycopg import sql  # noqa: E402

from plugit_backends.billing import ConflictError, NotFoundError  # noqa: E402
from plugit_backends.billing_postgres import (  # noqa: E402
    SCHEMA_VERSION,
    PostgresBillingStore,
    factory,
    plugit_register_backends,
)
from plugit_backends.users_postgres import SCHEMA_VERSION as USERS_SCHEMA_VERSION  # noqa: E402
from plugit_backends.users_postgres import PostgresUserStore  # noqa: E402


@pytest.fixture
def schema():
    with fresh_schema() as name:
        yield name


class TestPostgresBillingStore(BillingStoreConformance):
    @pytest.fixture
    def store(self, schema):
        store = PostgresBillingStore(DSN, schema=schema)
        yield store
        store.close()


@pytest.fixture
def store(schema):
    store = PostgresBillingStore(DSN, schema=schema)
    yield store
    store.close()


@pytest.fixture
def second(store, schema):
    other = PostgresBillingStore(DSN, schema=schema, pool_size=4)
    yield other
    other.close()


def test_billing_and_the_directory_share_a_schema(store, schema):
    users = PostgresUserStore(DSN, schema=schema)
    try:
        alice = users.create_user("alice")
        store.create_plan("polls", "pro", "Pro")
        store.grant("polls", "pro", user_pk=alice.pk)
        assert store.labels("polls", alice.pk, []) == ["Pro"]
    finally:
        users.close()
    with psycopg.connect(DSN, autocommit=True) as conn:
        versions = dict(
            conn.execute(
                sql.SQL("SELECT component, version FROM {}.schema_version").format(
                    sql.Identifier(schema)
                )
            ).fetchall()
        )
    assert versions == {"billing": SCHEMA_VERSION, "users": USERS_SCHEMA_VERSION}


def test_holder_pks_keep_their_kind(store):
    store.create_plan("polls", "pro", "Pro")
    assert store.grant("polls", "pro", user_pk="42").user_pk == 42
    assert store.grant("polls", "pro", user_pk=" ab-c ").user_pk == "ab-c"
    assert store.grant("polls", "pro", orga_pk=-3).orga_pk == -3
    assert store.grant("polls", "pro", user_pk=10**30).user_pk == 10**30
    assert store.labels("polls", 42, []) == ["Pro"]
    assert store.labels("polls", "ab-c", []) == ["Pro"]
    assert store.labels("polls", None, ["-3"]) == ["Pro"]
    assert [s.user_pk for s in store.subscriptions("polls", user_pk="42")] == [42]


def test_two_stores_see_each_others_writes(store, second):
    store.create_plan("polls", "pro", "Pro")
    with pytest.raises(ConflictError):
        second.create_plan("polls", "pro", "Again")
    sub = second.grant("polls", "pro", user_pk=1)
    assert store.get(sub.id) == sub
    assert store.labels_by_service(1, []) == {"polls": ["Pro"]}
    store.cancel(sub.id)
    assert second.labels("polls", 1, []) == []


def test_concurrent_cancellations_apply_once(store, second):
    store.create_plan("polls", "pro", "Pro")
    sub = store.grant("polls", "pro", user_pk=1, start=datetime.now(timezone.utc) - DAY)
    barrier = threading.Barrier(8)

    def cancel(n):
        barrier.wait()
        return (store if n % 2 else second).cancel(sub.id).state

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        assert set(pool.map(cancel, range(8))) == {"cancelled"}
    assert [e["action"] for e in store.events(sub.id)] == ["grant", "cancel"]


def test_a_scheduled_cancellation_can_be_brought_forward(store):
    now = datetime.now(timezone.utc)
    store.create_plan("polls", "pro", "Pro")
    sub = store.grant("polls", "pro", user_pk=1, start=now - DAY)
    assert store.cancel(sub.id, at=now + 5 * DAY).end == now + 5 * DAY
    assert store.cancel(sub.id, at=now + 2 * DAY).end == now + 2 * DAY
    assert store.cancel(sub.id, at=now + 9 * DAY).end == now + 2 * DAY  # never pushed back
    events = store.events(sub.id)
    assert [e["effective"] for e in events] == [None, now + 5 * DAY, now + 2 * DAY, now + 2 * DAY]


def test_times_come_back_in_utc(schema):
    far_east = psycopg.conninfo.make_conninfo(DSN, options="-c TimeZone=Pacific/Auckland")
    store = PostgresBillingStore(far_east, schema=schema)
    try:
        store.create_plan("polls", "pro", "Pro")
        start = datetime(2030, 1, 2, 3, 4, 5, 678901, tzinfo=timezone(timedelta(hours=5)))
        sub = store.grant("polls", "pro", user_pk=1, start=start)
        again = store.get(sub.id)
        assert again.start == start and again.start.tzinfo == timezone.utc
        assert again.created.tzinfo == timezone.utc
        assert not again.active and again.state == "active"
    finally:
        store.close()


def test_odd_ids(store):
    for bad in (True, "1", 10**30, None, 1.0):
        assert store.get(bad) is None
        with pytest.raises(NotFoundError):
            store.cancel(bad)
    assert store.events(10**30) == []


def test_close_and_reopen(store):
    store.create_plan("polls", "pro", "Pro")
    store.close()
    assert [p.code for p in store.list_plans("polls")] == ["pro"]


def _config():
    return ProxyConfig.from_mapping({"secret_key": STRONG_KEY})


def test_factory(schema, monkeypatch):
    monkeypatch.setenv("PLUGIT_TEST_DB_URL", DSN)
    store = factory(_config(), {"dsn": {"env": "PLUGIT_TEST_DB_URL"}, "schema": schema})
    try:
        assert store.list_plans("polls") == []
    finally:
        store.close()
    with pytest.raises(ConfigError) as info:
        factory(_config(), {"dsn": DSN, "path": "x"})
    assert info.value.key == "billing_postgres.path"
    with pytest.raises(ConfigError) as info:
        factory(_config(), {"dsn": "postgresql://u:pw-s3cret@127.0.0.1:1/x", "connect_timeout": 2})
    assert info.value.key == "billing_postgres.dsn" and "pw-s3cret" not in str(info.value)


def test_the_backend_registers_as_billing_postgres():
    seen = []
    plugit_register_backends(lambda kind, name, f: seen.append((kind, name, f)))
    assert seen == [("billing", "postgres", factory)]

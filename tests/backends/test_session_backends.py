"""Every session backend passes the shared conformance suite; then what each one does alone:
the signed cookie's old values stay valid, the Redis store's key layout, expiry, outages and
configuration."""

from __future__ import annotations

import json
import logging
import secrets
from collections.abc import Iterator

import pytest

from plugit_backends.session_cookie import CookieSessionBackend
from plugit_backends.session_redis import (
    RedisSession,
    RedisSessionBackend,
    plugit_register_backends,
)
from plugit_core.backends import Backends, Session
from plugit_core.config import ConfigError, ProxyConfig
from plugit_core.kinds.session.testing import SessionBackendConformance, SessionClient
from plugit_core.stores import StoreUnavailable
from plugit_core.testing import free_port
from plugit_core.testing.redis import delete_prefix, redis_for_tests

redis = pytest.importorskip("redis")  # the ``redis`` extra

SECRET = "session-tests-secret-0123456789abcdef"
LOGGER = "plugit.session.redis"


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    with redis_for_tests() as url:
        yield url


@pytest.fixture
def prefix(redis_url: str) -> Iterator[str]:
    prefix = f"plugit-test:{secrets.token_hex(8)}:session:"
    yield prefix
    delete_prefix(redis_url, prefix)


@pytest.fixture
def raw(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url, socket_timeout=5)
    yield client
    client.close()
    client.connection_pool.disconnect()


class TestCookieSessions(SessionBackendConformance):
    server_side = False
    reserved_keys = frozenset({"_sid"})  # the cookie backend's own id, so rotation shows

    @pytest.fixture
    def make_backend(self):
        def make(secret_key: str = SECRET, **options) -> CookieSessionBackend:
            return CookieSessionBackend(secret_key, **options)

        return make


class TestRedisSessions(SessionBackendConformance):
    server_side = True

    @pytest.fixture
    def make_backend(self, redis_url: str, prefix: str) -> Iterator:
        made: list[RedisSessionBackend] = []

        def make(secret_key: str = SECRET, **options) -> RedisSessionBackend:
            backend = RedisSessionBackend(
                secret_key, url=redis_url, prefix=prefix, socket_timeout=5, **options
            )
            made.append(backend)
            return backend

        try:
            yield make
            failures = [g.failures for b in made for g in b.store_guards]
            assert not any(failures), "Redis failed during the test"
        finally:
            for backend in made:
                backend.close()


# -- Redis only --------------------------------------------------------------------------------


@pytest.fixture
def make_backend(redis_url: str, prefix: str) -> Iterator:
    made: list[RedisSessionBackend] = []

    def make(**options) -> RedisSessionBackend:
        options.setdefault("url", redis_url)
        options.setdefault("prefix", prefix)
        backend = RedisSessionBackend(SECRET, **options)
        made.append(backend)
        return backend

    yield make
    for backend in made:
        backend.close()


def test_key_layout(make_backend, raw, prefix):
    client = SessionClient(make_backend(max_age=600))
    exchange = client.request(lambda s: s.update(uid=5, secret="not in the cookie"))
    session = exchange.session
    assert isinstance(session, RedisSession)
    sid = session.sid
    assert sid is not None and len(sid) >= 43
    assert "sid" not in session and "_sid" not in session  # the id stays out of the data
    cookie = client.cookies["plugit_session"]
    assert cookie.startswith(sid + ".")  # the id, signed
    assert "not in the cookie" not in cookie
    assert json.loads(raw.get(prefix + sid)) == {"uid": 5, "secret": "not in the cookie"}
    assert 590 < raw.ttl(prefix + sid) <= 600


def test_saving_refreshes_the_ttl_and_reading_does_not(make_backend, raw, prefix):
    client = SessionClient(make_backend(max_age=600))
    sid = client.request(lambda s: s.update(a=1)).session.sid
    raw.expire(prefix + sid, 50)
    client.request()
    assert raw.ttl(prefix + sid) <= 50
    client.request(lambda s: s.update(a=2))
    assert raw.ttl(prefix + sid) > 590


def test_rotation_deletes_the_old_key(make_backend, raw, prefix):
    client = SessionClient(make_backend())
    old = client.request(lambda s: s.update(a=1)).session.sid

    def rotate(session: Session) -> None:
        session.rotate = True

    new = client.request(rotate).session.sid
    assert new != old
    assert raw.exists(prefix + old) == 0
    assert json.loads(raw.get(prefix + new)) == {"a": 1}


def test_clearing_deletes_the_key(make_backend, raw, prefix):
    client = SessionClient(make_backend())
    sid = client.request(lambda s: s.update(a=1)).session.sid
    client.request(lambda s: s.clear())
    assert raw.exists(prefix + sid) == 0


def test_a_lost_key_gives_an_empty_session_and_a_new_id(make_backend, raw, prefix):
    client = SessionClient(make_backend())
    old = client.request(lambda s: s.update(a=1)).session.sid
    raw.delete(prefix + old)
    exchange = client.request(lambda s: s.update(b=2))
    assert exchange.opened == {} and exchange.new
    assert exchange.session.sid != old  # a dead id is never brought back to life


def test_a_lost_key_and_an_empty_session_delete_the_cookie(make_backend, raw, prefix):
    client = SessionClient(make_backend())
    old = client.request(lambda s: s.update(a=1)).session.sid
    raw.delete(prefix + old)
    exchange = client.request(lambda s: s.clear())
    assert exchange.set_cookies == [] or exchange.cookie("plugit_session").deletes


def test_corrupt_data_is_an_empty_session(make_backend, raw, prefix):
    client = SessionClient(make_backend())
    sid = client.request(lambda s: s.update(a=1)).session.sid
    for junk in (b"{not json", b"[1, 2]", b"\xff\xfe"):
        raw.set(prefix + sid, junk)
        assert client.request().opened == {}


def test_a_signed_id_of_the_wrong_shape_is_refused(make_backend, raw, prefix):
    backend = make_backend()
    raw.set(prefix + "short", json.dumps({"uid": 1}))
    forged = backend._signer.sign("short").decode()  # only someone with the secret can do this
    assert SessionClient(backend).request(cookies={"plugit_session": forged}).opened == {}


def test_unserialisable_values_raise(make_backend):
    with pytest.raises(TypeError):
        SessionClient(make_backend()).request(lambda s: s.update(obj=object()))


def test_unreachable_redis_is_a_503_for_sessions_never_a_silent_logout(make_backend, caplog):
    good = SessionClient(make_backend())
    cookie = good.request(lambda s: s.update(uid=1)).cookie("plugit_session").value
    down = make_backend(url=f"redis://127.0.0.1:{free_port()}/0", retry_interval=60)
    caplog.set_level(logging.WARNING, logger=LOGGER)
    client = SessionClient(down)
    client.cookies["plugit_session"] = cookie
    for _ in range(20):  # the first fails on the refused connection, the others at once
        with pytest.raises(StoreUnavailable) as info:
            client.request(lambda s: s.update(changed=True))
        assert info.value.store == "session_redis"
        assert info.value.message.startswith("The session store at redis://127.0.0.1:")
    first_visit = SessionClient(down).request(lambda s: s.update(a=1))  # nothing of theirs
    assert first_visit.set_cookies == []  # served without a session

    def log_in(session):
        session.update(uid=2)
        session.rotate = True

    with pytest.raises(StoreUnavailable) as info:  # a login is never reported unstored
        SessionClient(down).request(log_in)
    assert info.value.store == "session_redis_writes"
    assert SessionClient(down).request(lambda s: None).opened == {}  # no session: no Redis
    records = [r for r in caplog.records if r.name == LOGGER]
    assert len(records) == 2, [r.getMessage() for r in records]  # reads, writes: rate-limited
    assert all("is unavailable" in r.getMessage() for r in records)


# -- configuration -----------------------------------------------------------------------------


def build(table: dict | None = None, **top) -> RedisSessionBackend:
    backends = Backends()
    plugit_register_backends(register=backends.register)
    data = {"cache": "memory", "session": "redis", **top}
    data.setdefault("dev_mode", True)
    if table is not None:
        data["session_redis"] = table
    return backends.build("session", "redis", ProxyConfig.from_mapping(data))


def test_defaults():
    backend = build()
    try:
        assert backend.url == "redis://127.0.0.1:6379/0"
        assert backend.prefix == "plugit:session:"
        assert backend.cookie_name == "plugit_session"
        assert backend.max_age == 14 * 24 * 3600
        assert backend.secure is False  # dev mode
        assert backend.samesite == "Lax"
        assert backend._pool.connection_kwargs["socket_timeout"] == 1.0
    finally:
        backend.close()
    backend = build(dev_mode=False, secret_key="a-strong-secret-key-for-tests-0123456789abcdef")
    try:
        assert backend.secure is True
    finally:
        backend.close()


def test_settings():
    backend = build(
        {
            "url": "redis://127.0.0.1:6390/2",
            "prefix": "site:s:",
            "cookie_name": "sid",
            "max_age": 3600,
            "secure": True,
            "samesite": "Strict",
            "domain": "example.org",
            "socket_timeout": 0.5,
            "retry_interval": 1,
        }
    )
    try:
        assert (backend.prefix, backend.cookie_name, backend.max_age) == ("site:s:", "sid", 3600)
        assert (backend.secure, backend.samesite, backend.domain) == (True, "Strict", "example.org")
        assert backend._pool.connection_kwargs["db"] == 2
        assert backend.reads.max_backoff == 1 and backend.writes.max_backoff == 1
    finally:
        backend.close()


@pytest.mark.parametrize(
    ("table", "key"),
    [
        ({"nope": 1}, "session_redis.nope"),
        ({"url": "memcached://x"}, "session_redis.url"),
        ({"url": "redis://host:port/0"}, "session_redis.url"),
        ({"prefix": 3}, "session_redis.prefix"),
        ({"max_age": 0}, "session_redis.max_age"),
        ({"max_age": 1.5}, "session_redis.max_age"),
        ({"samesite": "lax-ish"}, "session_redis.samesite"),
        ({"secure": "yes"}, "session_redis.secure"),
        ({"samesite": "None", "secure": False}, "session_redis.samesite"),
        ({"cookie_name": "a b"}, "session_redis.cookie_name"),
        ({"socket_timeout": 0}, "session_redis.socket_timeout"),
        ({"retry_interval": "1"}, "session_redis.retry_interval"),
        ({"domain": 5}, "session_redis.domain"),
    ],
)
def test_bad_settings(table, key):
    with pytest.raises(ConfigError) as info:
        build(table)
    assert info.value.key == key


# -- logout ends every copy (plugit_backends.login.EndableSessions) ----------------------------


@pytest.fixture(params=["cookie", "redis"])
def endable(request, tmp_path) -> Iterator:
    """``make()``: the chosen backend wrapped as the login plugin wraps it, each call a new
    instance (a proxy process) sharing the secret, the Redis prefix and one SQLite directory."""
    from plugit_backends.login import EndableSessions
    from plugit_backends.users_sqlite import SQLiteUserStore

    store = SQLiteUserStore(tmp_path / "directory.sqlite3")
    made: list = []

    def make() -> EndableSessions:
        if request.param == "cookie":
            inner = CookieSessionBackend(SECRET)
        else:
            inner = RedisSessionBackend(
                SECRET,
                url=request.getfixturevalue("redis_url"),
                prefix=request.getfixturevalue("prefix"),
            )
            made.append(inner)
        return EndableSessions(inner, store)

    try:
        yield make, store
    finally:
        for backend in made:
            backend.close()
        store.close()


def _log_in_as(pk):
    def change(session: Session) -> None:
        session.clear()
        session.update(uid=pk, auth="session", _csrf="t" * 32)
        session.rotate = True

    return change


def test_a_copy_of_the_cookie_dies_with_the_logout_in_every_process(endable):
    make, store = endable
    alice = store.create_user("alice")
    one, two = make(), make()
    browser = SessionClient(one)
    browser.request(_log_in_as(alice.pk))
    copied = dict(browser.cookies)
    assert browser.request().opened["uid"] == alice.pk
    thief = SessionClient(two)  # another process, the copied cookie
    assert thief.request(cookies=copied).opened["_csrf"] == "t" * 32
    store.end_sessions(alice.pk)  # what the logout page does
    replay = thief.request(cookies=copied)
    assert replay.opened == {}  # no user, no CSRF token
    cookie = replay.cookie("plugit_session")
    assert cookie is not None and cookie.deletes  # and the browser forgets it
    assert SessionClient(one).request(cookies=copied).opened == {}
    again = SessionClient(two)  # a new login after the logout is valid
    again.request(_log_in_as(alice.pk))
    assert again.request().opened["uid"] == alice.pk


def test_sessions_without_a_user_are_left_alone(endable):
    make, _ = endable
    client = SessionClient(make())
    client.request(lambda s: s.update(cart=[1]))
    opened = client.request().opened
    assert opened["cart"] == [1] and set(opened) <= {"cart", "_sid"}  # (_sid: the cookie's id)

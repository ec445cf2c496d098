"""The shared conformance suites of the backend kinds, as pytest classes to subclass.

Every implementation of a kind passes the same tests: subclass the kind's class in a test module
(named ``Test...`` so pytest collects it) and give it the fixture it asks for::

    class TestMyCache(CacheBackendConformance):
        @pytest.fixture
        def cache(self):
            cache = MyCache(...)
            yield cache
            cache.clear()

    class TestMySessions(SessionBackendConformance):
        server_side = True  # sessions live on the server: a rotated or cleared id is dead

        @pytest.fixture
        def make_backend(self):
            # make_backend(secret_key=..., cookie_name=..., max_age=..., secure=..., samesite=...)
            return lambda secret_key="s3cret", **options: MySessions(secret_key, **options)

* :class:`CacheBackendConformance` checks a :class:`~plugit_core.backends.CacheBackend`.
* :class:`SessionBackendConformance` checks a :class:`~plugit_core.backends.SessionBackend`
  through werkzeug requests and responses; :class:`SessionClient` plays the browser (it keeps
  the cookies the backend sets and sends them back).
* :func:`redis_server` runs a throwaway ``redis-server`` for tests (to stop it mid-test), and
  :func:`redis_for_tests` gives the URL of a Redis to test against.

This module needs pytest (the ``test`` extra).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from werkzeug.test import EnvironBuilder
from werkzeug.wrappers import Request, Response

from .backends import CacheBackend, Session
from .testing import free_port, wait_for_port

__all__ = [
    "CacheBackendConformance",
    "Exchange",
    "RedisServer",
    "SessionBackendConformance",
    "SessionClient",
    "SetCookie",
    "delete_prefix",
    "free_port",
    "redis_for_tests",
    "redis_server",
    "wait_until",
]


def wait_until(condition: Callable[[], Any], timeout: float = 5.0, interval: float = 0.05) -> Any:
    """Poll ``condition`` until it returns a true value (returned); fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"condition still false after {timeout}s")
        time.sleep(interval)


# -- caches ------------------------------------------------------------------------------------


class CacheBackendConformance:
    """The contract of every cache backend.  Subclasses provide the ``cache`` fixture: an
    empty cache that accepts values of at least 4 MiB."""

    def test_is_a_cache_backend(self, cache: Any) -> None:
        assert isinstance(cache, CacheBackend)

    def test_missing_key_is_none(self, cache: Any) -> None:
        assert cache.get("missing") is None

    def test_set_then_get(self, cache: Any) -> None:
        cache.set("k", b"value", 60)
        assert cache.get("k") == b"value"

    def test_overwrite(self, cache: Any) -> None:
        cache.set("k", b"one", 60)
        cache.set("k", b"two", 60)
        assert cache.get("k") == b"two"

    def test_keys_are_independent(self, cache: Any) -> None:
        keys = ["a", "A", "a ", "page:/svc/x?q=1", "été/日本", "star*", "[br]ace?", "back\\slash"]
        for i, key in enumerate(keys):
            cache.set(key, str(i).encode(), 60)
        assert [cache.get(key) for key in keys] == [str(i).encode() for i in range(len(keys))]

    def test_entry_expires_after_its_ttl(self, cache: Any) -> None:
        cache.set("short", b"1", 1.0)
        cache.set("long", b"2", 60)
        assert cache.get("short") == b"1"
        wait_until(lambda: cache.get("short") is None, timeout=5)
        assert cache.get("long") == b"2"

    def test_overwrite_sets_a_new_ttl(self, cache: Any) -> None:
        cache.set("k", b"old", 0.3)
        cache.set("k", b"new", 60)
        time.sleep(0.5)
        assert cache.get("k") == b"new"

    def test_non_positive_ttl_stores_nothing(self, cache: Any) -> None:
        cache.set("zero", b"x", 0)
        cache.set("negative", b"x", -5)
        assert cache.get("zero") is None
        assert cache.get("negative") is None

    def test_delete(self, cache: Any) -> None:
        cache.set("k", b"v", 60)
        cache.set("other", b"w", 60)
        cache.delete("k")
        assert cache.get("k") is None
        assert cache.get("other") == b"w"

    def test_delete_missing_key_is_no_error(self, cache: Any) -> None:
        cache.delete("never-set")

    def test_clear(self, cache: Any) -> None:
        for i in range(50):
            cache.set(f"k{i}", b"v", 60)
        cache.clear()
        assert all(cache.get(f"k{i}") is None for i in range(50))
        cache.set("after", b"v", 60)  # still usable
        assert cache.get("after") == b"v"

    @pytest.mark.parametrize(
        "value",
        [b"", b"\x00", bytes(range(256)), b"\xff\xfe\xfd invalid utf-8 \xc3\x28", "é".encode()],
        ids=["empty", "nul", "all-bytes", "invalid-utf8", "utf8"],
    )
    def test_bytes_round_trip(self, cache: Any, value: bytes) -> None:
        cache.set("bytes", value, 60)
        got = cache.get("bytes")
        assert type(got) is bytes
        assert got == value

    def test_large_value(self, cache: Any) -> None:
        value = secrets.token_bytes(4 * 1024 * 1024)
        cache.set("large", value, 60)
        assert cache.get("large") == value

    def test_many_threads(self, cache: Any) -> None:
        errors: list[BaseException] = []
        start = threading.Barrier(8)

        def work(n: int) -> None:
            try:
                start.wait()
                for i in range(100):
                    key, value = f"t{n}:{i}", f"{n}:{i}".encode() * 10
                    cache.set(key, value, 60)
                    assert cache.get(key) == value
                    cache.set("shared", value, 60)
                    assert cache.get("shared") is not None
                    if i % 10 == 0:
                        cache.delete(key)
                        assert cache.get(key) is None
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert not errors, errors[0]
        assert cache.get("t3:99") == b"3:99" * 10


# -- sessions ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class SetCookie:
    """One ``Set-Cookie`` header: the name, the value and the attributes (lower-case names;
    flags such as ``httponly`` map to True)."""

    name: str
    value: str
    attributes: dict[str, str | bool]

    @classmethod
    def parse(cls, header: str) -> SetCookie:
        first, *rest = header.split(";")
        name, _, value = first.partition("=")
        attributes: dict[str, str | bool] = {}
        for part in rest:
            key, sep, val = part.strip().partition("=")
            attributes[key.lower()] = val if sep else True
        return cls(name.strip(), value.strip().strip('"'), attributes)

    @property
    def deletes(self) -> bool:
        """Whether the header removes the cookie (no value and an expiry in the past)."""
        return self.attributes.get("max-age") == "0" or (
            self.value == "" and "1970" in str(self.attributes.get("expires", ""))
        )


@dataclass
class Exchange:
    """One request through a session backend: what it opened, what the response set."""

    session: Session
    opened: dict[str, Any]
    new: bool
    set_cookies: list[SetCookie] = field(default_factory=list)

    def cookie(self, name: str) -> SetCookie | None:
        found = [c for c in self.set_cookies if c.name == name]
        assert len(found) <= 1, f"{name} set {len(found)} times"
        return found[0] if found else None


class SessionClient:
    """A browser for a session backend: sends its cookies, keeps the ones the backend sets."""

    def __init__(self, backend: Any, *, reserved_keys: frozenset[str] = frozenset()) -> None:
        self.backend = backend
        self.reserved_keys = reserved_keys  # the backend's own keys, left out of ``opened``
        self.cookies: dict[str, str] = {}

    def request(
        self,
        change: Callable[[Session], Any] | None = None,
        *,
        cookies: dict[str, str] | None = None,
    ) -> Exchange:
        """Open the session of a request carrying ``cookies`` (default: this client's), apply
        ``change`` to it, save it on a response, and keep the cookies the response sets."""
        sent = self.cookies if cookies is None else cookies
        headers = [("Cookie", "; ".join(f"{k}={v}" for k, v in sent.items()))] if sent else []
        builder = EnvironBuilder(path="/", base_url="https://site.example", headers=headers)
        request = Request(builder.get_environ())
        session = self.backend.open(request)
        assert isinstance(session, Session)
        opened = {k: v for k, v in session.items() if k not in self.reserved_keys}
        exchange = Exchange(session=session, opened=opened, new=session.new)
        if change is not None:
            change(session)
        response = Response()
        self.backend.save(session, request, response)
        for header in response.headers.getlist("Set-Cookie"):
            cookie = SetCookie.parse(header)
            exchange.set_cookies.append(cookie)
            if cookie.deletes:
                self.cookies.pop(cookie.name, None)
            else:
                self.cookies[cookie.name] = cookie.value
        return exchange


def _flip(value: str, index: int) -> str:
    """``value`` with the character at ``index`` changed."""
    return value[:index] + ("A" if value[index] != "A" else "B") + value[index + 1 :]


def _log_in(session: Session) -> None:
    """What :func:`plugit_core.identity.log_in` does to the session."""
    session.clear()
    session["uid"] = 42
    session["auth"] = "local"
    session.rotate = True


class SessionBackendConformance:
    """The contract of every session backend.

    Subclasses provide the ``make_backend`` fixture: a callable taking ``secret_key``,
    ``cookie_name``, ``max_age``, ``secure`` and ``samesite`` (all optional) and returning a
    backend (the same store for every call, so that two backends with the same secret share
    sessions).  ``server_side`` says whether sessions live on the server: then a session id that
    was rotated or cleared is dead; a signed-cookie session stays readable until it expires.
    ``reserved_keys`` are keys the backend itself keeps in the session dict (better none).
    """

    cookie_name = "plugit_session"
    server_side = False
    reserved_keys: frozenset[str] = frozenset()

    @pytest.fixture
    def backend(self, make_backend: Callable[..., Any]) -> Any:
        return make_backend()

    @pytest.fixture
    def client(self, backend: Any) -> SessionClient:
        return self.browser(backend)

    def browser(self, backend: Any) -> SessionClient:
        """A :class:`SessionClient` for ``backend``."""
        return SessionClient(backend, reserved_keys=self.reserved_keys)

    def _start(self, client: SessionClient, **data: Any) -> str:
        """A saved session holding ``data``; its cookie value."""
        exchange = client.request(lambda s: s.update(data))
        cookie = exchange.cookie(self.cookie_name)
        assert cookie is not None and not cookie.deletes
        return cookie.value

    def test_no_cookie_is_a_new_empty_session(self, client: SessionClient) -> None:
        exchange = client.request()
        assert exchange.opened == {}
        assert exchange.new is True
        assert exchange.session.modified is False

    def test_untouched_new_session_sets_no_cookie(self, client: SessionClient) -> None:
        assert client.request(lambda s: s.get("x")).set_cookies == []

    def test_round_trip(self, client: SessionClient) -> None:
        data = {"s": "é日本", "n": 3, "f": 1.5, "b": True, "none": None, "l": [1, "a"]}
        self._start(client, **data, nested={"a": {"b": [1, 2]}})
        exchange = client.request()
        assert exchange.new is False
        assert exchange.opened == {**data, "nested": {"a": {"b": [1, 2]}}}

    def test_reading_saves_nothing(self, client: SessionClient) -> None:
        self._start(client, a=1)
        exchange = client.request(lambda s: (s.get("a"), dict(s), list(s.items())))
        assert exchange.set_cookies == []
        assert client.request().opened == {"a": 1}

    def test_changes_are_saved(self, client: SessionClient) -> None:
        self._start(client, a=1, b=2)

        def change(session: Session) -> None:
            session["a"] = 10
            del session["b"]
            session.setdefault("c", [])

        exchange = client.request(change)
        assert exchange.cookie(self.cookie_name) is not None
        assert client.request().opened == {"a": 10, "c": []}

    def test_sessions_are_separate(self, backend: Any) -> None:
        alice, bob = self.browser(backend), self.browser(backend)
        self._start(alice, who="alice")
        self._start(bob, who="bob")
        assert alice.request().opened == {"who": "alice"}
        assert bob.request().opened == {"who": "bob"}

    def test_rotation_sets_a_new_cookie_carrying_the_data(self, client: SessionClient) -> None:
        before = self._start(client, _csrf="t" * 32, keep="me")

        def rotate(session: Session) -> None:
            session.rotate = True

        after = client.request(rotate).cookie(self.cookie_name)
        assert after is not None and not after.deletes
        assert after.value != before
        assert client.request().opened == {"_csrf": "t" * 32, "keep": "me"}

    def test_login_empties_the_session_and_rotates(self, client: SessionClient) -> None:
        before = self._start(client, _csrf="t" * 32, cart=[1, 2])
        after = client.request(_log_in).cookie(self.cookie_name)
        assert after is not None and after.value != before
        assert client.request().opened == {"uid": 42, "auth": "local"}

    def test_login_on_a_new_session(self, client: SessionClient) -> None:
        assert client.request(_log_in).cookie(self.cookie_name) is not None
        assert client.request().opened == {"uid": 42, "auth": "local"}

    def test_the_old_id_after_rotation(self, client: SessionClient) -> None:
        """Server-side: the old id is dead.  In a cookie: the old cookie keeps its old data until
        it expires (nothing on the server can revoke it)."""
        before = self._start(client, kept="old")
        client.request(_log_in)
        stale = client.request(cookies={self.cookie_name: before})
        if self.server_side:
            assert stale.opened == {}
            assert stale.new is True
        else:
            assert stale.opened == {"kept": "old"}
        assert client.request().opened == {"uid": 42, "auth": "local"}

    def test_clearing_deletes_the_cookie(self, client: SessionClient) -> None:
        self._start(client, uid=1)
        exchange = client.request(lambda s: s.clear())
        cookie = exchange.cookie(self.cookie_name)
        assert cookie is not None and cookie.deletes
        assert self.cookie_name not in client.cookies
        after = client.request()
        assert after.opened == {} and after.new is True

    def test_logout_deletes_the_cookie(self, client: SessionClient) -> None:
        before = self._start(client, uid=1)

        def log_out(session: Session) -> None:
            session.clear()
            session.rotate = True

        cookie = client.request(log_out).cookie(self.cookie_name)
        assert cookie is not None and cookie.deletes
        if self.server_side:
            assert client.request(cookies={self.cookie_name: before}).opened == {}

    def test_clearing_a_new_session_sets_no_cookie(self, client: SessionClient) -> None:
        assert client.request(lambda s: s.clear()).set_cookies == []

        def write_then_clear(session: Session) -> None:
            session.update(a=1)
            session.clear()

        assert client.request(write_then_clear).set_cookies == []

    @pytest.mark.parametrize(
        "tamper",
        [
            lambda v: _flip(v, len(v) - 5),  # not the last character: its low bits are padding
            lambda v: _flip(v, 1),
            lambda v: v + "x",
            lambda v: v.split(".")[0],
            lambda v: "garbage",
            lambda v: "",
        ],
        ids=["signature", "payload", "appended", "unsigned", "garbage", "empty"],
    )
    def test_tampered_cookie_is_an_empty_session(
        self, client: SessionClient, tamper: Callable[[str], str]
    ) -> None:
        value = self._start(client, uid=1)
        exchange = client.request(cookies={self.cookie_name: tamper(value)})
        assert exchange.opened == {}
        assert exchange.new is True

    def test_cookie_of_another_secret_is_an_empty_session(
        self, make_backend: Callable[..., Any]
    ) -> None:
        value = self._start(self.browser(make_backend(secret_key="one-" + "x" * 40)), uid=1)
        other = self.browser(make_backend(secret_key="two-" + "y" * 40))
        assert other.request(cookies={self.cookie_name: value}).opened == {}

    def test_same_secret_shares_sessions(self, make_backend: Callable[..., Any]) -> None:
        value = self._start(self.browser(make_backend()), uid=7)
        other = self.browser(make_backend())
        assert other.request(cookies={self.cookie_name: value}).opened == {"uid": 7}

    def test_expired_session_is_empty(self, make_backend: Callable[..., Any]) -> None:
        client = self.browser(make_backend(max_age=1))
        value = self._start(client, uid=1)
        assert client.request().opened == {"uid": 1}

        def expired() -> bool:
            return client.request(cookies={self.cookie_name: value}).opened == {}

        wait_until(expired, timeout=6, interval=0.1)

    @pytest.mark.parametrize(
        ("secure", "samesite"), [(True, "Lax"), (False, "Strict"), (True, "None")]
    )
    def test_cookie_flags(
        self, make_backend: Callable[..., Any], secure: bool, samesite: str
    ) -> None:
        backend = make_backend(
            cookie_name="site_sid", max_age=3600, secure=secure, samesite=samesite
        )
        client = self.browser(backend)
        cookie = client.request(lambda s: s.update(a=1)).cookie("site_sid")
        assert cookie is not None
        attrs = cookie.attributes
        assert attrs.get("httponly") is True
        assert str(attrs.get("samesite")).lower() == samesite.lower()
        assert ("secure" in attrs) is secure
        assert attrs.get("max-age") == "3600"
        assert attrs.get("path") == "/"
        assert "domain" not in attrs
        assert client.request().opened == {"a": 1}
        deleted = client.request(lambda s: s.clear()).cookie("site_sid")
        assert deleted is not None and deleted.deletes
        assert deleted.attributes.get("path") == "/"


# -- Redis for tests ---------------------------------------------------------------------------


@dataclass
class RedisServer:
    """A ``redis-server`` process started by :func:`redis_server`."""

    port: int
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """Start (or restart, on the same port) the server; return once it accepts clients."""
        if self.process is not None and self.process.poll() is None:
            return
        executable = shutil.which("redis-server")
        if executable is None:
            pytest.skip("redis-server is not installed")
        self.process = subprocess.Popen(  # noqa: S603 (a fixed executable and arguments)
            [
                executable,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--daemonize",
                "no",
                "--loglevel",
                "warning",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_for_port("127.0.0.1", self.port, timeout=10)
        except TimeoutError:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop the server (its data is lost)."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(10)
        self.process = None


@contextlib.contextmanager
def redis_server(port: int | None = None) -> Iterator[RedisServer]:
    """A private ``redis-server`` on 127.0.0.1 (a free port by default), keeping nothing on disk,
    stopped at the end; :meth:`RedisServer.stop` and :meth:`RedisServer.start` stop and restart
    it meanwhile.  Skips the test when ``redis-server`` is not installed."""
    server = RedisServer(port or free_port())
    server.start()
    try:
        yield server
    finally:
        server.stop()


def _answers(url: str) -> bool:
    import redis

    client = redis.Redis.from_url(url, socket_timeout=1, socket_connect_timeout=1)
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
    finally:
        client.close()
        client.connection_pool.disconnect()


@contextlib.contextmanager
def redis_for_tests() -> Iterator[str]:
    """The URL of a Redis to test against.

    ``PLUGIT_TEST_REDIS_URL`` (default ``redis://127.0.0.1:6379/0``) when it answers, else a
    private ``redis-server`` started for the block.  Tests sharing a Redis must use their own key
    prefix.  Skips without the redis package or any Redis, unless ``PLUGIT_REQUIRE_REDIS=1``.
    """
    try:
        import redis  # noqa: F401
    except ImportError:
        if os.environ.get("PLUGIT_REQUIRE_REDIS") == "1":
            pytest.fail("the redis package is not installed (pip install 'plugit-wsgi[redis]')")
        pytest.skip("the redis package is not installed (pip install 'plugit-wsgi[redis]')")
    url = os.environ.get("PLUGIT_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
    if _answers(url):
        yield url
        return
    if shutil.which("redis-server") is None and os.environ.get("PLUGIT_REQUIRE_REDIS") == "1":
        pytest.fail(f"no Redis answers at {url} and redis-server is not installed")
    with redis_server() as server:
        yield server.url


def delete_prefix(url: str, prefix: str) -> int:
    """Delete every key starting with ``prefix`` (SCAN, not FLUSHDB); the number deleted."""
    import redis

    client = redis.Redis.from_url(url, socket_timeout=5)
    try:
        pattern = "".join("\\" + c if c in "*?[]\\^" else c for c in prefix) + "*"
        names = list(client.scan_iter(match=pattern, count=1000))
        for start in range(0, len(names), 500):
            client.unlink(*names[start : start + 500])
        return len(names)
    finally:
        client.close()
        client.connection_pool.disconnect()

"""The shared conformance suite of the ``session`` kind: every
:class:`~plugit_core.kinds.session.SessionBackend` passes :class:`SessionBackendConformance`,
through werkzeug requests and responses; :class:`SessionClient` plays the browser (it keeps the
cookies the backend sets and sends them back).

Subclass it in a test module (named ``Test...`` so pytest collects it)::

    class TestMySessions(SessionBackendConformance):
        server_side = True  # sessions live on the server: a rotated or cleared id is dead

        @pytest.fixture
        def make_backend(self):
            # make_backend(secret_key=..., cookie_name=..., max_age=..., secure=..., samesite=...)
            return lambda secret_key="s3cret", **options: MySessions(secret_key, **options)

This module needs pytest (the ``test`` extra).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from werkzeug.test import EnvironBuilder
from werkzeug.wrappers import Request, Response

from ...testing.helpers import wait_until
from . import Session

__all__ = ["Exchange", "SessionBackendConformance", "SessionClient", "SetCookie"]


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

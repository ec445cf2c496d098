"""Sessions shared by every proxy process: the session in Redis, its id in a cookie.

The cookie holds only a random session id (``secrets.token_urlsafe(32)``), signed with the proxy's
``secret_key`` so that ids cannot be guessed and tried against Redis.  The session itself is JSON
under ``prefix + id`` and expires ``max_age`` seconds after it was last saved.  A login
(``session.rotate``) gives the session a new id and deletes the old key, so an old cookie is
worthless afterwards; an emptied session (logout) deletes the key and the cookie.

The cookie is HttpOnly, SameSite=Lax, Secure outside dev mode, and expires after ``max_age``.

Configuration (all optional)::

    session = "redis"

    [session_redis]
    url = "redis://127.0.0.1:6379/0"
    prefix = "plugit:session:"
    socket_timeout = 1.0     # seconds
    retry_interval = 1       # at most this long between two attempts while Redis is down
    max_waiters = 8          # threads in session calls at once; more get a 503 at once
    required = true          # /_plugit/ready is 503 while the sessions cannot be read
    cookie_name = "plugit_session"
    max_age = 1209600        # seconds (14 days)
    secure = true            # default: true, false in dev mode
    samesite = "Lax"         # "Lax", "Strict" or "None" (None requires secure)
    domain = ""              # default: the host only

While Redis cannot be read, a request that carries a session cookie gets a 503 saying the
session store is unavailable (never a silent logout, never a "form has expired"); visitors
without a session are served as usual.  A request whose changed session cannot be stored
(Redis refusing writes, or not answering) gets a 503 too, so a login is reported only once its
session is stored.  Reads and writes have guards of their own (plugit_core/stores.py): a Redis
refusing writes (out of memory) keeps serving the sessions it holds.  See docs/redis.md.
"""

from __future__ import annotations

import json
import logging
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from itsdangerous import BadSignature, TimestampSigner
from werkzeug.wrappers import Request, Response

from plugit_backends.redis import (
    connection_pool,
    is_outage,
    prefix_setting,
    redact_url,
    redis,
    url_setting,
)
from plugit_backends.session_cookie import CookieSettings
from plugit_core.backends import RegisterBackend, Session
from plugit_core.config import ConfigError, ProxyConfig
from plugit_core.hookspecs import hookimpl
from plugit_core.settings import setting
from plugit_core.stores import (
    DEFAULT_MAX_WAITERS,
    GuardSettings,
    StoreGuard,
    StoreUnavailable,
)

__all__ = ["RedisSession", "RedisSessionBackend"]

log = logging.getLogger("plugit.session.redis")

_SID = re.compile(r"[A-Za-z0-9_-]{32,128}")


class RedisSession(Session):
    """A :class:`Session` that knows its id (``sid``, None until first saved).

    ``unavailable`` is True when Redis could not be read: the session is empty and is not saved.
    """

    def __init__(
        self,
        data: Mapping[str, Any] | None = None,
        *,
        new: bool = True,
        sid: str | None = None,
        unavailable: bool = False,
    ) -> None:
        super().__init__(data, new=new)
        self.sid = sid
        self.unavailable = unavailable


class RedisSessionBackend:
    """A :class:`plugit_core.kinds.session.SessionBackend` keeping sessions in Redis."""

    def __init__(
        self,
        secret_key: str,
        *,
        url: str = "redis://127.0.0.1:6379/0",
        prefix: str = "plugit:session:",
        socket_timeout: float = 1.0,
        retry_interval: float = 1.0,
        cookie_name: str = "plugit_session",
        max_age: int = 14 * 24 * 3600,
        secure: bool = True,
        samesite: str = "Lax",
        domain: str | None = None,
        max_waiters: int = DEFAULT_MAX_WAITERS,
        required: bool = True,
    ) -> None:
        self._signer = TimestampSigner(secret_key, salt="plugit.session.redis")
        self.url = url
        self.prefix = prefix
        self.cookie_name = cookie_name
        self.max_age = max_age
        self.secure = secure
        self.samesite = samesite
        self.domain = domain or None
        self._pool = connection_pool(url, socket_timeout=socket_timeout)
        self._redis = redis.Redis(connection_pool=self._pool)
        guard = {
            "wait": socket_timeout,
            "max_waiters": max_waiters,
            "max_backoff": retry_interval,
            "is_outage": is_outage,
            "required": required,
            "logger": log,
        }
        label = f"the session store at {redact_url(url)}"
        self.reads = StoreGuard(
            "session_redis",
            label,
            probe=lambda: self._redis.ping(),
            consequence="visitors with a session get a 503 meanwhile",
            **guard,  # type: ignore[arg-type]
        )
        # Writes have a guard of their own: a Redis that refuses writes (out of memory) keeps
        # serving the sessions it holds.
        self.writes = StoreGuard(
            "session_redis_writes",
            label,
            consequence="requests that change a session get a 503 meanwhile",
            **guard,  # type: ignore[arg-type]
        )
        self.store_guards = (self.reads, self.writes)

    def _sid(self, request: Request) -> str | None:
        raw = request.cookies.get(self.cookie_name)
        if not raw:
            return None
        try:
            sid = self._signer.unsign(raw, max_age=self.max_age).decode("ascii")
        except (BadSignature, UnicodeError, ValueError):
            return None
        return sid if _SID.fullmatch(sid) else None

    def open(self, request: Request) -> Session:
        """The request's session; StoreUnavailable (a 503 page) when it has a session cookie
        but Redis cannot answer within ``socket_timeout``: the visitor is not shown logged out,
        and no form of theirs is refused as expired, for an outage."""
        sid = self._sid(request)
        if sid is None:
            return RedisSession()
        with self.reads.call():
            raw = self._redis.get(self.prefix + sid)
        if raw is None:  # expired, deleted, or Redis lost it
            return RedisSession()
        try:
            data = json.loads(raw)
        except ValueError:
            return RedisSession()
        if not isinstance(data, dict):
            return RedisSession()
        return RedisSession(data, new=False, sid=sid)

    def save(self, session: Session, request: Request, response: Response) -> None:
        """Store a changed session; StoreUnavailable when Redis refuses or does not answer (the
        proxy then answers 503 instead: a login is never reported before its session is
        stored).  A session store refusing writes (out of memory, read-only) does not stop
        the reads: the sessions already there keep working."""
        if not session.modified and not session.rotate:
            return
        old_sid: str | None = getattr(session, "sid", None)
        if not session:
            if old_sid is not None:
                self._run(lambda pipe: pipe.delete(self.prefix + old_sid))
            if self.cookie_name in request.cookies:
                response.delete_cookie(
                    self.cookie_name,
                    domain=self.domain,
                    path="/",
                    secure=self.secure,
                    httponly=True,
                    samesite=self.samesite,
                )
            session.sid = None  # type: ignore[attr-defined]
            return
        payload = json.dumps(dict(session), separators=(",", ":"))
        sid = old_sid
        if sid is None or session.rotate:
            sid = secrets.token_urlsafe(32)

        def write(pipe: Any) -> None:
            pipe.set(self.prefix + sid, payload, ex=self.max_age)
            if old_sid is not None and old_sid != sid:
                pipe.delete(self.prefix + old_sid)

        try:
            self._run(write)
        except StoreUnavailable:
            if not session.new or session.rotate:
                raise  # a login, or a change to a visitor's session: the request gets a 503
            # A first visit (a CSRF secret for its forms, nothing of the visitor's own): the
            # page is served without a session, as if sessions were not used.
            self.writes.warn("%s: a new session was not stored", self.writes.label)
            return
        session.sid = sid  # type: ignore[attr-defined]
        session.modified = False
        session.rotate = False
        response.set_cookie(
            self.cookie_name,
            self._signer.sign(sid).decode("ascii"),
            max_age=self.max_age,
            secure=self.secure,
            httponly=True,
            samesite=self.samesite,
            domain=self.domain,
            path="/",
        )

    def _run(self, commands: Any) -> None:
        """Run ``commands(pipeline)`` as one transaction, through the write guard."""
        with self.writes.call(), self._redis.pipeline(transaction=True) as pipe:
            commands(pipe)
            pipe.execute()

    def close(self) -> None:
        """Close the pooled connections (they reopen on demand)."""
        self._pool.disconnect()


@dataclass(frozen=True)
class RedisSessionSettings:
    """The ``[session_redis]`` table: Redis's keys and the cookie's (as ``[session_cookie]``)."""

    url: str = url_setting()
    prefix: str = prefix_setting("plugit:session:")
    socket_timeout: float = setting(1.0, above=0, help="seconds of a Redis call")
    retry_interval: float = setting(1.0, help="seconds between tries while Redis is down")
    cookie: CookieSettings = setting(default_factory=CookieSettings, flatten=True)
    guard: GuardSettings = setting(default_factory=GuardSettings, flatten=True)


def _factory(config: ProxyConfig, section: Mapping[str, Any]) -> RedisSessionBackend:
    settings = config.read(RedisSessionSettings, "session_redis", section)
    if redis is None:
        raise ConfigError(
            "session",
            "the redis session store needs the redis package: pip install 'plugit-wsgi[redis]'",
            config.source,
        )
    cookie = settings.cookie.options(config, "session_redis")
    try:
        return RedisSessionBackend(
            config.secret_key,
            url=settings.url,
            prefix=settings.prefix,
            socket_timeout=settings.socket_timeout,
            retry_interval=settings.retry_interval,
            **cookie,
            **settings.guard.options(required=True),
        )
    except ValueError as exc:  # redis-py could not parse the URL
        raise config.error("session_redis.url", str(exc)) from None


@hookimpl(trylast=True)
def plugit_register_backends(register: RegisterBackend) -> None:
    register("session", "redis", _factory)

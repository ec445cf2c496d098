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
    retry_interval = 2       # seconds between two attempts while Redis is down
    cookie_name = "plugit_session"
    max_age = 1209600        # seconds (14 days)
    secure = true            # default: true, false in dev mode
    samesite = "Lax"         # "Lax", "Strict" or "None" (None requires secure)
    domain = ""              # default: the host only

While Redis is unavailable a request's session is empty (the visitor is anonymous) and changes
are not saved; the cookie is left alone, so the session is back once Redis is (if Redis kept
it).  Each is logged as a warning, rate-limited.  See docs/redis.md.
"""

from __future__ import annotations

import json
import logging
import re
import secrets
from collections.abc import Mapping
from typing import Any

from itsdangerous import BadSignature, TimestampSigner
from werkzeug.wrappers import Request, Response

from plugit_backends.cache_redis import (
    RedisHealth,
    connection_pool,
    read_prefix,
    read_url,
    redact_url,
    redis,
)
from plugit_core.backends import Session
from plugit_core.config import ConfigError, ProxyConfig
from plugit_core.hookspecs import hookimpl

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
    """A :class:`plugit_core.backends.SessionBackend` keeping sessions in Redis."""

    def __init__(
        self,
        secret_key: str,
        *,
        url: str = "redis://127.0.0.1:6379/0",
        prefix: str = "plugit:session:",
        socket_timeout: float = 1.0,
        retry_interval: float = 2.0,
        cookie_name: str = "plugit_session",
        max_age: int = 14 * 24 * 3600,
        secure: bool = True,
        samesite: str = "Lax",
        domain: str | None = None,
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
        self.health = RedisHealth(
            f"the Redis session store at {redact_url(url)}", log, retry_interval=retry_interval
        )

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
        sid = self._sid(request)
        if sid is None:
            return RedisSession()
        if not self.health.should_try():
            self.health.warn("%s: sessions are empty meanwhile", self.health.what)
            return RedisSession(unavailable=True)
        try:
            raw = self._redis.get(self.prefix + sid)
        except redis.RedisError as error:
            self.health.failed(error, "sessions are empty and not saved meanwhile")
            return RedisSession(unavailable=True)
        self.health.succeeded()
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
        if not session.modified and not session.rotate:
            return
        if getattr(session, "unavailable", False):
            self.health.warn("%s: a changed session was not saved", self.health.what)
            return
        old_sid: str | None = getattr(session, "sid", None)
        if not session:
            if old_sid is not None and not self._run(
                lambda pipe: pipe.delete(self.prefix + old_sid)
            ):
                return
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

        if not self._run(write):
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

    def _run(self, commands: Any) -> bool:
        """Run ``commands(pipeline)`` as one transaction; False (logged) when Redis fails."""
        if not self.health.should_try():
            self.health.warn("%s: a changed session was not saved", self.health.what)
            return False
        try:
            with self._redis.pipeline(transaction=True) as pipe:
                commands(pipe)
                pipe.execute()
        except redis.RedisError as error:
            self.health.failed(error, "sessions are empty and not saved meanwhile")
            return False
        self.health.succeeded()
        return True

    def close(self) -> None:
        """Close the pooled connections (they reopen on demand)."""
        self._pool.disconnect()


def _factory(config: ProxyConfig, section: Mapping[str, Any]) -> RedisSessionBackend:
    reader = config.reader("session_redis", section)
    reader.known(
        {
            "url",
            "prefix",
            "socket_timeout",
            "retry_interval",
            "cookie_name",
            "max_age",
            "secure",
            "samesite",
            "domain",
        }
    )
    if redis is None:
        raise ConfigError(
            "session",
            "the redis session store needs the redis package: pip install 'plugit[redis]'",
            config.source,
        )
    url = read_url(reader)
    max_age = reader.number("max_age", 14 * 24 * 3600, minimum=1, integer=True)
    timeouts = {
        "socket_timeout": reader.number("socket_timeout", 1.0, above=0),
        "retry_interval": reader.number("retry_interval", 2.0, minimum=0),
    }
    samesite = reader.choice("samesite", "Lax", ("Lax", "Strict", "None"))
    secure = reader.bool("secure", not config.dev_mode)
    if samesite == "None" and not secure:
        raise reader.error("samesite", "SameSite=None requires secure = true")
    cookie_name = reader.str("cookie_name", "plugit_session") or ""
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", cookie_name):
        raise reader.error("cookie_name", f"expected a cookie name, got {cookie_name!r}")
    domain = reader.str("domain") or None
    prefix = read_prefix(reader, "plugit:session:")
    try:
        return RedisSessionBackend(
            config.secret_key,
            url=url,
            prefix=prefix,
            cookie_name=cookie_name,
            max_age=max_age,
            secure=secure,
            samesite=samesite,
            domain=domain,
            **timeouts,
        )
    except ValueError as exc:  # redis-py could not parse the URL
        raise reader.error("url", str(exc)) from None


@hookimpl(trylast=True)
def plugit_register_backends(register: Any) -> None:
    register("session", "redis", _factory)

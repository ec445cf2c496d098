"""The default session backend: the whole session in a signed cookie (itsdangerous).

The cookie is signed (not encrypted) with the proxy's ``secret_key``: users can read but not change
it, so keep secrets out of sessions.  It is HttpOnly, SameSite=Lax, Secure outside dev mode, and
expires after ``max_age`` seconds.

Configuration (all optional)::

    session = "cookie"

    [session_cookie]
    cookie_name = "plugit_session"
    max_age = 1209600        # seconds (14 days)
    secure = true            # default: true, false in dev mode
    samesite = "Lax"         # "Lax", "Strict" or "None" (None requires secure)
    domain = ""              # default: the host only
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from itsdangerous import BadSignature, URLSafeTimedSerializer
from werkzeug.wrappers import Request, Response

from plugit_core.backends import RegisterBackend, Session
from plugit_core.config import ProxyConfig
from plugit_core.hookspecs import hookimpl
from plugit_core.settings import Section, setting

__all__ = ["CookieSessionBackend"]

MAX_COOKIE_BYTES = 4000  # browsers drop cookies over 4096 bytes


class CookieSessionBackend:
    """A :class:`plugit_core.kinds.session.SessionBackend` keeping the session in a signed
    cookie."""

    def __init__(
        self,
        secret_key: str,
        *,
        cookie_name: str = "plugit_session",
        max_age: int = 14 * 24 * 3600,
        secure: bool = True,
        samesite: str = "Lax",
        domain: str | None = None,
    ) -> None:
        self._serializer = URLSafeTimedSerializer(secret_key, salt="plugit.session")
        self.cookie_name = cookie_name
        self.max_age = max_age
        self.secure = secure
        self.samesite = samesite
        self.domain = domain or None

    def open(self, request: Request) -> Session:
        raw = request.cookies.get(self.cookie_name)
        if not raw:
            return Session()
        try:
            data = self._serializer.loads(raw, max_age=self.max_age)
        except (BadSignature, ValueError, TypeError):
            return Session()
        if not isinstance(data, dict):
            return Session()
        return Session(data, new=False)

    def save(self, session: Session, request: Request, response: Response) -> None:
        if not session.modified and not session.rotate:
            return
        if not session:
            if not session.new:
                response.delete_cookie(self.cookie_name, domain=self.domain, path="/")
            return
        if session.rotate or "_sid" not in session:
            dict.__setitem__(session, "_sid", secrets.token_urlsafe(16))
        value = self._serializer.dumps(dict(session))
        if len(value) > MAX_COOKIE_BYTES:
            raise ValueError(
                f"the session is {len(value)} bytes, over the {MAX_COOKIE_BYTES} "
                "a cookie can hold; "
                "use a server-side session backend"
            )
        response.set_cookie(
            self.cookie_name,
            value,
            max_age=self.max_age,
            secure=self.secure,
            httponly=True,
            samesite=self.samesite,
            domain=self.domain,
            path="/",
        )


def _cookie_name(value: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", value):
        raise ValueError(f"expected a cookie name, got {value!r}")
    return value


@dataclass(frozen=True)
class CookieSettings:
    """The session cookie's keys, of ``[session_cookie]`` and of other session backends' tables
    (flattened into them)."""

    cookie_name: str = setting("plugit_session", check=_cookie_name, help="the cookie's name")
    max_age: int = setting(14 * 24 * 3600, minimum=1, help="seconds a session lives")
    secure: bool | None = setting(None, help="HTTPS only (default: true outside dev mode)")
    samesite: str = setting("Lax", choices=("Lax", "Strict", "None"), help="its SameSite")
    domain: str | None = setting(None, blank_is_missing=True, help="its Domain")

    def options(self, config: ProxyConfig, where: str) -> dict[str, Any]:
        """The backend's keyword arguments; refuses SameSite=None without secure."""
        secure = not config.dev_mode if self.secure is None else self.secure
        if self.samesite == "None" and not secure:
            raise Section(where, config.source).error(
                "samesite", "SameSite=None requires secure = true"
            )
        return {
            "cookie_name": self.cookie_name,
            "max_age": self.max_age,
            "secure": secure,
            "samesite": self.samesite,
            "domain": self.domain,
        }


def _factory(config: ProxyConfig, section: Mapping[str, Any]) -> CookieSessionBackend:
    settings = config.read(CookieSettings, "session_cookie", section)
    return CookieSessionBackend(config.secret_key, **settings.options(config, "session_cookie"))


@hookimpl(trylast=True)
def plugit_register_backends(register: RegisterBackend) -> None:
    register("session", "cookie", _factory)

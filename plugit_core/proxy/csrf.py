"""CSRF tokens and the per-response values filled into cached pages.

One random secret per session; each *scope* (a mount's name, or ``""`` for the site's own forms:
login, logout, organisation and dev-mode switches) has its own token, an HMAC of that secret, so
a token read in one service's page is refused by every other mount and by the site.

Pages and layouts are cached with random per-process markers where the per-response values go
(the site's token, the page's token for its scripts, the CSP nonce, a host app's logout fields);
:meth:`CsrfTokens.fill` puts them in after every cache, so no cached copy ever holds anyone's
token.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import logging
import secrets
from collections.abc import Callable
from typing import TYPE_CHECKING

from markupsafe import escape

from ..stores import guards_of
from .routes import LogoutFields, SiteLinks
from .templating import CSRF_PLACEHOLDER

if TYPE_CHECKING:
    from ..backends import SessionBackend
    from .app import ProxyRequest

__all__ = [
    "CSRF_FIELD_NAME",
    "SITE_CSRF_FIELD_NAME",
    "UNSAFE_METHODS",
    "CsrfTokens",
    "LogoutFields",
    "Markers",
    "SiteLinks",
]

log = logging.getLogger("plugit.proxy")

UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})  # need the token
CSRF_FIELD_NAME = "csrfmiddlewaretoken"  # Django's name, which services written for it use
SITE_CSRF_FIELD_NAME = "plugit_site_csrf"  # the layout's own forms (see CsrfTokens.token)


class Markers:
    """Random per-process markers planted in cached layouts and pages, filled in per response.

    No service can guess and plant them.  ``content``, ``menu`` and ``path`` are filled by the
    layout; the others by :meth:`CsrfTokens.fill`.
    """

    def __init__(self) -> None:
        def mark(name: str) -> str:
            return f"\x00plugit-{name}-{secrets.token_hex(8)}\x00"

        self.content, self.menu, self.path = mark("c"), mark("m"), mark("p")
        self.logout_fields, self.site_token, self.nonce = mark("l"), mark("s"), mark("n")
        self.page_token = mark("t")  # the token of the page's scope, for its scripts


@functools.lru_cache(maxsize=4096)
def _derived_token(secret: str, scope: str) -> str:
    """The CSRF token of ``scope`` for a session's ``secret`` (a page asks for the same one
    several times: its forms, the csrftoken cookie, the check of a post)."""
    digest = hmac.new(secret.encode(), b"plugit-csrf:" + scope.encode(), hashlib.sha256)
    return base64.urlsafe_b64encode(digest.digest()).decode().rstrip("=")


class CsrfTokens:
    """The session's CSRF tokens, their check, and the filling of per-response markers."""

    def __init__(self, sessions: Callable[[], SessionBackend], links: SiteLinks) -> None:
        self._sessions = sessions  # the proxy's session backend (a plugin may wrap it)
        self.links = links
        self.marks = Markers()

    def token(self, request: ProxyRequest, scope: str = "") -> str:
        """The session's CSRF token for ``scope`` (its secret is made on first use)."""
        secret = request.session.get("_csrf")
        if not isinstance(secret, str) or len(secret) < 32:
            secret = secrets.token_urlsafe(32)
            request.session["_csrf"] = secret
        return _derived_token(secret, scope)

    def valid(self, request: ProxyRequest, scope: str = "") -> bool:
        """Whether an unsafe request carries the token of ``scope``, in the ``X-CSRFToken``
        header or the ``csrfmiddlewaretoken`` form field (the layout's own forms:
        ``plugit_site_csrf``)."""
        if not isinstance(request.session.get("_csrf"), str):
            self._check_session_stored(request)
            return False
        sent = request.headers.get("X-CSRFToken") or request.headers.get("X-CSRF-Token")
        if not sent and request.mimetype in (
            "application/x-www-form-urlencoded",
            "multipart/form-data",
        ):
            sent = request.form.get(CSRF_FIELD_NAME) or request.form.get(SITE_CSRF_FIELD_NAME)
        expected = self.token(request, scope)
        return bool(sent) and hmac.compare_digest(str(sent).encode(), expected.encode())

    def _check_session_stored(self, request: ProxyRequest) -> None:
        """A form sent without a stored session while the session store is down (Redis out of
        memory): the form was served with a session that could not be stored, so its token
        cannot match.  The answer is the outage (a 503 naming the store), not "the form has
        expired", which a reload would not cure."""
        if not getattr(request.session, "new", False):
            return
        for guard in guards_of(self._sessions()):
            if guard.down:
                raise guard.unavailable("the session of this form could not be stored")

    def fill(self, request: ProxyRequest, html: str, scope: str = "") -> str:
        """Fill in what a page holds per response: the CSRF token of ``scope`` where a service's
        HTML has the placeholder, the site's token in the site's own forms, the CSP nonce, and
        the host app's logout fields (``logout_fields``)."""
        marks = self.marks
        if self.links.logout_fields is not None and marks.logout_fields in html:
            html = html.replace(marks.logout_fields, self._logout_fields_html(request))
        if marks.site_token in html:
            html = html.replace(marks.site_token, self.token(request))
        if marks.nonce in html:
            html = html.replace(marks.nonce, request.csp_nonce)
        if CSRF_PLACEHOLDER in html:
            html = html.replace(CSRF_PLACEHOLDER, self.token(request, scope))
        if marks.page_token in html:
            # The page's token for its scripts: only when the page has given the session a
            # CSRF secret (a form), so a page without forms makes no session for a visitor.
            has_secret = isinstance(request.session.get("_csrf"), str)
            html = html.replace(marks.page_token, self.token(request, scope) if has_secret else "")
        return html

    def _logout_fields_html(self, request: ProxyRequest) -> str:
        """The hidden inputs of the host app's logout form (``logout_fields``) for this request."""
        assert self.links.logout_fields is not None
        try:
            fields = self.links.logout_fields(request.environ) or {}
        except Exception:
            log.exception("logout_fields failed: the logout form goes without them")
            fields = {}
        return "".join(
            f'<input type="hidden" name="{escape(name)}" value="{escape(value)}">'
            for name, value in fields.items()
        )

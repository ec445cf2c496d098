"""What the proxy does with a service's reply before rendering (PROTOCOL.md 5.12, 5.13, 5.21):
status mapping, redirects (checked), files, session values, forwarded headers, raw answers, and
the service's media files."""

from __future__ import annotations

import logging
import re
import threading
from typing import TYPE_CHECKING, Any

from werkzeug.wrappers import Response

from .. import protocol
from ..config import ServiceMount
from .containment import RAW_POLICY
from .upstream import ServiceClient, ServiceError, ServiceReply, UpstreamRequest

if TYPE_CHECKING:
    from .app import ProxyRequest
    from .page import PageRequest

__all__ = [
    "MAX_SESSION_KEYS",
    "MAX_SESSION_VALUE",
    "ServiceReplies",
    "normal_media_path",
    "redirect_response",
]

log = logging.getLogger("plugit.proxy")

MAX_SESSION_KEYS = 32
MAX_SESSION_VALUE = 1024
_SESSION_KEY = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_SESSION_WRITES = threading.Lock()
_PASS_STATUS_HEADERS = ("WWW-Authenticate", "Retry-After", "ETag", "Allow")


class ServiceReplies:
    """The reply of a service's action, up to the data to render (or the answer itself)."""

    def special_reply(self, page: PageRequest, reply: ServiceReply) -> Response | None:
        """Everything but ordinary data (5.12, 5.13), or None to go on rendering.

        A streamed reply (a file) is closed here unless the answer streams it on to the browser.
        """
        try:
            response = self._special_reply(page, reply)
        except BaseException:
            if reply.close is not None:
                reply.close()
            raise
        if reply.close is not None and (
            response is None or not getattr(response, "streams_reply", False)
        ):
            reply.close()
        return response

    def _special_reply(self, page: PageRequest, reply: ServiceReply) -> Response | None:
        request = page.request
        self.store_session(page, reply)
        page.forwarded_headers = [
            (name, reply.headers[name])
            for name in protocol.FORWARDED_REPLY_HEADERS
            if name in reply.headers
        ]
        status = reply.status
        if request.method == "OPTIONS":
            return self.forward(page, Response(b"", status=status if status < 500 else 502))
        if status == 304:
            return self.forward(page, Response(status=304))
        if status >= 500:
            raise ServiceError(page.mount.name, "error", f"{page.path} answered {status}")
        if 400 <= status < 500:
            response = page.proxy.error_page(
                request, status, reason="service_status", mount=page.mount
            )
            for name in _PASS_STATUS_HEADERS:
                if name in reply.headers:
                    response.headers[name] = reply.headers[name]
            return response
        if status not in (200, 201, 202, 203, 204):
            raise ServiceError(page.mount.name, "bad_reply", f"{page.path} answered {status}")
        target = reply.headers.get(protocol.H_REDIRECT)
        if target is not None:
            no_prefix = reply.headers.get(protocol.H_REDIRECT_NOPREFIX) == "True"
            return self.forward(page, self.redirect(page, target, no_prefix))
        if reply.headers.get(protocol.H_FILE) is not None:
            return self.forward(page, self.file(reply))
        return None

    def redirect(self, page: PageRequest, target: str, no_prefix: bool) -> Response:
        """A redirect asked by the service, checked (weakness W13)."""
        if any(c in target for c in "\r\n\x00"):
            raise ServiceError(
                page.mount.name, "bad_reply", "redirect target contains control characters"
            )
        if not no_prefix:
            return redirect_response(
                page.proxy.site_url(page.request, page.mount.mount) + target.lstrip("/"), 302
            )
        if page.proxy.is_local_path(target) or page.proxy.redirect_allowed(page.request, target):
            return redirect_response(page.proxy.site_url(page.request, target), 302)
        raise ServiceError(
            page.mount.name,
            "bad_reply",
            f"redirect to a host that is not allowed: {target[:100]!r}",
        )

    def file(self, reply: ServiceReply) -> Response:
        response = Response(
            reply.stream if reply.stream is not None else reply.body,
            mimetype=None,
            content_type=reply.headers.get("Content-Type", "application/octet-stream"),
            direct_passthrough=reply.stream is not None,
        )
        if reply.close is not None:
            response.call_on_close(reply.close)  # also when the body is never read (HEAD)
            response.streams_reply = True  # type: ignore[attr-defined]
        disposition = reply.headers.get("Content-Disposition")
        if disposition:
            response.headers["Content-Disposition"] = disposition
        length = reply.headers.get("Content-Length")
        if length and length.isdigit():
            response.headers["Content-Length"] = length
        response.headers["X-Content-Type-Options"] = "nosniff"
        return response

    def store_session(self, page: PageRequest, reply: ServiceReply) -> None:
        """``EbuIo-PlugIt-SetSession-<key>`` headers into this service's own session values."""
        updates = {
            name[len(protocol.SET_SESSION_PREFIX) :].lower(): value
            for name, value in reply.headers.items()
            if name.lower().startswith(protocol.SET_SESSION_PREFIX)
        }
        if not updates:
            return
        with _SESSION_WRITES:  # the fragments of one page store from several threads
            self._store_session(page, updates)

    def _store_session(self, page: PageRequest, updates: dict[str, str]) -> None:
        session = page.request.session
        stored = dict(session.get("svc") or {})
        mine = dict(stored.get(page.mount.name) or {})
        for key, value in updates.items():
            if not _SESSION_KEY.match(key) or len(value) > MAX_SESSION_VALUE:
                log.warning(
                    "%s: session value %r refused (name or size)", page.mount.name, key[:64]
                )
                continue
            if key not in mine and len(mine) >= MAX_SESSION_KEYS:
                log.warning(
                    "%s: more than %d session values, %r dropped",
                    page.mount.name,
                    MAX_SESSION_KEYS,
                    key,
                )
                continue
            mine[key] = value
        stored[page.mount.name] = mine
        session["svc"] = stored

    def json(self, page: PageRequest, reply: ServiceReply) -> Any:
        if reply.status == 204:
            return {}
        try:
            return reply.json()
        except ValueError as exc:
            raise ServiceError(page.mount.name, "bad_reply", f"{page.path}: {exc}") from None

    def forward(self, page: PageRequest, response: Response) -> Response:
        """What the service sends raw (JSON, XML, files, redirects), with its forwarded
        headers; a sandboxed service's raw replies are sandboxed documents."""
        for name, value in page.forwarded_headers:
            response.headers[name] = value
        if page.mount.trust == "sandboxed":
            response.headers["Content-Security-Policy"] = RAW_POLICY
        if response.mimetype in ("application/json", "application/xml"):
            response.headers["X-Content-Type-Options"] = "nosniff"
        return response

    def media(
        self, request: ProxyRequest, mount: ServiceMount, client: ServiceClient, path: str
    ) -> Response:
        """A service's static file (5.21), with a public cache lifetime of at most an hour."""
        if request.method not in ("GET", "HEAD"):
            return Response(b"", status=405, headers={"Allow": "GET, HEAD"})
        normal = normal_media_path(path)
        if normal is None:
            log.warning(
                "media %s: refused the path %r (it climbs or holds control characters)",
                mount.name,
                path[:200],
            )
            return Response(b"Not Found", status=404, mimetype="text/plain")
        try:
            reply = client.send(UpstreamRequest(request.method, "media/" + normal), stream=True)
        except ServiceError as error:
            log.warning("media %s/%s: %s", mount.name, path, error.message)
            return request.proxy.error_page(
                request, error.status, reason=error.kind, detail=error.message, mount=mount
            )
        if reply.status != 200:
            if reply.close:
                reply.close()
            return Response(b"Not Found", status=404, mimetype="text/plain")
        response = self.file(reply)
        response.headers.pop("Content-Disposition", None)
        if mount.trust == "sandboxed":
            response.headers["Content-Security-Policy"] = RAW_POLICY
        max_age = 3600
        upstream_control = reply.headers.get("Cache-Control")
        if upstream_control:
            from werkzeug.http import parse_cache_control_header

            upstream_age = parse_cache_control_header(upstream_control).max_age
            if upstream_age is not None:
                max_age = min(max_age, upstream_age)
        response.headers["Cache-Control"] = f"public, max-age={max_age}"
        return response


def normal_media_path(path: str) -> str | None:
    """``path`` (below a service's ``media/``) with ``.`` and ``..`` segments resolved, or None
    when it climbs out of ``media/`` or holds a backslash or a control character (which some
    servers read as separators)."""
    if any(ord(c) < 0x20 or c in "\\\x7f" for c in path):
        return None
    parts: list[str] = []
    for segment in path.split("/"):
        if segment.split(";", 1)[0] in (".", "..") and ";" in segment:
            return None  # "..;x": a climb for servers that strip path parameters (Tomcat)
        if segment in ("", "."):
            continue
        if segment == "..":
            if not parts:
                return None
            parts.pop()
        else:
            parts.append(segment)
    return "/".join(parts) + ("/" if path.endswith("/") and parts else "")


def redirect_response(location: str, status: int) -> Response:
    response = Response(b"", status=status)
    response.headers["Location"] = location
    return response

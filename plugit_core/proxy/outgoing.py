"""The request the proxy sends to a service's action (PROTOCOL.md 2.11 to 2.13, 5.6).

The client's parameters and form minus every ``ebuio_*`` name and the CSRF field, the user's
properties the action asked for (within ``user_data``), the organisation, the ``X-Plugit-*``
information headers, the service's own session values, the deadline and the trace context;
then what plugins add (``plugit_upstream_request``), before the request is signed.
"""

from __future__ import annotations

import logging
import random
import re
import time
from typing import TYPE_CHECKING, Any

from werkzeug.http import dump_cookie

from .. import protocol
from ..config import ProxyConfig
from .bodies import form_problem, unreadable_framing
from .csrf import CSRF_FIELD_NAME, UNSAFE_METHODS
from .page import RefusedError
from .upstream import UpstreamRequest

if TYPE_CHECKING:
    from .hooks import Hooks
    from .page import PageRequest

__all__ = ["UpstreamBuilder", "client_items"]

log = logging.getLogger("plugit.proxy")


class UpstreamBuilder:
    """Builds the upstream request of a page."""

    def __init__(self, config: ProxyConfig, hooks: Hooks) -> None:
        self.config = config
        self.hooks = hooks

    def build(self, page: PageRequest, path: str) -> UpstreamRequest:
        """The request for the service's action: client data minus ``ebuio_*``, plus ours."""
        request = page.request
        upstream = UpstreamRequest(request.method, path)
        upstream.params = client_items(request.args)
        if request.method in UNSAFE_METHODS:
            # The body is bounded at the entry (bodies.bound_body): reading past the limit raises
            # RequestEntityTooLarge (a 413 page), chunked or not, so no cut body is forwarded.
            if unreadable_framing(request):
                raise RefusedError(
                    411, "length_required", "This upload cannot be read: send it with its length."
                )
            if request.mimetype in ("application/x-www-form-urlencoded", "multipart/form-data"):
                if form_problem(request) is not None:  # werkzeug read it as an empty form
                    raise RefusedError(400, "bad_form", "The form sent could not be read.")
                upstream.form = [
                    (k, v) for k, v in client_items(request.form) if k != CSRF_FIELD_NAME
                ]
                upstream.files = [
                    (
                        name,
                        (
                            storage.filename or name,
                            storage.stream,
                            storage.mimetype or "application/octet-stream",
                        ),
                    )
                    for name, storage in request.files.items(multi=True)
                    if not name.lower().startswith("ebuio_")
                ]
            elif request.content_length or request.headers.get("Transfer-Encoding"):
                upstream.body = request.get_data(cache=False)
                upstream.content_type = request.content_type
        ours: list[tuple[str, str]] = []
        meta = page.meta
        service_user = page.service_user
        if meta is not None:
            allowed = set(self.config.user_data)
            for prop in meta.user_info:
                if prop not in allowed:
                    log.warning(
                        "%s asked for user property %r, which is not in user_data",
                        page.mount.name,
                        prop,
                    )
                    continue
                ours.extend((f"ebuio_u_{prop}", v) for v in _wire_values(service_user.get(prop)))
        if page.orga is not None:
            ours.append(("ebuio_orgapk", str(page.orga.pk)))
        if upstream.form is not None and request.method == "POST":
            upstream.form.extend(ours)
        else:
            upstream.params.extend(ours)
        upstream.headers.update(self.plugit_headers(page))
        # when this proxy stops waiting: the service and its callback API calls stop there too
        upstream.headers[protocol.H_DEADLINE] = protocol.format_deadline(
            time.time() + page.mount.timeout
        )
        upstream.headers["traceparent"] = _traceparent(request.headers.get("traceparent"))
        tracestate = request.headers.get("tracestate")
        if tracestate and len(tracestate) <= 512 and "traceparent" in request.headers:
            upstream.headers["tracestate"] = tracestate
        self.hooks.upstream_request(page, upstream)
        return upstream

    def plugit_headers(self, page: PageRequest) -> dict[str, str]:
        """``X-Plugit-*`` information headers (2.13), dash-only names, UTF-8 values."""
        request = page.request
        headers: dict[str, str] = {}
        address = page.proxy.client_address(request)
        if address:
            headers["X-Plugit-Remote-Addr"] = address
        for source in (
            "If-None-Match",
            "Origin",
            "Access-Control-Request-Method",
            "Access-Control-Request-Headers",
        ):
            value = request.headers.get(source)
            if value is not None:
                headers[f"X-Plugit-{source}"] = value
        if page.mount.proxy_mode:
            service_user = page.service_user
            if service_user.is_authenticated:
                for prop in self.config.user_data:
                    for value in _wire_values(service_user.get(prop))[:1]:
                        headers[f"X-Plugit-User-{prop.replace('_', '-')}"] = _header_text(value)
            if page.orga is not None:
                headers["X-Plugit-Orga-Pk"] = str(page.orga.pk)
                headers["X-Plugit-Orga-Name"] = _header_text(page.orga.name)
                headers["X-Plugit-Orga-Codops"] = _header_text(page.orga.codops)
            headers["X-Plugit-Base-Url"] = page.proxy.site_url(request, page.mount.mount)
        values = self.service_session(page)
        if values:
            for key, value in values.items():
                headers[f"X-Plugitsession-{key}"] = _header_text(value)
            headers["Cookie"] = "; ".join(
                dump_cookie(key, str(value)).split(";", 1)[0] for key, value in values.items()
            )
        return headers

    def service_session(self, page: PageRequest) -> dict[str, str]:
        stored = page.request.session.get("svc", {})
        values = stored.get(page.mount.name) if isinstance(stored, dict) else None
        return values if isinstance(values, dict) else {}


_random_bits = random.getrandbits  # the trace ids need no secrecy: the process's PRNG
_TRACEPARENT = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")


def _traceparent(incoming: str | None) -> str:
    """The W3C ``traceparent`` for the call: the client's trace continued with a new span id, or
    a new trace when the client sent none (or an invalid one)."""
    # Trace ids need to be unique, not secret: the process's PRNG (reseeded in each forked
    # worker) costs no system call, where a secrets.token_hex per request showed in profiles.
    span = f"{_random_bits(64) or 1:016x}"
    if incoming:
        match = _TRACEPARENT.match(incoming.strip())
        if match and set(match.group(1)) != {"0"} and set(match.group(2)) != {"0"}:
            return f"00-{match.group(1)}-{span}-{match.group(3)}"
    return f"00-{_random_bits(128) or 1:032x}-{span}-01"


def client_items(values: Any) -> list[tuple[str, str]]:
    """Client parameters minus every ``ebuio_*`` name (the proxy's own, weakness W1)."""
    return [(k, v) for k, v in values.items(multi=True) if not k.lower().startswith("ebuio_")]


def _wire_values(value: Any) -> list[str]:
    """A user property as parameter values: None omitted, booleans True/False, lists repeated."""
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value if v is not None]
    return [str(value)]


def _header_text(value: Any) -> str:
    """A header value: UTF-8 bytes carried as latin-1 text, without line breaks or NULs (which
    no transport may send)."""
    text = str(value).replace("\r", " ").replace("\n", " ").replace("\x00", " ")
    return text.encode("utf-8").decode("latin-1")

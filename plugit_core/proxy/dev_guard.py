"""Dev mode answers only the developer's own machine (and the networks the configuration names).

In dev mode anyone can switch to a simulated administrator, so a dev-mode proxy must not be
reachable from elsewhere, whatever WSGI server runs it (``plugit proxy`` refuses to listen on a
non-loopback address, gunicorn or uwsgi do not know to).  :func:`dev_guard` gives the check that
:class:`~plugit_core.proxy.app.ProxyApp` and :class:`~plugit_core.proxy.app.PlugItMiddleware` run
first for every request: the WSGI peer (``REMOTE_ADDR``) must be a loopback address or lie in
``dev_allowed_clients``.  ``X-Forwarded-For`` is never read: the client writes it.  A request
whose peer is unknown (no ``REMOTE_ADDR``, a Unix socket) is refused too.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from ..networks import NetworkList, address_in_networks, parse_networks

if TYPE_CHECKING:
    from ..config import ProxyConfig

__all__ = ["LOOPBACK", "DevGuard", "dev_guard"]

log = logging.getLogger("plugit.proxy")

LOOPBACK = parse_networks(["127.0.0.0/8", "::1/128"])  # IPv4-mapped ::ffff:127.x count too


class DevGuard:
    """Who may use a dev-mode proxy: loopback clients and ``allowed`` (CIDR strings)."""

    def __init__(self, allowed: Iterable[str] = ()) -> None:
        self.allowed = NetworkList(tuple(allowed), setting="dev_allowed_clients")

    def describe(self) -> str:
        """Who may connect, in words (for the start-up warning)."""
        extra = ", ".join(str(net) for net in self.allowed.networks)
        return "loopback clients" + (f" and {extra}" if extra else "")

    def allows(self, environ: dict[str, Any]) -> bool:
        """Whether the request's WSGI peer may be served."""
        peer = environ.get("REMOTE_ADDR")
        if not isinstance(peer, str) or not peer:
            return False
        return address_in_networks(peer, LOOPBACK) or peer in self.allowed

    def refuse(
        self, environ: dict[str, Any], start_response: Callable[..., Any]
    ) -> Iterable[bytes]:
        """The 403 for a client that may not use the dev-mode proxy: one plain-text line."""
        peer = environ.get("REMOTE_ADDR") or "unknown"
        log.warning(
            "dev mode: refused a request from %s (not loopback nor dev_allowed_clients)", peer
        )
        body = (
            "403 Forbidden: this PlugIt proxy runs in dev mode, where anyone can become "
            "administrator, so it answers only loopback clients and dev_allowed_clients; "
            "your address is neither.\n"
        ).encode("ascii")
        start_response(
            "403 Forbidden",
            [
                ("Content-Type", "text/plain; charset=utf-8"),
                ("Content-Length", str(len(body))),
                ("Cache-Control", "no-store"),
                ("X-Content-Type-Options", "nosniff"),
            ],
        )
        return [body]


def dev_guard(config: ProxyConfig) -> DevGuard | None:
    """The guard for a proxy built from ``config``: None outside dev mode.  In dev mode, logs
    (once, at start-up) a warning saying who may connect."""
    if not config.dev_mode:
        return None
    guard = DevGuard(config.dev_allowed_clients)
    log.warning(
        "dev mode is on: anyone who reaches this proxy can become its administrator; "
        "it answers only %s (dev_allowed_clients), other clients get 403",
        guard.describe(),
    )
    return guard

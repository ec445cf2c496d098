"""The ``mail`` backend kind: :class:`MailBackend`, what the proxy asks of the backend that
sends the services' mail, and :data:`MailFactory`, what a plugin registers to offer one.

The proxy needs little of it: the callback API's ``mail/`` endpoint, the queue whose backlog
``/_plugit/ready`` reports, and closing.  Sending, retrying and replies are the backend's own
business; its durable state is a :class:`~plugit_core.kinds.mailqueue.MailQueue` (the mail
queue kind, with its own conformance suite).  The implementation is
``plugit_backends.mail_smtp``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

from ..mailqueue import MailQueue

if TYPE_CHECKING:
    from werkzeug.wrappers import Response

    from ...config import ProxyConfig
    from ...proxy.api import ApiCall

__all__ = ["MailBackend", "MailFactory"]


class MailBackend(Protocol):
    """Sends the services' mail.

    Optional, read when present: ``smtp_status()`` (the SMTP server's state as last seen, a
    dict with ``ready`` and ``required``; it must never wait for the server) for
    ``/_plugit/ready``, and ``gauges()`` for ``/_plugit/metrics``.
    """

    store: MailQueue
    """The queue of the mails accepted and not yet sent."""

    def api_send(self, call: ApiCall) -> Response:
        """Answer the callback API's ``mail/`` request of one service: accept the mail (queued
        durably before the answer) or refuse it with the API's error."""
        ...

    def close(self) -> None:
        """Stop sending and release the queue (the proxy is closing)."""
        ...


#: ``factory(proxy_config, section)``: builds the backend from its own table (``[mail_<name>]``).
MailFactory = Callable[["ProxyConfig", Mapping[str, Any]], MailBackend]

"""What the page pipeline knows about one page (:class:`PageRequest`, what page hooks receive),
and the small pieces its stages share."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from markupsafe import escape

from ..users import SIMULATED_MODES, Orga, PlugItUser, ServiceUser

if TYPE_CHECKING:
    from ..config import ServiceMount
    from ..protocol import ActionMeta
    from .app import ProxyRequest
    from .context import PluginContext
    from .upstream import ServiceClient

__all__ = ["PageRequest", "RefusedError", "notice"]


@dataclass
class PageRequest:
    """Everything the pipeline knows about the page being served; what hooks receive."""

    request: ProxyRequest
    proxy: PluginContext  # what plugins may use of the proxy
    mount: ServiceMount
    client: ServiceClient
    path: str
    user: PlugItUser
    orga: Orga | None = None
    orgas: tuple[Orga, ...] = ()
    meta: ActionMeta | None = None
    cache_key: str | None = None
    forwarded_headers: list[tuple[str, str]] = field(default_factory=list)
    menu_only: bool = False  # ``<mount>ebuio_menu/<path>``: answer the rendered menu alone
    stale: dict[str, Any] | None = None  # an expired page-cache entry, shown if the service fails
    variant: str = ""  # the service variant serving this request ("" for the main build)
    fragment: bool = False  # rendered as a fragment of another page (proxy/fragments.py)

    @property
    def service_user(self) -> ServiceUser:
        return self.user.for_service(self.mount.name, self.orga)

    @property
    def dev_user_mode(self) -> str | None:
        if not self.proxy.config.dev_mode:
            return None
        mode = self.request.session.get("dev_user_mode", "ano")
        return mode if mode in SIMULATED_MODES else "ano"


class RefusedError(Exception):
    """Stops the pipeline with a themed error page."""

    def __init__(
        self,
        status: int,
        reason: str | None = None,
        message: str | None = None,
        detail: str | None = None,
    ) -> None:
        super().__init__(reason or str(status))
        self.status = status
        self.reason = reason
        self.message = message
        self.detail = detail  # what was tried, shown in dev mode after the reason


def notice(mount: ServiceMount, *, stale: bool) -> str:
    what = "This page may be out of date: " if stale else ""
    text = escape(f"{what}{mount.title} is not answering right now.")
    return f'<div id="plugit-notice" class="alert alert-warning" role="status">{text}</div>'

"""What an action may return besides plain JSON data (PROTOCOL.md 2.9 and 4.5)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

__all__ = ["PlugItRedirect", "PlugItSendFile", "PlugItSetSession"]


class PlugItRedirect:
    """Ask the proxy to redirect the browser to ``url``.

    The URL is relative to the service's public prefix unless ``no_prefix`` is true; the proxy only
    follows a ``no_prefix`` target on its own site or on a host it allows.
    """

    def __init__(self, url: str, no_prefix: bool = False) -> None:
        self.url = url
        self.no_prefix = bool(no_prefix)

    def __repr__(self) -> str:
        return f"PlugItRedirect({self.url!r}, no_prefix={self.no_prefix})"


class PlugItSendFile:
    """Send a file to the browser through the proxy.

    ``filename`` is a path (relative to the working directory, as in the original) or an open
    binary file object.
    """

    def __init__(
        self,
        filename: str | os.PathLike[str] | Any,
        mimetype: str,
        as_attachment: bool = False,
        attachment_filename: str = "",
    ) -> None:
        self.filename = filename
        self.mimetype = mimetype
        self.as_attachment = bool(as_attachment)
        self.attachment_filename = attachment_filename

    def __repr__(self) -> str:
        return f"PlugItSendFile({self.filename!r}, {self.mimetype!r})"


class PlugItSetSession:
    """Return ``base`` and store ``things_to_set`` in the user's proxy session for this service."""

    def __init__(self, base: Any, things_to_set: Mapping[str, Any] | None = None) -> None:
        self.base = base
        self.things_to_set = dict(things_to_set or {})

    def __repr__(self) -> str:
        return f"PlugItSetSession({self.base!r}, {self.things_to_set!r})"

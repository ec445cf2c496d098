"""The PlugIt protocol, version 1, as plain data and functions (no I/O).

Names of endpoints, headers and meta keys; parsing and validation of an action's meta; the access
rules in their fixed order; the page-cache key.  Both the proxy and the service library use this
module, and tests call it without any server.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from .networks import Network, address_in_networks, parse_networks

__all__ = [
    "ACCESS_RULES",
    "PROTOCOL_NAME",
    "PROTOCOL_VERSION",
    "ActionMeta",
    "ProtocolError",
    "UserLike",
    "access_denied_reason",
    "page_cache_key",
    "parse_meta",
]

PROTOCOL_NAME = "EBUio-PlugIt"
PROTOCOL_VERSION = "1"

# Reply headers a service sends to the proxy (2.12).
H_REDIRECT = "EbuIo-PlugIt-Redirect"
H_REDIRECT_NOPREFIX = "EbuIo-PlugIt-Redirect-NoPrefix"
H_FILE = "EbuIo-PlugIt-ItAFile"
H_NO_TEMPLATE = "EbuIo-PlugIt-NoTemplate"
SET_SESSION_PREFIX = "ebuio-plugit-setsession-"
# When the proxy stops waiting for an action's answer: seconds since the epoch (proxy -> service,
# signed with the other X-Plugit headers); the service sends it back with its callback API calls
# made for that request (a header the proxy does not strip from incoming requests).
H_DEADLINE = "X-Plugit-Deadline"
H_API_DEADLINE = "Plugit-Deadline"


def format_deadline(when: float) -> str:
    """A deadline as a header value: seconds since the epoch, in milliseconds."""
    return f"{when:.3f}"


def parse_deadline(value: str | None) -> float | None:
    """The deadline a header holds, None when absent; ValueError when it is not a plain
    positive number of seconds (no sign, exponent, NaN or infinity)."""
    if value is None:
        return None
    text = value.strip()
    whole, dot, fraction = text.partition(".")
    if not (whole.isdigit() and whole.isascii()) or len(text) > 20 or (dot and not fraction):
        raise ValueError(f"not a deadline (seconds since the epoch): {value[:40]!r}")
    if fraction and not (fraction.isdigit() and fraction.isascii()):
        raise ValueError(f"not a deadline (seconds since the epoch): {value[:40]!r}")
    return float(text)


# Reply headers of an action that the proxy forwards to the browser (5.12).
FORWARDED_REPLY_HEADERS = (
    "ETag",
    "Access-Control-Allow-Origin",
    "Access-Control-Allow-Credentials",
    "Access-Control-Expose-Headers",
    "Access-Control-Max-Age",
    "Access-Control-Allow-Methods",
    "Access-Control-Allow-Headers",
)

# The access rules in their fixed order (5.7): meta key, user attribute that must be truthy.
ACCESS_RULES: tuple[tuple[str, str], ...] = (
    ("only_logged_user", "is_authenticated"),
    ("only_member_user", "ebuio_member"),
    ("only_admin_user", "ebuio_admin"),
    ("only_orga_member_user", "ebuio_orga_member"),
    ("only_orga_admin_user", "ebuio_orga_admin"),
)
RESTRICTING_KEYS = tuple(key for key, _ in ACCESS_RULES)
FLAG_KEYS = (*RESTRICTING_KEYS, "public", "json_only", "xml_only", "no_template")


class ProtocolError(Exception):
    """A service answered something that is not valid PlugIt protocol."""


class UserLike(Protocol):
    """What the access rules read from a user (attributes or properties: only read)."""

    @property
    def is_authenticated(self) -> bool: ...
    @property
    def ebuio_member(self) -> bool: ...
    @property
    def ebuio_admin(self) -> bool: ...
    @property
    def ebuio_orga_member(self) -> bool: ...
    @property
    def ebuio_orga_admin(self) -> bool: ...


@dataclass(frozen=True)
class ActionMeta:
    """An action's meta, validated.  ``raw`` keeps the JSON object as the service sent it."""

    template_tag: str = ""
    only_logged_user: bool = False
    only_member_user: bool = False
    only_admin_user: bool = False
    only_orga_member_user: bool = False
    only_orga_admin_user: bool = False
    cache_time: int = 0
    cache_by_user: bool | None = None
    user_info: tuple[str, ...] = ()
    public: bool = False
    address_in_networks: tuple[Network, ...] | None = None
    json_only: bool = False
    xml_only: bool = False
    no_template: bool = False
    raw: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def restricted(self) -> bool:
        """True when any ``only_*`` rule applies."""
        return any(getattr(self, key) for key in RESTRICTING_KEYS)

    @property
    def per_user_cache(self) -> bool:
        """Whether the page cache must be kept per user (5.8, without weakness W5).

        An explicit ``cache_by_user`` decides; when it is absent or null, actions that are
        restricted or receive user data (``user_info``) are cached per user, so a page made for
        one user is never served to another.  (Shared pages are also rendered with an
        anonymous ``ebuio_u``: see the pipeline.)
        """
        if self.cache_by_user is None:
            return self.restricted or bool(self.user_info)
        return self.cache_by_user


def _flag(value: Any) -> bool:
    # The original reads flags by loose truthiness (0, "", null, [], {} are false).
    return bool(value)


def parse_meta(data: Any) -> ActionMeta:
    """Validate a meta object received from a service; raise :class:`ProtocolError` if it is bad."""
    if isinstance(data, (bytes, str)):
        try:
            data = json.loads(data)
        except ValueError as exc:
            raise ProtocolError(f"meta is not JSON: {exc}") from None
        except RecursionError:
            raise ProtocolError("meta is nested too deeply") from None
    if not isinstance(data, Mapping):
        raise ProtocolError(f"meta must be a JSON object, not {type(data).__name__}")
    kwargs: dict[str, Any] = {"raw": dict(data)}
    tag = data.get("template_tag", "")
    if tag is None:
        tag = ""
    if not isinstance(tag, str):
        raise ProtocolError("meta template_tag must be a string")
    kwargs["template_tag"] = tag
    for key in FLAG_KEYS:
        kwargs[key] = _flag(data.get(key))
    cache_time = data.get("cache_time", 0) or 0
    if isinstance(cache_time, bool) or not isinstance(cache_time, (int, float)) or cache_time < 0:
        raise ProtocolError("meta cache_time must be a number of seconds >= 0")
    kwargs["cache_time"] = int(cache_time)
    by_user = data.get("cache_by_user")
    kwargs["cache_by_user"] = None if by_user is None else bool(by_user)
    user_info = data.get("user_info") or ()
    if isinstance(user_info, str):
        user_info = [user_info]
    if not isinstance(user_info, Sequence) or not all(isinstance(p, str) for p in user_info):
        raise ProtocolError("meta user_info must be a list of property names")
    kwargs["user_info"] = tuple(user_info)
    if "address_in_networks" in data:
        networks = data["address_in_networks"] or []
        if isinstance(networks, str):
            networks = [networks]
        try:
            kwargs["address_in_networks"] = parse_networks(networks, setting="address_in_networks")
        except (TypeError, ValueError) as exc:
            raise ProtocolError(f"meta {exc}") from None
    return ActionMeta(**kwargs)


def access_denied_reason(
    meta: ActionMeta, user: UserLike, client_address: str | None
) -> str | None:
    """Apply the access rules in order (5.7); return the first failing reason or None."""
    for key, attribute in ACCESS_RULES:
        if getattr(meta, key) and not getattr(user, attribute, False):
            return key
    if meta.address_in_networks is not None and not address_in_networks(
        client_address, meta.address_in_networks
    ):
        return "address_in_networks"
    return None


def page_cache_key(
    *,
    service: str,
    method: str,
    path: str,
    query: str,
    template_tag: str,
    user_key: str | None,
    orga_key: str | None,
    variant: str = "",
    script_root: str = "",
) -> str:
    """The page-cache key (5.8, plus the method and the service: weakness W6).

    ``user_key`` is None for pages shared between users; ``orga_key`` is None outside orga mode.
    ``script_root`` is where the proxy is on the site (``SCRIPT_NAME``): a cached page holds
    URLs below it.  The parts are hashed so the key has a fixed length and only safe characters
    whatever the path.
    """
    parts = [
        service,
        method.upper(),
        path,
        query,
        template_tag,
        user_key or "",
        orga_key or "",
        variant,
    ]
    if script_root:  # keys of a proxy at the site's root are unchanged
        parts.append(script_root)
    digest = hashlib.sha256("\x00".join(parts).encode("utf-8", "surrogatepass")).hexdigest()
    return f"page:{service}:{digest}"

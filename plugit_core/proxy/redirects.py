"""Where a redirect sends the browser, read the way browsers read it, and whether it may.

The proxy sends browsers on to targets it did not write: a service's ``EbuIo-PlugIt-Redirect``
with ``EbuIo-PlugIt-Redirect-NoPrefix``, the ``next`` of ``ebuio_setOrga``.  Browsers read a URL
by the WHATWG URL Standard, not RFC 3986: they strip leading and trailing controls and spaces,
drop tabs and newlines anywhere, take ``\\`` for ``/`` in http(s) URLs, skip any number of
slashes after ``http:``, percent-decode and IDNA-map the host, and read ``0x7f.1`` as
``127.0.0.1``.  A check that reads the target another way can be walked around
(``http://evil.example\\@127.0.0.1/`` is evil.example to a browser, 127.0.0.1 to ``urlsplit``).

So the decision is made on the browser's reading (:func:`browser_url`), and a target is refused
when different readers could disagree on it at all:

- controls, spaces, DEL and backslashes anywhere are refused (:func:`ambiguous`): browsers drop or
  translate them, servers re-encode them (werkzeug sends ``\\`` as ``%5C``), so the browser may
  read what leaves the proxy differently from what was checked;
- the target as it leaves the proxy (werkzeug turns the ``Location`` IRI into a URI: non-ASCII
  quoted, the host through IDNA 2003, which maps ``ß`` to ``ss`` where browsers keep it) must
  lead the browser where the target itself does (:func:`as_sent`);
- user information (``user@``, ``user:pass@``) is refused outright;
- a local path is ``/`` followed by anything but a second ``/`` (:func:`is_local_path`);
- an absolute URL is ``http://`` or ``https://`` (any case) to the request's own host and port,
  or to an ``allowed_redirect_hosts`` entry (:func:`redirect_allowed`); hosts are compared in
  their canonical form (lower case, IDNA ``xn--``, IPv4 in dotted decimal, IPv6 compressed) with
  the port, the scheme's default port (80, 443) counting as none;
- any other scheme (``javascript:``, ``data:``, ``ftp:`` ...) and protocol-relative ``//host``
  are never allowed.

Everything here is pure: no I/O, no request object.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from urllib.parse import unquote_to_bytes

from werkzeug.urls import iri_to_uri

__all__ = [
    "BrowserURL",
    "HostPort",
    "ambiguous",
    "as_sent",
    "browser_url",
    "canonical_host",
    "clean",
    "is_local_path",
    "parse_host_port",
    "redirect_allowed",
]

SPECIAL_SCHEMES = {"http": 80, "https": 443, "ws": 80, "wss": 443, "ftp": 21, "file": None}
REDIRECT_SCHEMES = ("http", "https")

_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*:")
_AMBIGUOUS = re.compile(r"[\x00-\x20\x7f\\]")
# Code points a host may not hold once decoded (WHATWG "forbidden domain code point").
_FORBIDDEN_HOST = re.compile(r"[\x00-\x20#/:<>?@\[\\\]^|%\x7f]")
_TAB_OR_NEWLINE = re.compile(r"[\t\n\r]")
_C0_OR_SPACE = "".join(chr(c) for c in range(0x21))


@dataclass(frozen=True)
class HostPort:
    """A canonical host and its port, ``None`` for the scheme's default port."""

    host: str
    port: int | None

    def __str__(self) -> str:
        return self.host if self.port is None else f"{self.host}:{self.port}"


@dataclass(frozen=True)
class BrowserURL:
    """The parts of a URL that decide where a browser goes.

    ``authority`` is None for a URL that stays on the page's own origin (a relative reference)
    and for schemes without one that matters here (``javascript:``, ``data:``); ``userinfo``
    tells whether the URL carried credentials.
    """

    scheme: str
    authority: HostPort | None
    userinfo: bool = False


def clean(text: str) -> str:
    """``text`` as a browser starts to read it: leading and trailing C0 controls and spaces
    stripped, tabs, CR and LF removed anywhere."""
    return _TAB_OR_NEWLINE.sub("", text.strip(_C0_OR_SPACE))


def ambiguous(text: str) -> bool:
    """Whether ``text`` holds a character readers disagree on: a control, a space, DEL, ``\\``."""
    return _AMBIGUOUS.search(text) is not None


def browser_url(target: str, base_scheme: str = "https") -> BrowserURL | None:
    """Where a browser on an http(s) page of scheme ``base_scheme`` goes for ``target``, or None
    when it would not go anywhere (a host or port that does not parse).

    A relative reference (``/x``, ``x``, ``?q``, ``http:x`` on an http page) keeps the page's
    origin: its ``authority`` is None.
    """
    text = clean(target)
    base_scheme = base_scheme.lower()
    match = _SCHEME.match(text)
    if match is None:
        scheme, rest, explicit = base_scheme, text, False
    else:
        scheme, rest, explicit = match.group()[:-1].lower(), text[match.end() :], True
    if scheme not in SPECIAL_SCHEMES:
        return BrowserURL(scheme, None)
    if explicit and scheme != base_scheme:
        # "special authority slashes state": whatever slashes follow, an authority comes
        return _with_authority(scheme, rest.lstrip("/\\"))
    # The base's own scheme ("special relative or authority state") or none ("relative state"):
    # two slashes of either kind start an authority, after which any more are skipped;
    # anything else is relative to the page (``http:/x`` and ``http:x`` too, on an http page).
    if len(rest) >= 2 and rest[0] in "/\\" and rest[1] in "/\\":
        return _with_authority(scheme, rest.lstrip("/\\"))
    return BrowserURL(scheme, None)


def _with_authority(scheme: str, rest: str) -> BrowserURL | None:
    end = len(rest)
    for stop in "/\\?#":
        index = rest.find(stop)
        if index != -1:
            end = min(end, index)
    authority = rest[:end]
    userinfo = "@" in authority
    if userinfo:
        authority = authority.rsplit("@", 1)[1]
    host_port = parse_host_port(authority, SPECIAL_SCHEMES[scheme])
    if host_port is None:
        return None
    return BrowserURL(scheme, host_port, userinfo)


def parse_host_port(authority: str, default_port: int | Iterable[int] | None) -> HostPort | None:
    """``host[:port]`` in canonical form, or None when it does not parse.

    A port equal to ``default_port`` (or one of several, e.g. ``(80, 443)``) becomes None.
    """
    if authority.startswith("["):
        close = authority.find("]")
        if close == -1:
            return None
        host_text, after = authority[: close + 1], authority[close + 1 :]
        if after and not after.startswith(":"):
            return None
        port_text = after[1:] if after else None
    else:
        host_text, colon, port_text_or_empty = authority.partition(":")
        port_text = port_text_or_empty if colon else None
    host = canonical_host(host_text)
    if host is None:
        return None
    port: int | None = None
    if port_text:  # "host:" is the default port
        if not port_text.isascii() or not port_text.isdigit():
            return None
        port = int(port_text)
        if port > 65535:
            return None
    defaults = (
        {default_port}
        if default_port is None or isinstance(default_port, int)
        else set(default_port)
    )
    if port in defaults:
        port = None
    return HostPort(host, port)


def canonical_host(text: str) -> str | None:
    """The host a browser connects to for the host part ``text`` of an http(s) URL (lower case,
    IDNA ``xn--`` labels, IPv4 in dotted decimal, ``[IPv6]`` compressed), or None when the
    browser would refuse it."""
    if text.startswith("["):
        if not text.endswith("]") or "%" in text:
            return None
        try:
            return f"[{ipaddress.IPv6Address(text[1:-1]).compressed}]"
        except ValueError:
            return None
    if not text:
        return None
    try:
        domain = unquote_to_bytes(text).decode("utf-8")
    except UnicodeDecodeError:
        return None
    ascii_domain = _domain_to_ascii(domain)
    if ascii_domain is None or not ascii_domain or _FORBIDDEN_HOST.search(ascii_domain):
        return None
    if _ends_in_a_number(ascii_domain):
        address = _ipv4(ascii_domain)
        return None if address is None else str(ipaddress.IPv4Address(address))
    return ascii_domain


def _domain_to_ascii(domain: str) -> str | None:
    """UTS #46 processing as browsers apply it (non-transitional, no STD3 rules)."""
    if domain.isascii():
        return domain.lower()
    try:
        import idna
    except ImportError:  # pragma: no cover (idna comes with requests)
        return None
    try:
        mapped = idna.uts46_remap(domain, std3_rules=False, transitional=False)
        labels = [
            label if label.isascii() else idna.alabel(label).decode("ascii")
            for label in mapped.split(".")
        ]
    except (idna.IDNAError, UnicodeError, ValueError):
        return None
    return ".".join(labels).lower()


def _ipv4_number(part: str) -> int | None:
    if not part:
        return None
    radix = 10
    if part[:2] in ("0x", "0X"):
        part, radix = part[2:], 16
    elif len(part) > 1 and part[0] == "0":
        part, radix = part[1:], 8
    if not part:
        return 0
    digits = {10: "0123456789", 8: "01234567", 16: "0123456789abcdefABCDEF"}[radix]
    if any(c not in digits for c in part):
        return None
    return int(part, radix)


def _ends_in_a_number(domain: str) -> bool:
    parts = domain.split(".")
    if parts[-1] == "":
        if len(parts) == 1:
            return False
        parts.pop()
    last = parts[-1]
    if last and last.isascii() and last.isdigit():
        return True
    return _ipv4_number(last) is not None


def _ipv4(domain: str) -> int | None:
    parts = domain.split(".")
    if parts[-1] == "" and len(parts) > 1:
        parts.pop()
    if len(parts) > 4:
        return None
    numbers = [_ipv4_number(part) for part in parts]
    if any(n is None for n in numbers):
        return None
    values = [n for n in numbers if n is not None]
    if any(n > 255 for n in values[:-1]) or values[-1] >= 256 ** (5 - len(values)):
        return None
    address = values[-1]
    for index, n in enumerate(values[:-1]):
        address += n * 256 ** (3 - index)
    return address


# -- the decisions ---------------------------------------------------------------------------------


def as_sent(target: str) -> str | None:
    """``target`` as werkzeug sends it in a ``Location`` header (the IRI as a URI), or None when
    werkzeug could not send it (a port or host its URL parser refuses)."""
    try:
        return iri_to_uri(target)
    except (ValueError, UnicodeError):
        return None


def _same_when_sent(target: str, reading: BrowserURL, base_scheme: str) -> bool:
    sent = as_sent(target)
    return sent is not None and browser_url(sent, base_scheme) == reading


def is_local_path(target: str) -> bool:
    """A path on this site (``/x``): a browser stays on the page's origin, and no reader could
    take it for anything else (``//x``, ``/\\x``, ``\\/x``, ``/<tab>/x`` are not local)."""
    if ambiguous(target) or not target.startswith("/") or target.startswith("//"):
        return False
    parsed = browser_url(target)
    if parsed is None or parsed.authority is not None or parsed.userinfo:
        return False
    return _same_when_sent(target, parsed, "https")


def redirect_allowed(
    target: str,
    *,
    request_scheme: str,
    request_host: str,
    allowed_hosts: Iterable[str] = (),
) -> bool:
    """Whether ``target``, an absolute ``http(s)://`` URL, goes to the request's own host and
    port (``request_host``, the ``Host`` the browser asked, on ``request_scheme``) or to an
    entry of ``allowed_hosts`` (``host`` or ``host:port``; no port, 80 or 443 mean the target
    scheme's default port).  Relative references are for :func:`is_local_path`."""
    if ambiguous(target) or not re.match(r"https?://", target, re.IGNORECASE):
        return False
    parsed = browser_url(target, request_scheme)
    if parsed is None or parsed.userinfo or parsed.authority is None:
        return False
    if parsed.scheme not in REDIRECT_SCHEMES:
        return False
    own = parse_host_port(request_host, SPECIAL_SCHEMES.get(request_scheme.lower()))
    if parsed.authority != own and parsed.authority not in _allowed(tuple(allowed_hosts)):
        return False
    return _same_when_sent(target, parsed, request_scheme)


@lru_cache(maxsize=64)
def _allowed(entries: tuple[str, ...]) -> frozenset[HostPort]:
    """The canonical form of ``allowed_redirect_hosts`` entries; one that does not parse as
    ``host[:port]`` allows nothing."""
    result = set()
    for entry in entries:
        parsed = parse_host_port(entry.strip(), (80, 443))
        if parsed is not None and not ambiguous(entry.strip()):
            result.add(parsed)
    return frozenset(result)

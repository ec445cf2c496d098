"""What keeps a service's HTML and scripts inside its own pages: sanitising, CSP, headers.

Each mount has a trust level (``trust`` in its configuration):

``sandboxed`` (the default)
    The HTML its templates produce is cleaned by :func:`sanitize_html` (nh3, the Python binding
    of the ammonia sanitiser) before it goes into the layout: no script, no style element, no
    event handler, no frame or object, no ``javascript:`` (or any other scheme but ``mailto:``),
    and links, images and forms only to paths of the site (relative URLs).  Its pages carry the
    strict :func:`page_policy`, under which only the theme's own scripts (with the response's
    nonce) run.  What it sends raw (media, files, JSON, XML, pages without the layout) is served
    with :data:`RAW_POLICY`: a CSP ``sandbox`` that gives such a document an opaque origin, so
    even HTML among its media can run no script of the site's origin.
``full``
    Its HTML is served as written, as with the original PlugIt: its scripts run with the
    site's origin and can do anything the visitor can do on the site.  For services the site
    operator trusts as much as the proxy itself.

Every response of the proxy carries :func:`common_headers`.
"""

from __future__ import annotations

import re
import threading
from typing import TYPE_CHECKING

import nh3
from cachetools import LRUCache

if TYPE_CHECKING:
    from werkzeug.datastructures import Headers

__all__ = [
    "RAW_POLICY",
    "common_headers",
    "is_site_relative",
    "page_policy",
    "sanitize_html",
]

_TAGS = nh3.ALLOWED_TAGS | {
    "button",
    "fieldset",
    "form",
    "input",
    "label",
    "legend",
    "main",
    "meter",
    "optgroup",
    "option",
    "output",
    "progress",
    "section",
    "select",
    "textarea",
    "tfoot",
}
_TAGS -= {"area", "map"}  # image maps: links without a visible element to check
_ATTRIBUTES = {
    "*": {"class", "id", "title", "lang", "dir", "role", "hidden", "style", "tabindex"},
    "a": {"href", "hreflang"},
    "img": {"src", "alt", "width", "height", "loading"},
    "form": {"action", "method", "enctype", "accept-charset", "autocomplete", "novalidate"},
    "input": set(
        "name value placeholder checked disabled readonly required min max step pattern "
        "size maxlength minlength multiple accept autocomplete autofocus list form".split()
    ),
    "button": {"type", "name", "value", "disabled", "form"},
    "select": {"name", "multiple", "size", "disabled", "required", "form"},
    "option": {"value", "selected", "disabled", "label"},
    "optgroup": {"label", "disabled"},
    "textarea": {"name", "rows", "cols", "placeholder", "disabled", "readonly", "required"},
    "label": {"for"},
    "fieldset": {"disabled", "name"},
    "output": {"for", "name"},
    "progress": {"value", "max"},
    "meter": {"value", "min", "max", "low", "high", "optimum"},
    "td": {"colspan", "rowspan", "headers"},
    "th": {"colspan", "rowspan", "headers", "scope"},
    "col": {"span"},
    "colgroup": {"span"},
    "ol": {"start", "reversed", "type"},
    "li": {"value"},
    "time": {"datetime"},
    "del": {"datetime", "cite"},
    "ins": {"datetime", "cite"},
    "q": {"cite"},
    "blockquote": {"cite"},
    "details": {"open"},
    "abbr": {"title"},
}
_STYLE_PROPERTIES = frozenset(
    """color background-color font-weight font-style font-size text-align text-decoration
    vertical-align white-space width min-width max-width height min-height max-height margin
    margin-top margin-right margin-bottom margin-left padding padding-top padding-right
    padding-bottom padding-left border border-top border-right border-bottom border-left
    border-color border-style border-width border-radius display float clear list-style-type
    line-height letter-spacing opacity""".split()
)
# What browsers drop from a URL before they read it: leading and trailing C0 controls and
# spaces, and every tab and line break inside.
_URL_JUNK = re.compile(r"[\t\n\r]|^[\x00-\x20]+|[\x00-\x20]+$")
_SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.\-]*:")


def is_site_relative(url: str) -> bool:
    """A URL that stays on the site: a path (``/x``), a relative reference (``x``, ``?q``,
    ``#f``), read the way a browser reads it; never another host (``//h``, ``\\\\h``,
    ``/\\h``) nor a scheme (``javascript:``, ``http:``)."""
    cleaned = _URL_JUNK.sub("", url)
    if "\\" in cleaned or cleaned.startswith("//"):
        return False
    return not _SCHEME.match(cleaned)


def _relative_url(url: str) -> str | None:
    """ammonia's hook for relative URLs (``href``, ``src``, ``action``...): kept when they stay
    on the site."""
    return url if is_site_relative(url) else None


_INPUT_TYPES = frozenset(
    """button checkbox color date datetime-local email file hidden month number password radio
    range reset search submit tel text time url week""".split()  # not "image": from anywhere
)
_CLEANER = nh3.Cleaner(
    tags=_TAGS,
    clean_content_tags={"script", "style", "template", "noscript", "iframe", "object"},
    attributes=_ATTRIBUTES,
    tag_attribute_values={
        "a": {"target": {"_blank", "_self"}},
        "input": {"type": set(_INPUT_TYPES)},
    },
    url_schemes={"mailto"},
    url_relative=_relative_url,
    filter_style_properties=set(_STYLE_PROPERTIES),
    link_rel=None,  # every link left stays on the site
    strip_comments=True,
)


def sanitize_html(html: str, scope: str = "") -> str:
    """``html`` (a fragment: the page of a ``sandboxed`` service) without anything that runs
    or leaves the site (see the module's docstring).

    Cleaning is a pure function of the text, so the result for a text cleaned recently is
    taken from a small cache keyed by ``scope`` (the service: no service can learn from the
    time it takes whether another one produced the same text) and the whole text; texts over
    ``_CLEANED_MAX_INPUT`` characters are cleaned each time.
    """
    if not html:
        return ""
    if len(html) > _CLEANED_MAX_INPUT:
        return _CLEANER.clean(html)
    key = (scope, html)
    with _cleaned_lock:
        hit = _cleaned.get(key)
    if hit is not None:
        return hit[1]
    clean = _CLEANER.clean(html)
    with _cleaned_lock:
        _cleaned[key] = (len(html), clean)
    return clean


# The cache of cleaned texts, bounded by the characters it holds (each text and its result).
_CLEANED_MAX_INPUT = 32_768
_cleaned: LRUCache[tuple[str, str], tuple[int, str]] = LRUCache(
    maxsize=2_000_000, getsizeof=lambda item: item[0] + len(item[1])
)
_cleaned_lock = threading.Lock()


def page_policy(nonce: str) -> str:
    """The Content-Security-Policy of a page that holds a sandboxed service's HTML: only the
    site's own files, scripts only with this response's ``nonce``, forms only to the site."""
    return (
        "default-src 'self'; "
        f"script-src 'nonce-{nonce}'; "
        "style-src 'self' 'unsafe-inline'; "
        "img-src 'self' data:; "
        "connect-src 'self'; "
        "object-src 'none'; "
        "base-uri 'none'; "
        "form-action 'self'; "
        "frame-ancestors 'self'"
    )


#: The policy of what a sandboxed service sends raw (media, files, JSON, XML, layout-less
#: pages): a sandboxed document with an opaque origin, no script at all.
RAW_POLICY = (
    "sandbox; default-src 'none'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; "
    "media-src 'self'; frame-ancestors 'self'"
)


def common_headers(headers: Headers, *, hsts: bool) -> None:
    """Headers every response of the proxy carries (those already set are kept)."""
    # One pass over the names set (werkzeug's setdefault walks the list twice per header).
    present = {name.lower() for name, _value in headers}
    for name, value in _COMMON_HEADERS if hsts else _COMMON_HEADERS[:-1]:
        if name.lower() not in present:
            headers.add(name, value)


_COMMON_HEADERS = (
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "strict-origin-when-cross-origin"),
    ("X-Frame-Options", "SAMEORIGIN"),
    ("Content-Security-Policy", "frame-ancestors 'self'"),
    ("Strict-Transport-Security", "max-age=31536000"),  # last: only with secure cookies
)

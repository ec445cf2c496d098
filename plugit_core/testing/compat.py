"""What a service written for the original PlugIt uses that behaves differently behind this
proxy: :func:`compatibility_report` reads the service's meta and templates and gives one
:class:`CompatibilityNote` per difference, with the porting advice (``plugit service --check``
prints it after the checks).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .. import protocol
from .checks import FLAG_KEYS, Caller, UnreachableError, action_endpoint, random_token

__all__ = ["CompatibilityNote", "compatibility_report"]


@dataclass(frozen=True)
class CompatibilityNote:
    """One thing a service uses that behaves differently behind this proxy than behind the
    original PlugIt: ``what`` it uses (and ``where``: ``version``, an action path, a template),
    ``why`` it matters here, and the porting ``advice``."""

    where: str
    what: str
    why: str
    advice: str

    def __str__(self) -> str:
        return f"{self.where}: {self.what}. {self.why}. {self.advice}."


# Django template language constructs that Jinja2 does not read the same way.
_DJANGO_MARKERS = re.compile(
    r"\{%-?\s*(?:load|csrf_token|url|plugitInclude|plugitGetUser|ifequal|ifnotequal|empty|"
    r"comment|widthratio|cycle|firstof|now|regroup|spaceless|templatetag|verbatim|blocktrans|"
    r"blocktranslate|trans|translate|static|endifequal|endifnotequal|endcomment)\b"
    r"|\{%-?\s*with\s+\S+\s+as\s"
    r"|\bforloop\."
    r"|\|\s*[A-Za-z_]\w*:"
    r"|\.items\s*%\}"
)
_SCRIPT = re.compile(r"<script\b", re.IGNORECASE)
_JQUERY = re.compile(r"(?<![\w$])(?:\$\s*\(|\$\.\w|jQuery\b)")
_BOOTSTRAP3 = re.compile(
    r"\b(?:glyphicon|col-xs-\d|panel-(?:default|heading|body|footer|primary|info|success|"
    r"warning|danger)|btn-default|navbar-default|label-(?:default|primary|success|info|warning|"
    r"danger)|img-responsive|pull-(?:left|right)|hidden-xs|well)\b|\bdata-toggle="
)
_HANDLER = re.compile(r"<[^>]*\s(on[a-z]+)\s*=", re.IGNORECASE)
_REMOVED_ELEMENT = re.compile(r"<(style|link|iframe|frame|object|embed|base|meta)\b", re.I)
_JAVASCRIPT_URL = re.compile(r"""\b(?:href|src|action)\s*=\s*["']?\s*javascript:""", re.I)
_ABSOLUTE_URL = re.compile(
    r"""\b(?:href|src|action|formaction)\s*=\s*["']?\s*((?:[a-z][a-z0-9+.-]*:|//)[^"'\s>]*)""",
    re.IGNORECASE,
)


def _template_dialect(source: str) -> tuple[str, str | None]:
    """("jinja" | "django" | "neither", the Django dialect's refusal or None)."""
    from jinja2 import Environment, TemplateSyntaxError

    from ..templating.django_dialect import translate

    def parses(text: str) -> bool:
        try:
            Environment(autoescape=True).parse(text)
        except TemplateSyntaxError:
            return False
        return True

    refusal = None
    try:
        django_ok = parses(translate(source, "template"))
    except TemplateSyntaxError as exc:
        django_ok, refusal = False, exc.message
    if _DJANGO_MARKERS.search(source):
        return "django", refusal
    if parses(source):
        return "jinja", None
    return ("django", None) if django_ok else ("neither", None)


def _template_notes(where: str, source: str) -> list[CompatibilityNote]:
    notes: list[CompatibilityNote] = []

    def note(what: str, why: str, advice: str) -> None:
        notes.append(CompatibilityNote(where, what, why, advice))

    dialect, refusal = _template_dialect(source)
    if dialect == "django":
        note(
            "Django template syntax",
            "this proxy renders Jinja2 unless the mount says otherwise",
            'set template_dialect = "django" on its mount (or port the template to Jinja2)',
        )
        if refusal:
            note(
                f"a construct the Django dialect does not support ({refusal.splitlines()[0]})",
                "the page is an error page until it is removed",
                "replace it: build links from ebuio_baseUrl, use the supported tags and filters "
                "(docs/writing-a-service.md)",
            )
    elif dialect == "neither":
        note(
            "a template that compiles in neither dialect",
            "the page is an error page",
            "fix the template's syntax",
        )
    sandboxed_advice = (
        'set trust = "full" on its mount if the site trusts this service as much as the '
        "proxy itself; else remove it"
    )
    if _SCRIPT.search(source):
        note(
            "<script> elements",
            'a mount with trust = "sandboxed" (the default) removes them and its pages run '
            "no script",
            sandboxed_advice,
        )
    handlers = sorted({m.group(1).lower() for m in _HANDLER.finditer(source)})
    if handlers:
        note(
            f"inline event handlers ({', '.join(handlers)})",
            "a sandboxed mount removes them",
            sandboxed_advice,
        )
    if _JAVASCRIPT_URL.search(source):
        note("javascript: URLs", "a sandboxed mount removes them", sandboxed_advice)
    if _JQUERY.search(source):
        note(
            "jQuery ($ or jQuery)",
            "the original layout loaded jQuery; this proxy's default theme does not",
            'set theme = "legacy" on its mount (jQuery and Bootstrap 3, served by the site), '
            'and trust = "full" for its scripts to run',
        )
    if _BOOTSTRAP3.search(source):
        note(
            "Bootstrap 3 classes or attributes (glyphicons, col-xs-*, panels, data-toggle)",
            "the default theme is Bootstrap 5, where they do nothing",
            'set theme = "legacy" on its mount, or move to Bootstrap 5 classes',
        )
    removed = sorted({m.group(1).lower() for m in _REMOVED_ELEMENT.finditer(source)})
    if removed:
        note(
            f"<{'>, <'.join(removed)}> elements",
            "a sandboxed mount removes them (style and stylesheets, frames, objects)",
            "use style attributes and the theme's classes, or " + sandboxed_advice,
        )
    absolute = sorted(
        {
            m.group(1)
            for m in _ABSOLUTE_URL.finditer(source)
            if not m.group(1).lower().startswith(("mailto:", "javascript:"))
        }
    )
    if absolute:
        shown = ", ".join(absolute[:3]) + (", ..." if len(absolute) > 3 else "")
        note(
            f"absolute links or sources ({shown})",
            "a sandboxed mount keeps only links, images and forms that stay on the site",
            "link to paths of the site (from ebuio_baseUrl and MEDIA_URL), or " + sandboxed_advice,
        )
    return notes


def _meta_notes(where: str, meta: dict[str, Any]) -> list[CompatibilityNote]:
    from ..users import DEFAULT_USER_DATA

    notes: list[CompatibilityNote] = []
    if "cache_time" in meta and meta.get("cache_by_user") is None and meta.get("cache_time"):
        restricted = any(meta.get(k) for k in protocol.RESTRICTING_KEYS) or meta.get("user_info")
        if restricted:
            notes.append(
                CompatibilityNote(
                    where,
                    "@cache(time) without byUser on a restricted action",
                    "the original proxy shared the cached page between users; this one keeps "
                    "a copy per user",
                    "nothing to do, or @cache(time, byUser=False) if the page is the same for "
                    "everyone",
                )
            )
    unknown = sorted(set(meta) - {"template_tag", *FLAG_KEYS, *_OTHER_META_KEYS})
    if unknown:
        notes.append(
            CompatibilityNote(
                where,
                f"meta keys {', '.join(map(repr, unknown))}",
                "neither the original nor this proxy reads them",
                "remove them, or check their spelling",
            )
        )
    user_info = meta.get("user_info")
    if isinstance(user_info, list):
        odd = [p for p in user_info if isinstance(p, str) and p not in DEFAULT_USER_DATA]
        if odd:
            notes.append(
                CompatibilityNote(
                    where,
                    f"user_info {', '.join(map(repr, odd))}",
                    "the proxy sends only the properties its user_data lists (the original "
                    "failed with a 500); these are not in the default list",
                    f"ask for {', '.join(DEFAULT_USER_DATA)}, or have the site add them to "
                    "user_data",
                )
            )
    return notes


_OTHER_META_KEYS = ("cache_time", "cache_by_user", "user_info", "address_in_networks")


def compatibility_report(
    url: str,
    *,
    secret: str | None = None,
    actions: Sequence[str] = ("",),
    timeout: float = 5.0,
) -> list[CompatibilityNote]:
    """What the service at ``url`` uses that behaves differently behind this proxy than behind
    the original PlugIt, each with the porting advice (docs/writing-a-service.md).

    Reads ``version``, an unsigned ``ping``, and the meta and template of each of ``actions``
    (it never calls an action).  Never raises: what cannot be read is left out (the
    conformance checks of :func:`run_checks` report it).
    """
    if isinstance(actions, str):
        actions = [actions]
    try:
        c = Caller(url, secret, timeout)
    except ValueError:
        return []
    notes: list[CompatibilityNote] = []
    try:
        reply, data = c.get_json_object("version")
        name = data.get("protocol") if data else None
        if reply.status == 200 and isinstance(name, str) and name != protocol.PROTOCOL_NAME:
            notes.append(
                CompatibilityNote(
                    "version",
                    f"protocol name {name!r}",
                    f"the proxy accepts any name with version 1, but logs a warning for a name "
                    f"other than {protocol.PROTOCOL_NAME!r} at every start",
                    f"set PI_API_NAME = {protocol.PROTOCOL_NAME!r} (this library's default)",
                )
            )
        if secret is None:
            token = random_token()
            unsigned, echo = c.get_json_object("ping", query={"data": token}, signed=False)
            if unsigned.status == 200 and echo is not None and echo.get("data") == token:
                notes.append(
                    CompatibilityNote(
                        "ping",
                        "unsigned requests accepted (no secret)",
                        "the original had no signatures; without one, any caller the network "
                        "allow-list lets in can claim to be any user",
                        "give the service a secret (PI_SECRET, or plugit service --secret) and "
                        "the same secret on its mount",
                    )
                )
    except UnreachableError:
        return notes
    for path in actions:
        where = "/" + path.lstrip("/")
        try:
            reply, meta = c.get_json_object(action_endpoint("meta", path))
            if reply.status != 200 or meta is None:
                continue
            notes.extend(_meta_notes(where, meta))
            if not meta.get("template_tag") or meta.get("json_only") or meta.get("xml_only"):
                continue
            reply = c.call("GET", action_endpoint("template", path))
            if reply.status == 200:
                source = reply.body.decode("utf-8", "replace")
                notes.extend(_template_notes(f"{where} (template)", source))
        except UnreachableError:
            break
        except Exception as exc:  # a broken service never crashes the report
            notes.append(
                CompatibilityNote(
                    where, "an answer the report cannot read", str(exc), "see the checks"
                )
            )
    return notes

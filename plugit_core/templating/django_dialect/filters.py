"""Django's filters as ``dj_*`` Jinja filters, and the filter table the translator reads."""

from __future__ import annotations

import decimal
import random
import re
import unicodedata
from collections.abc import Callable
from datetime import datetime, time
from typing import Any, NamedTuple
from urllib.parse import quote

from jinja2 import Environment, pass_environment, pass_eval_context
from jinja2.nodes import EvalContext
from markupsafe import Markup, escape

from .dates import NAMED_FORMATS, FormatError, format_date, to_date
from .runtime import MISSING, dj_iter, input_text, input_value, lookup

# --------------------------------------------------------------------------------------------
# Runtime helpers: Django filters
# --------------------------------------------------------------------------------------------


def _like(value: Any, result: str) -> str:
    """``result`` is safe HTML if ``value`` was (Django's ``is_safe`` filters)."""
    return Markup(result) if isinstance(value, Markup) else result  # noqa: S704 input was safe


def _escape_input(eval_ctx: EvalContext, value: Any) -> bool:
    return bool(eval_ctx.autoescape) and not isinstance(value, Markup)


def dj_add(value: Any, arg: Any) -> Any:
    value = input_value(value)
    try:
        return int(value) + int(arg)
    except (TypeError, ValueError):
        pass
    if isinstance(value, str) and isinstance(arg, str) and not isinstance(value, Markup):
        return value + str(arg)  # plain text: escaped on output, like Django
    try:
        return value + arg
    except Exception:
        return ""


def dj_addslashes(value: Any) -> Any:
    text = input_text(value).replace("\\", "\\\\").replace('"', '\\"').replace("'", "\\'")
    return _like(value, text)


def dj_capfirst(value: Any) -> Any:
    text = input_text(value)
    return _like(value, text[:1].upper() + text[1:])


def dj_center(value: Any, width: Any) -> str:
    return input_text(value).center(int(width))


def dj_ljust(value: Any, width: Any) -> str:
    return input_text(value).ljust(int(width))


def dj_rjust(value: Any, width: Any) -> str:
    return input_text(value).rjust(int(width))


def dj_cut(value: Any, arg: Any) -> Any:
    return _like(value, input_text(value).replace(str(arg), ""))


def dj_date(value: Any, format_string: Any = None) -> str:
    """Django's ``date``: Django format characters; accepts ISO strings and UTC timestamps."""
    parsed = to_date(input_value(value))
    if parsed is None:
        return ""
    format_string = str(format_string or "DATE_FORMAT")
    try:
        return format_date(parsed, NAMED_FORMATS.get(format_string, format_string))
    except FormatError:
        return ""


def dj_time(value: Any, format_string: Any = None) -> str:
    """Django's ``time``: like ``date`` but only time format characters are allowed."""
    parsed = to_date(input_value(value))
    if isinstance(parsed, datetime):
        parsed = parsed.timetz()
    if not isinstance(parsed, time):
        return ""
    format_string = str(format_string or "TIME_FORMAT")
    try:
        return format_date(parsed, NAMED_FORMATS.get(format_string, format_string))
    except FormatError:
        return ""


def dj_default(value: Any, default: Any) -> Any:
    return input_value(value) or default


def dj_default_if_none(value: Any, default: Any) -> Any:
    value = input_value(value)
    return default if value is None else value


@pass_environment
def dj_dictsort(env: Environment, value: Any, path: Any, reverse: bool = False) -> Any:
    """Sort a list of dicts (or objects) by a key path; "" when an item lacks the key."""

    def key(item: Any) -> Any:
        for name in str(path).split("."):
            item = lookup(env, item, name)
            if item is MISSING:
                raise LookupError(name)
        return item

    try:
        return sorted(input_value(value), key=key, reverse=reverse)
    except (TypeError, LookupError):
        return ""


@pass_environment
def dj_dictsortreversed(env: Environment, value: Any, path: Any) -> Any:
    return dj_dictsort(env, value, path, reverse=True)


def dj_divisibleby(value: Any, arg: Any) -> bool:
    try:
        return int(input_value(value)) % int(arg) == 0
    except (TypeError, ValueError, ZeroDivisionError):
        return False


_JS_ESCAPES = {ord(char): f"\\u{ord(char):04X}" for char in "\\'\"<>&=-;`\u2028\u2029"}
_JS_ESCAPES.update({code: f"\\u{code:04X}" for code in range(32)})


def dj_escapejs(value: Any) -> Markup:
    """Escape text for use inside a JavaScript string literal."""
    return Markup(input_text(value).translate(_JS_ESCAPES))  # noqa: S704 no HTML characters left


def dj_filesizeformat(value: Any) -> str:
    """A byte count as "13 KB", "4.1 MB"... (non-breaking space, as Django)."""
    try:
        size = float(input_value(value))
    except (TypeError, ValueError):
        return "0\xa0bytes"
    sign, size = ("-" if size < 0 else ""), abs(size)
    if size < 1024:
        text = "1 byte" if size == 1 else f"{int(size)} bytes"
    else:
        for exponent, unit in enumerate(("KB", "MB", "GB", "TB", "PB"), start=1):
            if size < 1024 ** (exponent + 1) or unit == "PB":
                text = f"{size / 1024**exponent:.1f} {unit}"
                break
    return (sign + text).replace(" ", "\xa0")


def dj_first(value: Any) -> Any:
    try:
        return input_value(value)[0]
    except (IndexError, KeyError, TypeError):
        return ""


def dj_last(value: Any) -> Any:
    try:
        return input_value(value)[-1]
    except (IndexError, KeyError, TypeError):
        return ""


def dj_floatformat(value: Any, arg: Any = -1) -> str:
    """Django's ``floatformat``: round half up to ``|arg|`` places; a negative ``arg`` drops
    the decimals of whole numbers; a ``g`` suffix groups thousands."""
    value = input_value(value)
    spec = str(arg)
    grouping = False
    while spec and spec[-1] in "gu":
        grouping, spec = grouping or spec[-1] == "g", spec[:-1]
    try:
        number = decimal.Decimal(str(value))
    except decimal.InvalidOperation:
        try:
            number = decimal.Decimal(str(float(value)))
        except (TypeError, ValueError, decimal.InvalidOperation):
            return ""
    try:
        places = int(spec)
    except ValueError:
        return str(value)
    if not number.is_finite():
        return str(value)
    if places < 0 and number == number.to_integral_value():
        places = 0
    precision = decimal.Context(prec=max(28, number.adjusted() + abs(places) + 2))
    rounded = number.quantize(
        decimal.Decimal(1).scaleb(-abs(places)),
        rounding=decimal.ROUND_HALF_UP,
        context=precision,
    )
    if rounded.is_zero():
        rounded = abs(rounded)  # no "-0.0"
    return format(rounded, ",f" if grouping else "f")


@pass_eval_context
def dj_join(eval_ctx: EvalContext, value: Any, separator: Any) -> Any:
    value = input_value(value)
    try:
        items = list(value)
    except TypeError:
        return value
    if eval_ctx.autoescape:
        return escape(separator).join(items)  # escapes each item that is not safe
    return str(separator).join(str(item) for item in items)


def dj_length(value: Any) -> int:
    try:
        return len(input_value(value))
    except (TypeError, ValueError):
        return 0


def dj_length_is(value: Any, length: Any) -> Any:
    try:
        return len(input_value(value)) == int(length)
    except (TypeError, ValueError):
        return ""


@pass_eval_context
def dj_linebreaks(eval_ctx: EvalContext, value: Any) -> Markup:
    """Paragraphs (``<p>``) for blank-line separated text, ``<br>`` for single newlines."""
    do_escape = _escape_input(eval_ctx, value)
    text = re.sub(r"\r\n|\r", "\n", input_text(value))
    paragraphs = []
    for paragraph in re.split(r"\n{2,}", text):
        paragraph = str(escape(paragraph)) if do_escape else paragraph
        paragraphs.append(f"<p>{paragraph.replace(chr(10), '<br>')}</p>")
    return Markup("\n\n".join(paragraphs))  # noqa: S704 text escaped above


@pass_eval_context
def dj_linebreaksbr(eval_ctx: EvalContext, value: Any) -> Markup:
    text = re.sub(r"\r\n|\r", "\n", input_text(value))
    if _escape_input(eval_ctx, value):
        text = str(escape(text))
    return Markup(text.replace("\n", "<br>"))  # noqa: S704 text escaped above


def dj_lower(value: Any) -> str:
    return input_text(value).lower()


def dj_upper(value: Any) -> str:
    return input_text(value).upper()


def dj_make_list(value: Any) -> list[str]:
    return list(input_text(value))


def dj_pluralize(value: Any, suffixes: Any = "s") -> str:
    """``"s"`` (or the plural of ``"y,ies"``) unless the value, or its length, is 1."""
    text = str(suffixes)
    bits = (text if "," in text else "," + text).split(",")
    if len(bits) > 2:
        return ""
    singular, plural = bits
    value = input_value(value)
    try:
        return singular if float(value) == 1 else plural
    except ValueError:
        return ""
    except TypeError:
        pass
    try:
        return singular if len(value) == 1 else plural
    except TypeError:
        return ""


def dj_random(value: Any) -> Any:
    try:
        return random.choice(input_value(value))  # noqa: S311 not for security
    except (IndexError, TypeError, KeyError):
        return ""


def dj_safeseq(value: Any) -> list[Markup]:
    return [Markup(str(item)) for item in dj_iter(value)]  # noqa: S704 the filter's purpose


def dj_slice(value: Any, spec: Any) -> Any:
    """Python slicing with Django's argument: ``"2"`` is ``[:2]``, ``"1:"``, ``"::2"``..."""
    value = input_value(value)
    try:
        bounds = [int(bit) if bit.strip() else None for bit in str(spec).split(":")]
        return value[slice(*bounds)]
    except (TypeError, ValueError):
        return value


def dj_slugify(value: Any) -> str:
    text = (
        unicodedata.normalize("NFKD", input_text(value)).encode("ascii", "ignore").decode("ascii")
    )
    text = re.sub(r"[^\w\s-]", "", text.lower())
    return re.sub(r"[-\s]+", "-", text).strip("-_")


def dj_spaceless(value: Any) -> Any:
    """Remove whitespace between HTML tags (the ``{% spaceless %}`` tag)."""
    return _like(value, re.sub(r">\s+<", "><", input_text(value).strip()))


def dj_stringformat(value: Any, spec: Any) -> str:
    """Python ``%`` formatting: ``stringformat:"03d"`` is ``"%03d" % value``."""
    value = input_value(value)
    if isinstance(value, tuple):
        value = str(value)
    try:
        formatted: str = ("%" + str(spec)) % value
        return formatted
    except (TypeError, ValueError, KeyError):
        return ""


_TAG_RE = re.compile(r"<[^<>]*>")


def dj_striptags(value: Any) -> Any:
    text = input_text(value)
    while True:
        stripped = _TAG_RE.sub("", text)
        if stripped == text:
            return _like(value, text)
        text = stripped


def dj_title(value: Any) -> str:
    text = input_text(value).title()
    text = re.sub(r"([a-z])'([A-Z])", lambda m: m.group(0).lower(), text)  # "They'Re" -> "They're"
    return re.sub(r"\d([A-Z])", lambda m: m.group(0).lower(), text)  # "1St" -> "1st"


def dj_truncatechars(value: Any, length: Any) -> Any:
    """At most ``length`` characters, the last one being "…" when text was cut."""
    try:
        limit = int(length)
    except (TypeError, ValueError):
        return value
    text = unicodedata.normalize("NFC", input_text(value))
    if limit <= 0:
        return ""
    if len(text) <= limit:
        return _like(value, text)
    return _like(value, text[: limit - 1] + "…")


def dj_truncatewords(value: Any, count: Any) -> Any:
    """The first ``count`` words, followed by " …" when text was cut."""
    try:
        limit = int(count)
    except (TypeError, ValueError):
        return value
    if limit <= 0:
        return ""
    words = input_text(value).split()
    text = " ".join(words[:limit]) + (" …" if len(words) > limit else "")
    return _like(value, text)


def dj_urlencode(value: Any, safe: Any = None) -> str:
    return quote(input_text(value), safe="/" if safe is None else str(safe))


_URL_RE = re.compile(r"https?://\S+", re.IGNORECASE)
_BARE_URL_RE = re.compile(
    r"(www\.\S+|[\w.-]+\.(com|edu|gov|int|mil|net|org)(/\S*)?)", re.IGNORECASE
)
_EMAIL_RE = re.compile(r"[\w.+-]+@[\w-]+(\.[\w-]+)+")
_LEADING = "(<['\""
_TRAILING = ".,:;!)>'\""


@pass_eval_context
def dj_urlize(eval_ctx: EvalContext, value: Any) -> Markup:
    """Links for the URLs (``http://``, ``www.``, ``x.com``) and e-mail addresses in text."""
    do_escape = _escape_input(eval_ctx, value)
    out = []
    for word in re.split(r"(\s+)", input_text(value)):
        lead, middle, trail = "", word, ""
        while middle and middle[0] in _LEADING:
            lead, middle = lead + middle[0], middle[1:]
        while middle and middle[-1] in _TRAILING:
            middle, trail = middle[:-1], middle[-1] + trail
        if _URL_RE.fullmatch(middle):
            href, rel = middle, ' rel="nofollow"'
        elif _BARE_URL_RE.fullmatch(middle):
            href, rel = "http://" + middle, ' rel="nofollow"'
        elif _EMAIL_RE.fullmatch(middle):
            href, rel = "mailto:" + middle, ""
        else:
            out.append(str(escape(word)) if do_escape else word)
            continue
        if do_escape:
            lead, middle, trail = str(escape(lead)), str(escape(middle)), str(escape(trail))
        out.append(f'{lead}<a href="{escape(href)}"{rel}>{middle}</a>{trail}')
    return Markup("".join(out))  # noqa: S704 text escaped above


def dj_url_target_blank(value: Any) -> Any:
    """PlugIt's filter: every link opens in a new window (``<a `` -> ``<a target="_blank" ``)."""
    return _like(value, input_text(value).replace("<a ", '<a target="_blank" '))


def dj_wordcount(value: Any) -> int:
    return len(input_text(value).split())


def dj_yesno(value: Any, choices: Any = "yes,no,maybe") -> Any:
    """``"yes"``, ``"no"`` or ``"maybe"`` (for None), or the given comma-separated choices."""
    bits = str(choices).split(",")
    if len(bits) < 2:
        return value
    yes, no, maybe = [*bits, bits[1]][:3]
    value = input_value(value)
    if value is None:
        return maybe
    return yes if value else no


# --------------------------------------------------------------------------------------------
# Filter table
# --------------------------------------------------------------------------------------------

ARG_NONE, ARG_OPTIONAL, ARG_REQUIRED = "none", "optional", "required"


class _Filter(NamedTuple):
    jinja_name: str  # name used in translated code
    arg: str  # ARG_NONE, ARG_OPTIONAL or ARG_REQUIRED
    function: Callable[..., Any] | None  # registered by install(); None for Jinja builtins


def _dj(function: Callable[..., Any], arg: str = ARG_NONE) -> _Filter:
    return _Filter(function.__name__, arg, function)


FILTERS: dict[str, _Filter] = {
    # Jinja's own filters already behave like Django's
    "safe": _Filter("safe", ARG_NONE, None),
    "escape": _Filter("escape", ARG_NONE, None),
    "force_escape": _Filter("forceescape", ARG_NONE, None),
    # values
    "default": _dj(dj_default, ARG_REQUIRED),
    "default_if_none": _dj(dj_default_if_none, ARG_REQUIRED),
    "yesno": _dj(dj_yesno, ARG_OPTIONAL),
    "pluralize": _dj(dj_pluralize, ARG_OPTIONAL),
    # numbers and dates
    "add": _dj(dj_add, ARG_REQUIRED),
    "divisibleby": _dj(dj_divisibleby, ARG_REQUIRED),
    "floatformat": _dj(dj_floatformat, ARG_OPTIONAL),
    "filesizeformat": _dj(dj_filesizeformat),
    "date": _dj(dj_date, ARG_OPTIONAL),
    "time": _dj(dj_time, ARG_OPTIONAL),
    # text
    "lower": _dj(dj_lower),
    "upper": _dj(dj_upper),
    "title": _dj(dj_title),
    "capfirst": _dj(dj_capfirst),
    "cut": _dj(dj_cut, ARG_REQUIRED),
    "addslashes": _dj(dj_addslashes),
    "slugify": _dj(dj_slugify),
    "center": _dj(dj_center, ARG_REQUIRED),
    "ljust": _dj(dj_ljust, ARG_REQUIRED),
    "rjust": _dj(dj_rjust, ARG_REQUIRED),
    "stringformat": _dj(dj_stringformat, ARG_REQUIRED),
    "truncatechars": _dj(dj_truncatechars, ARG_REQUIRED),
    "truncatewords": _dj(dj_truncatewords, ARG_REQUIRED),
    "wordcount": _dj(dj_wordcount),
    "make_list": _dj(dj_make_list),
    # HTML, URLs and JavaScript
    "linebreaks": _dj(dj_linebreaks),
    "linebreaksbr": _dj(dj_linebreaksbr),
    "striptags": _dj(dj_striptags),
    "urlize": _dj(dj_urlize),
    "url_target_blank": _dj(dj_url_target_blank),
    "urlencode": _dj(dj_urlencode, ARG_OPTIONAL),
    "escapejs": _dj(dj_escapejs),
    "safeseq": _dj(dj_safeseq),
    # lists
    "length": _dj(dj_length),
    "length_is": _dj(dj_length_is, ARG_REQUIRED),
    "first": _dj(dj_first),
    "last": _dj(dj_last),
    "join": _dj(dj_join, ARG_REQUIRED),
    "slice": _dj(dj_slice, ARG_REQUIRED),
    "random": _dj(dj_random),
    "dictsort": _dj(dj_dictsort, ARG_REQUIRED),
    "dictsortreversed": _dj(dj_dictsortreversed, ARG_REQUIRED),
}
#: Filters used by translated tags only (not Django filters).
INTERNAL_FILTERS = {"dj_spaceless": dj_spaceless}

"""Runtime helpers: the ``dj_*`` globals that translated code calls.

They give translated code Django's semantics: a lookup ``a.b`` tries ``a["b"]``, then the
attribute, then a list index, and calls argument-less callables; missing values and failing
comparisons are silent. Attributes are read only after the sandbox's ``is_safe_attribute``
agrees, and calls go through ``Environment.call``.
"""

from __future__ import annotations

import inspect
import operator
from collections.abc import Callable
from datetime import datetime
from typing import Any, NamedTuple
from urllib.parse import quote

from jinja2 import Environment, TemplateRuntimeError, Undefined, pass_context, pass_environment
from jinja2.exceptions import SecurityError
from jinja2.runtime import Context
from jinja2.utils import missing

from .dates import format_date

# --------------------------------------------------------------------------------------------
# Runtime helpers: globals used by translated code
# --------------------------------------------------------------------------------------------

MISSING = object()


def input_value(value: Any) -> Any:
    """A filter's input: Django gives filters an empty string for a missing variable."""
    return "" if isinstance(value, Undefined) else value


def input_text(value: Any) -> str:
    """A filter's input as text (Django's ``stringfilter``)."""
    return str(input_value(value))


def lookup(env: Environment, obj: Any, name: str) -> Any:
    """One Django lookup step: ``obj[name]``, then the attribute, then ``obj[int(name)]``.

    Returns ``MISSING`` when nothing is found. In a sandbox an attribute is read only if
    ``is_safe_attribute`` allows it (else SecurityError), and is then fetched through
    ``env.getattr`` so that the sandbox's wrappers (``str.format``) apply. Underscore names are
    never read.
    """
    try:
        return obj[name]
    except (TypeError, LookupError, AttributeError, ValueError):
        pass
    if name.startswith("_"):
        raise SecurityError(f"access to attribute {name!r} of {type(obj).__name__!r} is unsafe")
    try:
        value = getattr(obj, name)
    except AttributeError:
        pass
    else:
        if not env.sandboxed:
            return value
        if not env.is_safe_attribute(obj, name, value):  # type: ignore[attr-defined]
            raise SecurityError(
                f"access to attribute {name!r} of {type(obj).__name__!r} object is unsafe"
            )
        return env.getattr(obj, name)
    if name.isdigit():
        try:
            return obj[int(name)]
        except (TypeError, LookupError, AttributeError, ValueError):
            pass
    return MISSING


def _call_if_callable(context: Context, value: Any) -> Any:
    """Django calls a callable it finds during a lookup, if it needs no argument."""
    if not callable(value) or isinstance(value, (type, Undefined)):
        return value
    if getattr(value, "do_not_call_in_templates", False):
        return value
    env = context.environment
    if getattr(value, "alters_data", False):
        return env.undefined(hint="a method that alters data is not called")
    try:
        inspect.signature(value).bind()
    except TypeError:
        return env.undefined(hint="a callable that needs arguments is not called")
    except ValueError:
        pass  # no signature available: try the call
    if env.sandboxed:
        return env.call(context, value)  # type: ignore[attr-defined]
    return context.call(value)


@pass_context
def dj_get(context: Context, obj: Any, *names: str) -> Any:
    """``obj.name1.name2`` with Django's lookup rules; undefined when a step finds nothing."""
    env = context.environment
    for name in names:
        if isinstance(obj, Undefined):
            return obj
        value = lookup(env, obj, str(name))
        if value is MISSING:
            return env.undefined(obj=obj, name=name)
        obj = _call_if_callable(context, value)
    return obj


@pass_context
def dj_var(context: Context, name: str) -> Any:
    """A context variable whose name Jinja reserves (``loop``, ``true``, ``not``...)."""
    value = context.resolve_or_missing(name)
    return context.environment.undefined(name=name) if value is missing else value


def _none_if_undefined(value: Any) -> Any:
    return None if isinstance(value, Undefined) else value


_COMPARISONS: dict[str, Callable[[Any, Any], Any]] = {
    "==": operator.eq,
    "!=": operator.ne,
    "<": operator.lt,
    ">": operator.gt,
    "<=": operator.le,
    ">=": operator.ge,
    "in": lambda left, right: left in right,
    "not in": lambda left, right: left not in right,
    "is": operator.is_,
    "is not": operator.is_not,
}


def dj_compare(left: Any, op: str, right: Any) -> bool:
    """A Django ``{% if %}`` comparison: missing values are None, errors mean False."""
    try:
        return bool(_COMPARISONS[op](_none_if_undefined(left), _none_if_undefined(right)))
    except (TypeError, ValueError):
        return False


def dj_iter(value: Any, reverse: bool = False) -> list[Any]:
    """The sequence of a ``{% for %}`` loop: nothing for a missing or None value."""
    if value is None or isinstance(value, Undefined):
        return []
    items = list(value)
    if reverse:
        items.reverse()
    return items


def dj_widthratio(value: Any, max_value: Any, max_width: Any) -> str:
    """``{% widthratio %}``: ``round(value / max_value * max_width)``, "0" when max is 0."""
    try:
        width = int(_none_if_undefined(max_width))
    except (TypeError, ValueError):
        raise TemplateRuntimeError("widthratio final argument must be a number") from None
    try:
        ratio = float(_none_if_undefined(value)) / float(_none_if_undefined(max_value)) * width
        return str(round(ratio))
    except ZeroDivisionError:
        return "0"
    except (TypeError, ValueError, OverflowError):
        return ""


def dj_firstof(*values: Any) -> Any:
    """``{% firstof %}``: the first true value, else an empty string."""
    return next((value for value in values if value), "")


def dj_now(format_string: str) -> str:
    """``{% now "format" %}``: the current local time in a Django date format."""
    return format_date(datetime.now(), str(format_string))


class _Group(NamedTuple):
    grouper: Any
    list: list[Any]


@pass_environment
def dj_regroup(env: Environment, value: Any, path: str) -> list[_Group]:
    """``{% regroup %}``: consecutive items with the same ``path`` value, as (grouper, list)."""
    groups: list[_Group] = []
    for item in dj_iter(value):
        key: Any = item
        for name in path.split("."):
            key = lookup(env, key, name)
            if key is MISSING:
                key = None
                break
        if groups and groups[-1].grouper == key:
            groups[-1].list.append(item)
        else:
            groups.append(_Group(key, [item]))
    return groups


@pass_context
def dj_static(context: Context, path: Any) -> str:
    """``{% static "path" %}``: the path under the proxy's ``STATIC_URL``."""
    base = context.resolve_or_missing("STATIC_URL")
    base = "" if base is missing or base is None or isinstance(base, Undefined) else str(base)
    return base + quote(input_text(path), safe="/~!*()'")


GLOBALS: dict[str, Any] = {
    "dj_get": dj_get,
    "dj_var": dj_var,
    "dj_compare": dj_compare,
    "dj_iter": dj_iter,
    "dj_widthratio": dj_widthratio,
    "dj_firstof": dj_firstof,
    "dj_now": dj_now,
    "dj_regroup": dj_regroup,
    "dj_static": dj_static,
}

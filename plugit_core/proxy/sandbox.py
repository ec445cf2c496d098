"""The sandbox that renders service templates: templates see data, never objects, within a budget.

A mounted service is not trusted.  Its templates run in the proxy's process, so two things are
enforced here, for both dialects (the Django dialect is translated to Jinja2 first):

* **Data, not objects.**  Attributes and methods are read only on JSON-like values (dict, list,
  tuple, str, :class:`~markupsafe.Markup`, int, float, bool, None) and on Jinja's own template
  objects (``loop``, ``namespace()``, ``cycler()``, ``self``/``super()``), and only the names in
  :data:`ALLOWED_ATTRIBUTES`: methods that neither change their object nor build large values.
  Anything else in a context (the callables the proxy provides) is opaque: it can be called,
  never inspected.  :func:`template_data` turns what plugins add into such values.
* **A budget per render** (:class:`RenderBudget`): CPU time of the rendering thread, loop
  iterations and calls, the size of the output, and the size of any string or sequence the
  template builds.  ``*``, ``**``, ``+`` and ``%`` are checked before they run, every filter
  whose result can outgrow its input is checked from its arguments, loops and calls are
  counted, and every value written out is measured.  Going over raises :class:`OverBudget` at
  once, so the thread is free again.

This module is I/O-free: :class:`ServiceSandbox` is an ordinary Jinja2 environment whose
renders are metered by :meth:`ServiceSandbox.metered`.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import inspect
import re
import time
import types
from collections.abc import Callable, Iterator, Mapping, Sized
from dataclasses import dataclass
from typing import Any, TypeGuard

from jinja2 import nodes
from jinja2.compiler import CodeGenerator, Frame
from jinja2.exceptions import SecurityError
from jinja2.runtime import BlockReference, Context, LoopContext, TemplateReference, Undefined
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.utils import Cycler, Joiner, Namespace
from jinja2.visitor import NodeTransformer
from markupsafe import Markup

__all__ = [
    "ALLOWED_ATTRIBUTES",
    "OverBudget",
    "RenderBudget",
    "ServiceSandbox",
    "TemplateFunction",
    "template_data",
]

#: The most bits an integer computed by a template may have (about 4,900 decimal digits).
MAX_INT_BITS = 16384
#: Strings this short and integers this small are within every budget (``max_size`` >= 1024).
_SMALL = 1024
_SMALL_INT = 1 << 62
#: Loop iterations and calls between two reads of the thread's CPU clock.
_CPU_CHECK_EVERY = 8

_STR_METHODS = frozenset(
    """capitalize casefold count endswith find index isalnum isalpha isascii isdecimal isdigit
    islower isnumeric isspace istitle isupper join lower lstrip partition removeprefix
    removesuffix replace rfind rindex rpartition rsplit rstrip split splitlines startswith strip
    swapcase title upper""".split()
)
#: The attributes a template may read, by type: nothing else of any object is reachable.
ALLOWED_ATTRIBUTES: Mapping[type, frozenset[str]] = {
    dict: frozenset({"get", "items", "keys", "values"}),
    list: frozenset({"count", "index"}),
    tuple: frozenset({"count", "index"}),
    str: _STR_METHODS,
    Markup: _STR_METHODS | {"striptags", "unescape"},
    LoopContext: frozenset(
        """index index0 revindex revindex0 first last length depth depth0 previtem nextitem
        cycle changed""".split()
    ),
    Cycler: frozenset({"current", "next", "reset"}),
    BlockReference: frozenset({"super"}),
}
_DICT_ATTRIBUTES = frozenset(dir(dict))
_DATA_SCALARS = (str, int, float, bool, type(None))
#: Classes a template may call: Jinja's ``dict()``, ``cycler()``, ``joiner()``, ``namespace()``.
_CALLABLE_TYPES = frozenset({dict, Cycler, Joiner, Namespace})
_PRINTF_FIELD = re.compile(
    r"%(?:\([^)]*\))?[#0\- +]*(\*|\d+)?(?:\.(\*|\d+))?[hlL]?[diouxXeEfFgGcrsa%]"
)


@dataclass(frozen=True)
class RenderBudget:
    """What one page render of a service may spend (one per mount, see the ``render_*`` keys).

    ``cpu_time``: seconds of CPU of the rendering thread; ``max_iterations``: loop iterations,
    calls and filter runs together; ``max_output``: characters of the page; ``max_size``:
    characters (or items) of any one string or sequence the template builds, and the largest
    number it may hand a filter.
    """

    cpu_time: float = 0.5
    max_iterations: int = 100_000
    max_output: int = 5_000_000
    max_size: int = 1_000_000


class OverBudget(Exception):  # noqa: N818 (a refusal, like jinja2's SecurityError)
    """A render went over its :class:`RenderBudget`; ``what`` names the limit."""

    def __init__(self, what: str, message: str) -> None:
        super().__init__(f"{what}: {message}")
        self.what = what


class _Meter:
    """The running account of one render (and of the includes it makes)."""

    __slots__ = ("budget", "cpu_deadline", "output", "steps")

    def __init__(self, budget: RenderBudget) -> None:
        self.budget = budget
        self.steps = 0
        self.output = 0
        self.cpu_deadline = time.thread_time() + budget.cpu_time

    def tick(self) -> None:
        self.steps += 1
        if self.steps > self.budget.max_iterations:
            raise OverBudget(
                "iterations",
                f"more than {self.budget.max_iterations} loop iterations and calls",
            )
        if self.steps % _CPU_CHECK_EVERY == 0:
            self.check_cpu()

    def check_cpu(self) -> None:
        if time.thread_time() > self.cpu_deadline:
            raise OverBudget("cpu_time", f"more than {self.budget.cpu_time} s of CPU")

    def wrote(self, size: int) -> None:
        self.output += size
        if self.output > self.budget.max_output:
            raise OverBudget(
                "output", f"the page is larger than {self.budget.max_output} characters"
            )


_METER: contextvars.ContextVar[_Meter | None] = contextvars.ContextVar(
    "plugit_render_meter", default=None
)


def _tick() -> None:
    meter = _METER.get()
    if meter is not None:
        meter.tick()


def _weight(value: Any, limit: int) -> int:
    """The size of ``value`` (string characters plus items, nested), counted up to ``limit``."""
    if isinstance(value, str):
        return len(value)
    if isinstance(value, (list, tuple, dict)):
        total = len(value)
        items = value.values() if isinstance(value, dict) else value
        for item in items:
            if total > limit:
                break
            if isinstance(item, (str, list, tuple, dict)):
                total += _weight(item, limit - total)
        return total
    return 0


class TemplateFunction:
    """A function a template may call and nothing more: it has no attribute to read.

    What it returns goes through :func:`template_data`, so a template never receives an object
    from it either.
    """

    __slots__ = ("__function",)

    def __init__(self, function: Callable[..., Any]) -> None:
        self.__function = function

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return template_data(self.__function(*args, **kwargs))

    def __repr__(self) -> str:
        return "<function>"


def template_data(value: Any, *, where: str = "value") -> Any:
    """``value`` as a template may see it: JSON-like data, Markup, or an opaque function.

    Tuples become lists and mapping keys must be strings.  Raises TypeError, naming ``where``,
    for anything else (an object would give the template its attributes).
    """
    if isinstance(value, _DATA_SCALARS):
        return value  # Markup is a str
    if isinstance(value, (list, tuple)):
        return [template_data(item, where=f"{where}[{i}]") for i, item in enumerate(value)]
    if isinstance(value, dict):
        data = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"{where}: keys must be strings, got {type(key).__name__}")
            data[key] = template_data(item, where=f"{where}.{key}")
        return data
    if isinstance(value, TemplateFunction):
        return value
    if isinstance(value, (types.FunctionType, types.BuiltinFunctionType, functools.partial)):
        return TemplateFunction(value)
    raise TypeError(
        f"{where}: a {type(value).__name__} is not template data "
        "(use dicts, lists, strings, numbers, booleans, None, Markup or functions)"
    )


class _MeteredIterator:
    """Items of an iterable, each counted as one step: at most ``limit`` items, and at most
    ``limit`` characters in the strings among them."""

    __slots__ = ("_chars", "_count", "_items", "_limit")

    def __init__(self, iterable: Any, limit: int) -> None:
        self._items = iter(iterable)
        self._count = 0
        self._chars = 0
        self._limit = limit

    def __iter__(self) -> _MeteredIterator:
        return self

    def __next__(self) -> Any:
        item = next(self._items)
        self._count += 1
        if isinstance(item, str):
            self._chars += len(item)
        if self._count > self._limit or self._chars > self._limit:
            raise OverBudget("size", f"a sequence larger than {self._limit} items or characters")
        _tick()
        return item


class _BudgetCodeGenerator(CodeGenerator):
    """Jinja2's code generator, with every loop's items counted and every ``~`` measured."""

    def visit_Template(self, node: nodes.Template, frame: Frame | None = None) -> None:  # noqa: N802 (jinja2 visitor name)
        _Instrument().visit(node)
        super().visit_Template(node, frame)


class _Instrument(NodeTransformer):
    def visit_For(self, node: nodes.For) -> nodes.Node:  # noqa: N802 (jinja2 visitor name)
        self.generic_visit(node)
        node.iter = _environment_call("plugit_loop", node.iter)
        return node

    def visit_Concat(self, node: nodes.Concat) -> nodes.Node:  # noqa: N802 (jinja2 visitor name)
        self.generic_visit(node)
        return _environment_call("plugit_sized", node)


def _environment_call(name: str, argument: nodes.Node) -> nodes.Call:
    call = nodes.Call(nodes.EnvironmentAttribute(name), [argument], [], None, None)
    call.set_lineno(argument.lineno or 1)
    return call


class ServiceSandbox(ImmutableSandboxedEnvironment):
    """The environment of service templates (see the module's docstring).

    ``budget`` is the default for :meth:`metered`.  Renders outside :meth:`metered` still get
    every size check, but no count of steps and no CPU limit.
    """

    code_generator_class = _BudgetCodeGenerator
    intercepted_binops = frozenset({"*", "**", "+", "%"})

    def __init__(self, *args: Any, budget: RenderBudget | None = None, **kwargs: Any) -> None:
        kwargs.setdefault("finalize", self._finalize)
        super().__init__(*args, **kwargs)
        self.budget = budget or RenderBudget()
        self.globals.pop("lipsum", None)  # builds text of any size, and nobody needs it
        self.globals["range"] = self._range
        self.filters = _BoundedFilters(self, self.filters)

    # -- metering -------------------------------------------------------------------------------

    @contextlib.contextmanager
    def metered(self, budget: RenderBudget | None = None) -> Iterator[_Meter]:
        """Meter the renders made inside (one account, shared by includes)."""
        outer = _METER.get()
        if outer is not None:
            yield outer
            return
        meter = _Meter(budget or self.budget)
        token = _METER.set(meter)
        try:
            yield meter
        finally:
            _METER.reset(token)

    def _limit(self) -> int:
        meter = _METER.get()
        return (meter.budget if meter is not None else self.budget).max_size

    def checked(self, value: Any) -> Any:
        """``value`` if it is within the size budget (iterators are counted as they go)."""
        limit = self._limit()
        if isinstance(value, (str, list, tuple, dict)):
            if len(value) > limit:
                raise OverBudget("size", f"a value larger than {limit} characters or items")
        elif isinstance(value, int) and not isinstance(value, bool):
            if value.bit_length() > MAX_INT_BITS:
                raise OverBudget("size", f"a number of more than {MAX_INT_BITS} bits")
        elif isinstance(value, Iterator) and not isinstance(value, _MeteredIterator):
            return _MeteredIterator(value, limit)
        return value

    def plugit_loop(self, iterable: Any) -> Any:
        """The items of a ``{% for %}`` loop, counted."""
        if isinstance(iterable, Undefined) or iterable is None:
            return iterable
        return _MeteredIterator(iterable, self._limit())

    def plugit_sized(self, value: Any) -> Any:
        """The result of ``~``, measured."""
        return self.checked(value)

    def _finalize(self, value: Any) -> Any:
        kind = type(value)
        if (kind is str or kind is Markup) and len(value) <= _SMALL:
            return value  # the usual case, and no budget is below it
        if kind is int and -_SMALL_INT < value < _SMALL_INT:
            return value
        if callable(value) and not isinstance(value, Undefined):
            return ""  # a function or method printed: its repr would show a memory address
        return self.checked(value) if not isinstance(value, Iterator) else value

    def _range(self, *args: Any) -> range:
        limit = min(self._limit(), 100_000)
        for arg in args:
            if not isinstance(arg, int):
                raise TypeError("range() takes whole numbers")
        span = range(*args)
        if len(span) > limit:
            raise OverBudget("size", f"a range of more than {limit} items")
        return span

    # -- what a template may read ---------------------------------------------------------------

    def is_safe_attribute(self, obj: Any, attr: str, value: Any) -> bool:
        if attr.startswith("_"):
            return False
        if isinstance(obj, Namespace):
            return True  # the template's own values
        for cls in type(obj).__mro__:
            allowed = ALLOWED_ATTRIBUTES.get(cls)
            if allowed is not None:
                return attr in allowed
        return False

    def is_safe_callable(self, obj: Any) -> bool:
        if isinstance(obj, type) and obj not in _CALLABLE_TYPES:
            return False
        return super().is_safe_callable(obj)

    def getattr(self, obj: Any, attribute: str) -> Any:
        # Data first: a field of a record is an item (``record.title``), unless it is one of
        # dict's own names, as in Jinja2.
        if isinstance(obj, dict) and attribute not in _DICT_ATTRIBUTES:
            try:
                return obj[attribute]
            except KeyError:
                return self.undefined(obj=obj, name=attribute)
            except TypeError:
                pass
        if isinstance(obj, Undefined):
            return super().getattr(obj, attribute)
        if isinstance(obj, TemplateReference):  # ``self.blockname``
            return self._item(obj, attribute)
        return self._attribute(obj, attribute)

    def getitem(self, obj: Any, argument: Any) -> Any:
        if isinstance(obj, Undefined):
            return super().getitem(obj, argument)
        # (a Namespace has no items: ns["x"] reads its attribute below, like ns.x)
        if isinstance(obj, (dict, list, tuple, str, TemplateReference)):
            try:
                return obj[argument]
            except (TypeError, LookupError):
                pass
            if isinstance(obj, TemplateReference) or not isinstance(argument, str):
                return self.undefined(obj=obj, name=argument)
        elif not isinstance(argument, str):
            return self.undefined(obj=obj, name=argument)
        return self._attribute(obj, argument)

    def _item(self, obj: Any, key: Any) -> Any:
        try:
            return obj[key]
        except (TypeError, LookupError):
            return self.undefined(obj=obj, name=key)

    def _attribute(self, obj: Any, attribute: str) -> Any:
        """``obj.attribute`` when the allow-list has it; an undefined value otherwise (one that
        raises SecurityError when used, if ``obj`` has such an attribute)."""
        if self.is_safe_attribute(obj, attribute, None):
            try:
                return getattr(obj, attribute)
            except AttributeError:
                return self.undefined(obj=obj, name=attribute)
        if isinstance(obj, (str, list, tuple, int, float)) and not hasattr(type(obj), attribute):
            return self.undefined(obj=obj, name=attribute)
        return self.unsafe_undefined(obj, attribute)

    # -- what a template may run ----------------------------------------------------------------

    def call(__self, __context: Context, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805
        _tick()
        if not __self.is_safe_callable(__obj):
            raise SecurityError(f"{type(__obj).__name__} objects cannot be called")
        owner = getattr(__obj, "__self__", None)
        if isinstance(owner, str) and isinstance(
            __obj, (types.BuiltinMethodType, types.MethodType)
        ):  # str's own methods, and Markup's (Python ones)
            args = __self._check_str_method(owner, __obj.__name__, args)
        return __self.checked(__context.call(__obj, *args, **kwargs))

    def _check_str_method(self, text: str, name: str, args: tuple[Any, ...]) -> tuple[Any, ...]:
        """Refuse ``str.join`` and ``str.replace`` calls that would build too large a string;
        the arguments to call with (an iterable given to ``join`` is read once, here)."""
        limit = self._limit()
        size = 0
        if name == "join" and args:
            items = list(_MeteredIterator(args[0], limit))
            args = (items, *args[1:])
            size = len(text) * len(items) + sum(len(i) for i in items if isinstance(i, str))
        elif name == "replace" and len(args) >= 2:
            old, new = str(args[0]), str(args[1])
            size = len(text) + (text.count(old) if old else len(text) + 1) * len(new)
        if size > limit:
            raise OverBudget("size", f"a string of more than {limit} characters")
        return args

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        limit = self._limit()
        if operator == "*":
            for seq, times in ((left, right), (right, left)):
                if isinstance(seq, (str, list, tuple)) and isinstance(times, int) and times > 1:
                    if _weight(seq, limit) * times > limit:
                        raise OverBudget("size", f"a value larger than {limit} characters")
            if _both_ints(left, right) and left.bit_length() + right.bit_length() > MAX_INT_BITS:
                raise OverBudget("size", f"a number of more than {MAX_INT_BITS} bits")
        elif operator == "**":
            if _both_ints(left, right) and abs(left) > 1 and right > 0:
                if right * left.bit_length() > MAX_INT_BITS:
                    raise OverBudget("size", f"a number of more than {MAX_INT_BITS} bits")
        elif operator == "+":
            if isinstance(left, (str, list, tuple)) and isinstance(right, (str, list, tuple)):
                if _weight(left, limit) + _weight(right, limit) > limit:
                    raise OverBudget("size", f"a value larger than {limit} characters")
        elif operator == "%" and isinstance(left, str):
            check_printf(left, limit)
        return self.checked(self.binop_table[operator](left, right))


def _both_ints(left: Any, right: Any) -> bool:
    return isinstance(left, int) and isinstance(right, int)


def check_printf(spec: str, limit: int) -> None:
    """Refuse a ``%`` format whose widths or precisions would build more than ``limit``."""
    for width, precision in _PRINTF_FIELD.findall(spec):
        for number in (width, precision):
            if number == "*":
                raise OverBudget("size", "'*' widths are not allowed in templates")
            if number and int(number) > limit:
                raise OverBudget("size", f"a width of more than {limit} characters")


class _BoundedFilters(dict[str, Any]):
    """The environment's filters, each wrapped by :func:`_bounded` when it is added."""

    def __init__(self, env: ServiceSandbox, filters: Mapping[str, Any]) -> None:
        super().__init__()
        self._env = env
        for name, function in filters.items():
            self[name] = function

    def __setitem__(self, name: str, function: Any) -> None:
        super().__setitem__(name, _bounded(self._env, name, function))

    def update(self, *args: Any, **kwargs: Any) -> None:
        for name, function in dict(*args, **kwargs).items():
            self[name] = function


#: Per filter: (name of the argument, what it is) for the arguments that make results grow.
#: "width": a number of characters; "text": text repeated per line/item; "count": items made.
_GROWTH: dict[str, dict[str, str]] = {
    "center": {"width": "width"},
    "dj_center": {"width": "width"},
    "dj_ljust": {"width": "width"},
    "dj_rjust": {"width": "width"},
    "indent": {"width": "per_line"},
    "wordwrap": {"wrapstring": "per_line"},
    "join": {"d": "per_item"},
    "dj_join": {"separator": "per_item"},
    "replace": {"new": "replace"},
    "batch": {"linecount": "count"},
    "slice": {"slices": "count"},
    "tojson": {"indent": "small"},
    "dj_floatformat": {"arg": "places"},
    "truncate": {"end": "text"},
}


_JOINS = frozenset({"join", "dj_join"})


def _bounded(env: ServiceSandbox, name: str, function: Any) -> Any:
    """``function`` with its arguments checked before it runs and its result after."""
    if getattr(function, "plugit_bounded", False) or not callable(function):
        return function
    growth = _GROWTH.get(name, {})
    try:
        signature: inspect.Signature | None = inspect.signature(function)
    except (TypeError, ValueError):
        signature = None

    subject_index = 1 if getattr(function, "jinja_pass_arg", None) is not None else 0

    @functools.wraps(function)
    def bounded(*args: Any, **kwargs: Any) -> Any:
        _tick()
        limit = env._limit()
        if (
            name in _JOINS
            and len(args) > subject_index
            and hasattr(args[subject_index], "__iter__")
            and not _sized(args[subject_index])
        ):
            # an iterable of unknown length: read it once, counted, to measure what it makes
            items = list(_MeteredIterator(args[subject_index], limit))
            args = (*args[:subject_index], items, *args[subject_index + 1 :])
        for value in (*args[1:], *kwargs.values()):
            if isinstance(value, int) and not isinstance(value, bool) and abs(value) > limit:
                raise OverBudget("size", f"{name}: a number larger than {limit}")
        if growth and signature is not None:
            _check_growth(name, growth, signature, args, kwargs, limit)
        if name == "format" and args:
            check_printf(str(args[0]), limit)
        elif name == "dj_stringformat" and len(args) > 1:
            check_printf("%" + str(args[1]), limit)
        elif name == "sum":
            start = kwargs.get("start", args[3] if len(args) > 3 else 0)
            if not isinstance(start, (int, float)):
                raise OverBudget("size", "sum() adds numbers only")
        return env.checked(function(*args, **kwargs))

    bounded.plugit_bounded = True  # type: ignore[attr-defined]
    return bounded


def _check_growth(
    name: str,
    growth: dict[str, str],
    signature: inspect.Signature,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    limit: int,
) -> None:
    try:
        bound = signature.bind(*args, **kwargs)
    except TypeError:
        return  # the call fails by itself
    bound.apply_defaults()
    values = bound.arguments
    subject = next(
        (values[p] for p in values if p not in ("eval_ctx", "environment", "context")), None
    )
    text = subject if isinstance(subject, str) else None
    for argument, kind in growth.items():
        value = values.get(argument)
        if value is None:
            continue
        size = 0
        if kind == "width":
            size = _as_int(value)
        elif kind == "per_line" and text is not None:
            per = len(value) if isinstance(value, str) else _as_int(value)
            width = _as_int(values.get("width", 79)) if name == "wordwrap" else 1
            lines = text.count("\n") + 1 if name == "indent" else len(text) // max(width, 1) + 1
            size = len(text) + lines * per
        elif kind == "per_item":
            size = (len(subject) if _sized(subject) else 0) * len(str(value))
        elif kind == "replace" and text is not None:
            old = str(values.get("old", ""))
            count = text.count(old) if old else len(text) + 1
            size = len(text) + count * len(str(value))
        elif kind == "count":
            size = _as_int(value) * (limit // 10_000 + 1)  # each one is a list: at most 10,000
        elif kind == "small":
            size = _as_int(value) * (limit // 16 + 1)  # an indent of at most 16
        elif kind == "places":
            size = abs(_as_int(str(value).rstrip("gu"))) * (limit // 1000 + 1)  # 1,000 places
        elif kind == "text":
            size = len(str(value))
        if size > limit:
            raise OverBudget("size", f"{name}: the result would be larger than {limit}")


def _sized(value: Any) -> TypeGuard[Sized]:
    return isinstance(value, (str, list, tuple, dict, range, Markup)) or (
        hasattr(value, "__len__") and not isinstance(value, Iterator)
    )


def _as_int(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError, OverflowError):
        return 0

"""The mechanical explorer: everything a template can reach from its context is data.

The payload corpus tries what its authors thought of; this walks everything.  It takes the exact
context the pipeline built for a page (captured by a plugin at ``plugit_template_context``), the
environment's globals, and the objects a template makes itself (``self``, ``loop``,
``namespace()``, ``cycler()``, ``joiner()``, a macro, a block), and follows every attribute and
item the mount's own sandbox would give a template (``env.getattr`` / ``env.getitem``, for every
name ``dir()`` knows), breadth first to depth 5.  Whatever is reached must be JSON-like data,
Markup, a Jinja template object, an opaque function, or a method of a data value that neither
changes it nor builds a large value; no string reached may hold a canary.
"""

from __future__ import annotations

import itertools
import types
from collections import deque
from typing import Any

import pytest
from hostile_site import Visitor
from jinja2.runtime import BlockReference, LoopContext, Macro, TemplateReference, Undefined
from jinja2.sandbox import SecurityError
from jinja2.utils import Cycler, Joiner, Namespace
from markupsafe import Markup
from security_site import MOUNTS, Site

MAX_DEPTH = 5
DATA = (dict, list, tuple, str, Markup, int, float, bool, type(None))
TEMPLATE_OBJECTS = (LoopContext, Namespace, Cycler, Joiner, TemplateReference, BlockReference)
# Methods of data that change it or can build a value much larger than their inputs.
UNSAFE_METHODS = frozenset(
    """center ljust rjust zfill format format_map expandtabs encode translate maketrans
    append extend insert pop remove clear update setdefault popitem sort reverse copy
    fromkeys mro""".split()
)
_numbers = itertools.count()


class _Endless:
    """What the sandbox answered by recursing until Python stopped it."""


def _children(env: Any, value: Any) -> list[tuple[str, Any]]:
    """What a template can get from ``value`` in one step, as the mount's sandbox answers."""
    found: list[tuple[str, Any]] = []
    names = set(dir(value))
    if isinstance(value, dict):
        names |= {k for k in value if isinstance(k, str)}
    for name in sorted(names):
        try:
            child = env.getattr(value, name)
        except SecurityError:
            continue
        except RecursionError:
            child = _Endless()
        if isinstance(child, Undefined):
            continue
        found.append((f".{name}", child))
    if isinstance(value, (list, tuple)):
        for index in range(min(len(value), 3)):
            found.append((f"[{index}]", env.getitem(value, index)))
    if isinstance(value, TemplateReference):
        for name in ("content", "title", "menubar"):
            try:
                child = env.getitem(value, name)
            except RecursionError:
                child = _Endless()
            if not isinstance(child, Undefined):
                found.append((f"[{name!r}]", child))
    return found


def _verdict(path: str, value: Any, site: Site) -> str | None:
    if isinstance(value, _Endless):
        return f"{path}: the sandbox's lookup recursed without end (RecursionError)"
    if isinstance(value, str):
        leaked = site.canaries.find(value)
        return f"{path} holds {leaked}" if leaked else None
    if isinstance(value, DATA) or isinstance(value, TEMPLATE_OBJECTS):
        return None
    if isinstance(value, types.BuiltinMethodType) and isinstance(value.__self__, DATA):
        if value.__name__ in UNSAFE_METHODS:
            return f"{path}: the method {value.__name__} of a {type(value.__self__).__name__}"
        return None
    if isinstance(value, (types.MethodType, types.BuiltinMethodType)) and isinstance(
        value.__self__, TEMPLATE_OBJECTS
    ):
        return None  # loop.cycle(), cycler.next(), block.super()
    if isinstance(value, Macro) or callable(value):
        return None  # a function: that it exposes nothing is checked by walking it
    return f"{path} is a {type(value).__module__}.{type(value).__qualname__}"


def explore(site: Site, env: Any, roots: dict[str, Any]) -> tuple[int, list[str]]:
    """Walk from ``roots``; return how many values were reached and what is wrong."""
    queue = deque((name, value, 0) for name, value in roots.items())
    visited: set[int] = set()
    problems: list[str] = []
    reached = 0
    while queue:
        path, value, depth = queue.popleft()
        if id(value) in visited and not isinstance(value, (int, float, bool, type(None))):
            continue
        visited.add(id(value))
        reached += 1
        problem = _verdict(path, value, site)
        if problem:
            problems.append(problem)
            continue  # what it leads to is reported through it
        if depth >= MAX_DEPTH or isinstance(value, types.BuiltinMethodType):
            continue
        for step, child in _children(env, value):
            queue.append((path + step, child, depth + 1))
    return reached, problems


@pytest.mark.parametrize("dialect", ["jinja", "django"])
def test_everything_reachable_from_a_page_context_is_data(
    site: Site, visitor: Visitor, dialect: str
) -> None:
    path = f"ctx{next(_numbers)}"
    data = {"title": "t", "rows": [{"n": 1, "deep": {"er": [1, "x", {"k": None}]}}], "flag": True}
    site.hostile.script(path, "<p>{{ title }}</p>", data=data)
    assert visitor.get(MOUNTS[dialect] + path).status_code == 200
    mount = "hostile" if dialect == "jinja" else "hostiledj"
    context = site.capture.contexts[(mount, path)]
    env = site.proxy.templates[mount].env
    assert {"plugit_include", "plugit_get_user", "ebuio_u", "csrf_field"} <= set(context)
    roots = {name: value for name, value in context.items()}
    roots.update({f"<global {name}>": value for name, value in env.globals.items()})
    reached, problems = explore(site, env, roots)
    assert reached > 50  # the walk went somewhere
    assert not problems, "\n".join(problems[:40])


@pytest.mark.parametrize("dialect", ["jinja", "django"])
def test_every_helper_in_the_context_is_opaque(site: Site, visitor: Visitor, dialect: str) -> None:
    """The functions a template is given can be called and nothing else: every name ``dir()``
    knows of them is refused by the sandbox."""
    path = f"ctx{next(_numbers)}"
    site.hostile.script(path, "<p>x</p>")
    assert visitor.get(MOUNTS[dialect] + path).status_code == 200
    mount = "hostile" if dialect == "jinja" else "hostiledj"
    context = site.capture.contexts[(mount, path)]
    env = site.proxy.templates[mount].env
    helpers = {k: v for k, v in context.items() if callable(v) and not isinstance(v, DATA)}
    assert {"plugit_include", "plugit_get_user"} <= set(helpers)
    for name, helper in helpers.items():
        reachable = [step for step, _child in _children(env, helper)]
        assert reachable == [], f"{name} exposes {reachable}"


def test_objects_a_template_makes_lead_nowhere(site: Site, visitor: Visitor) -> None:
    """``self``, ``loop``, ``namespace()``, ``cycler()``, ``joiner()``, a macro, a block and the
    environment's functions, as a template holds them, handed to a function and walked."""
    path = f"ctx{next(_numbers)}"
    template = (
        "{% macro m(x) %}{{ x }}{% endmacro %}{% block content %}b{% endblock %}"
        "{% for i in [1, 2] %}{% set ns = namespace(v=1) %}"
        "{{ plugit_test_grab(self, loop, ns, cycler(1, 2), joiner(','), m, range, lipsum, dict,"
        " plugit_include, plugit_get_user, csrf_field) }}{% endfor %}"
    )
    site.hostile.script(path, template)
    site.capture.grabbed.clear()
    assert visitor.get(MOUNTS["jinja"] + path).status_code == 200
    assert site.capture.grabbed, "the template's objects did not reach the explorer"
    env = site.proxy.templates["hostile"].env
    names = "self loop ns cycler joiner macro range lipsum dict include get_user csrf".split()
    roots = dict(zip(names, site.capture.grabbed[0], strict=True))
    reached, problems = explore(site, env, roots)
    assert reached > len(names)
    assert not problems, "\n".join(problems[:40])

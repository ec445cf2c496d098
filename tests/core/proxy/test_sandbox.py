"""The service template sandbox: data, not objects; a budget per render; the short path for
JSON fields changes no result."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jinja2
import pytest
from jinja2.sandbox import ImmutableSandboxedEnvironment, SecurityError
from markupsafe import Markup

from plugit_core.backends import Theme
from plugit_core.proxy.sandbox import OverBudget, RenderBudget, TemplateFunction, template_data
from plugit_core.proxy.templating import ServiceSandbox, ServiceTemplates


class Record(dict):  # type: ignore[type-arg]
    """A dict subclass: not JSON data, so it takes the sandbox's ordinary path."""

    secret = "attribute"


CASES = [
    ("{{ r.title }}", {"r": {"title": "Poll"}}),
    ("{{ r.missing }}|{{ r.missing is defined }}", {"r": {"title": "Poll"}}),
    ("{{ r.items is callable }}", {"r": {"items": "a key named like a method"}}),
    ("{{ r.keys()|list }}", {"r": {"a": 1, "b": 2}}),
    ("{{ r.get('a') }}", {"r": {"a": 1}}),
    ("{% for x in r.rows %}{{ x.n }},{% endfor %}", {"r": {"rows": [{"n": 1}, {"n": 2}]}}),
    ("{{ r['title'] }}", {"r": {"title": "Poll"}}),
    ("{{ r.0 }}", {"r": {"0": "zero"}}),
    ("{{ r.title|upper }}", {"r": {"title": "<b>"}}),
]


@pytest.mark.parametrize(("source", "context"), CASES)
def test_same_output_as_the_plain_sandbox(source: str, context: dict[str, Any]) -> None:
    ours = ServiceSandbox(autoescape=True).from_string(source).render(context)
    plain = ImmutableSandboxedEnvironment(autoescape=True).from_string(source).render(context)
    assert ours == plain


def test_attributes_of_a_dict_subclass_are_never_read() -> None:
    # The plain sandbox reads the class attribute; a record is data here: the item is shown.
    assert ServiceSandbox().from_string("{{ r.secret }}").render(r=Record(secret="item")) == "item"
    assert ServiceSandbox().from_string("{{ r.other }}").render(r=Record()) == ""


def test_fields_missing_fields_and_dict_names() -> None:
    env = ServiceSandbox()
    record = {"title": "Poll", "items": 1}
    assert env.getattr(record, "title") == "Poll"
    assert isinstance(env.getattr(record, "nope"), jinja2.Undefined)
    assert env.getattr(record, "items") == record.items  # dict's own names win, as in jinja2


@pytest.mark.parametrize(
    "source",
    [
        "{{ r.__class__.__mro__ }}",
        "{{ r.__class__.__subclasses__() }}",
        "{{ r.update({'x': 1}) }}",
        "{{ r.pop('title') }}",
    ],
)
def test_the_sandbox_still_refuses_internals_and_mutation(source: str) -> None:
    template = ServiceSandbox().from_string(source)
    with pytest.raises(SecurityError):
        template.render(r={"title": "Poll", "__class__": "planted"})


# -- data, not objects -----------------------------------------------------------------------------


class Helper:
    """An object that leads somewhere: what a template must never walk."""

    secret = "canary-attribute"

    def __init__(self) -> None:
        self.config = {"secret_key": "canary-config"}

    def grant_superuser(self) -> str:
        return "canary-called"

    def __call__(self, value: Any = None) -> str:
        return f"called with {value}"


OBJECT_WALKS = [
    "{{ h.secret }}",
    "{{ h.config }}",
    "{{ h.config.secret_key }}",
    "{{ h['config'] }}",
    "{{ h.grant_superuser() }}",
    "{{ h|attr('secret') }}",
    "{{ h.__call__ }}",
    "{{ h.__dict__ }}",
    "{{ h.__init__.__globals__ }}",
    "{{ (h,)|map(attribute='secret')|join }}",
    "{{ [h]|selectattr('secret')|list }}",
    "{% for k in h.__dict__ %}{{ k }}{% endfor %}",
    "{{ h.grant_superuser }}",
]


@pytest.mark.parametrize("source", OBJECT_WALKS)
def test_objects_in_a_context_expose_nothing(source: str) -> None:
    env = ServiceSandbox(autoescape=True)
    try:
        output = env.from_string(source).render(h=Helper())
    except (SecurityError, jinja2.UndefinedError, TypeError):
        return
    assert "canary" not in output


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("{% block a %}A{% endblock %}|{{ self.a() }}|{{ self['a']() }}", "A|A|A"),
        ("{{ self.missing }}|{{ self._TemplateReference__context }}", "|"),
        ("{{ self['_TemplateReference__context'] }}", ""),
        ("{% set ns = namespace(x=1) %}{{ ns['x'] }}{{ ns._Namespace__attrs }}", "1"),
        ("{% for i in [1] %}{{ loop['index'] }}{{ loop._iterator }}{% endfor %}", "1"),
        ("{{ d.items }}|{{ d['items'] }}|{{ d.keys }}|{{ cycler }}", "|2||"),
    ],
)
def test_jinjas_own_objects_expose_only_their_documented_names(source: str, expected: str) -> None:
    assert ServiceSandbox().from_string(source).render(d={"items": 2}) == expected


def test_an_object_in_a_context_can_still_be_called() -> None:
    env = ServiceSandbox(autoescape=True)
    assert env.from_string("{{ h(3) }}").render(h=Helper()) == "called with 3"


@pytest.mark.parametrize(
    "source",
    [
        "{{ s.center(1000) }}",
        "{{ s.ljust(10) }}",
        "{{ s.zfill(10) }}",
        "{{ s.format(1) }}",
        "{{ s.encode() }}",
        "{{ n.real() }}",
        "{{ l.append(1) }}",
        "{{ d.fromkeys([1]) }}",
        "{{ d.copy() }}",
    ],
)
def test_methods_outside_the_allow_list_are_refused(source: str) -> None:
    env = ServiceSandbox()
    with pytest.raises(SecurityError):
        env.from_string(source).render(s="x", n=1, l=[1], d={"a": 1})
    # Read without a call, a refused name is an empty value.
    assert env.from_string(source.split("(")[0] + " }}").render(s="x", n=1, l=[1], d={}) == ""


def test_allowed_methods_of_data_work() -> None:
    env = ServiceSandbox()
    source = (
        "{{ s.upper() }}|{{ s.split(',')|join('+') }}|{{ s.replace('a', 'b') }}|"
        "{{ d.get('k') }}|{{ d.items()|list }}|{{ l.index(2) }}|"
        "{% set ns = namespace(n=0) %}{% for i in l %}{% set ns.n = ns.n + i %}{% endfor %}"
        "{{ ns.n }}|{% for i in l %}{{ loop.index }}{{ loop.cycle('a', 'b') }}{% endfor %}"
    )
    rendered = env.from_string(source).render(s="a,c", d={"k": "v"}, l=[1, 2])
    assert rendered == "A,C|a+c|b,c|v|[('k', 'v')]|1|3|1a2b"


def test_plugin_values_become_data_or_opaque_functions() -> None:
    data = template_data({"a": (1, "x"), "f": len, "m": Markup("<b>")})
    assert data["a"] == [1, "x"]
    assert isinstance(data["f"], TemplateFunction)
    assert data["f"]([1, 2]) == 2
    assert isinstance(data["m"], Markup)
    with pytest.raises(TypeError, match=r"x\.h: a Helper is not template data"):
        template_data({"h": Helper()}, where="x")
    with pytest.raises(TypeError, match="keys must be strings"):
        template_data({1: "a"})


def test_a_template_function_has_no_attribute_to_read() -> None:
    function = TemplateFunction(lambda: Helper())
    env = ServiceSandbox()
    assert not [name for name in dir(function) if not name.startswith("_")]
    with pytest.raises(TypeError, match="not template data"):
        env.from_string("{{ f() }}").render(f=function)  # what it returns is checked too
    assert (
        env.from_string("{{ f.__call__ }}{{ f._TemplateFunction__function }}").render(f=function)
        == ""
    )
    with pytest.raises(SecurityError):
        env.from_string("{{ f._TemplateFunction__function() }}").render(f=function)


# -- the budget ----------------------------------------------------------------------------------

BOMBS = [
    pytest.param(
        "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
        "iterations",
        id="nested-loops",
    ),
    pytest.param("{{ 'x' * 400000000 }}", "size", id="string-times"),
    pytest.param("{{ [1, 2] * 400000000 }}", "size", id="list-times"),
    pytest.param("{{ 400000000 * 'x' }}", "size", id="times-string"),
    pytest.param("{{ 9 ** 9999999 }}", "size", id="power"),
    pytest.param(
        "{% set ns = namespace(n=7) %}{% for i in range(30) %}{% set ns.n = ns.n * ns.n %}"
        "{% endfor %}",
        "size",
        id="squaring",
    ),
    pytest.param("{{ '%400000000d' % 1 }}", "size", id="printf-width"),
    pytest.param("{{ '%.400000000f' % 1 }}", "size", id="printf-precision"),
    pytest.param("{{ '%*d' % (400000000, 1) }}", "size", id="printf-star"),
    pytest.param("{{ '%400000000d'|format(1) }}", "size", id="format-filter"),
    pytest.param("{{ 'x'|center(400000000) }}", "size", id="center"),
    pytest.param("{{ 'x'|indent(400000000) }}", "size", id="indent-number"),
    pytest.param("{{ ('a\\n' * 400000)|indent('x' * 1000) }}", "size", id="indent-per-line"),
    pytest.param("{{ ('a' * 100000)|replace('a', 'b' * 1000) }}", "size", id="replace-filter"),
    pytest.param("{{ ('a' * 100000).replace('a', 'b' * 1000) }}", "size", id="replace-method"),
    pytest.param("{{ ('a ' * 400000)|wordwrap(1, wrapstring='x' * 1000) }}", "size", id="wordwrap"),
    pytest.param("{{ range(100000)|join('x' * 1000) }}", "size", id="join-separator"),
    pytest.param(
        "{{ (('a' * 100000)|safe).replace('a', 'b' * 1000) }}", "size", id="markup-replace"
    ),
    pytest.param("{{ (('x' * 1000)|safe).join(['a'] * 50000) }}", "size", id="markup-join"),
    pytest.param("{{ ('x' * 1000).join(range(1000)|map('string')) }}", "size", id="join-method"),
    pytest.param(
        "{{ range(100000)|map('string')|map('center', 100000)|join }}", "size", id="lazy-join"
    ),
    pytest.param("{{ [1]|batch(400000000, 'x')|list }}", "size", id="batch"),
    pytest.param("{{ [1]|slice(400000000, 'x')|list }}", "size", id="slice"),
    pytest.param("{{ range(100000)|batch(10)|sum(start=[]) }}", "size", id="sum-of-lists"),
    pytest.param("{{ {'a': 1}|tojson(indent=400000000) }}", "size", id="tojson-indent"),
    pytest.param(
        "{% set ns = namespace(s='ab') %}{% for i in range(40) %}"
        "{% set ns.s = ns.s ~ ns.s %}{% endfor %}",
        "size",
        id="concat-doubling",
    ),
    pytest.param(
        "{% set ns = namespace(s='ab') %}{% for i in range(40) %}"
        "{% set ns.s = ns.s + ns.s %}{% endfor %}",
        "size",
        id="plus-doubling",
    ),
    pytest.param(
        "{% set ns = namespace(s='ab') %}{% for i in range(40) %}"
        "{% set s %}{{ ns.s }}{{ ns.s }}{% endset %}{% set ns.s = s %}{% endfor %}",
        "size",
        id="block-set-doubling",
    ),
    pytest.param(
        "{% macro f(n) %}{% if n %}{{ f(n - 1) }}{{ f(n - 1) }}{% endif %}{% endmacro %}"
        "{{ f(40) }}",
        "iterations",
        id="macro-fan-out",
    ),
    pytest.param("{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}", "recursion", id="recursion"),
    pytest.param("{% for i in range(100000) %}{{ 'x' * 100 }}{% endfor %}", "output", id="output"),
    pytest.param(
        "{% for i in range(10000) %}{{ ('x' * 900000).split('x')|length }}{% endfor %}",
        "cpu_time",
        id="cpu",
    ),
    pytest.param("{{ range(400000000) }}", "size", id="range"),
]


def _templates(**options: Any) -> ServiceTemplates:
    """A service's templates, with no theme files (the bombs extend nothing)."""
    theme = Theme(name="t", templates=Path("."), static=Path("."), service_templates=Path("."))
    return ServiceTemplates("svc", theme, **options)


def _render_metered(
    source: str, budget: RenderBudget | None = None, **context: Any
) -> tuple[str, str]:
    templates = _templates() if budget is None else _templates(budget=budget)
    return templates.render(templates.compile("k", source), context)


@pytest.mark.parametrize(("source", "what"), BOMBS)
def test_bombs_go_over_the_budget_at_once(source: str, what: str) -> None:
    # Each bomb must be stopped by its own limit: on a busy machine the thread's CPU time could
    # otherwise run out first, so the other bombs get CPU time to spare.
    budget = None if what == "cpu_time" else RenderBudget(cpu_time=60.0)
    with pytest.raises(OverBudget) as raised:
        _render_metered(source, budget)
    assert raised.value.what == what


DJANGO_BOMBS = [
    pytest.param('{{ s|center:"400000000" }}', id="center"),
    pytest.param('{{ s|ljust:"400000000" }}', id="ljust"),
    pytest.param('{{ s|rjust:"400000000" }}', id="rjust"),
    pytest.param('{{ 1|stringformat:"400000000d" }}', id="stringformat"),
    pytest.param('{{ 1|floatformat:"400000000" }}', id="floatformat"),
    pytest.param(
        "{% for a in l %}{% for b in l %}{% for c in l %}{% endfor %}{% endfor %}{% endfor %}",
        id="nested-loops",
    ),
]


@pytest.mark.parametrize("source", DJANGO_BOMBS)
def test_django_dialect_bombs_go_over_the_budget(source: str) -> None:
    templates = _templates(dialect="django")
    with pytest.raises(OverBudget):
        templates.render(templates.compile("k", source), {"s": "x", "l": list(range(1000))})


def test_a_budget_is_per_render_and_configurable() -> None:
    tight = _templates(budget=RenderBudget(max_iterations=10))
    template = tight.compile("k", "{% for i in range(5) %}{{ i }}{% endfor %}")
    for _ in range(3):  # each render has its own account
        assert tight.render(template, {}) == ("01234", "")
    with pytest.raises(OverBudget, match="iterations"):
        tight.render(tight.compile("k2", "{% for i in range(20) %}{% endfor %}"), {})
    with pytest.raises(jinja2.TemplateError, match="larger than"):
        _templates(budget=RenderBudget(max_size=1024)).compile("k", "x" * 2000)


def test_ordinary_pages_stay_well_within_the_budget() -> None:
    rows = [{"title": f"Poll {i}", "votes": i} for i in range(2000)]
    source = (
        '<table>{% for r in rows %}<tr class=\'{{ loop.cycle("a", "b") }}\'>'
        "<td>{{ r.title|upper }}</td><td>{{ '%05d' % r.votes }}</td>"
        "<td>{{ r.title|center(20) }}</td></tr>{% endfor %}</table>"
        "{{ rows|map(attribute='votes')|sum }}"
    )
    html, _menu = _render_metered(source, rows=rows)
    assert html.count("<tr") == 2000
    assert html.endswith(str(sum(range(2000))))

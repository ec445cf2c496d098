"""The service template sandbox: its short path for JSON fields changes no result."""

from __future__ import annotations

from typing import Any

import jinja2
import pytest
from jinja2.sandbox import ImmutableSandboxedEnvironment, SecurityError

from plugit_core.proxy.templating import ServiceSandbox


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
    ("{{ r.secret }}", {"r": Record(secret="item")}),
    ("{{ r.0 }}", {"r": {"0": "zero"}}),
    ("{{ r.title|upper }}", {"r": {"title": "<b>"}}),
]


@pytest.mark.parametrize(("source", "context"), CASES)
def test_same_output_as_the_plain_sandbox(source: str, context: dict[str, Any]) -> None:
    ours = ServiceSandbox(autoescape=True).from_string(source).render(context)
    plain = ImmutableSandboxedEnvironment(autoescape=True).from_string(source).render(context)
    assert ours == plain


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

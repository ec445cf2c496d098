"""A hostile service's templates, in both dialects, against the production-like site.

Each payload is the template of an action of the hostile service, rendered for a logged-in
member.  The page is either rendered (200) or the themed error page (4xx or 502), never a 500;
the ``site`` fixture then fails the test if a canary is anywhere (page, headers, logs, mail, what
the service received) or if the directory changed.
"""

from __future__ import annotations

import itertools

import pytest
from hostile_site import Visitor
from payloads import PAYLOADS
from security_site import MOUNTS, Site

_numbers = itertools.count()


def render(
    site: Site, visitor: Visitor, dialect: str, template: str, data: dict | None = None
) -> str:
    path = site.hostile.script(f"p{next(_numbers)}", template, data=data or {"title": "t"})
    response = visitor.get(MOUNTS[dialect] + path)
    assert response.status_code in (200, 400, 403, 404, 502), (
        response.status_code,
        response.text[:500],
    )
    assert "Traceback" not in response.text
    return response.text


def test_the_corpus_is_large_and_covers_both_dialects() -> None:
    dialects = [d for d, _n, _s in PAYLOADS]
    assert len(PAYLOADS) >= 200
    assert dialects.count("jinja") >= 100 and dialects.count("django") >= 60
    assert len({n for _d, n, _s in PAYLOADS}) == len(PAYLOADS)


@pytest.mark.parametrize(
    ("dialect", "source"), [(d, s) for d, _n, s in PAYLOADS], ids=[n for _d, n, _s in PAYLOADS]
)
def test_payload(site: Site, visitor: Visitor, dialect: str, source: str) -> None:
    render(site, visitor, dialect, source)


@pytest.mark.parametrize("dialect", ["jinja", "django"])
def test_an_honest_template_still_renders(site: Site, visitor: Visitor, dialect: str) -> None:
    """The defences leave ordinary templates alone: data, loops, filters, the base template."""
    if dialect == "jinja":
        source = (
            '{% extends "plugit/base.html" %}{% block content %}<h1>{{ title|upper }}</h1>'
            "{% for r in rows %}<li>{{ loop.index }} {{ r.name }} {{ r.tags|join(', ') }}</li>"
            "{% endfor %}{{ ebuio_u.username }} {{ rows|length }} {{ '%d'|format(3) }}"
            "{% endblock %}"
        )
    else:
        source = (
            '{% extends "plugIt/base.html" %}{% block content %}<h1>{{ title|upper }}</h1>'
            "{% for r in rows %}<li>{{ forloop.counter }} {{ r.name }} {{ r.tags|join:', ' }}</li>"
            "{% endfor %}{{ ebuio_u.username }} {{ rows|length }}{% endblock %}"
        )
    data = {
        "title": "Polls",
        "rows": [{"name": "Lunch?", "tags": ["a", "b"]}, {"name": "Tea?", "tags": []}],
    }
    html = render(site, visitor, dialect, source, data)
    assert "<h1>POLLS</h1>" in html
    assert "1 Lunch? a, b" in html and "2 Tea?" in html
    assert "visitor" in html


@pytest.mark.parametrize("dialect", ["jinja", "django"])
def test_plugit_get_user_answers_members_only(site: Site, visitor: Visitor, dialect: str) -> None:
    """The callback API refuses the service users who are not its members; so does the template
    helper (the issue: it answered every user)."""
    users = site.users
    if dialect == "jinja":
        source = "".join(
            f"{{% set u = plugit_get_user({users[name].pk}) %}}"
            f"[{name}:{{{{ u.username if u else 'none' }}}}]"
            for name in ("buddy", "stranger", "boss")
        )
    else:
        source = "".join(
            f"{{% plugitGetUser {users[name].pk} as u %}}"
            f"[{name}:{{{{ u.username|default:'none' }}}}]"
            for name in ("buddy", "stranger", "boss")
        )
    html = render(site, visitor, dialect, source)
    assert "[buddy:buddy]" in html  # a member of the hostile service: allowed
    assert "[stranger:none]" in html and "[boss:none]" in html


@pytest.mark.parametrize("dialect", ["jinja", "django"])
def test_a_template_cannot_make_its_author_superuser(
    site: Site, visitor: Visitor, dialect: str
) -> None:
    pk = site.users["visitor"].pk
    call = "users.set_superuser({pk}, true)" if dialect == "jinja" else "users.list_users"
    render(site, visitor, dialect, "{{ plugit_include.pipeline.proxy." + call.format(pk=pk) + " }}")
    user = site.proxy.users.get_user(pk)
    assert not user.is_superuser


def test_self_names_a_missing_block_as_undefined(site: Site, visitor: Visitor) -> None:
    """``self.<name>`` of a block that does not exist is undefined, as in Jinja; the sandbox's
    lookup of ``self`` must not recurse until Python stops it (a 502 for an honest test)."""
    html = render(
        site,
        visitor,
        "jinja",
        "{% block content %}x{% endblock %}"
        "[{{ self.nope is defined }}|{{ self.content is defined }}]",
    )
    assert "[False|True]" in html

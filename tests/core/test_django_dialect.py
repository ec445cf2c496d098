"""The ``django`` template dialect: Django template source translated to sandboxed Jinja2."""

from __future__ import annotations

import os
import re
import traceback
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Any

import jinja2
import pytest
from jinja2 import ChoiceLoader, DictLoader, FileSystemLoader, TemplateSyntaxError
from jinja2.exceptions import SecurityError
from jinja2.sandbox import ImmutableSandboxedEnvironment
from markupsafe import Markup

from plugit_backends.theme_bootstrap import SERVICE_TEMPLATES_DIR, STATIC_DIR, TEMPLATES_DIR
from plugit_core.backends import Theme
from plugit_core.proxy.templating import CSRF_FIELD as PROXY_CSRF_FIELD
from plugit_core.proxy.templating import ServiceTemplates
from plugit_core.templating.django_dialect import DjangoDialectLoader, install, translate
from plugit_core.templating.django_dialect.runtime import lookup

TEMPLATES = Path(__file__).resolve().parent.parent / "data" / "django_templates"
CSRF_FIELD = Markup('<input type="hidden" name="csrfmiddlewaretoken" value="tok123">')


def make_env(loader: jinja2.BaseLoader) -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(autoescape=True, loader=DjangoDialectLoader(loader))
    install(env)
    return env


class FakeProxy:
    """The variables the proxy adds to every render: include, user lookup, CSRF field."""

    def __init__(self) -> None:
        self.included: list[str] = []

    def plugit_include(self, action: str) -> Markup:
        self.included.append(action)
        return Markup('<div class="included">{}</div>').format(action)

    def plugit_get_user(self, pk: Any) -> dict[str, Any] | None:
        users = {1: {"id": "1", "username": "alice"}, 2: {"id": "2", "username": "bob"}}
        return users.get(pk)

    def context(self, /, **data: Any) -> dict[str, Any]:
        return {
            "plugit_include": self.plugit_include,
            "plugit_get_user": self.plugit_get_user,
            "csrf_field": CSRF_FIELD,
            "ebuio_baseUrl": "/polls/",
            **data,
        }


@pytest.fixture
def proxy() -> FakeProxy:
    return FakeProxy()


@pytest.fixture
def files_env() -> ImmutableSandboxedEnvironment:
    return make_env(FileSystemLoader(str(TEMPLATES)))


def render(source: str, **context: Any) -> str:
    env = make_env(DictLoader({"page.html": source, "inc.html": "[{{ a }}|{{ b }}]"}))
    return env.get_template("page.html").render(FakeProxy().context(**context))


def squash(html: str) -> str:
    """Whitespace-insensitive HTML, to assert on fragments."""
    return re.sub(r">\s+<", "><", re.sub(r"\s+", " ", html)).strip()


# --------------------------------------------------------------------------------------------
# The example service's templates
# --------------------------------------------------------------------------------------------

POLLS = [
    {"id": 1, "name": "Best <b>editor</b>", "nbVotes": 3},
    {"id": 2, "name": "Lunch", "nbVotes": 1},
]


def test_home_lists_polls_with_bars(files_env, proxy):
    html = files_env.get_template("home.html").render(
        proxy.context(polls=POLLS, totalVotes=4, ebuio_u={"ebuio_member": True})
    )
    page = squash(html)
    assert '<div class="pretitle">Polls</div>' in page
    assert '<tr class="odd" id="poll-1">' in page
    assert '<tr class="even" id="poll-2">' in page
    assert '<a href="/polls/show/1">Best &lt;b&gt;editor&lt;/b&gt;</a>' in page
    assert "<td>3 votes</td>" in page
    assert "<td>1 vote</td>" in page
    assert 'style="width: 75%;"' in page
    assert 'style="width: 25%;"' in page
    assert "No poll yet" not in page
    assert '<a class="btn" href="/polls/create/">Create a poll</a>' in page
    # the menubar block fills the base layout's menubar
    assert '<nav class="menubar"><ul class="menu"><li><a href="/polls/">All polls</a></li>' in page
    assert '<li><a href="/polls/create/">New poll</a></li>' in page
    # neither kind of comment reaches the page
    assert "secret" not in html and "members may create" not in html and "Poll list" not in html


def test_home_without_polls_and_anonymous(files_env, proxy):
    html = files_env.get_template("home.html").render(proxy.context(polls=[], totalVotes=0))
    page = squash(html)
    assert '<td class="empty">No poll yet.</td>' in page
    assert "Create a poll" not in page
    assert "New poll" not in page


def test_home_with_zero_total_votes(files_env, proxy):
    polls = [{"id": 1, "name": "Fresh", "nbVotes": 0}]
    html = files_env.get_template("home.html").render(proxy.context(polls=polls, totalVotes=0))
    assert 'style="width: 0%;"' in html


SHOW = {
    "id": 7,
    "name": "Lunch",
    "description": "Where do we eat?\nVote <now>",
    "created": "2024-03-05T12:30:00Z",
    "totalVotes": 3,
    "votedFor": 11,
    "responses": [
        {"id": 10, "title": "Pizza", "nbVotes": 1, "votes": ["bob"]},
        {"id": 11, "title": "Sushi", "nbVotes": 2, "votes": ["alice", "carol"]},
    ],
}


def test_show_for_an_admin(files_env, proxy):
    context = proxy.context(**SHOW, ebuio_u={"username": "alice", "ebuio_admin": True})
    page = squash(files_env.get_template("show.html").render(context))
    assert '<div class="pretitle">Lunch</div>' in page
    assert "Poll: Lunch" not in page  # the base has no "title" block: Django drops it too
    assert '<p class="description">Where do we eat?<br>Vote &lt;now&gt;</p>' in page
    assert '<p class="created">Opened March 5, 2024</p>' in page
    assert '<div style="width: 33%"></div>' in page
    assert '<div style="width: 67%"></div>' in page
    assert "<td>2/3</td>" in page
    assert '<a class="btn" href="/polls/vote/7/10">Vote</a>' in page
    assert '<a class="btn voted" href="/polls/vote/7/11">Vote</a>' in page
    assert "<h3>Votes</h3>" in page
    assert "<tr><td>Pizza</td><td>bob</td><td>1.1</td></tr>" in page
    assert "<tr><td>Sushi</td><td>alice</td><td>2.1</td></tr>" in page
    assert "<tr><td></td><td>carol</td><td>2.2</td></tr>" in page


def test_show_for_an_anonymous_user(files_env, proxy):
    page = squash(files_env.get_template("show.html").render(proxy.context(**SHOW, ebuio_u={})))
    assert "<td>1/3</td>" in page
    assert "Vote</a>" not in page
    assert "<h3>Votes</h3>" not in page
    assert "carol" not in page


def test_create_form(files_env, proxy):
    context = proxy.context(
        title='My "poll"', errors=["Title too short", "<script>"], listOfResponses=["Yes", "No"]
    )
    page = squash(files_env.get_template("create.html").render(context))
    assert '<form action="" method="POST">' in page
    assert str(CSRF_FIELD) in page
    assert "<li>Title too short</li><li>&lt;script&gt;</li>" in page
    assert 'name="title" value="My &#34;poll&#34;"' in page
    assert '<input type="text" name="rep[]" value="Yes">' in page
    assert '<input type="text" name="rep[]" value="No">' in page
    # after {% endfor %} the loop variable is gone again, as in Django
    assert '<input class="blank" name="rep[]" value="">' in page
    assert "addRow('/polls/');" in page
    assert "Saved!" not in page


def test_create_form_starts_with_two_empty_responses(files_env, proxy):
    page = squash(files_env.get_template("create.html").render(proxy.context()))
    assert page.count('<input type="text" name="rep[]" value="">') == 2
    assert 'name="title" value=""' in page
    assert 'class="errors"' not in page


def test_create_success(files_env, proxy):
    page = files_env.get_template("create.html").render(proxy.context(success=True, id=9))
    assert '<a href="/polls/show/9">See the poll</a>' in page
    assert "<form" not in page


def test_team_page_uses_plugit_tags(files_env, proxy):
    context = proxy.context(
        ownerPk=2,
        members=[{"name": "Alice"}, {"username": "bob"}, {}],
        about="Docs at https://tech.ebu.ch/plugit & <more>",
        sidebarAction="sidebar/stats",
    )
    page = squash(files_env.get_template("team.html").render(context))
    assert proxy.included == ["menu", "sidebar/stats"]
    assert '<nav class="menubar"><div class="included">menu</div></nav>' in page
    assert '<div class="included">sidebar/stats</div>' in page
    assert '<p class="owner">Poll owner: bob</p>' in page
    assert "<h3>3 members</h3>" in page
    assert "<li>Alice</li><li>bob</li><li>anonymous</li>" in page
    assert (
        '<div class="about">Docs at <a target="_blank" href="https://tech.ebu.ch/plugit" '
        'rel="nofollow">https://tech.ebu.ch/plugit</a> &amp; &lt;more&gt;</div>'
    ) in page
    assert '<p class="build">{{ rendered by PlugIt }}</p>' in page


def test_team_page_with_unknown_owner(files_env, proxy):
    page = files_env.get_template("team.html").render(proxy.context(ownerPk=99, members=[]))
    assert "Poll owner: unknown" in page
    assert "<h3>0 members</h3>" in page


def test_vote_page_fills_the_asset_blocks_of_its_base(files_env, proxy):
    context = proxy.context(id=7, MEDIA_URL="/polls/media/", ebuio_u={"first_name": "Ann"})
    page = squash(files_env.get_template("vote.html").render(context))
    # the base's own {{ block.super }} has no parent block: it renders nothing
    assert (
        '<head><link rel="stylesheet" href="/base.css">'
        "<style>.thanks { color: green; }</style></head>"
    ) in page
    assert '<footer><script src="/polls/media/vote.js"></script></footer>' in page
    assert '<p class="thanks">Thanks, Ann: your vote is counted.</p>' in page
    assert '<a href="/polls/show/7">Back to the poll</a>' in page
    assert "Thanks</" not in page  # the title block has no slot in the base


def test_base_with_blocks_renders_on_its_own(files_env):
    page = squash(files_env.get_template("plugIt/base-withBlocks.html").render())
    assert page.startswith('<head><link rel="stylesheet" href="/base.css"></head>')
    assert page.endswith("<footer></footer>")


def bootstrap_service_templates() -> ServiceTemplates:
    theme = Theme("bootstrap", TEMPLATES_DIR, SERVICE_TEMPLATES_DIR, STATIC_DIR)
    return ServiceTemplates("polls", theme, dialect="django")


def test_fixtures_through_the_proxy_service_templates(proxy):
    """The proxy's pieces: the theme's Jinja bases serve ``plugIt/base.html`` and
    ``plugIt/base-withBlocks.html``; the menubar block comes back on its own."""
    templates = bootstrap_service_templates()
    member = {"username": "ann", "first_name": "Ann", "ebuio_member": True}
    home = templates.compile("home", (TEMPLATES / "home.html").read_text())
    html, menu = templates.render(home, proxy.context(polls=POLLS, totalVotes=4, ebuio_u=member))
    assert '<a href="/polls/show/2">Lunch</a>' in html
    assert '<a href="/polls/create/">New poll</a>' in menu and "All polls" not in html

    create = templates.compile("create", (TEMPLATES / "create.html").read_text())
    html, _ = templates.render(create, {**proxy.context(), "csrf_field": PROXY_CSRF_FIELD})
    assert str(PROXY_CSRF_FIELD) in html

    vote = templates.compile("vote", (TEMPLATES / "vote.html").read_text())
    html, menu = templates.render(vote, proxy.context(id=7, MEDIA_URL="/m/", ebuio_u=member))
    page = squash(html)
    assert page.startswith("<style>.thanks { color: green; }</style>")
    assert page.endswith('<script src="/m/vote.js"></script>')
    assert "your vote is counted" in page and menu == ""


@pytest.mark.parametrize(
    "name",
    [
        "home.html",
        "show.html",
        "create.html",
        "team.html",
        "vote.html",
        "plugIt/base.html",
        "plugIt/base-withBlocks.html",
    ],
)
def test_translation_keeps_line_numbers(name):
    source = (TEMPLATES / name).read_text()
    assert translate(source).count("\n") == source.count("\n")


# --------------------------------------------------------------------------------------------
# Tags
# --------------------------------------------------------------------------------------------

TAG_CASES = [
    pytest.param("{% load static i18n %}x{% load plugit_tags %}", {}, "x", id="load-removed"),
    pytest.param("{% csrf_token %}", {}, str(CSRF_FIELD), id="csrf_token"),
    pytest.param(
        "{% for r in l %}{{ r }}{% endfor %}[{{r}}]", {"l": [1, 2]}, "12[]", id="for-variable-ends"
    ),
    pytest.param(
        "{% for r in l %}{{ r }}{% endfor %}[{{ r }}]",
        {"l": [1], "r": "outer"},
        "1[outer]",
        id="for-variable-restores-outer",
    ),
    pytest.param("a{% comment %}{{ x }}{% endcomment %}b", {"x": 1}, "ab", id="comment"),
    pytest.param('{% comment "why" %}x{% endcomment %}y', {}, "y", id="comment-with-note"),
    pytest.param("a{# note #}b", {}, "ab", id="short-comment"),
    pytest.param(
        "{% verbatim %}{{ x }} {% if %} {# c #}{% endverbatim %}",
        {"x": 1},
        "{{ x }} {% if %} {# c #}",
        id="verbatim",
    ),
    pytest.param(
        "{% verbatim b %}{% endverbatim %}{% endverbatim b %}",
        {},
        "{% endverbatim %}",
        id="verbatim-named",
    ),
    pytest.param("{{ x", {"x": 1}, "{{ x", id="unclosed-variable-is-text"),
    pytest.param("{% if x\n%}", {"x": 1}, "{% if x\n%}", id="tag-across-lines-is-text"),
    pytest.param("a{{ '{' }}b{{ x }}", {"x": 1}, "a{b1", id="brace-before-tag"),
    # widthratio
    pytest.param("{% widthratio 175 200 100 %}", {}, "88", id="widthratio"),
    pytest.param("{% widthratio a b 100 %}", {"a": 1, "b": 0}, "0", id="widthratio-zero-max"),
    pytest.param("{% widthratio a b 100 %}", {"b": 3}, "", id="widthratio-missing-value"),
    pytest.param("{% widthratio 5 10 100 as w %}[{{ w }}]", {}, "[50]", id="widthratio-as"),
    # if
    pytest.param("{% if a %}y{% else %}n{% endif %}", {"a": []}, "n", id="if-else"),
    pytest.param(
        "{% if a == 1 %}one{% elif a == 2 %}two{% else %}many{% endif %}",
        {"a": 2},
        "two",
        id="if-elif",
    ),
    pytest.param(
        "{% if a and b or c %}y{% endif %}", {"a": 1, "b": 0, "c": 1}, "y", id="if-and-or"
    ),
    pytest.param("{% if not a %}y{% endif %}", {}, "y", id="if-not-missing"),
    pytest.param("{% if a != 'x' %}y{% endif %}", {"a": "z"}, "y", id="if-ne"),
    pytest.param(
        "{% if a < b and b <= c and c > a and c >= b %}y{% endif %}",
        {"a": 1, "b": 2, "c": 3},
        "y",
        id="if-ordering",
    ),
    pytest.param("{% if a > 1 %}y{% else %}n{% endif %}", {"a": None}, "n", id="if-bad-compare"),
    pytest.param('{% if "b" in a %}y{% endif %}', {"a": ["a", "b"]}, "y", id="if-in"),
    pytest.param('{% if "z" not in a %}y{% endif %}', {"a": "abc"}, "y", id="if-not-in"),
    pytest.param("{% if a is None %}y{% endif %}", {"a": None}, "y", id="if-is"),
    pytest.param("{% if a is not None %}y{% endif %}", {"a": 0}, "y", id="if-is-not"),
    pytest.param("{% if missing is None %}y{% endif %}", {}, "y", id="if-missing-is-none"),
    pytest.param("{% if not a in b %}y{% endif %}", {"a": 1, "b": [2]}, "y", id="if-precedence"),
    pytest.param("{% if a|length > 1 %}y{% endif %}", {"a": [1, 2]}, "y", id="if-filter"),
    pytest.param("{% if a = 1 %}y{% endif %}", {"a": 1}, "y", id="if-old-equals"),
    pytest.param(
        "{% ifequal a 'x' %}same{% else %}diff{% endifequal %}", {"a": "x"}, "same", id="ifequal"
    ),
    pytest.param(
        "{% ifnotequal a b %}diff{% endifnotequal %}", {"a": 1, "b": 2}, "diff", id="ifnotequal"
    ),
    # for
    pytest.param("{% for x in l %}{{ x }}{% endfor %}", {"l": [1, 2]}, "12", id="for"),
    pytest.param(
        "{% for x in l reversed %}{{ x }}{% endfor %}", {"l": [1, 2, 3]}, "321", id="for-reversed"
    ),
    pytest.param(
        "{% for x in l %}{{ x }}{% empty %}none{% endfor %}", {"l": []}, "none", id="for-empty"
    ),
    pytest.param(
        "{% for x in missing %}{{ x }}{% empty %}none{% endfor %}", {}, "none", id="for-missing"
    ),
    pytest.param("{% for x in l %}{{ x }}{% endfor %}", {"l": None}, "", id="for-none"),
    pytest.param(
        "{% for k, v in d.items %}{{ k }}={{ v }};{% endfor %}",
        {"d": {"a": 1, "b": 2}},
        "a=1;b=2;",
        id="for-items",
    ),
    pytest.param(
        "{% for k,v in d.items %}{{ k }}{{ v }}{% endfor %}",
        {"d": {"a": 1}},
        "a1",
        id="for-unpack-no-space",
    ),
    pytest.param(
        "{% for k in d.keys %}{{ k }}{% endfor %}{% for v in d.values %}{{ v }}{% endfor %}",
        {"d": {"a": 1, "b": 2}},
        "ab12",
        id="for-keys-values",
    ),
    pytest.param(
        "{% for x in l %}{{ forloop.counter }}{{ forloop.counter0 }}{{ forloop.revcounter }}"
        "{{ forloop.revcounter0 }}{% if forloop.first %}F{% endif %}"
        "{% if forloop.last %}L{% endif %} {% endfor %}",
        {"l": "ab"},
        "1021F 2110L ",
        id="forloop",
    ),
    pytest.param(
        "{% for a in x %}{% for b in y %}{{ forloop.parentloop.counter }}{{ forloop.counter }} "
        "{% endfor %}{% endfor %}",
        {"x": [1, 2], "y": [1, 2]},
        "11 12 21 22 ",
        id="forloop-parentloop",
    ),
    pytest.param(
        "{% for a in x %}{% for b in y %}{% if forloop.parentloop.last %}{{ b }}{% endif %}"
        "{% endfor %}{% endfor %}",
        {"x": [1, 2], "y": [3, 4]},
        "34",
        id="forloop-parentloop-last",
    ),
    pytest.param(
        "{% for x in l %}{% cycle 'r1' 'r2' %}{% endfor %}", {"l": [1, 2, 3]}, "r1r2r1", id="cycle"
    ),
    pytest.param(
        "{% for x in l %}{% cycle a b %}{% endfor %}",
        {"l": [1, 2], "a": "<", "b": ">"},
        "&lt;&gt;",
        id="cycle-variables",
    ),
    pytest.param(
        "{% for x in l %}{% cycle r1,r2 %}{% endfor %}", {"l": [1, 2]}, "r1r2", id="cycle-old"
    ),
    pytest.param(
        "{% for x in l %}{% ifchanged x.g %}[{{ x.g }}]{% endifchanged %}{% endfor %}",
        {"l": [{"g": 1}, {"g": 1}, {"g": 2}]},
        "[1][2]",
        id="ifchanged",
    ),
    # with, firstof, misc
    pytest.param(
        "{% with a=b.c d='x' %}{{ a }}{{ d }}{% endwith %}",
        {"b": {"c": 5}},
        "5x",
        id="with",
    ),
    pytest.param("{% with b.c as a %}{{ a }}{% endwith %}", {"b": {"c": 5}}, "5", id="with-old"),
    pytest.param("{% firstof a b 'c' %}", {"a": 0, "b": ""}, "c", id="firstof-literal"),
    pytest.param("{% firstof a b %}", {"b": "<b>"}, "&lt;b&gt;", id="firstof-escapes"),
    pytest.param("{% firstof a b %}", {}, "", id="firstof-nothing"),
    pytest.param("{% firstof a 'x' as v %}[{{ v }}]", {}, "[x]", id="firstof-as"),
    pytest.param(
        "{% spaceless %}<p>\n  <a href='x'>y</a>\n</p>{% endspaceless %}",
        {},
        "<p><a href='x'>y</a></p>",
        id="spaceless",
    ),
    pytest.param(
        "{% spaceless %}<i> {{ v }} </i>{% endspaceless %}",
        {"v": "<x>"},
        "<i> &lt;x&gt; </i>",
        id="spaceless-escapes-once",
    ),
    pytest.param(
        "{% templatetag openblock %}{% templatetag closeblock %}{% templatetag openvariable %}"
        "{% templatetag closevariable %}{% templatetag openbrace %}{% templatetag closebrace %}"
        "{% templatetag opencomment %}{% templatetag closecomment %}",
        {},
        "{%%}{{}}{}{##}",
        id="templatetag",
    ),
    pytest.param(
        "{% autoescape off %}{{ v }}{% endautoescape %}{{ v }}",
        {"v": "<i>"},
        "<i>&lt;i&gt;",
        id="autoescape",
    ),
    pytest.param(
        "{% filter force_escape|upper %}<b>{{ v }}</b>{% endfilter %}",
        {"v": "x"},
        "&LT;B&GT;X&LT;/B&GT;",  # as Django: a filter block is not escaped again
        id="filter-tag",
    ),
    pytest.param(
        "{% regroup l by g as groups %}{% for gr in groups %}{{ gr.grouper }}:"
        "{% for i in gr.list %}{{ i.n }}{% endfor %};{% endfor %}",
        {"l": [{"g": "a", "n": 1}, {"g": "a", "n": 2}, {"g": "b", "n": 3}]},
        "a:12;b:3;",
        id="regroup",
    ),
    pytest.param(
        "{% static 'css/site.css' %}",
        {"STATIC_URL": "/static/"},
        "/static/css/site.css",
        id="static",
    ),
    pytest.param('{% trans "Hello" %} {% translate "A & B" %}', {}, "Hello A & B", id="trans"),
    pytest.param(
        "{% blocktrans with n=name %}Hi {{ n }}!{% endblocktrans %}",
        {"name": "<Bo>"},
        "Hi &lt;Bo&gt;!",
        id="blocktrans",
    ),
    pytest.param(
        "{% blocktrans trimmed %}\n  Hello\n  {{ name }}\n{% endblocktrans %}",
        {"name": "Al"},
        "Hello Al",
        id="blocktrans-trimmed",
    ),
    pytest.param('{% include "inc.html" %}', {"a": 1, "b": 2}, "[1|2]", id="include"),
    pytest.param('{% include "inc.html" with a=3 b="x" %}', {"a": 1}, "[3|x]", id="include-with"),
    pytest.param(
        "{% for a in l %}{% include 'inc.html' %}{% endfor %}",
        {"l": [1, 2], "b": 0},
        "[1|0][2|0]",
        id="include-in-loop",
    ),
    pytest.param(
        '{% plugitInclude "stats/summary" %}',
        {},
        '<div class="included">stats/summary</div>',
        id="plugitInclude",
    ),
    pytest.param(
        "{% plugitInclude action %}",
        {"action": "a/<b>"},
        '<div class="included">a/&lt;b&gt;</div>',
        id="plugitInclude-variable",
    ),
    pytest.param(
        "{% plugitGetUser 1 as u %}{{ u.username }}/{{ u.id }}", {}, "alice/1", id="plugitGetUser"
    ),
    pytest.param(
        "{% plugitGetUser pk as u %}{{ u.username|default:'?' }}",
        {"pk": 42},
        "?",
        id="plugitGetUser-unknown",
    ),
]


@pytest.mark.parametrize(("source", "context", "expected"), TAG_CASES)
def test_tags(source, context, expected):
    assert render(source, **context) == expected


def test_now():
    assert render('{% now "Y" %}') == str(datetime.now().year)
    assert render('{% now "Y-m-d" as today %}<{{ today }}>') == f"<{date.today():%Y-%m-%d}>"


def test_block_super_and_endblock_name():
    env = make_env(
        DictLoader(
            {
                "base.html": "<{% block a %}base{% endblock %}>",
                "child.html": "{% extends 'base.html' %}"
                "{% block a %}{{ block.super }}+child{% endblock a %}",
            }
        )
    )
    assert env.get_template("child.html").render() == "<base+child>"


def test_block_super_without_a_parent_block_is_empty():
    env = make_env(
        DictLoader(
            {
                "base.html": "<{% block a %}[{{ block.super }}]base{% endblock %}>",
                "plain.html": "{% extends 'base.html' %}",
                "child.html": "{% extends 'base.html' %}"
                "{% block a %}{{ block.super|upper }}+child{% endblock %}",
                "grandchild.html": "{% extends 'child.html' %}"
                "{% block a %}{{ block.super }}+grandchild{% endblock %}",
            }
        )
    )
    assert env.get_template("plain.html").render() == "<[]base>"
    assert env.get_template("child.html").render() == "<[]BASE+child>"
    assert env.get_template("grandchild.html").render() == "<[]BASE+child+grandchild>"
    # Django refuses to render such a base on its own; rendering nothing is enough here
    assert env.get_template("base.html").render() == "<[]base>"


def test_a_block_the_parent_lacks_is_dropped():
    env = make_env(
        DictLoader(
            {
                "base.html": "<{% block content %}{% endblock %}>",
                "page.html": "{% extends 'base.html' %}{% block title %}T{% endblock %}"
                "{% block content %}C{% endblock %}",
            }
        )
    )
    assert env.get_template("page.html").render() == "<C>"


@pytest.mark.parametrize("keep", [False, True])
def test_a_final_newline_is_kept_like_django(keep):
    env = make_env(DictLoader({"nl.html": "a\n", "crlf.html": "b\r\n", "none.html": "c"}))
    env.keep_trailing_newline = keep
    assert env.get_template("nl.html").render() == "a\n"
    assert env.get_template("crlf.html").render() == "b\n"  # Jinja's newline_sequence
    assert env.get_template("none.html").render() == "c"
    assert translate("a\n").count("\n") == 1


def test_blocks_inside_a_loop_see_the_loop_variables():
    source = (
        "{% for x in l %}{% block item %}{{ x }}{{ forloop.counter }}{% endblock %}{% endfor %}"
    )
    assert render(source, l=["a", "b"]) == "a1b2"


def test_text_before_extends_is_ignored_like_django():
    env = make_env(
        DictLoader(
            {
                "base.html": "[{% block a %}{% endblock %}]",
                "child.html": "\n  {# note #}\n{% extends 'base.html' %}"
                "{% block a %}x{% endblock %}",
            }
        )
    )
    assert env.get_template("child.html").render() == "[x]"


def test_extends_with_a_variable():
    env = make_env(
        DictLoader(
            {"layout.html": "[{% block c %}{% endblock %}]", "p.html": "{% extends layout %}"}
        )
    )
    page = env.get_template("p.html")
    assert page.render(layout="layout.html") == "[]"


# --------------------------------------------------------------------------------------------
# Variables and literals
# --------------------------------------------------------------------------------------------

VARIABLE_CASES = [
    pytest.param("{{ a.b.c }}", {"a": {"b": {"c": "deep"}}}, "deep", id="dotted"),
    pytest.param("{{x}}/{{a.b}}", {"x": 1, "a": {"b": 2}}, "1/2", id="no-spaces"),
    pytest.param("{{ l.0 }}{{ l.1.x }}", {"l": ["z", {"x": "y"}]}, "zy", id="index"),
    pytest.param("{{ d.3 }}", {"d": {"3": "three"}}, "three", id="digit-key-of-json-object"),
    pytest.param("{{ d.items }}", {"d": {"items": "mine"}}, "mine", id="key-before-method"),
    pytest.param("{{ s.upper }}", {"s": "abc"}, "ABC", id="method-called"),
    pytest.param("{{ l.count }}", {"l": [1]}, "", id="method-needing-arguments"),
    pytest.param("{{ missing }}{{ missing.x.y }}{{ a.nope }}", {"a": {}}, "", id="missing"),
    pytest.param("{{ a.b }}", {"a": None}, "", id="lookup-on-none"),
    pytest.param("{{ \"dq\" }}{{ 'sq' }}", {}, "dqsq", id="string-literals"),
    pytest.param('{{ "<b>" }}', {}, "<b>", id="literal-is-safe"),
    pytest.param('{{ "say \\"hi\\"" }}', {}, 'say "hi"', id="escaped-quote"),
    pytest.param('{{ _("Hello") }}', {}, "Hello", id="i18n-literal"),
    pytest.param("{{ 42 }} {{ -1.5 }} {{ 2e3 }}", {}, "42 -1.5 2000.0", id="numbers"),
    pytest.param("{{ True }}{{ None }}", {}, "TrueNone", id="constants"),
    pytest.param("{{ v }}", {"v": "<script>"}, "&lt;script&gt;", id="autoescape"),
    pytest.param("{{ v|safe }}", {"v": "<i>x</i>"}, "<i>x</i>", id="safe"),
    pytest.param("{{ v | upper }}", {"v": "x"}, "X", id="spaces-around-pipe"),
    pytest.param(
        "{{ loop }}{{ true }}{{ self }}",
        {"loop": "L", "true": "T", "self": "S"},
        "LTS",
        id="jinja-names",
    ),
    pytest.param("{{ forloop.counter }}", {}, "", id="forloop-outside-loop"),
    pytest.param("{% firstof '}}' %}", {}, "}}", id="closer-inside-string"),
]


@pytest.mark.parametrize(("source", "context", "expected"), VARIABLE_CASES)
def test_variables(source, context, expected):
    assert render(source, **context) == expected


# --------------------------------------------------------------------------------------------
# Filters
# --------------------------------------------------------------------------------------------

FILTER_CASES = [
    pytest.param("{{ v|default:'none' }}", {"v": ""}, "none", id="default"),
    pytest.param("{{ v|default:'<i>-</i>' }}", {}, "<i>-</i>", id="default-missing-safe-arg"),
    pytest.param("{{ v|default:w }}", {"v": 0, "w": "<w>"}, "&lt;w&gt;", id="default-variable"),
    pytest.param("{{ v|default_if_none:'-' }}", {"v": None}, "-", id="default_if_none"),
    pytest.param("{{ v|default_if_none:'-' }}", {"v": 0}, "0", id="default_if_none-zero"),
    pytest.param("{{ v|length }}{{ n|length }}", {"v": [1, 2], "n": 5}, "20", id="length"),
    pytest.param("{{ v|lower }}{{ v|upper }}", {"v": "Ab"}, "abAB", id="lower-upper"),
    pytest.param(
        "{{ v|upper }}", {"v": Markup("<b>x</b>")}, "&lt;B&gt;X&lt;/B&gt;", id="upper-unsafe"
    ),
    pytest.param("{{ v|title }}", {"v": "they're 1st class"}, "They&#39;re 1st Class", id="title"),
    pytest.param("{{ v|capfirst }}", {"v": "hello world"}, "Hello world", id="capfirst"),
    pytest.param("{{ v|escape }}", {"v": "<&>"}, "&lt;&amp;&gt;", id="escape"),
    pytest.param(
        "{{ v|linebreaks }}",
        {"v": "a\nb\n\n<c>"},
        "<p>a<br>b</p>\n\n<p>&lt;c&gt;</p>",
        id="linebreaks",
    ),
    pytest.param("{{ v|linebreaksbr }}", {"v": "a\r\n<b>"}, "a<br>&lt;b&gt;", id="linebreaksbr"),
    pytest.param(
        "{{ v|truncatewords:2 }}", {"v": "one two  three"}, "one two …", id="truncatewords"
    ),
    pytest.param("{{ v|truncatewords:5 }}", {"v": "one  two"}, "one two", id="truncatewords-short"),
    pytest.param("{{ v|truncatechars:5 }}", {"v": "abcdefgh"}, "abcd…", id="truncatechars"),
    pytest.param(
        "{{ v|truncatechars:9 }}", {"v": "abcdefgh"}, "abcdefgh", id="truncatechars-short"
    ),
    pytest.param(
        '{{ v|date:"Y-m-d H:i" }}', {"v": "2024-03-05T14:07:00Z"}, "2024-03-05 14:07", id="date-iso"
    ),
    pytest.param(
        '{{ v|date:"N j, Y" }}', {"v": datetime(2023, 9, 1)}, "Sept. 1, 2023", id="date-datetime"
    ),
    pytest.param(
        '{{ v|date:"D d M y, l jS F" }}',
        {"v": date(2024, 2, 22)},
        "Thu 22 Feb 24, Thursday 22nd February",
        id="date-names",
    ),
    pytest.param(
        '{{ v|date:"Y-m-d H:i:s" }}', {"v": 86400}, "1970-01-02 00:00:00", id="date-timestamp"
    ),
    pytest.param(
        '{{ v|date:"g:i A, P, f a" }}',
        {"v": datetime(2024, 1, 1, 15, 5)},
        "3:05 PM, 3:05 p.m., 3:05 p.m.",
        id="date-12h",
    ),
    pytest.param(
        '{{ a|date:"P" }}/{{ b|date:"P" }}',
        {"a": datetime(2024, 1, 1, 0, 0), "b": datetime(2024, 1, 1, 12, 0)},
        "midnight/noon",
        id="date-midnight-noon",
    ),
    pytest.param(
        '{{ v|date:"c O" }}',
        {"v": datetime(2024, 1, 2, 3, 4, 5, tzinfo=timezone.utc)},
        "2024-01-02T03:04:05+00:00 +0000",
        id="date-iso-offset",
    ),
    pytest.param('{{ v|date:"\\Y Y" }}', {"v": date(2020, 1, 1)}, "Y 2020", id="date-escape"),
    pytest.param("{{ v|date }}", {"v": "2021-12-25"}, "Dec. 25, 2021", id="date-default-format"),
    pytest.param('{{ v|date:"H:i" }}', {"v": date(2020, 1, 1)}, "", id="date-time-of-a-date"),
    pytest.param(
        '{{ v|date:"Y" }}{{ w|date:"Y" }}', {"v": "soon", "w": None}, "", id="date-invalid"
    ),
    pytest.param('{{ v|time:"H:i" }}', {"v": "2024-03-05T14:07:00"}, "14:07", id="time"),
    pytest.param(
        "{{ a|floatformat }} {{ b|floatformat }} {{ c|floatformat }}",
        {"a": 34.23234, "b": 34.0, "c": 34.26},
        "34.2 34 34.3",
        id="floatformat",
    ),
    pytest.param(
        "{{ a|floatformat:3 }} {{ b|floatformat:'-3' }} {{ c|floatformat:0 }}",
        {"a": 34.2, "b": 34.0, "c": 2.5},
        "34.200 34 3",
        id="floatformat-places",
    ),
    pytest.param(
        '{{ a|floatformat:"2g" }} {{ b|floatformat }} {{ c|floatformat }}',
        {"a": 1234567.891, "b": "-0.01", "c": "x"},
        "1,234,567.89 0.0 ",
        id="floatformat-grouping-and-errors",
    ),
    pytest.param(
        "{{ a|add:2 }} {{ s|add:'b' }} {{ l|add:m }} {{ n|add:'x' }}",
        {"a": "3", "s": "a", "l": [1], "m": [2], "n": 1},
        "5 ab [1, 2] ",
        id="add",
    ),
    pytest.param(
        "{{ a|divisibleby:3 }} {{ b|divisibleby:3 }}",
        {"a": 9, "b": 10},
        "True False",
        id="divisibleby",
    ),
    pytest.param("{{ l|join:', ' }}", {"l": ["a", "<b>", 3]}, "a, &lt;b&gt;, 3", id="join"),
    pytest.param(
        "{{ l|join:sep }}", {"l": ["a", "b"], "sep": "<br>"}, "a&lt;br&gt;b", id="join-escapes-sep"
    ),
    pytest.param(
        "{{ l|first }}{{ l|last }}{{ e|first }}", {"l": [1, 2, 3], "e": []}, "13", id="first-last"
    ),
    pytest.param(
        "{{ l|slice:':2' }} {{ l|slice:'1:' }} {{ s|slice:'::2' }}",
        {"l": [1, 2, 3], "s": "abcde"},
        "[1, 2] [2, 3] ace",
        id="slice",
    ),
    pytest.param(
        "{{ a|pluralize }} {{ b|pluralize }} {{ l|pluralize }} {{ b|pluralize:'y,ies' }}",
        {"a": 1, "b": 2, "l": [1, 2]},
        " s s ies",
        id="pluralize",
    ),
    pytest.param(
        "{{ a|pluralize:'es' }}{{ b|pluralize:'a,b,c' }}",
        {"a": 0, "b": 1},
        "es",
        id="pluralize-args",
    ),
    pytest.param(
        "{{ a|yesno }} {{ b|yesno }} {{ c|yesno }} {{ a|yesno:'on,off' }} {{ c|yesno:'on,off' }}",
        {"a": True, "b": 0, "c": None},
        "yes no maybe on off",
        id="yesno",
    ),
    pytest.param(
        "{{ v|urlencode }} {{ v|urlencode:'' }}",
        {"v": "a b&c/d"},
        "a%20b%26c/d a%20b%26c%2Fd",
        id="urlencode",
    ),
    pytest.param(
        "{{ v|urlize }}",
        {"v": "Go to www.ebu.ch, or (http://x.org/?a=1&b=2). Mail me@x.org <now>"},
        'Go to <a href="http://www.ebu.ch" rel="nofollow">www.ebu.ch</a>, or '
        '(<a href="http://x.org/?a=1&amp;b=2" rel="nofollow">http://x.org/?a=1&amp;b=2</a>). '
        'Mail <a href="mailto:me@x.org">me@x.org</a> &lt;now&gt;',
        id="urlize",
    ),
    pytest.param(
        "{{ v|striptags }}", {"v": "<p>a <b>b</b> &amp; c</p>"}, "a b &amp;amp; c", id="striptags"
    ),
    pytest.param("{{ v|wordcount }}", {"v": " a b\n c "}, "3", id="wordcount"),
    pytest.param("{{ v|cut:' ' }}", {"v": "a b c"}, "abc", id="cut"),
    pytest.param(
        "{{ v|stringformat:'03d' }} {{ w|stringformat:'.2f' }} {{ s|stringformat:'d' }}",
        {"v": 7, "w": 3.14159, "s": "x"},
        "007 3.14 ",
        id="stringformat",
    ),
    pytest.param(
        "{{ a|filesizeformat }}|{{ b|filesizeformat }}|"
        "{{ c|filesizeformat }}|{{ d|filesizeformat }}",
        {"a": 1, "b": 123, "c": 1536, "d": 5 * 1024**3},
        "1\xa0byte|123\xa0bytes|1.5\xa0KB|5.0\xa0GB",
        id="filesizeformat",
    ),
    pytest.param("{{ v|filesizeformat }}", {"v": "x"}, "0\xa0bytes", id="filesizeformat-invalid"),
    pytest.param(
        "{{ l|length_is:2 }} {{ l|length_is:'3' }}", {"l": [1, 2]}, "True False", id="length_is"
    ),
    pytest.param("{{ v|make_list|join:'-' }}", {"v": 123}, "1-2-3", id="make_list"),
    pytest.param("{{ l|random }}", {"l": ["only"]}, "only", id="random"),
    pytest.param(
        "{% for p in l|dictsort:'age' %}{{ p.n }}{% endfor %}"
        "{% for p in l|dictsortreversed:'age' %}{{ p.n }}{% endfor %}",
        {"l": [{"n": "b", "age": 30}, {"n": "a", "age": 20}, {"n": "c", "age": 40}]},
        "abccba",
        id="dictsort",
    ),
    pytest.param(
        "[{{ v|center:7 }}][{{ v|ljust:5 }}][{{ v|rjust:5 }}]",
        {"v": "abc"},
        "[  abc  ][abc  ][  abc]",
        id="center-ljust-rjust",
    ),
    pytest.param(
        "{{ v|escapejs }}",
        {"v": 'it\'s "<x>"\n'},
        "it\\u0027s \\u0022\\u003Cx\\u003E\\u0022\\u000A",
        id="escapejs",
    ),
    pytest.param(
        "{{ v|url_target_blank }}",
        {"v": Markup('<a href="/a">A</a> <a href="/b">B</a>')},
        '<a target="_blank" href="/a">A</a> <a target="_blank" href="/b">B</a>',
        id="url_target_blank",
    ),
    pytest.param(
        "{{ v|url_target_blank }}",
        {"v": '<a href="/a">A</a>'},
        "&lt;a target=&#34;_blank&#34; href=&#34;/a&#34;&gt;A&lt;/a&gt;",
        id="url_target_blank-unsafe-input",
    ),
    pytest.param(
        "{{ v|addslashes }}", {"v": 'I\'m "x"'}, "I\\&#39;m \\&#34;x\\&#34;", id="addslashes"
    ),
    pytest.param("{{ v|slugify }}", {"v": " Héllo, World! "}, "hello-world", id="slugify"),
    pytest.param("{{ l|safeseq|join:', ' }}", {"l": ["<i>", "<b>"]}, "<i>, <b>", id="safeseq"),
    pytest.param("{{ v|force_escape }}", {"v": Markup("&lt;")}, "&amp;lt;", id="force_escape"),
    pytest.param("{{ missing|upper|length }}{{ missing|date:'Y' }}", {}, "0", id="missing-input"),
]


@pytest.mark.parametrize(("source", "context", "expected"), FILTER_CASES)
def test_filters(source, context, expected):
    assert render(source, **context) == expected


def test_install_leaves_jinja_filters_alone():
    env = ImmutableSandboxedEnvironment(autoescape=True)
    builtin_default = env.filters["default"]
    install(env)
    assert env.filters["default"] is builtin_default
    assert env.from_string("{{ x|default('j') }}").render() == "j"
    assert all(name.startswith("dj_") for name in set(env.filters) - set(jinja2.filters.FILTERS))
    assert all(
        name.startswith("dj_") for name in set(env.globals) - set(jinja2.defaults.DEFAULT_NAMESPACE)
    )


# --------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------

ERROR_CASES = [
    pytest.param("a\n{% frobnicate %}", 2, "frobnicate", id="unknown-tag"),
    pytest.param("\n\n{% url 'poll_show' 3 %}", 3, "build links from ebuio_baseUrl", id="url"),
    pytest.param("<a href=\"{%url 'logout' %}\">", 1, "ebuio_baseUrl", id="url-no-space"),
    pytest.param('{% plugitInclude "a" "b" %}', 1, "plugitInclude", id="plugitInclude-2-args"),
    pytest.param("{% plugitInclude %}", 1, "plugitInclude", id="plugitInclude-no-arg"),
    pytest.param("{% plugitGetUser 1 u %}", 1, "plugitGetUser", id="plugitGetUser-malformed"),
    pytest.param("x\n{% block content %}\n\nabc", 2, "block", id="unclosed-block"),
    pytest.param("{% if a %}\n{% for x in l %}\n{% endif %}", 3, "endfor", id="mismatched-end"),
    pytest.param("{% endif %}", 1, "endif", id="end-without-start"),
    pytest.param("{% block a %}{% endblock b %}", 1, "endblock b", id="endblock-wrong-name"),
    pytest.param("{% comment %}\n\nnever closed", 1, "endcomment", id="unclosed-comment"),
    pytest.param("{% verbatim %}never closed", 1, "endverbatim", id="unclosed-verbatim"),
    pytest.param("\n{{ x|frobnicate }}", 2, "frobnicate", id="unknown-filter"),
    pytest.param("{{ x|default }}", 1, "default", id="filter-missing-argument"),
    pytest.param("{{ x|upper:1 }}", 1, "upper", id="filter-extra-argument"),
    pytest.param("{{ x._secret }}", 1, "underscore", id="underscore-attribute"),
    pytest.param("{{ x y }}", 1, "remainder", id="bad-variable"),
    pytest.param("{{ }}", 1, "Empty variable", id="empty-variable"),
    pytest.param("a\n\t{{}}", 2, "Empty variable", id="empty-variable-no-space"),
    pytest.param("{% %}", 1, "Empty block", id="empty-tag"),
    pytest.param("{% if %}{% endif %}", 1, "condition", id="if-without-condition"),
    pytest.param("{% if a b %}{% endif %}", 1, "Unused", id="if-junk"),
    pytest.param("{% if a and %}{% endif %}", 1, "end of if", id="if-incomplete"),
    pytest.param("{% if a %}{% else %}{% elif b %}{% endif %}", 1, "elif", id="elif-after-else"),
    pytest.param("{% for x in l %}{% else %}{% endfor %}", 1, "else", id="else-in-for"),
    pytest.param("{% for x of l %}{% endfor %}", 1, "for x in y", id="for-malformed"),
    pytest.param("{% cycle 'a' 'b' %}", 1, "cycle", id="cycle-outside-loop"),
    pytest.param("{% for x in l %}{% cycle 'a' 'b' as c %}{% endfor %}", 1, "Named", id="cycle-as"),
    pytest.param("{% widthratio a b %}", 1, "widthratio", id="widthratio-arguments"),
    pytest.param("{% with a %}{% endwith %}", 1, "name=value", id="with-malformed"),
    pytest.param("{% for loop in l %}{% endfor %}", 1, "loop", id="reserved-loop-variable"),
    pytest.param("{% block my-block %}{% endblock %}", 1, "block", id="block-name"),
    pytest.param("{% ifchanged %}{% endifchanged %}", 1, "ifchanged", id="ifchanged-outside-loop"),
    pytest.param(
        "{% load static %}\n{% extends 'base.html' %}", 2, "first tag", id="extends-not-first"
    ),
    pytest.param(
        "{% blocktrans count n=1 %}x{% endblocktrans %}", 1, "count", id="blocktrans-count"
    ),
]


@pytest.mark.parametrize(("source", "lineno", "fragment"), ERROR_CASES)
def test_errors(source, lineno, fragment):
    with pytest.raises(TemplateSyntaxError) as caught:
        translate(source, name="svc/page.html")
    assert caught.value.lineno == lineno
    assert caught.value.name == "svc/page.html"
    assert fragment.lower() in caught.value.message.lower()


def test_errors_through_the_loader_name_the_file(tmp_path):
    (tmp_path / "bad.html").write_text("ok\n{% url 'x' %}\n")
    env = make_env(FileSystemLoader(str(tmp_path)))
    with pytest.raises(TemplateSyntaxError) as caught:
        env.get_template("bad.html")
    assert caught.value.lineno == 2
    assert caught.value.name == "bad.html"
    assert caught.value.filename == str(tmp_path / "bad.html")
    assert "{% url 'x' %}" in str(caught.value)  # the offending original line is shown


def test_jinja_errors_point_at_the_original_line():
    source = (
        "{% comment %}\none\ntwo\n{% endcomment %}\n"
        "{% block a %}{% endblock %}\n{% block a %}{% endblock %}"
    )
    env = make_env(DictLoader({"dup.html": source}))
    with pytest.raises(TemplateSyntaxError) as caught:
        env.get_template("dup.html")
    assert caught.value.lineno == 6


def test_runtime_errors_point_at_the_original_line():
    source = (
        "{% load plugit_tags %}\n{# c #}\n{% comment %}\n\n{% endcomment %}\n{% widthratio 1 2 w %}"
    )
    env = make_env(DictLoader({"w.html": source}))
    with pytest.raises(jinja2.TemplateRuntimeError) as caught:
        env.get_template("w.html").render(w="wide")
    assert 'File "<template>", line 6' in "".join(traceback.format_exception(caught.value))


# --------------------------------------------------------------------------------------------
# Sandbox
# --------------------------------------------------------------------------------------------


class Account:
    def __init__(self) -> None:
        self.name = "acct"
        self._password = "hunter2"

    def delete(self) -> str:
        return "deleted"

    delete.alters_data = True  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "source",
    [
        pytest.param("{{ ''.__class__.__mro__ }}", id="dunder-on-literal"),
        pytest.param("{{ x.__globals__ }}", id="dunder-attribute"),
        pytest.param("{{ x._password }}", id="private-attribute"),
        pytest.param("{% for k in x.__dict__.keys %}{{ k }}{% endfor %}", id="dunder-in-for"),
        pytest.param(
            "{% with g=x.__init__.__globals__ %}{{ g }}{% endwith %}", id="dunder-in-with"
        ),
    ],
)
def test_internals_are_rejected_when_translating(source):
    with pytest.raises(TemplateSyntaxError, match=r"underscore|parse"):
        translate(source)


@pytest.mark.parametrize(
    ("source", "context"),
    [
        pytest.param("{{ cls.mro }}", {"cls": str}, id="type-mro"),
        pytest.param("{{ l.pop }}", {"l": [1, 2]}, id="mutating-method"),
        pytest.param("{{ d.clear }}", {"d": {"a": 1}}, id="mutating-dict-method"),
        pytest.param("{{ f.gi_frame }}", {"f": (i for i in [1])}, id="generator-frame"),
    ],
)
def test_sandbox_still_applies_to_translated_lookups(source, context):
    with pytest.raises(SecurityError):
        render(source, **context)


def test_mutating_methods_are_not_run(proxy):
    data = [1, 2]
    with pytest.raises(SecurityError):
        render("{{ l.pop }}{{ l.append }}", l=data)
    assert data == [1, 2]


def test_alters_data_methods_are_not_called():
    assert render("[{{ a.delete }}]{{ a.name }}", a=Account()) == "[]acct"


def test_helpers_do_not_bypass_the_sandbox():
    env = ImmutableSandboxedEnvironment(autoescape=True)
    install(env)
    with pytest.raises(SecurityError):
        env.from_string("{{ dj_get(f, '__globals__') }}").render(f=make_env)
    with pytest.raises(SecurityError):
        env.from_string("{{ dj_get(x, 'mro') }}").render(x=int)
    assert env.from_string("{{ dj_get.__globals__ }}").render() == ""  # Jinja's own rule
    assert env.from_string("{{ dj_var('__builtins__') }}").render() == ""
    with pytest.raises(SecurityError):
        env.from_string("{{ ''|dj_dictsort('__class__') }}{{ l|dj_dictsort('__class__') }}").render(
            l=[1, 2]
        )


def test_lookups_return_the_sandbox_view_of_attributes():
    # str.format can read attributes of its arguments: the sandbox wraps it in a safe
    # formatter, and Django lookups must hand out that wrapper, not the raw method.
    env = ImmutableSandboxedEnvironment(autoescape=True)
    fmt = lookup(env, "{0.__class__}", "format")
    assert "{.__class__}".format("x") == "<class 'str'>"
    assert fmt("x") == ""  # the sandboxed formatter refused the attribute
    assert lookup(env, "{0.real}", "format")(3) == "3"


# --------------------------------------------------------------------------------------------
# Loader
# --------------------------------------------------------------------------------------------


def test_loader_passes_filename_and_uptodate_through(tmp_path):
    page = tmp_path / "p.html"
    page.write_text("{% if x %}{{ x }}{% endif %}")
    wrapped = FileSystemLoader(str(tmp_path))
    env = ImmutableSandboxedEnvironment(autoescape=True)
    source, filename, uptodate = DjangoDialectLoader(wrapped).get_source(env, "p.html")
    assert source == translate(page.read_text())
    assert filename == str(page)
    assert uptodate is not None and uptodate()
    assert DjangoDialectLoader(wrapped).list_templates() == ["p.html"]


def test_auto_reload_sees_changes(tmp_path):
    page = tmp_path / "p.html"
    page.write_text("{{ 'one' }}")
    env = make_env(FileSystemLoader(str(tmp_path)))
    assert env.get_template("p.html").render() == "one"
    page.write_text("{{ 'two' }}")
    stat = page.stat()
    os.utime(page, (stat.st_atime, stat.st_mtime + 10))
    assert env.get_template("p.html").render() == "two"


def test_service_templates_in_django_with_a_jinja_layout():
    """The proxy's own layouts stay Jinja; only the service's templates are translated."""
    service = DjangoDialectLoader(DictLoader({"svc/home.html": SERVICE_HOME}))
    layouts = DictLoader({"plugIt/base.html": JINJA_BASE})
    env = ImmutableSandboxedEnvironment(autoescape=True, loader=ChoiceLoader([service, layouts]))
    install(env)
    html = env.get_template("svc/home.html").render(polls=[{"name": "a"}, {"name": "b"}])
    assert html == "<main>a, b</main>"


SERVICE_HOME = (
    "{% extends 'plugIt/base.html' %}{% block content %}"
    "{% for p in polls %}{{ p.name }}{% if not forloop.last %}, {% endif %}{% endfor %}"
    "{% endblock %}"
)
JINJA_BASE = "<main>{% block content %}{{ 'jinja only'|title }}{% endblock %}</main>"

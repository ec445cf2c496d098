"""Bombs: templates and data built to eat the proxy's CPU or memory, against the proxy served by
``plugit proxy`` (its production server) with the default render budgets.

Every bomb must end in the hostile service's themed 502 page, logged as ``over_budget`` (or, for
data the proxy cannot read, as a bad reply), while the healthy service's page, asked again and
again as long as the bomb runs, keeps answering within a generous bound.  A bomb that does not
end within its time fails, and the proxy process is started again for the next one.
"""

from __future__ import annotations

import concurrent.futures
import itertools
import time
from typing import Any

import pytest
import requests
from security_site import MOUNTS, Site
from served_proxy import ServedProxy

BOMB_TIMEOUT = 12  # seconds for a bomb's page: far more than its CPU budget of 0.5 s
HEALTHY_BOUND = 3.0  # seconds for the healthy page while a bomb runs (it takes milliseconds)

BIG = list(range(100_000))
JINJA_BOMBS = {
    "nested-ranges": (
        "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"
    ),
    "string-times": "{{ 'x' * 400000000 }}",
    "times-swapped": "{{ 400000000 * 'x' }}",
    "list-times": "{{ [0] * 400000000 }}",
    "power": "{{ 9 ** (9 ** 9) }}",
    "power-of-two": "{{ 2 ** 400000000 }}",
    "power-chain": "{% set n = 2 ** 16000 %}{{ n * n * n * n * n * n * n * n }}",
    "printf-width": "{{ '%0400000000d' % 1 }}",
    "printf-precision": "{{ '%.400000000f' % 1.0 }}",
    "printf-star": "{{ '%*d' % (400000000, 1) }}",
    "format-filter-width": "{{ '%400000000s'|format('x') }}",
    "recursive-macro": "{% macro r(n) %}{{ r(n + 1) }}{% endmacro %}{{ r(0) }}",
    "macro-fan-out": (
        "{% macro f(n) %}{% if n %}{{ f(n - 1) }}{{ f(n - 1) }}{% else %}x{% endif %}"
        "{% endmacro %}{{ f(60) }}"
    ),
    "namespace-doubling": (
        "{% set ns = namespace(s='x') %}{% for i in range(64) %}"
        "{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s|length }}"
    ),
    "namespace-plus": (
        "{% set ns = namespace(s='x') %}{% for i in range(64) %}"
        "{% set ns.s = ns.s + ns.s %}{% endfor %}{{ ns.s|length }}"
    ),
    "list-doubling": (
        "{% set ns = namespace(l=[1]) %}{% for i in range(64) %}"
        "{% set ns.l = ns.l + ns.l %}{% endfor %}{{ ns.l|length }}"
    ),
    "join-separator": "{{ range(100000)|join('x' * 100000) }}",
    "join-lazy": "{{ range(100000)|map('string')|map('replace', '', 'x' * 10000)|join }}",
    "list-lazy": "{{ (range(100000)|map('string')|map('replace', '', 'x' * 10000)|list)|length }}",
    "slice-huge": "{{ range(10)|slice(400000000)|list|length }}",
    "batch-fill": "{{ [1]|batch(400000000, 'x')|list|length }}",
    "lipsum": "{{ lipsum(100000, false, 100000, 100000)|length }}",
    "center": "{{ 'x'|center(400000000) }}",
    "indent": "{{ ('x\n' * 1000)|indent(400000) }}",
    "replace-growth": "{{ ('x' * 10000).replace('x', 'x' * 10000)|length }}",
    "replace-filter": "{{ ('x' * 10000)|replace('x', 'x' * 10000)|length }}",
    "wordwrap": "{{ ('x ' * 1000000)|wordwrap(1) }}",
    "output-flood": "{% for i in range(100000) %}{{ 'x' * 1000 }}{% endfor %}",
    "sort-churn": "{% for i in range(1000) %}{{ (range(100000)|list|sort|sum) }}{% endfor %}",
    "data-loops": "{% for i in big %}{% for j in big %}{{ j }}{% endfor %}{% endfor %}",
    "unique-churn": "{% for i in big %}{{ big|unique|list|length }}{% endfor %}",
    "dict-growth": "{{ dict(a='x' * 400000000) }}",
    "tojson-huge": "{{ big|map('string')|map('replace', '', 'y' * 100)|list|tojson|length }}",
}
DJANGO_BOMBS = {
    "center": '{{ "x"|center:"400000000" }}',
    "ljust": '{{ "x"|ljust:"400000000" }}',
    "rjust": '{{ "x"|rjust:"400000000" }}',
    "stringformat-width": '{{ 1|stringformat:"0400000000d" }}',
    "stringformat-precision": '{{ 1.0|stringformat:".400000000f" }}',
    "nested-for": "{% for i in big %}{% for j in big %}{{ j }}{% endfor %}{% endfor %}",
    "floatformat": '{{ 1.5|floatformat:"400000000" }}',
    "join-big": '{{ big|join:"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx" }}',
    "make-list-loops": "{% for i in big %}{{ big|make_list|length }}{% endfor %}",
    "join-separator": "{{ big|join:sep }}",
}
BOMBS = [("jinja", name, source) for name, source in JINJA_BOMBS.items()] + [
    ("django", name, source) for name, source in DJANGO_BOMBS.items()
]
_numbers = itertools.count()


def _healthy(
    base: str, stop: float, bomb: concurrent.futures.Future[Any]
) -> list[tuple[int, float]]:
    """Ask the healthy page until the bomb is over (or ``stop``); (status, seconds) of each."""
    answers = []
    with requests.Session() as session:
        while not bomb.done() and time.monotonic() < stop:
            started = time.monotonic()
            try:
                status = session.get(base + "/healthy/", timeout=HEALTHY_BOUND * 3).status_code
            except requests.RequestException:
                status = 0
            answers.append((status, time.monotonic() - started))
    return answers


def _fire(url: str) -> tuple[int, str]:
    with requests.Session() as session:
        response = session.get(url, timeout=BOMB_TIMEOUT)
        return response.status_code, response.text


@pytest.mark.parametrize(
    ("dialect", "source"), [(d, s) for d, _n, s in BOMBS], ids=[f"{d}-{n}" for d, n, _s in BOMBS]
)
def test_bomb(site: Site, served: ServedProxy, dialect: str, source: str) -> None:
    path = site.hostile.script(
        f"bomb{next(_numbers)}", source, data={"big": BIG, "sep": "x" * 100_000}
    )
    with requests.Session() as session:  # the healthy page answers before the bomb
        assert session.get(served.base + "/healthy/", timeout=10).status_code == 200
    before = len(served.log_text())
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        bomb = pool.submit(_fire, served.base + MOUNTS[dialect] + path)
        healthy = _healthy(served.base, time.monotonic() + BOMB_TIMEOUT + 2, bomb)
        try:
            status, html = bomb.result()
        except requests.RequestException as exc:
            served.restart()  # the bomb still runs in there: no other test should share its CPU
            pytest.fail(f"the bomb did not end in {BOMB_TIMEOUT}s: {type(exc).__name__}")
    slow = [(s, round(t, 2)) for s, t in healthy if s != 200 or t > HEALTHY_BOUND]
    assert not slow, f"the healthy page suffered while the bomb ran: {slow}"
    assert status == 502, (status, html[:300])
    assert "Hostile" in html and "Service unavailable" in html  # the service's themed page
    log = served.log_text()[before:]
    assert f"failed on {path}" in log, log[-2000:]
    # over its budget, or refused outright (a function the sandbox does not offer)
    assert "over_budget" in log or "is undefined" in log, log[-2000:]
    leaked = site.canaries.find(log + html)
    assert not leaked, leaked


def test_deeply_nested_data_is_a_bad_reply(site: Site, served: ServedProxy) -> None:
    """JSON nested 100,000 deep (Python's parser gives up with RecursionError, not ValueError)."""
    path = site.hostile.script(
        f"bomb{next(_numbers)}", "{{ title }}", body=b"[" * 100_000 + b"]" * 100_000
    )
    deep_dict = b'{"a":' * 50_000 + b"1" + b"}" * 50_000
    other = site.hostile.script(f"bomb{next(_numbers)}", "{{ a }}", body=deep_dict)
    with requests.Session() as session:
        for target in (path, other):
            response = session.get(served.base + "/hostile/" + target, timeout=BOMB_TIMEOUT)
            assert response.status_code == 502, response.text[:300]
        assert session.get(served.base + "/healthy/", timeout=10).status_code == 200

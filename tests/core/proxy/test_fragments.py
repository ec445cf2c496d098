"""Fragments: actions of several services composed into one page, fetched concurrently.

Real services on loopback ports (scripted WSGI apps that log every call they see), real proxies
served over HTTP.  Concurrency is asserted on what the services saw (a barrier every fragment's
action must pass together), never on wall-clock times.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from proxy_helpers import Browser
from werkzeug.wrappers import Request, Response

from plugit_core.config import ConfigError, FragmentSpec, ProxyConfig
from plugit_core.hookspecs import hookimpl
from plugit_core.proxy.app import ProxyApp
from plugit_core.testing import serve


class Service:
    """A PlugIt service whose actions are given by the test, logging each action call's start
    and end; an action may wait on a barrier or an event first."""

    def __init__(self) -> None:
        self.pages: dict[str, dict[str, Any]] = {}
        self.events: list[str] = []
        self.sessions: list[dict[str, str]] = []  # the session values each action call carried
        self._lock = threading.Lock()

    def page(
        self,
        path: str,
        template: str,
        data: Any = None,
        *,
        wait: Callable[[], Any] | None = None,
        status: int = 200,
        headers: dict[str, str] | None = None,
        **meta: Any,
    ) -> None:
        self.pages[path] = {
            "template": template,
            "data": data or {},
            "meta": meta,
            "wait": wait,
            "status": status,
            "headers": headers or {},
        }

    def log(self, event: str) -> None:
        with self._lock:
            self.events.append(event)

    def calls(self, path: str) -> int:
        return self.events.count(f"start:{path}")

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        request = Request(environ)
        kind, _, path = request.path.lstrip("/").partition("/")
        if kind == "version":
            body: Any = {"result": "Ok", "version": "1", "protocol": "EBUio-PlugIt"}
        elif path not in self.pages or kind not in ("meta", "template", "action"):
            return Response("no", status=404)(environ, start_response)
        else:
            page = self.pages[path]
            if kind == "meta":
                tag = hashlib.md5(page["template"].encode()).hexdigest()
                body = {"template_tag": tag, **page["meta"]}
            elif kind == "template":
                return Response(page["template"])(environ, start_response)
            else:
                with self._lock:
                    self.sessions.append(
                        {
                            k.lower()[len("x-plugitsession-") :]: v
                            for k, v in request.headers.items()
                            if k.lower().startswith("x-plugitsession-")
                        }
                    )
                self.log(f"start:{path}")
                try:
                    if page["wait"] is not None:
                        page["wait"]()
                finally:
                    self.log(f"end:{path}")
                body = page["data"]
                if page["status"] != 200:
                    return Response("failed", status=page["status"])(environ, start_response)
                reply = Response(json.dumps(body), mimetype="application/json")
                reply.headers.update(page["headers"])
                return reply(environ, start_response)
        return Response(json.dumps(body), mimetype="application/json")(environ, start_response)


@pytest.fixture
def services() -> Iterator[dict[str, tuple[Service, str]]]:
    """Three services, served: ``news`` and ``polls`` (sandboxed) and ``tools`` (full trust)."""
    with contextlib.ExitStack() as stack:
        found = {}
        for name in ("news", "polls", "tools"):
            service = Service()
            found[name] = (service, stack.enter_context(serve(service)))
        yield found


@pytest.fixture
def open_proxy(
    services: dict[str, tuple[Service, str]],
) -> Iterator[Callable[..., Browser]]:
    with contextlib.ExitStack() as stack:

        def factory(plugins: tuple[Any, ...] = (), **top: Any) -> Browser:
            mounts = top.pop("mounts", {})
            config: dict[str, Any] = {
                "dev_mode": True,
                "services": [
                    {
                        "name": name,
                        "url": url,
                        "mount": f"/{name}/",
                        "trust": "full" if name == "tools" else "sandboxed",
                        **mounts.get(name, {}),
                    }
                    for name, (_service, url) in services.items()
                ],
                **top,
            }
            proxy = ProxyApp(config, plugins=plugins, load_entry_points=False)
            stack.callback(proxy.close)
            browser = Browser(stack.enter_context(serve(proxy)), proxy)
            stack.callback(browser.close)
            return browser

        yield factory


def _dashboard(*fragments: dict[str, Any], path: str = "/dash", **page: Any) -> dict[str, Any]:
    return {"pages": [{"path": path, "title": "Dashboard", "fragments": list(fragments), **page}]}


# -- concurrency and timeouts ---------------------------------------------------------------------


def test_a_site_page_fetches_its_fragments_concurrently(services, open_proxy) -> None:
    news, polls = services["news"][0], services["polls"][0]
    # Every action waits until all four are under way: fetched one after the other, the first
    # would wait alone and break the barrier.
    barrier = threading.Barrier(4, timeout=5)
    for n in range(2):
        news.page(f"n{n}", f"<p>news {n}</p>", wait=barrier.wait)
        polls.page(f"p{n}", f"<p>poll {n}</p>", wait=barrier.wait)
    browser = open_proxy(
        **_dashboard(
            {"service": "news", "path": "/n0", "title": "First news"},
            {"service": "polls", "path": "p0"},
            {"service": "news", "path": "n1"},
            {"service": "polls", "path": "p1"},
            columns=2,
        )
    )
    page = browser.get("/dash")
    assert page.status_code == 200
    assert not barrier.broken
    html = page.text
    positions = [html.index(f"<p>{text}</p>") for text in ("news 0", "poll 0", "news 1", "poll 1")]
    assert positions == sorted(positions)  # in the declared order
    assert "First news" in html
    assert 'id="plugit-page-title">Dashboard</h1>' in html
    assert "row-cols-md-2" in html
    assert len(news.events + polls.events) == 8  # each action called once
    assert page.headers["Content-Security-Policy"].startswith("default-src 'self'")


def test_a_hung_fragment_gives_its_fallback_within_its_timeout(services, open_proxy) -> None:
    news, polls = services["news"][0], services["polls"][0]
    release = threading.Event()
    news.page("hung", "<p>never</p>", wait=lambda: release.wait(10))
    polls.page("ok", "<p>poll ok</p>")
    news.page("ok", "<p>news ok</p>")
    browser = open_proxy(
        **_dashboard(
            {"service": "news", "path": "hung", "timeout": 0.3, "fallback": "<p>News later</p>"},
            {"service": "polls", "path": "ok"},
            {"service": "news", "path": "ok"},
        )
    )
    try:
        page = browser.get("/dash")
        # the page arrived while the hung action was still waiting
        assert "end:hung" not in news.events
        assert news.calls("hung") == 1
    finally:
        release.set()
    assert page.status_code == 200
    assert "<p>News later</p>" in page.text
    assert "<p>poll ok</p>" in page.text and "<p>news ok</p>" in page.text
    assert "never" not in page.text


def test_a_dead_service_leaves_the_other_fragments_and_the_page(services, open_proxy) -> None:
    polls = services["polls"][0]
    polls.page("ok", "<p>poll ok</p>")
    browser = open_proxy(
        mounts={"news": {"url": "http://127.0.0.1:9", "timeout": 1}},
        **_dashboard({"service": "news", "path": "x"}, {"service": "polls", "path": "ok"}),
    )
    page = browser.get("/dash")
    assert page.status_code == 200
    assert "<p>poll ok</p>" in page.text
    assert 'data-plugit-fragment="news/x"></section>' in page.text  # nothing, no error page


def test_the_last_good_copy_is_shown_when_the_service_fails(services, open_proxy) -> None:
    news = services["news"][0]
    news.page("latest", "<p>headline {{ n }}</p>", {"n": 1})
    browser = open_proxy(**_dashboard({"service": "news", "path": "latest"}))
    browser.as_user("mem", mount="/news/")
    assert "<p>headline 1</p>" in browser.get("/dash").text
    news.page("latest", "<p>headline</p>", status=500)
    page = browser.get("/dash")
    assert page.status_code == 200
    assert "<p>headline 1</p>" in page.text  # the last good copy
    assert news.calls("latest") == 2
    # another kind of visitor (here anonymous) never gets this visitor's copy
    other = Browser(browser.base, browser.proxy)
    assert "headline" not in other.get("/dash").text


# -- access, sanitising, caching --------------------------------------------------------------


def test_a_refused_fragment_renders_its_placeholder_not_an_error(services, open_proxy) -> None:
    news = services["news"][0]
    news.page("mine", "<p>your news, {{ ebuio_u.username }}</p>", only_logged_user=True)
    news.page("public", "<p>public news</p>")
    browser = open_proxy(
        **_dashboard(
            {"service": "news", "path": "mine", "placeholder": "<p>Log in for yours</p>"},
            {"service": "news", "path": "public"},
        )
    )
    page = browser.get("/dash")
    assert page.status_code == 200
    assert "<p>Log in for yours</p>" in page.text
    assert "your news" not in page.text
    assert "<p>public news</p>" in page.text
    assert news.calls("mine") == 0  # refused before the call
    browser.as_user("log", mount="/news/")
    page = browser.get("/dash")
    assert "<p>your news, " in page.text
    assert "Log in for yours" not in page.text


def test_a_plugin_veto_gives_the_placeholder(services, open_proxy) -> None:
    news = services["news"][0]
    news.page("x", "<p>secret x</p>")

    class Veto:
        @hookimpl
        def plugit_access_decision(self, page: Any) -> str | None:
            return "vetoed" if page.fragment else None

    browser = open_proxy(
        plugins=(Veto(),), **_dashboard({"service": "news", "path": "x", "placeholder": "-"})
    )
    page = browser.get("/dash")
    assert page.status_code == 200
    assert "secret x" not in page.text
    assert news.calls("x") == 0


def test_a_sandboxed_fragment_is_sanitised_a_full_trust_one_is_not(services, open_proxy) -> None:
    hostile = '<b onclick="steal()">hi</b><script>steal()</script><a href="javascript:x">l</a>'
    services["news"][0].page("x", hostile, no_template=True)  # even without the layout
    services["tools"][0].page("x", '<p id="tool">tool</p><script>tool()</script>')
    browser = open_proxy(
        **_dashboard({"service": "news", "path": "x"}, {"service": "tools", "path": "x"})
    )
    html = browser.get("/dash").text
    assert "<b>hi</b>" in html
    assert "steal()" not in html
    assert "javascript:" not in html
    assert "<script>tool()</script>" in html


def test_a_restricted_fragment_in_a_cached_page_is_per_visitor(services, open_proxy) -> None:
    news, polls = services["news"][0], services["polls"][0]
    # a shared page, cached for everybody, that places a fragment only members see
    polls.page(
        "home", '<div>{{ plugit_fragment("news", "mine", placeholder="no") }}</div>', cache_time=60
    )
    news.page("mine", "<p>for {{ ebuio_u.username }}</p>", only_member_user=True)
    member = open_proxy()
    member.as_user("mem", mount="/news/")
    assert "<p>for " in member.get("/polls/home").text
    anonymous = Browser(member.base, member.proxy)
    html = anonymous.get("/polls/home").text
    assert "<p>for " not in html
    assert "<div>no</div>" in html
    assert polls.calls("home") == 1  # the page came from the cache, its fragment did not


# -- placements -----------------------------------------------------------------------------------


def test_a_service_template_places_fragments_of_other_services(services, open_proxy) -> None:
    news, polls = services["news"][0], services["polls"][0]
    polls.page(
        "",
        "<main>{{ plugit_fragment('news', '/latest?n=2') }}"
        "{{ plugit_fragment('polls', 'side') }}</main>",
    )
    polls.page("side", "<aside>{{ plugit_fragment('news', 'latest') }}side</aside>")
    news.page("latest", "<p>latest news</p>")
    # a fragment of the page's own service with one concurrency slot: no deadlock
    browser = open_proxy(mounts={"polls": {"max_concurrency": 1}})
    page = browser.get("/polls/")
    assert page.status_code == 200
    assert "<main><p>latest news</p><aside>side</aside></main>" in page.text  # no nesting
    assert news.calls("latest") == 1


def test_the_django_dialect_places_fragments(services, open_proxy) -> None:
    services["polls"][0].page("", '<div>{% plugitFragment "news" "latest" %}</div>')
    services["news"][0].page("latest", "<p>latest news</p>")
    browser = open_proxy(mounts={"polls": {"template_dialect": "django"}})
    assert "<div><p>latest news</p></div>" in browser.get("/polls/").text


def test_fragment_forms_carry_their_own_services_token(services, open_proxy) -> None:
    services["polls"][0].page("", "<div>{{ csrf_field }}{{ plugit_fragment('news', 'f') }}</div>")
    services["news"][0].page("f", '<form method="post" action="/news/vote">{{ csrf_field }}</form>')
    browser = open_proxy()
    html = browser.get("/polls/").text
    tokens = [
        part.split('"', 1)[0] for part in html.split('name="csrfmiddlewaretoken" value="')[1:]
    ]
    assert len(tokens) == 2
    assert tokens[0] == browser.cookies.get("csrftoken", path="/polls/")
    # the fragment's form posts to its own service, with that service's token
    services["news"][0].page("vote", "<p>voted</p>")
    refused = browser.post("/news/vote", data={"csrfmiddlewaretoken": tokens[0]})
    assert refused.status_code == 403
    accepted = browser.post("/news/vote", data={"csrfmiddlewaretoken": tokens[1]})
    assert accepted.status_code == 200
    assert "<p>voted</p>" in accepted.text


# -- attacks --------------------------------------------------------------------------------------


def test_a_service_cannot_forge_or_misplace_markers(services, open_proxy) -> None:
    news, polls = services["news"][0], services["polls"][0]
    news.page("x", '<p>x</p>" onmouseover="steal()')
    browser = open_proxy(mounts={"polls": {"trust": "full"}})
    real = str(browser.proxy.fragments.marker(FragmentSpec("news", "x")))
    forged = real[:-12] + "AAAAAAAAAA]]"
    polls.page("forged", "<div>{{ forged }}</div>", {"forged": forged})
    polls.page("attr", '<div title="{{ plugit_fragment("news", "x") }}">a</div>')
    polls.page("script", '<script>var s = "{{ plugit_fragment("news", "x") }}";</script>')
    polls.page("comment", '<!-- {{ plugit_fragment("news", "x") }} -->')
    for path in ("forged", "attr", "script", "comment"):
        page = browser.get(f"/polls/{path}")
        assert page.status_code == 200, path
        assert "steal()" not in page.text, path
        assert "plugit-fragment:" not in page.text, path
    assert news.calls("x") == 0


def test_a_template_cannot_place_more_fragments_than_the_limit(services, open_proxy) -> None:
    news, polls = services["news"][0], services["polls"][0]
    for n in range(40):
        news.page(f"n{n}", f"<i>{n}</i>")
    polls.page("", "{% for n in range(40) %}{{ plugit_fragment('news', 'n' ~ n) }}{% endfor %}")
    page = open_proxy().get("/polls/")
    assert page.status_code == 200
    assert page.text.count("<i>") == 32
    assert sum(news.calls(f"n{n}") for n in range(40)) == 32


# -- assets, hooks --------------------------------------------------------------------------------


def test_fragment_assets_go_once_into_the_head_and_foot(services, open_proxy) -> None:
    assets = {"css": ["news.css"], "js": ["news.js"]}
    bad = {"css": ["../../etc/passwd", "https://evil.example/x.css", "a\\b.css"]}
    news, tools = services["news"][0], services["tools"][0]
    news.page("a", "<p>a</p>", fragment_assets=assets)
    news.page("b", "<p>b</p>", fragment_assets=assets)
    news.page("c", "<p>c</p>", fragment_assets=bad)
    tools.page("t", "<p>t</p>", fragment_assets={"js": "tool.js", "css": ["tool.css"]})
    browser = open_proxy(
        **_dashboard(
            *({"service": "news", "path": p} for p in "abc"), {"service": "tools", "path": "t"}
        )
    )
    page = browser.get("/dash")
    html = page.text
    head, body = html.split("</head>", 1)
    assert head.count('<link rel="stylesheet" href="/news/media/news.css">') == 1
    assert '<link rel="stylesheet" href="/tools/media/tool.css">' in head
    assert "news.js" not in html  # a sandboxed service runs no script
    nonce = page.headers["Content-Security-Policy"].split("'nonce-", 1)[1].split("'", 1)[0]
    assert f'<script src="/tools/media/tool.js" nonce="{nonce}" defer></script></body>' in body
    assert "passwd" not in html and "evil.example" not in html and "b.css" not in html


def test_hooks_add_drop_and_wrap_fragments(services, open_proxy) -> None:
    news = services["news"][0]
    for path in ("a", "b", "c"):
        news.page(path, f"<p>{path}</p>")

    class Personalise:
        @hookimpl
        def plugit_fragments(self, request: Any, where: str, fragments: list[FragmentSpec]) -> None:
            assert where == "/dash"
            fragments[:] = [f for f in fragments if f.path != "a"]
            fragments.append(FragmentSpec("news", "c"))

        @hookimpl
        def plugit_fragment_rendered(self, request: Any, result: Any) -> None:
            result.html = (
                f'<div class="wrapped" data-outcome="{result.outcome}">{result.html}</div>'
            )

    browser = open_proxy(
        plugins=(Personalise(),),
        **_dashboard({"service": "news", "path": "a"}, {"service": "news", "path": "b"}),
    )
    html = browser.get("/dash").text
    assert "<p>a</p>" not in html
    assert '<div class="wrapped" data-outcome="ok"><p>b</p></div>' in html
    assert '<div class="wrapped" data-outcome="ok"><p>c</p></div>' in html
    assert news.calls("a") == 0


# -- configuration --------------------------------------------------------------------------------


def _config(**top: Any) -> ProxyConfig:
    base = {
        "dev_mode": True,
        "services": [{"name": "news", "url": "http://127.0.0.1:9", "mount": "/news/"}],
    }
    return ProxyConfig.from_mapping({**base, **top})


@pytest.mark.parametrize(
    ("pages", "key", "message"),
    [
        (
            [{"path": "/d", "title": "D", "fragments": [{"service": "nope"}]}],
            "pages[0].fragments[0].service",
            "no service is named 'nope'",
        ),
        ([{"path": "d", "title": "D"}], "pages[0].path", "must be a path"),
        ([{"path": "/news/d", "title": "D"}], "pages[0].path", "below the mount of service 'news'"),
        ([{"path": "/_plugit/d", "title": "D"}], "pages[0].path", "reserved"),
        (
            [{"path": "/d", "title": "D"}, {"path": "/d", "title": "E"}],
            "pages[1].path",
            "used twice",
        ),
        ([{"path": "/d", "title": "D", "columns": 9}], "pages[0].columns", ""),
        (
            [{"path": "/d", "title": "D", "fragments": [{"service": "news", "timeout": 0}]}],
            "pages[0].fragments[0].timeout",
            "",
        ),
        (
            [{"path": "/d", "title": "D", "fragments": [{"service": "news", "colour": 1}]}],
            "pages[0].fragments[0].colour",
            "",
        ),
        ([{"path": "/d"}], "pages[0].title", ""),
    ],
)
def test_bad_pages_are_refused_naming_the_key(pages: Any, key: str, message: str) -> None:
    with pytest.raises(ConfigError) as error:
        _config(pages=pages)
    assert error.value.key == key
    assert message in str(error.value)


def test_a_page_at_the_root_replaces_the_home_page(services, open_proxy) -> None:
    services["news"][0].page("", "<p>front page news</p>")
    browser = open_proxy(**_dashboard({"service": "news"}, path="/"))
    page = browser.get("/")
    assert page.status_code == 200
    assert "<p>front page news</p>" in page.text


def test_the_service_library_declares_fragment_assets() -> None:
    from plugit_core.service import action, fragment_assets
    from plugit_core.service.decorators import get_spec

    @fragment_assets(css=["news.css"], js=("news.js",))
    @action("/latest", template="latest.html")
    def latest(request: Any) -> dict[str, Any]:
        return {}

    spec = get_spec(latest)
    assert spec is not None
    assert spec.meta["fragment_assets"] == {"css": ["news.css"], "js": ["news.js"]}
    for bad in ("/etc/x.css", "https://evil.example/x.css", ""):
        with pytest.raises(ValueError, match="paths below media/"):
            fragment_assets(css=[bad])


def test_a_layout_region_shows_a_fragment_on_every_page(services, open_proxy, tmp_path) -> None:
    import shutil

    from plugit_backends.theme_bootstrap import SERVICE_TEMPLATES_DIR, STATIC_DIR, TEMPLATES_DIR
    from plugit_core.backends import Theme

    # a theme whose layout has a sidebar region: the news service's fragment
    shutil.copytree(TEMPLATES_DIR, tmp_path / "templates")
    layout = tmp_path / "templates" / "plugit" / "layout.html"
    region = '<aside id="sidebar">{{ plugit_fragment("news", "side", fallback="<i>quiet</i>") }}'
    layout.write_text(
        layout.read_text().replace(
            '<main id="plugit-main"', region + '</aside><main id="plugit-main"'
        )
    )

    class RegionTheme:
        @hookimpl
        def plugit_register_backends(self, register: Any) -> None:
            theme = Theme("regions", tmp_path / "templates", SERVICE_TEMPLATES_DIR, STATIC_DIR)
            register("theme", "regions", lambda config, section: theme)

    news, polls = services["news"][0], services["polls"][0]
    news.page("side", "<p>breaking {{ ebuio_u.username or 'for all' }}</p>", cache_time=60)
    polls.page("", "<p>the polls</p>", cache_time=60)
    browser = open_proxy(plugins=(RegionTheme(),), theme="regions", **_dashboard())
    for path in ("/polls/", "/polls/", "/dash", "/"):  # a service page (then cached), site pages
        page = browser.get(path)
        assert page.status_code == 200, path
        assert '<aside id="sidebar"><p>breaking for all</p></aside>' in page.text, path
    assert news.calls("side") == 1  # from its own cache afterwards
    assert polls.calls("") == 1
    news.page("side", "", status=500)  # the template changed: a new cache entry, a failure
    assert '<aside id="sidebar"><i>quiet</i></aside>' in browser.get("/polls/").text
    assert "<p>the polls</p>" in browser.get("/polls/").text


def test_session_writes_of_concurrent_fragments_are_all_kept(services, open_proxy) -> None:
    news = services["news"][0]
    for _ in range(5):  # several tries: a lost write would show in one of them
        news.sessions.clear()
        barrier = threading.Barrier(3, timeout=5)
        for key in ("a", "b", "c"):
            news.page(
                f"set{key}",
                f"<p>{key}</p>",
                wait=barrier.wait,
                headers={f"EbuIo-PlugIt-SetSession-{key}": f"value-{key}"},
            )
        news.page("read", "<p>read</p>")
        browser = open_proxy(
            **_dashboard(*({"service": "news", "path": f"set{k}"} for k in ("a", "b", "c")))
        )
        assert browser.get("/dash").status_code == 200
        assert not barrier.broken
        assert browser.get("/news/read").status_code == 200
        assert news.sessions[-1] == {"a": "value-a", "b": "value-b", "c": "value-c"}

"""The default Bootstrap theme: its templates render what the proxy expects, safely and offline."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from types import SimpleNamespace

import pytest
from jinja2 import Environment, FileSystemLoader, StrictUndefined, meta
from jinja2.sandbox import ImmutableSandboxedEnvironment
from markupsafe import Markup

from plugit_backends.theme_bootstrap import (
    BOOTSTRAP_VERSION,
    MENU_BLOCK,
    SERVICE_TEMPLATES_DIR,
    STATIC_DIR,
    TEMPLATES_DIR,
)
from plugit_core.proxy.templating import ThemeServiceLoader

SITE_TEMPLATES = [
    "plugit/layout.html",
    "plugit/layout-menu.html",
    "plugit/error.html",
    "plugit/home.html",
]
SERVICE_BASES = [
    "plugit/base.html",
    "plugit/base-withBlocks.html",
    "plugIt/base.html",  # the original's spelling, served from the same files by the proxy
    "plugIt/base-withBlocks.html",
]
ON_DISK_BASES = [name for name in SERVICE_BASES if name.startswith("plugit/")]

#: Every name the proxy hands to the site templates (the contract with the proxy).
CONTEXT_NAMES = {
    "plugit_content",
    "plugit_menu",
    "page_title",
    "site_name",
    "service",
    "services",
    "user",
    "static_url",
    "csrf_token",  # the site's own forms
    "page_csrf_token",  # the token of the page's scope (a service's page: its mount's)
    "csp_nonce",  # the response's Content-Security-Policy nonce, on every script element
    "login_url",
    "logout_url",
    "dev_mode",
    "dev_user_mode",
    "dev_orgas",
    "request_path",
    "orga",
    "orgas",
    "home_url",  # optional, defaults to "/"
    "script_root",  # SCRIPT_NAME ("" at the site's root)
    "site_url",  # a path of the app (a service's mount) as the browser must ask for it
    "logout_method",  # "post" (a form) or "get" (a link)
    "logout_fields",  # the host app's hidden logout fields, or None (the proxy's CSRF field)
    # error.html only
    "status",
    "title",
    "message",
    "reason",
}
#: Names that plugit/layout.html sets for its children.
LAYOUT_NAMES = {"home_href"}

VOTE = SimpleNamespace(name="vote", title="Polls & votes", mount="/vote/")
WIKI = SimpleNamespace(name="wiki", title="Wiki", mount="/wiki/")
EBU = SimpleNamespace(pk=1, name="EBU", codops="zzebu")
RTS = SimpleNamespace(pk=2, name="RTS", codops="chrts")
ALICE = SimpleNamespace(is_authenticated=True, username="alice", display_name="Alice Martin")
ANONYMOUS = SimpleNamespace(is_authenticated=False, username="", display_name="")
VOID_TAGS = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source"}


# --------------------------------------------------------------------------- helpers


class Element:
    def __init__(self, tag: str, attrs: dict[str, str], ancestors: list[Element]) -> None:
        self.tag = tag
        self.attrs = attrs
        self.ancestors = ancestors
        self.text = ""

    @property
    def classes(self) -> set[str]:
        return set(self.attrs.get("class", "").split())

    def inside(self, element_id: str) -> bool:
        return any(a.attrs.get("id") == element_id for a in self.ancestors)


class Page(HTMLParser):
    """A rendered page, parsed strictly enough to catch unbalanced or duplicated markup."""

    def __init__(self, html: str) -> None:
        super().__init__(convert_charrefs=True)
        self.html = html
        self.elements: list[Element] = []
        self.doctype = ""
        self._open: list[Element] = []
        self.feed(html)
        self.close()
        assert not self._open, f"unclosed: {[e.tag for e in self._open]}"
        ids = [e.attrs["id"] for e in self.elements if "id" in e.attrs]
        assert len(ids) == len(set(ids)), f"duplicate ids: {ids}"

    def handle_decl(self, decl: str) -> None:
        self.doctype = decl

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        element = Element(tag, {k: v or "" for k, v in attrs}, list(self._open))
        self.elements.append(element)
        if tag not in VOID_TAGS:
            self._open.append(element)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.elements.append(Element(tag, {k: v or "" for k, v in attrs}, list(self._open)))

    def handle_endtag(self, tag: str) -> None:
        assert tag not in VOID_TAGS, f"end tag for void element {tag}"
        assert self._open and self._open[-1].tag == tag, (
            f"</{tag}> closes {self._open[-1].tag if self._open else 'nothing'}"
        )
        self._open.pop()

    def handle_data(self, data: str) -> None:
        for element in self._open:
            element.text += data

    def find_all(self, tag: str | None = None, **attrs: str) -> list[Element]:
        return [
            e
            for e in self.elements
            if (tag is None or e.tag == tag)
            and all(e.attrs.get(k.rstrip("_").replace("_", "-")) == v for k, v in attrs.items())
        ]

    def by_id(self, element_id: str) -> Element | None:
        found = self.find_all(id=element_id)
        return found[0] if found else None

    def forms_posting_to(self, action: str) -> list[dict[str, str]]:
        """The hidden fields of each POST form whose action is ``action``."""
        result = []
        for form in self.find_all("form", action=action):
            assert form.attrs.get("method") == "post"
            fields = {
                e.attrs["name"]: e.attrs.get("value", "")
                for e in self.elements
                if e.tag == "input" and form in e.ancestors and e.attrs.get("type") == "hidden"
            }
            result.append(fields)
        return result


def static_url(path: str) -> str:
    return "/_static/" + path


def site_context(**overrides):
    context = {
        "plugit_content": Markup("<p>service page</p>"),
        "plugit_menu": Markup(""),
        "page_title": "Polls",
        "site_name": "Demo site",
        "service": VOTE,
        "services": [VOTE, WIKI],
        "user": ALICE,
        "static_url": static_url,
        "csrf_token": "csrf-123",
        "page_csrf_token": "csrf-456",
        "csp_nonce": "nonce-789",
        "login_url": "/login/",
        "logout_url": "/logout/",
        "logout_method": "post",
        "logout_fields": None,
        "script_root": "",
        "site_url": lambda path: path,
        "dev_mode": False,
        "dev_user_mode": "ano",
        "dev_orgas": [],
        "request_path": "/vote/list?page=2",
        "orga": None,
        "orgas": [],
        "status": 404,
        "title": "Page not found",
        "message": "This page does not exist.",
        "reason": None,
    }
    context.update(overrides)
    return context


@pytest.fixture(scope="module")
def site_env() -> Environment:
    # StrictUndefined: a template that uses a name the proxy does not give fails loudly.
    return Environment(
        loader=FileSystemLoader(TEMPLATES_DIR), autoescape=True, undefined=StrictUndefined
    )


@pytest.fixture(scope="module")
def service_env() -> ImmutableSandboxedEnvironment:
    return ImmutableSandboxedEnvironment(
        loader=ThemeServiceLoader(str(SERVICE_TEMPLATES_DIR)), autoescape=True
    )


@pytest.fixture
def render(site_env):
    def _render(name: str = "plugit/layout.html", **overrides) -> Page:
        return Page(site_env.get_template(name).render(site_context(**overrides)))

    return _render


# --------------------------------------------------------------------------- files


@pytest.mark.parametrize(
    "relative",
    [
        pytest.param("bootstrap/bootstrap.min.css", id="bootstrap-css"),
        pytest.param("bootstrap/bootstrap.bundle.min.js", id="bootstrap-js"),
        pytest.param("bootstrap/LICENSE", id="bootstrap-license"),
        pytest.param("plugit.css", id="plugit-css"),
        pytest.param("favicon.svg", id="favicon"),
    ],
)
def test_static_file_exists_and_is_not_empty(relative):
    path = STATIC_DIR / relative
    assert path.is_file()
    assert path.stat().st_size > 0


def test_vendored_bootstrap_is_the_announced_version():
    head = (STATIC_DIR / "bootstrap" / "bootstrap.min.css").read_text(encoding="utf-8")[:300]
    assert f"Bootstrap  v{BOOTSTRAP_VERSION}" in head or f"Bootstrap v{BOOTSTRAP_VERSION}" in head
    js_head = (STATIC_DIR / "bootstrap" / "bootstrap.bundle.min.js").read_text("utf-8")[:300]
    assert f"Bootstrap v{BOOTSTRAP_VERSION}" in js_head
    assert "MIT License" in (STATIC_DIR / "bootstrap" / "LICENSE").read_text(encoding="utf-8")


@pytest.mark.parametrize(
    ("folder", "name"),
    [pytest.param(TEMPLATES_DIR, n, id=f"site:{n}") for n in SITE_TEMPLATES]
    + [pytest.param(SERVICE_TEMPLATES_DIR, n, id=f"service:{n}") for n in ON_DISK_BASES],
)
def test_template_exists(folder, name):
    assert (folder / name).is_file()


def _own_files():
    files = sorted(TEMPLATES_DIR.rglob("*.html")) + sorted(SERVICE_TEMPLATES_DIR.rglob("*.html"))
    return [*files, STATIC_DIR / "plugit.css"]


@pytest.mark.parametrize(
    "path", [pytest.param(p, id=p.relative_to(STATIC_DIR.parent).as_posix()) for p in _own_files()]
)
def test_no_external_url_in_theme_sources(path):
    text = path.read_text(encoding="utf-8")
    assert not re.search(r"https?://", text, re.IGNORECASE)
    assert not re.search(r"""(?:src|href|action)\s*=\s*["']?//""", text, re.IGNORECASE)
    assert not re.search(r"url\(\s*['\"]?(?!data:)[a-z]*:?//", text, re.IGNORECASE)
    assert "@import" not in text


# --------------------------------------------------------------------------- contract


@pytest.mark.parametrize("name", [pytest.param(n, id=n) for n in SITE_TEMPLATES])
def test_site_template_uses_only_the_documented_context(site_env, name):
    source = site_env.loader.get_source(site_env, name)[0]
    used = meta.find_undeclared_variables(site_env.parse(source))
    assert used <= CONTEXT_NAMES | LAYOUT_NAMES, used - CONTEXT_NAMES - LAYOUT_NAMES


@pytest.mark.parametrize("name", [pytest.param(n, id=n) for n in SERVICE_BASES])
def test_service_base_uses_no_variable(service_env, name):
    source = service_env.loader.get_source(service_env, name)[0]
    assert meta.find_undeclared_variables(service_env.parse(source)) == set()


def test_home_url_is_optional_and_defaults_to_root(site_env):
    page = Page(site_env.get_template("plugit/layout.html").render(site_context()))
    assert page.find_all("a", class_="navbar-brand")[0].attrs["href"] == "/"
    context = site_context(home_url="/portal/")
    page = Page(site_env.get_template("plugit/layout.html").render(context))
    assert page.find_all("a", class_="navbar-brand")[0].attrs["href"] == "/portal/"


def test_plain_environment_renders_as_well():
    """The proxy may use jinja2's default Undefined; nothing depends on StrictUndefined."""
    env = Environment(loader=FileSystemLoader(TEMPLATES_DIR), autoescape=True)
    for name in SITE_TEMPLATES:
        Page(env.get_template(name).render(site_context(dev_mode=True, dev_orgas=[EBU])))


# --------------------------------------------------------------------------- page structure

ALL_PAGES = [
    pytest.param(name, overrides, id=f"{name.split('/')[-1]}-{label}")
    for name in SITE_TEMPLATES
    for label, overrides in [
        ("plain", {}),
        ("anonymous", {"user": ANONYMOUS}),
        (
            "dev",
            {
                "dev_mode": True,
                "dev_orgas": [EBU, RTS],
                "orga": EBU,
                "plugit_menu": Markup('<div class="menu-section"><h3>M</h3></div>'),
            },
        ),
        ("orgas", {"orgas": [EBU, RTS], "orga": RTS}),
        ("no-service", {"service": None, "dev_mode": True}),
    ]
]


@pytest.mark.parametrize(("name", "overrides"), ALL_PAGES)
def test_page_is_well_formed_html5(render, name, overrides):
    page = render(name, **overrides)
    assert page.doctype.lower() == "doctype html"
    html = page.find_all("html")[0]
    assert html.attrs.get("lang")
    assert page.find_all("meta", charset="utf-8")
    assert page.find_all("meta", name="viewport")
    assert page.find_all("title")[0].text.strip()
    assert len(page.find_all("main")) == 1
    assert page.find_all("nav", aria_label="Main navigation")


@pytest.mark.parametrize(("name", "overrides"), ALL_PAGES)
def test_page_is_accessible(render, name, overrides):
    page = render(name, **overrides)
    navs = page.find_all("nav")
    labels = [n.attrs.get("aria-label") for n in navs]
    assert all(labels), "every nav landmark is labelled"
    assert len(labels) == len(set(labels)), "nav landmarks are told apart"
    for button in page.find_all("button"):
        assert button.text.strip() or button.attrs.get("aria-label"), button.attrs
        assert button.attrs.get("type") in {"button", "submit"}
    for link in page.find_all("a"):
        assert link.text.strip() or link.attrs.get("aria-label"), link.attrs
    skip = page.find_all("a", href="#plugit-main")
    assert skip and page.by_id("plugit-main") is not None


@pytest.mark.parametrize(("name", "overrides"), ALL_PAGES)
def test_page_loads_nothing_external_and_runs_no_inline_script(render, name, overrides):
    page = render(name, **overrides)
    scripts = page.find_all("script")
    assert [s.attrs.get("src") for s in scripts] == [
        static_url("bootstrap/bootstrap.bundle.min.js")
    ]
    assert all(not s.text.strip() for s in scripts)
    stylesheets = [e.attrs["href"] for e in page.find_all("link", rel="stylesheet")]
    assert stylesheets == [static_url("bootstrap/bootstrap.min.css"), static_url("plugit.css")]
    for element in page.elements:
        for attr, value in element.attrs.items():
            assert not attr.startswith("on"), f"inline handler {attr} on <{element.tag}>"
            assert attr != "style", f"inline style on <{element.tag}>"
            if attr in {"src", "href", "action"}:
                assert value.startswith(("/", "#")), value
                assert not value.startswith("//"), value
    assert "<style" not in page.html


def test_title_combines_page_title_and_site_name(render):
    assert render(page_title="Polls").find_all("title")[0].text == "Polls · Demo site"
    assert render(page_title="").find_all("title")[0].text == "Demo site"


# --------------------------------------------------------------------------- content and menu


@pytest.mark.parametrize("name", ["plugit/layout.html", "plugit/layout-menu.html"])
def test_service_content_is_output_unescaped(render, name):
    content = Markup('<h2 id="svc-title">Open <em>polls</em></h2><form id="svc-form"></form>')
    page = render(name, plugit_content=content)
    heading = page.by_id("svc-title")
    assert heading is not None and heading.inside("plugit-content")
    assert heading.text == "Open polls"
    assert page.by_id("svc-form").inside("plugit-content")


@pytest.mark.parametrize(
    ("name", "menu_class"),
    [
        pytest.param("plugit/layout.html", "plugit-menubar", id="top-bar"),
        pytest.param("plugit/layout-menu.html", "plugit-menu-column", id="left-column"),
    ],
)
def test_menu_is_shown_when_given(render, name, menu_class):
    menu = Markup('<div class="menu-section"><h3>Polls</h3><ul><li id="m1">All</li></ul></div>')
    page = render(name, plugit_menu=menu)
    nav = page.by_id("plugit-menu")
    assert nav is not None and nav.tag == "nav" and menu_class in nav.classes
    assert page.by_id("m1").inside("plugit-menu")
    assert not page.by_id("plugit-content").inside("plugit-menu")
    assert render(name, plugit_menu=Markup("")).by_id("plugit-menu") is None


def test_services_navigation_marks_the_current_service(render):
    page = render(service=WIKI)
    links = [a for a in page.find_all("a") if a.inside("plugit-services")]
    assert [(a.attrs["href"], a.text) for a in links] == [
        ("/vote/", "Polls & votes"),
        ("/wiki/", "Wiki"),
    ]
    assert [a.attrs.get("aria-current") for a in links] == [None, "page"]
    assert "Polls &amp; votes" in page.html


# --------------------------------------------------------------------------- user


def test_user_name_is_escaped(render):
    user = SimpleNamespace(
        is_authenticated=True, username="<script>alert(1)</script>", display_name=""
    )
    page = render(user=user)
    assert "<script>alert(1)</script>" not in page.html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page.html
    assert page.by_id("plugit-user").text.strip().startswith("<script>alert(1)</script>")


def test_display_name_is_preferred_to_username(render):
    user_box = render().by_id("plugit-user")
    assert "Alice Martin" in user_box.text
    assert "alice" not in user_box.text


def test_logout_is_a_post_form_with_the_csrf_field(render):
    page = render()
    form = page.by_id("plugit-logout")
    assert form.attrs["method"] == "post" and form.attrs["action"] == "/logout/"
    assert page.forms_posting_to("/logout/") == [{"plugit_site_csrf": "csrf-123"}]
    assert page.by_id("plugit-login") is None
    assert page.by_id("plugit-user").attrs["data-authenticated"] == "true"


@pytest.mark.parametrize(
    ("user", "login_url", "logout_url", "login_shown", "logout_shown"),
    [
        pytest.param(ANONYMOUS, "/login/", "/logout/", True, False, id="anonymous"),
        pytest.param(ANONYMOUS, None, "/logout/", False, False, id="anonymous-no-login-url"),
        pytest.param(ALICE, "/login/", "/logout/", False, True, id="authenticated"),
        pytest.param(ALICE, "/login/", None, False, False, id="authenticated-no-logout-url"),
    ],
)
def test_login_and_logout_controls(render, user, login_url, logout_url, login_shown, logout_shown):
    page = render(user=user, login_url=login_url, logout_url=logout_url)
    login = page.by_id("plugit-login")
    assert (login is not None) is login_shown
    if login_shown:
        assert login.attrs["href"] == "/login/"
    assert (page.by_id("plugit-logout") is not None) is logout_shown
    assert page.by_id("plugit-user") is not None


# --------------------------------------------------------------------------- dev bar


@pytest.mark.parametrize(
    ("dev_mode", "service", "shown"),
    [
        pytest.param(True, VOTE, True, id="dev-with-service"),
        pytest.param(False, VOTE, False, id="production"),
        pytest.param(True, None, False, id="dev-without-service"),
    ],
)
def test_dev_bar_only_in_dev_mode_for_a_service(render, dev_mode, service, shown):
    page = render(dev_mode=dev_mode, service=service)
    assert (page.by_id("plugit-devbar") is not None) is shown
    assert bool(page.find_all("button", data_plugit_mode="log")) is shown
    assert ("Development mode" in page.html) is shown


@pytest.mark.parametrize("current", ["ano", "log", "mem", "adm"])
def test_dev_bar_user_switcher_marks_the_current_mode(render, current):
    page = render(dev_mode=True, dev_user_mode=current)
    assert "Development mode — simulated users" in page.by_id("plugit-devbar").text
    labels = {"ano": "Anonymous", "log": "Logged", "mem": "Member", "adm": "Admin"}
    for mode, label in labels.items():
        (button,) = page.find_all("button", data_plugit_mode=mode)
        assert button.text == label
        assert button.inside("plugit-devbar")
        assert ("active" in button.classes) is (mode == current)
        assert (button.attrs.get("aria-current") == "true") is (mode == current)
    forms = page.forms_posting_to("/vote/ebuio_setUser")
    assert forms == [
        {"mode": mode, "next": "/vote/list?page=2", "plugit_site_csrf": "csrf-123"}
        for mode in labels
    ]


def test_dev_bar_escapes_the_next_path(render):
    page = render(dev_mode=True, request_path='/vote/?q="><script>x()</script>')
    assert "<script>x()" not in page.html
    nexts = {f["next"] for f in page.forms_posting_to("/vote/ebuio_setUser")}
    assert nexts == {'/vote/?q="><script>x()</script>'}


@pytest.mark.parametrize(
    ("dev_orgas", "orga", "current_pk"),
    [
        pytest.param([EBU, RTS], RTS, "2", id="current-rts"),
        pytest.param([EBU, RTS], None, None, id="none-current"),
        pytest.param([], EBU, None, id="no-simulated-orgas"),
    ],
)
def test_dev_bar_orga_switcher(render, dev_orgas, orga, current_pk):
    page = render(dev_mode=True, dev_orgas=dev_orgas, orga=orga, orgas=[EBU, RTS])
    assert page.by_id("plugit-orga-switcher") is None, "dev mode uses the dev bar instead"
    forms = page.forms_posting_to("/vote/ebuio_setOrga")
    if not dev_orgas:
        assert page.by_id("plugit-dev-orgas") is None
        assert forms == []
        return
    assert page.by_id("plugit-dev-orgas").inside("plugit-devbar")
    assert forms == [
        {
            "pk": str(o.pk),
            "name": o.name,
            "next": "/vote/list?page=2",
            "plugit_site_csrf": "csrf-123",
        }
        for o in dev_orgas
    ]
    buttons = [b for b in page.find_all("button") if "data-plugit-orga" in b.attrs]
    assert [b.text for b in buttons] == [o.name for o in dev_orgas]
    active = [b.attrs["data-plugit-orga"] for b in buttons if "active" in b.classes]
    assert active == ([current_pk] if current_pk else [])


# --------------------------------------------------------------------------- organisations


@pytest.mark.parametrize(
    ("orgas", "dev_mode", "service", "shown"),
    [
        pytest.param([EBU, RTS], False, VOTE, True, id="two-orgas"),
        pytest.param([EBU], False, VOTE, False, id="one-orga"),
        pytest.param([], False, VOTE, False, id="no-orga"),
        pytest.param([EBU, RTS], True, VOTE, False, id="dev-mode"),
        pytest.param([EBU, RTS], False, None, False, id="no-service"),
    ],
)
def test_orga_switcher_only_when_needed(render, orgas, dev_mode, service, shown):
    page = render(orgas=orgas, orga=orgas[0] if orgas else None, dev_mode=dev_mode, service=service)
    assert (page.by_id("plugit-orga-switcher") is not None) is shown


def test_orga_switcher_posts_pk_and_next(render):
    page = render(orgas=[EBU, RTS], orga=RTS)
    switcher = page.by_id("plugit-orga-switcher")
    assert "RTS" in switcher.text
    assert page.forms_posting_to("/vote/ebuio_setOrga") == [
        {"pk": "1", "next": "/vote/list?page=2", "plugit_site_csrf": "csrf-123"},
        {"pk": "2", "next": "/vote/list?page=2", "plugit_site_csrf": "csrf-123"},
    ]
    (current,) = [b for b in page.find_all("button") if b.attrs.get("aria-current") == "true"]
    assert current.attrs["data-plugit-orga"] == "2" and "active" in current.classes


def test_single_orga_is_named_without_a_switcher(render):
    page = render(orgas=[EBU], orga=EBU)
    assert page.by_id("plugit-orga").text == "EBU"


# --------------------------------------------------------------------------- error page


@pytest.mark.parametrize(
    ("status", "title"),
    [
        pytest.param(403, "Access denied", id="403"),
        pytest.param(404, "Page not found", id="404"),
        pytest.param(500, "Server error", id="500"),
        pytest.param(502, "Service unavailable", id="502"),
        pytest.param(504, "Service too slow", id="504"),
    ],
)
@pytest.mark.parametrize("dev_mode", [pytest.param(False, id="prod"), pytest.param(True, id="dev")])
def test_error_page(render, status, title, dev_mode):
    page = render(
        "plugit/error.html",
        status=status,
        title=title,
        message="Try again <later>.",
        reason="only_logged_user",
        dev_mode=dev_mode,
    )
    error = page.by_id("plugit-error")
    assert error.attrs["data-status"] == str(status)
    assert str(status) in error.text and title in error.text
    assert page.by_id("plugit-error-message").text == "Try again <later>."
    assert "Try again &lt;later&gt;." in page.html
    assert page.find_all("title")[0].text.startswith(f"{status} {title}")
    assert ("only_logged_user" in page.html) is dev_mode
    assert (page.by_id("plugit-error-reason") is not None) is dev_mode
    assert page.by_id("plugit-content") is None
    assert page.find_all("a", href="/vote/"), "a way back to the service"


@pytest.mark.parametrize(
    ("status", "user", "login_shown"),
    [
        pytest.param(403, ANONYMOUS, True, id="403-anonymous"),
        pytest.param(403, ALICE, False, id="403-authenticated"),
        pytest.param(404, ANONYMOUS, False, id="404-anonymous"),
    ],
)
def test_error_page_offers_login_on_403(render, status, user, login_shown):
    page = render("plugit/error.html", status=status, user=user)
    in_error = [a for a in page.find_all("a", href="/login/") if a.inside("plugit-error")]
    assert bool(in_error) is login_shown


def test_error_page_without_service(render):
    page = render("plugit/error.html", service=None, status=502, dev_mode=True)
    assert page.by_id("plugit-error").attrs["data-status"] == "502"
    assert page.by_id("plugit-devbar") is None


# --------------------------------------------------------------------------- home page


def test_home_lists_every_service(render):
    page = render("plugit/home.html", service=None)
    cards = [a for a in page.find_all("a") if "plugit-service-card" in a.classes]
    assert [(a.attrs["href"], a.attrs["data-plugit-service"]) for a in cards] == [
        ("/vote/", "vote"),
        ("/wiki/", "wiki"),
    ]
    assert "Polls & votes" in cards[0].text
    assert page.by_id("plugit-home-empty") is None


def test_home_without_services(render):
    page = render("plugit/home.html", service=None, services=[])
    assert page.by_id("plugit-home-empty") is not None


# --------------------------------------------------------------------------- service templates

CHILD = (
    '{{% extends "{base}" %}}'
    "{{% block pretitle %}}<p id='pre'>before</p>{{% endblock %}}"
    "{{% block content %}}<h1 id='c'>{{{{ question }}}}</h1>{{% endblock %}}"
    "{{% block {menu} %}}<ul id='menu'><li>Menu item</li></ul>{{% endblock %}}"
)


@pytest.mark.parametrize("base", [pytest.param(b, id=b) for b in SERVICE_BASES])
def test_service_template_extends_base(service_env, base):
    child = service_env.from_string(CHILD.format(base=base, menu=MENU_BLOCK))
    html = child.render(question="<b>Ready?</b>")
    assert "<p id='pre'>before</p>" in html
    assert "<h1 id='c'>&lt;b&gt;Ready?&lt;/b&gt;</h1>" in html
    assert html.index("id='pre'") < html.index("id='c'")
    assert "Menu item" not in html, "the menu block is never output by the base"
    # ... but the proxy can render it on its own.
    block = child.blocks[MENU_BLOCK]
    menu = "".join(block(child.new_context({"question": "?"})))
    assert menu == "<ul id='menu'><li>Menu item</li></ul>"


@pytest.mark.parametrize("base", [pytest.param(b, id=b) for b in SERVICE_BASES])
def test_service_base_alone_renders_nothing_visible(service_env, base):
    assert service_env.get_template(base).render().strip() == ""


@pytest.mark.parametrize("base", ["plugit/base-withBlocks.html", "plugIt/base-withBlocks.html"])
def test_service_base_with_blocks_places_css_and_javascript(service_env, base):
    child = service_env.from_string(
        f'{{% extends "{base}" %}}'
        "{% block javascript %}<script src='app.js'></script>{% endblock %}"
        "{% block content %}<main-part></main-part>{% endblock %}"
        "{% block css %}<link rel='stylesheet' href='app.css'>{% endblock %}"
    )
    html = child.render()
    assert html.index("app.css") < html.index("<main-part>") < html.index("app.js")

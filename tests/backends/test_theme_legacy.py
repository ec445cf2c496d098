"""The legacy theme: the default theme's contract, with Bootstrap 3 and jQuery served locally
from the installed XStatic packages."""

from __future__ import annotations

import importlib
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
import requests

# The theme contract (helpers and the checks every theme passes) is the default theme's test
# module: its theme-independent tests are imported here and run against this theme's templates
# through the fixtures below (site_env, service_env, render).
import test_theme_bootstrap as contract
from jinja2 import Environment, FileSystemLoader, StrictUndefined, meta
from jinja2.sandbox import ImmutableSandboxedEnvironment
from markupsafe import Markup
from test_theme_bootstrap import (  # noqa: F401 (collected by pytest)
    ALL_PAGES,
    ANONYMOUS,
    CONTEXT_NAMES,
    EBU,
    LAYOUT_NAMES,
    RTS,
    Page,
    site_context,
    static_url,
    test_dev_bar_escapes_the_next_path,
    test_dev_bar_only_in_dev_mode_for_a_service,
    test_dev_bar_orga_switcher,
    test_dev_bar_user_switcher_marks_the_current_mode,
    test_display_name_is_preferred_to_username,
    test_error_page,
    test_error_page_offers_login_on_403,
    test_error_page_without_service,
    test_home_lists_every_service,
    test_home_url_is_optional_and_defaults_to_root,
    test_home_without_services,
    test_login_and_logout_controls,
    test_logout_is_a_post_form_with_the_csrf_field,
    test_menu_is_shown_when_given,
    test_orga_switcher_only_when_needed,
    test_orga_switcher_posts_pk_and_next,
    test_page_is_accessible,
    test_page_is_well_formed_html5,
    test_service_base_alone_renders_nothing_visible,
    test_service_base_uses_no_variable,
    test_service_base_with_blocks_places_css_and_javascript,
    test_service_content_is_output_unescaped,
    test_service_template_extends_base,
    test_services_navigation_marks_the_current_service,
    test_single_orga_is_named_without_a_switcher,
    test_site_template_uses_only_the_documented_context,
    test_title_combines_page_title_and_site_name,
    test_user_name_is_escaped,
)

from plugit_backends.theme_legacy import (
    ASSETS,
    SERVICE_TEMPLATES_DIR,
    STATIC_DIR,
    TEMPLATES_DIR,
    THEME_DIR,
    XSTATIC_PACKAGES,
    MissingAssetsError,
    static_roots,
)
from plugit_core.config import ConfigError
from plugit_core.proxy.app import ProxyApp
from plugit_core.proxy.templating import ThemeServiceLoader
from plugit_core.service import PlugItService, action
from plugit_core.testing import serve

SITE_TEMPLATES = [*contract.SITE_TEMPLATES, "plugit/login.html"]
#: What the login page gets besides the layout's context (plugit_backends/login).
LOGIN_NAMES = {
    "password_backends",
    "redirect_backends",
    "login_action",
    "next",
    "username",
    "error",
    "notice",
}
REPO = THEME_DIR.parents[1]


@pytest.fixture(scope="module")
def site_env() -> Environment:
    return Environment(
        loader=FileSystemLoader(TEMPLATES_DIR), autoescape=True, undefined=StrictUndefined
    )


@pytest.fixture(scope="module")
def service_env() -> ImmutableSandboxedEnvironment:
    return ImmutableSandboxedEnvironment(
        loader=ThemeServiceLoader(str(SERVICE_TEMPLATES_DIR)), autoescape=True
    )


def login_context(**overrides):
    context = {
        "password_backends": [SimpleNamespace(name="session", label="Local accounts")],
        "redirect_backends": [
            SimpleNamespace(name="oidc", label="Company login", start_url=lambda: "/_plugit/oidc")
        ],
        "login_action": "/_plugit/login",
        "next": "/vote/?a=1&b=2",
        "username": "",
        "error": None,
        "notice": None,
    }
    context.update(overrides)
    return context


@pytest.fixture
def render(site_env):
    def _render(name: str = "plugit/layout.html", **overrides) -> Page:
        context = site_context(**overrides)
        if name == "plugit/login.html":
            context = {**login_context(), **context}
        return Page(site_env.get_template(name).render(context))

    return _render


# --------------------------------------------------------------------------- assets


def test_assets_come_from_the_installed_xstatic_packages():
    roots = static_roots()
    assert set(roots) == set(XSTATIC_PACKAGES)
    for prefix, (module_name, major) in XSTATIC_PACKAGES.items():
        module = importlib.import_module(module_name)
        assert roots[prefix] == Path(module.BASE_DIR)
        assert Path(module.__file__).parent / "data" == roots[prefix]
        assert module.VERSION.startswith(major)


@pytest.mark.parametrize(
    ("relative", "banner"),
    [
        ("bootstrap3/css/bootstrap.min.css", "Bootstrap v3."),
        ("bootstrap3/js/bootstrap.min.js", "Bootstrap v3."),
        ("jquery/jquery.min.js", "jQuery v3."),
        ("jquery-migrate/jquery-migrate.min.js", "jQuery Migrate v3."),
    ],
)
def test_each_asset_is_the_announced_library(relative, banner):
    prefix, _, rest = relative.partition("/")
    head = (static_roots()[prefix] / rest).read_text(encoding="utf-8")[:200]
    assert banner in head


def test_glyphicons_are_where_the_stylesheet_looks_for_them():
    root = static_roots()["bootstrap3"]
    css = (root / "css" / "bootstrap.min.css").read_text(encoding="utf-8")
    fonts = re.findall(r"url\(['\"]?(\.\./fonts/[^)'\"?#]+)", css)
    assert fonts, "the stylesheet declares its glyphicons"
    for relative in fonts:
        assert (root / "css" / relative).resolve().is_file(), relative


def test_no_third_party_asset_is_copied_into_the_repository():
    tracked = subprocess.run(
        ["git", "ls-files", "--others", "--cached", "--exclude-standard", "--", str(THEME_DIR)],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    names = {Path(p).name for p in tracked}
    assert not names & {"bootstrap.min.css", "bootstrap.min.js", "jquery.min.js"}, names
    assert not any(n.endswith((".woff", ".woff2", ".ttf", ".eot")) for n in names), names
    own = sorted(p.relative_to(STATIC_DIR).as_posix() for p in STATIC_DIR.rglob("*") if p.is_file())
    assert own == ["legacy/favicon.svg", "legacy/plugit-legacy.css"]


def test_a_missing_xstatic_package_is_named(monkeypatch):
    monkeypatch.setitem(XSTATIC_PACKAGES, "jquery", ("xstatic.pkg.no_such_thing", "3."))
    with pytest.raises(MissingAssetsError, match=r"XStatic-no-such-thing.*plugit-wsgi\[legacy\]"):
        static_roots()


def test_a_wrong_major_version_is_refused(monkeypatch):
    monkeypatch.setitem(XSTATIC_PACKAGES, "bootstrap3", ("xstatic.pkg.bootstrap", "4."))
    with pytest.raises(MissingAssetsError, match=r"XStatic-bootstrap 4\.x, 3\.3\.7 is installed"):
        static_roots()


def test_the_proxy_refuses_to_start_without_the_assets(monkeypatch):
    monkeypatch.setitem(XSTATIC_PACKAGES, "jquery", ("xstatic.pkg.no_such_thing", "3."))
    with pytest.raises(ConfigError, match=r"^theme: the legacy theme needs"):
        ProxyApp({"dev_mode": True, "theme": "legacy", "services": []}, load_entry_points=False)


# --------------------------------------------------------------------------- files


@pytest.mark.parametrize(
    ("folder", "name"),
    [pytest.param(TEMPLATES_DIR, n, id=f"site:{n}") for n in SITE_TEMPLATES]
    + [pytest.param(SERVICE_TEMPLATES_DIR, n, id=f"service:{n}") for n in contract.ON_DISK_BASES],
)
def test_template_exists(folder, name):
    assert (folder / name).is_file()


def _own_files():
    files = sorted(TEMPLATES_DIR.rglob("*.html")) + sorted(SERVICE_TEMPLATES_DIR.rglob("*.html"))
    return [*files, STATIC_DIR / "legacy" / "plugit-legacy.css"]


@pytest.mark.parametrize(
    "path", [pytest.param(p, id=p.relative_to(THEME_DIR).as_posix()) for p in _own_files()]
)
def test_no_external_url_in_theme_sources(path):
    text = path.read_text(encoding="utf-8")
    assert not re.search(r"https?://", text, re.IGNORECASE)
    assert not re.search(r"""(?:src|href|action)\s*=\s*["']?//""", text, re.IGNORECASE)
    assert not re.search(r"url\(\s*['\"]?(?!data:)[a-z]*:?//", text, re.IGNORECASE)
    assert "@import" not in text


def test_login_page_uses_only_the_documented_context(site_env):
    source = site_env.loader.get_source(site_env, "plugit/login.html")[0]
    used = meta.find_undeclared_variables(site_env.parse(source))
    allowed = CONTEXT_NAMES | LAYOUT_NAMES | LOGIN_NAMES
    assert used <= allowed, used - allowed


def test_plain_environment_renders_as_well():
    """The proxy may use jinja2's default Undefined; nothing depends on StrictUndefined."""
    env = Environment(loader=FileSystemLoader(TEMPLATES_DIR), autoescape=True)
    for name in SITE_TEMPLATES:
        context = {**login_context(), **site_context(dev_mode=True, dev_orgas=[EBU])}
        Page(env.get_template(name).render(context))


# --------------------------------------------------------------------------- the page's assets

PAGES = [
    *ALL_PAGES,
    *[
        pytest.param("plugit/login.html", overrides, id=f"login.html-{label}")
        for label, overrides in [("plain", {}), ("anonymous", {"user": ANONYMOUS})]
    ],
]


@pytest.mark.parametrize(("name", "overrides"), PAGES)
def test_page_loads_only_local_assets_and_every_script_has_the_nonce(render, name, overrides):
    page = render(name, **overrides)
    scripts = page.find_all("script")
    assert [s.attrs.get("src") for s in scripts] == [static_url(p) for p in ASSETS["scripts"]]
    assert all(s.attrs.get("nonce") == "nonce-789" for s in scripts)
    assert all(not s.text.strip() for s in scripts), "no inline script"
    stylesheets = [e.attrs["href"] for e in page.find_all("link", rel="stylesheet")]
    assert stylesheets == [static_url(p) for p in ASSETS["stylesheets"]]
    for element in page.elements:
        for attr, value in element.attrs.items():
            assert not attr.startswith("on"), f"inline handler {attr} on <{element.tag}>"
            assert attr != "style", f"inline style on <{element.tag}>"
            if attr in {"src", "href", "action"}:
                assert value.startswith(("/", "#")), value
                assert not value.startswith("//"), value
    assert "<style" not in page.html
    assert not re.search(r"https?:", page.html, re.IGNORECASE)


@pytest.mark.parametrize("name", ["plugit/layout.html", "plugit/layout-menu.html"])
def test_jquery_is_loaded_in_head_before_the_service_content(render, name):
    """Original templates run $(...) in their content: jQuery must already be there."""
    page = render(name, plugit_content=Markup('<div id="svc"></div>'))
    (head,) = page.find_all("head")
    assert all(head in s.ancestors for s in page.find_all("script"))
    scripts = [s.attrs["src"] for s in page.find_all("script")]
    assert scripts.index(static_url("jquery/jquery.min.js")) < scripts.index(
        static_url("bootstrap3/js/bootstrap.min.js")
    )
    assert page.html.index("jquery.min.js") < page.html.index('id="svc"')


def test_navbar_is_bootstrap_3_markup(render):
    page = render()
    (nav,) = page.find_all("nav", aria_label="Main navigation")
    assert {"navbar", "navbar-inverse"} <= nav.classes
    (toggle,) = page.find_all("button", data_toggle="collapse")
    assert toggle.attrs["data-target"] == "#plugit-navbar"
    assert page.by_id("plugit-navbar") is not None
    assert len([s for s in page.find_all("span") if "icon-bar" in s.classes]) == 3
    services = page.by_id("plugit-services")
    assert {"nav", "navbar-nav"} <= services.classes
    (active,) = [li for li in page.find_all("li") if "active" in li.classes]
    assert active.inside("plugit-services") and "Polls & votes" in active.text


def test_orga_switcher_is_a_bootstrap_3_dropdown(render):
    page = render(orgas=[EBU, RTS], orga=RTS)
    (toggle,) = [b for b in page.find_all("button") if "dropdown-toggle" in b.classes]
    assert toggle.attrs["data-toggle"] == "dropdown" and toggle.inside("plugit-orga-switcher")
    (current,) = [
        li
        for li in page.find_all("li")
        if "active" in li.classes and li.inside("plugit-orga-switcher")
    ]
    assert "RTS" in current.text


def test_menu_layout_is_the_original_left_column(render):
    menu = Markup('<div class="menu-section"><h3>Polls</h3><ul><li>All</li></ul></div>')
    page = render("plugit/layout-menu.html", plugit_menu=menu)
    assert "col-md-2" in page.by_id("plugit-menu").classes
    (column,) = [a for a in page.by_id("plugit-content").ancestors if "col-md-8" in a.classes]
    assert "col-md-offset-1" in column.classes


def test_login_page(render):
    page = render("plugit/login.html", user=ANONYMOUS, error="Wrong <password>")
    assert page.forms_posting_to("/_plugit/login") == [
        {"csrfmiddlewaretoken": "csrf-123", "next": "/vote/?a=1&b=2"}
    ]
    assert page.by_id("plugit-login-error").text == "Wrong <password>"
    (link,) = page.find_all("a", data_plugit_auth="oidc")
    assert link.attrs["href"] == "/_plugit/oidc?next=/vote/%3Fa%3D1%26b%3D2"
    assert page.by_id("plugit-login-notice") is None


# --------------------------------------------------------------------------- a real proxy

ORIGINAL_STYLE = (
    '{% extends "plugIt/base-withBlocks.html" %}\n'
    '{% block menubar %}<div class="menu-section"><h3>Polls</h3>'
    '<ul><li id="menu-all">All</li></ul></div>{% endblock %}\n'
    '{% block content %}<h1 id="title">{{ title }}</h1>'
    '<span class="glyphicon glyphicon-plus"></span>{% endblock %}\n'
    '{% block javascript %}<script>$(function () { $("#title").addClass("ready"); });'
    "</script>{% endblock %}\n"
)


@action("/", template="home.html")
def home(request):
    return {"title": "Polls"}


@pytest.fixture(scope="module")
def legacy_site(tmp_path_factory) -> Iterator[tuple[str, ProxyApp]]:
    root = tmp_path_factory.mktemp("legacy-service")
    (root / "templates").mkdir()
    (root / "templates" / "home.html").write_text(ORIGINAL_STYLE, encoding="utf-8")
    service = PlugItService([home], root=str(root))
    with serve(service) as service_url:
        proxy = ProxyApp(
            {
                "dev_mode": True,
                "theme": "legacy",
                "services": [
                    {
                        "name": "polls",
                        "url": service_url,
                        "mount": "/polls/",
                        "layout": "menu",
                        "template_dialect": "django",
                        "trust": "full",
                    }
                ],
            },
            load_entry_points=False,
        )
        try:
            with serve(proxy) as proxy_url:
                yield proxy_url, proxy
        finally:
            proxy.close()


def _get(url: str) -> requests.Response:
    return requests.get(url, timeout=10, allow_redirects=False)


@pytest.mark.parametrize(
    ("path", "mimetypes", "start"),
    [
        ("jquery/jquery.min.js", {"text/javascript", "application/javascript"}, b"/*! jQuery v3."),
        (
            "jquery-migrate/jquery-migrate.min.js",
            {"text/javascript", "application/javascript"},
            b"/*! jQuery Migrate v3.",
        ),
        (
            "bootstrap3/js/bootstrap.min.js",
            {"text/javascript", "application/javascript"},
            b"/*!\n * Bootstrap v3.",
        ),
        ("bootstrap3/css/bootstrap.min.css", {"text/css"}, b"/*!\n * Bootstrap v3."),
        ("bootstrap3/fonts/glyphicons-halflings-regular.woff2", {"font/woff2"}, b"wOF2"),
        ("legacy/plugit-legacy.css", {"text/css"}, b"/* PlugIt legacy theme"),
        ("legacy/favicon.svg", {"image/svg+xml"}, b"<svg"),
    ],
)
def test_proxy_serves_the_assets_itself(legacy_site, path, mimetypes, start):
    base, _ = legacy_site
    response = _get(f"{base}/_plugit/static/{path}")
    assert response.status_code == 200
    assert response.headers["Content-Type"].split(";")[0] in mimetypes
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.content.startswith(start)


@pytest.mark.parametrize(
    "path",
    [
        pytest.param("jquery/../__init__.py", id="climb-out-of-a-root"),
        pytest.param("jquery/%2e%2e/__init__.py", id="encoded-climb"),
        pytest.param("jquery/..%2f..%2fjquery%2f__init__.py", id="encoded-slashes"),
        pytest.param("bootstrap3/../../../../../../etc/passwd", id="climb-far"),
        pytest.param("jquery//etc/passwd", id="absolute-after-prefix"),
        pytest.param("jquery", id="a-root-itself"),
        pytest.param("jquery/", id="a-root-listing"),
        pytest.param("bootstrap/bootstrap.min.css", id="another-theme-file"),
        pytest.param("legacy/../../plugin.py", id="climb-out-of-the-theme"),
        pytest.param("nothing/here.js", id="unknown"),
    ],
)
def test_proxy_serves_nothing_outside_the_asset_folders(legacy_site, path):
    base, _ = legacy_site
    response = _get(f"{base}/_plugit/static/{path}")
    assert response.status_code == 404
    assert b"import" not in response.content and b"root:" not in response.content


def test_service_page_in_the_legacy_layout_references_only_served_local_assets(legacy_site):
    base, _ = legacy_site
    response = _get(f"{base}/polls/")
    assert response.status_code == 200, response.text
    page = Page(response.text)
    assert page.by_id("title").inside("plugit-content")
    assert page.by_id("menu-all").inside("plugit-menu"), "the menubar block is the menu"
    assert "col-md-2" in page.by_id("plugit-menu").classes
    urls = [e.attrs["src"] for e in page.find_all("script") if "src" in e.attrs]
    urls += [e.attrs["href"] for e in page.find_all("link")]
    assert urls[:3] == [f"/_plugit/static/{p}" for p in ASSETS["scripts"]]
    for url in urls:
        assert url.startswith("/_plugit/static/"), url
        assert _get(base + url).status_code == 200, url
    for element in page.elements:
        for attr in ("src", "href", "action"):
            value = element.attrs.get(attr)
            if value is not None:
                assert value.startswith(("/", "#")) and not value.startswith("//"), value
    # The service's own script (trust = "full") comes after jQuery, and the layout's scripts
    # carry the response's nonce.
    assert response.text.index("jquery.min.js") < response.text.index('$("#title")')
    nonces = {s.attrs.get("nonce") for s in page.find_all("script") if "src" in s.attrs}
    assert len(nonces) == 1 and None not in nonces and "" not in nonces


def test_sandboxed_page_lets_the_layout_scripts_run_under_its_policy(legacy_site, tmp_path):
    _, proxy = legacy_site
    service_url = proxy.config.services[0].url
    sandboxed = ProxyApp(
        {
            "dev_mode": True,
            "theme": "legacy",
            "services": [
                {
                    "name": "polls",
                    "url": service_url,
                    "mount": "/polls/",
                    "template_dialect": "django",
                }
            ],
        },
        load_entry_points=False,
    )
    try:
        with serve(sandboxed) as base:
            response = _get(f"{base}/polls/")
    finally:
        sandboxed.close()
    assert response.status_code == 200, response.text
    policy = response.headers["Content-Security-Policy"]
    nonce = re.search(r"script-src 'nonce-([^']+)'", policy).group(1)
    page = Page(response.text)
    scripts = page.find_all("script")
    assert [s.attrs["src"] for s in scripts] == [f"/_plugit/static/{p}" for p in ASSETS["scripts"]]
    assert all(s.attrs["nonce"] == nonce for s in scripts)
    assert '$("#title")' not in response.text, "a sandboxed service runs no script of its own"
    assert page.by_id("title") is not None

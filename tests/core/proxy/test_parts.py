"""Each part of the proxy built and tested alone, without a ProxyApp: here the hook facade,
the directory, the CSRF tokens and their markers, and what the other ``test_parts_*`` files
build parts from.

The parts get their real collaborators: a pluggy manager of ``make_plugin_manager`` with small
plugins, a ``ProxyConfig`` read from a mapping, the Bootstrap theme, the cookie session backend,
a user directory in SQLite, store guards.  The site's pages and the status URLs:
``test_parts_site.py``; the service clients and the plugins' context: ``test_parts_clients.py``;
the stages of the page pipeline: ``test_parts_pipeline.py``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from http.cookies import SimpleCookie
from types import SimpleNamespace
from typing import Any

import pytest
from proxy_helpers import STRONG_KEY
from werkzeug.test import EnvironBuilder
from werkzeug.wrappers import Response

from plugit_backends.session_cookie import CookieSessionBackend
from plugit_backends.theme_bootstrap import SERVICE_TEMPLATES_DIR, STATIC_DIR, TEMPLATES_DIR
from plugit_backends.users_sqlite import SQLiteUserStore
from plugit_core.backends import Theme
from plugit_core.config import ProxyConfig
from plugit_core.hookspecs import hookimpl
from plugit_core.plugins import make_plugin_manager
from plugit_core.proxy.app import ProxyRequest
from plugit_core.proxy.csrf import CsrfTokens, Markers
from plugit_core.proxy.directory import Directory
from plugit_core.proxy.hooks import Hooks
from plugit_core.proxy.routes import Route, SiteLinks
from plugit_core.stores import StoreGuard, StoreUnavailable
from plugit_core.users import ANONYMOUS, SIMULATED_ORGAS, PlugItUser

# -- what the parts are built from ----------------------------------------------------------------


BOOTSTRAP = Theme("bootstrap", TEMPLATES_DIR, SERVICE_TEMPLATES_DIR, STATIC_DIR)


def hooks_of(*plugins: Any) -> Hooks:
    """The hook facade over a real plugin manager holding only ``plugins`` (the last one
    registered is called first), bound to a context the plugins can recognise."""
    hooks = Hooks(make_plugin_manager(plugins, load_entry_points=False, builtins=()))
    hooks.bind(CONTEXT)  # type: ignore[arg-type]
    return hooks


CONTEXT = SimpleNamespace(name="the plugins' context")


def config_of(**top: Any) -> ProxyConfig:
    data: dict[str, Any] = {"dev_mode": True, "services": []}
    data.update(top)
    if not data["dev_mode"]:
        data.setdefault("secret_key", STRONG_KEY)
    return ProxyConfig.from_mapping(data)


def cookie_sessions() -> CookieSessionBackend:
    return CookieSessionBackend(STRONG_KEY, secure=False)


def make_request(
    sessions: Any = None,
    path: str = "/",
    *,
    method: str = "GET",
    cookie: str | None = None,
    script_name: str = "",
    **builder: Any,
) -> ProxyRequest:
    """A ``ProxyRequest`` as werkzeug builds it; its session is opened from ``sessions``."""
    environ = EnvironBuilder(path=path, method=method, **builder).get_environ()
    environ["SCRIPT_NAME"] = script_name
    if cookie is not None:
        environ["HTTP_COOKIE"] = cookie
    request = ProxyRequest(environ)
    # what ProxyRequest.session asks of the plugins' context: the session backend
    request.proxy = SimpleNamespace(sessions=sessions or cookie_sessions())  # type: ignore[assignment]
    return request


def saved_cookie(sessions: CookieSessionBackend, request: ProxyRequest) -> str:
    """The Cookie header the browser sends back after ``request``'s session was saved."""
    response = Response()
    sessions.save(request.session, request, response)
    jar = SimpleCookie(response.headers["Set-Cookie"])
    return f"{sessions.cookie_name}={jar[sessions.cookie_name].value}"


def down_guard(store: str, *, required: bool = True) -> StoreGuard:
    """A store guard that has seen its store fail (an outage, as the guard classifies it)."""
    guard = StoreGuard(store, f"the {store} store", required=required)
    with pytest.raises(StoreUnavailable), guard.call():
        raise OSError("connection refused")
    assert guard.down
    return guard


class Guarded:
    """A backend as the proxy sees its stores: something with ``store_guards``."""

    def __init__(self, *guards: StoreGuard) -> None:
        self.store_guards = list(guards)


# -- Hooks ----------------------------------------------------------------------------------------


def test_hooks_refuse_to_run_before_the_context_is_given():
    hooks = Hooks(make_plugin_manager((), load_entry_points=False, builtins=()))
    with pytest.raises(RuntimeError, match="context"):
        hooks.startup()
    hooks.bind(CONTEXT)  # type: ignore[arg-type]
    hooks.startup()
    assert hooks.context is CONTEXT


def test_hooks_give_plugins_the_context_never_anything_else():
    seen = []

    class Plugin:
        @hookimpl
        def plugit_startup(self, proxy):
            seen.append(proxy)

        @hookimpl
        def plugit_shutdown(self, proxy):
            seen.append(proxy)

    hooks = hooks_of(Plugin())
    hooks.startup()
    hooks.shutdown()
    assert seen == [CONTEXT, CONTEXT]


def test_user_loaded_merges_every_plugins_changes_the_last_registered_wins():
    class First:
        @hookimpl
        def plugit_user_loaded(self, user, proxy):
            return {"first_name": "First", "email": "first@example.org"}

    class Quiet:
        @hookimpl
        def plugit_user_loaded(self, user, proxy):
            return None

    class Last:
        @hookimpl
        def plugit_user_loaded(self, user, proxy):
            return {"first_name": "Last"}

    user = PlugItUser(pk=7, username="ann", is_authenticated=True)
    loaded = hooks_of(First(), Quiet(), Last()).user_loaded(user)
    assert (loaded.first_name, loaded.email, loaded.username) == (
        "Last",
        "first@example.org",
        "ann",
    )
    assert user.first_name == ""  # the plugins' changes make a new user
    assert hooks_of(Quiet()).user_loaded(user) is user


def test_identify_user_takes_the_first_answer_in_call_order():
    class Knows:
        def __init__(self, name):
            self.name = name

        @hookimpl
        def plugit_identify_user(self, request, proxy):
            return None if self.name is None else PlugItUser(username=self.name)

    hooks = hooks_of(Knows("early"), Knows("late"), Knows(None))
    assert hooks.identify_user(make_request()).username == "late"
    assert hooks_of(Knows(None)).identify_user(make_request()) is None


def test_any_refusal_wins_and_the_first_one_is_told():
    class Allows:
        @hookimpl
        def plugit_access_decision(self, page):
            return None

    class Refuses:
        def __init__(self, why):
            self.why = why

        @hookimpl
        def plugit_access_decision(self, page):
            return self.why

    page: Any = SimpleNamespace()
    assert hooks_of(Allows()).access_refusal(page) is None
    assert hooks_of(Refuses("one"), Allows()).access_refusal(page) == "one"
    assert hooks_of(Refuses("one"), Refuses("two"), Allows()).access_refusal(page) == "two"


def test_response_is_replaced_by_the_first_replacement_in_call_order():
    original, first, second = Response("o"), Response("1"), Response("2")

    class Replaces:
        def __init__(self, response):
            self.response = response

        @hookimpl
        def plugit_response(self, page, response):
            return self.response

    page: Any = SimpleNamespace()
    assert hooks_of(Replaces(None)).response(page, original) is original
    assert hooks_of(Replaces(first), Replaces(second), Replaces(None)).response(page, original) is (
        second
    )


def test_extra_routes_of_every_plugin_the_last_registered_first():
    def view(request):
        return Response("x")

    class Routes:
        def __init__(self, *rules):
            self.rules = rules

        @hookimpl
        def plugit_extra_routes(self, proxy):
            return [Route(rule, view) for rule in self.rules] if self.rules else None

    hooks = hooks_of(Routes("/a"), Routes(), Routes("/b", "/c"))
    assert [route.rule for route in hooks.extra_routes()] == ["/b", "/c", "/a"]


def test_session_backend_is_kept_unless_a_plugin_wraps_it():
    sessions, wrapper = cookie_sessions(), cookie_sessions()

    class Wraps:
        @hookimpl
        def plugit_session_backend(self, sessions, proxy):
            return wrapper

    assert hooks_of().session_backend(sessions) is sessions
    assert hooks_of(Wraps()).session_backend(sessions) is wrapper


# -- Directory ------------------------------------------------------------------------------------


class Subscriptions:
    """Completes every loaded user (``plugit_user_loaded``), counting the calls."""

    def __init__(self) -> None:
        self.loaded: list[Any] = []

    @hookimpl
    def plugit_user_loaded(self, user, proxy):
        self.loaded.append(user.pk)
        return {"subscriptions": {"svc": ("gold",)}}


class IdentifiesAs:
    def __init__(self, user: PlugItUser | None) -> None:
        self.user = user
        self.asked = 0

    @hookimpl
    def plugit_identify_user(self, request, proxy):
        self.asked += 1
        return self.user


@pytest.fixture
def user_store(tmp_path) -> Iterator[SQLiteUserStore]:
    store = SQLiteUserStore(tmp_path / "users.sqlite")
    try:
        yield store
    finally:
        store.close()


def test_directory_in_dev_mode_knows_the_simulated_users_only(user_store):
    real = user_store.create_user("real")
    plugin = Subscriptions()
    directory = Directory(users=user_store, dev_mode=True, hooks=hooks_of(plugin))
    member = directory.lookup_user("-2")
    assert member is not None and member.is_authenticated
    assert member.subscriptions == {"svc": ("gold",)}  # completed by the plugins
    assert directory.lookup_user(real.pk) is None  # the store is not asked in dev mode
    assert directory.lookup_user(999) is None
    assert directory.lookup_orga(str(SIMULATED_ORGAS[1].pk)) == SIMULATED_ORGAS[1]
    assert [o.name for o in directory.list_orgas()] == sorted(o.name for o in SIMULATED_ORGAS)


def test_directory_with_a_users_store_asks_it_and_never_simulates(user_store):
    real = user_store.create_user("real", first_name="Real")
    orga = user_store.create_orga("Acme", "acme")
    plugin = Subscriptions()
    directory = Directory(users=user_store, dev_mode=False, hooks=hooks_of(plugin))
    found = directory.lookup_user(real.pk)
    assert found is not None and (found.username, found.first_name) == ("real", "Real")
    assert found.subscriptions == {"svc": ("gold",)}
    assert directory.lookup_user("-2") is None  # no simulated user outside dev mode
    assert directory.lookup_user(10_000) is None
    assert directory.lookup_orga(orga.pk) == orga
    assert directory.lookup_orga(SIMULATED_ORGAS[0].pk) is None
    assert [o.name for o in directory.list_orgas()] == ["Acme"]
    assert plugin.loaded == [real.pk]


def test_directory_without_a_store_knows_nobody():
    directory = Directory(users=None, dev_mode=False, hooks=hooks_of())
    assert directory.lookup_user(1) is None
    assert directory.lookup_orga(1) is None
    assert directory.list_orgas() == []


def test_directory_asks_who_the_user_is_once_per_request():
    who = IdentifiesAs(PlugItUser(pk=3, username="ann", is_authenticated=True))
    loaded = Subscriptions()
    directory = Directory(users=None, dev_mode=False, hooks=hooks_of(loaded, who))
    request = make_request()
    first = directory.identify(request)
    assert directory.identify(request) is first
    assert (who.asked, loaded.loaded) == (1, [3])
    assert first.subscriptions == {"svc": ("gold",)}
    directory.identify(make_request())  # another request asks again
    assert who.asked == 2


def test_directory_anonymous_when_no_plugin_knows_and_never_completed():
    loaded = Subscriptions()
    directory = Directory(users=None, dev_mode=False, hooks=hooks_of(loaded, IdentifiesAs(None)))
    assert directory.identify(make_request()) is ANONYMOUS
    assert directory.loaded(ANONYMOUS) is ANONYMOUS
    assert loaded.loaded == []


# -- CsrfTokens and Markers -----------------------------------------------------------------------


def csrf_of(sessions: Any = None, links: SiteLinks | None = None) -> CsrfTokens:
    sessions = sessions or cookie_sessions()
    return CsrfTokens(lambda: sessions, links or SiteLinks())


def posted(sessions: Any, cookie: str | None, **builder: Any) -> ProxyRequest:
    return make_request(sessions, "/svc/vote", method="POST", cookie=cookie, **builder)


def test_a_token_is_valid_for_its_scope_only_across_requests():
    sessions = cookie_sessions()
    csrf = csrf_of(sessions)
    page = make_request(sessions)
    token = csrf.token(page, "polls")
    assert csrf.token(page, "polls") == token  # stable for the session and the scope
    assert len({token, csrf.token(page, "news"), csrf.token(page)}) == 3
    cookie = saved_cookie(sessions, page)

    assert csrf.valid(posted(sessions, cookie, headers={"X-CSRFToken": token}), "polls")
    assert csrf.valid(posted(sessions, cookie, data={"csrfmiddlewaretoken": token}), "polls")
    # the token of one mount is refused by another mount and by the site's own forms
    assert not csrf.valid(posted(sessions, cookie, headers={"X-CSRFToken": token}), "news")
    assert not csrf.valid(posted(sessions, cookie, data={"plugit_site_csrf": token}))
    site_token = csrf.token(make_request(sessions, cookie=cookie))
    assert csrf.valid(posted(sessions, cookie, data={"plugit_site_csrf": site_token}))


def test_a_missing_or_foreign_token_is_refused():
    sessions = cookie_sessions()
    csrf = csrf_of(sessions)
    page = make_request(sessions)
    token = csrf.token(page, "polls")
    cookie = saved_cookie(sessions, page)
    assert not csrf.valid(posted(sessions, cookie), "polls")  # no token at all
    assert not csrf.valid(posted(sessions, cookie, headers={"X-CSRFToken": ""}), "polls")
    assert not csrf.valid(posted(sessions, cookie, headers={"X-CSRFToken": token[:-1]}), "polls")
    # the right token without the session that made it (another browser's)
    assert not csrf.valid(posted(sessions, None, headers={"X-CSRFToken": token}), "polls")
    other = make_request(sessions)
    other_token = csrf.token(other, "polls")
    other_cookie = saved_cookie(sessions, other)
    assert other_token != token
    assert not csrf.valid(posted(sessions, other_cookie, headers={"X-CSRFToken": token}), "polls")
    # a token in the query string does not count
    query = posted(sessions, cookie, query_string={"csrfmiddlewaretoken": token}, data={"a": "1"})
    assert not csrf.valid(query, "polls")


def test_a_short_or_planted_session_secret_is_replaced():
    sessions = cookie_sessions()
    csrf = csrf_of(sessions)
    request = make_request(sessions)
    request.session["_csrf"] = "short"
    token = csrf.token(request)
    assert request.session["_csrf"] != "short" and len(request.session["_csrf"]) >= 32
    assert token == csrf.token(request)


def test_a_form_without_session_while_the_session_store_is_down_is_the_outage():
    class DownSessions(CookieSessionBackend):
        store_guards = [down_guard("sessions_test")]

    sessions = DownSessions(STRONG_KEY, secure=False)
    with pytest.raises(StoreUnavailable) as info:
        csrf_of(sessions).valid(posted(sessions, None, headers={"X-CSRFToken": "x"}))
    assert info.value.store == "sessions_test"
    # with the store up, the same form is only refused
    assert not csrf_of().valid(posted(cookie_sessions(), None, headers={"X-CSRFToken": "x"}))


def test_markers_are_random_per_process_and_distinct():
    one, two = Markers(), Markers()
    names = ("content", "menu", "path", "logout_fields", "site_token", "nonce", "page_token")
    values = [getattr(one, name) for name in names]
    assert len(set(values)) == len(names)
    assert all(v.startswith("\x00") and v.endswith("\x00") for v in values)
    assert not {getattr(two, name) for name in names} & set(values)


def test_fill_puts_every_per_response_value_in_and_leaves_no_marker():
    sessions = cookie_sessions()
    links = SiteLinks(logout_url="/logout", logout_fields=lambda environ: {"t": '"><x'})
    csrf = csrf_of(sessions, links)
    marks = csrf.marks
    request = make_request(sessions)
    html = (
        f"<a>{marks.site_token}</a><b>{marks.nonce}</b><c>{marks.logout_fields}</c>"
        f"<d>{marks.site_token}</d><e>{marks.page_token}</e>"
    )
    filled = csrf.fill(request, html, "polls")
    assert "\x00" not in filled
    site = csrf.token(request)
    assert filled.count(site) == 2  # every occurrence
    assert f"<b>{request.csp_nonce}</b>" in filled
    assert '<input type="hidden" name="t" value="&#34;&gt;&lt;x">' in filled
    # the page's token for its scripts: its own scope, since the session has a secret now
    assert f"<e>{csrf.token(request, 'polls')}</e>" in filled
    # filled once: what a page already holds is never filled again with another value
    assert csrf.fill(make_request(sessions), filled, "polls") == filled


def test_fill_makes_no_session_for_a_page_without_forms():
    csrf = csrf_of()
    request = make_request()
    filled = csrf.fill(request, f"<meta content='{csrf.marks.page_token}'>")
    assert filled == "<meta content=''>"
    assert "_csrf" not in request.session and not request.session.modified


def test_fill_keeps_markers_of_another_proxy_and_one_service_never_gets_another_ones_token():
    sessions = cookie_sessions()
    csrf, other = csrf_of(sessions), csrf_of(sessions)
    request = make_request(sessions)
    planted = f"<p>{other.marks.site_token}</p>"  # a service cannot guess this proxy's markers
    assert csrf.fill(request, planted) == planted
    from plugit_core.proxy.templating import CSRF_PLACEHOLDER

    filled = csrf.fill(request, f"<input value='{CSRF_PLACEHOLDER}'>", "polls")
    assert csrf.token(request, "polls") in filled
    assert csrf.token(request, "news") not in filled and csrf.token(request) not in filled


def test_fill_survives_a_failing_logout_fields(caplog):
    def broken(environ):
        raise RuntimeError("host app")

    csrf = csrf_of(links=SiteLinks(logout_url="/out", logout_fields=broken))
    with caplog.at_level(logging.ERROR, logger="plugit.proxy"):
        assert csrf.fill(make_request(), f"[{csrf.marks.logout_fields}]") == "[]"
    assert "logout_fields failed" in caplog.text

"""The reusable conformance checks (``plugit_core.testing``): a good service passes them all, and
each deliberately broken service fails exactly the checks that describe its fault."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from werkzeug.wrappers import Request, Response

from plugit_core.cli import main
from plugit_core.service import (
    PlugItService,
    ServiceRequest,
    action,
    cache,
    json_only,
    only_logged_user,
    user_info,
)
from plugit_core.signing import NonceRegistry
from plugit_core.testing import (
    CHECK_NAMES,
    CheckResult,
    ServiceConformance,
    compatibility_report,
    free_port,
    run_checks,
    serve,
)

SECRET = "conformance-secret-0123456789"
ACTIONS = ("", "show/5", "tag/%C3%A9t%C3%A9", "api")


@action("/", template="home.html")
def home(request: ServiceRequest) -> dict:
    return {}


@action("/show/<int:pk>", template="show.html", methods=["GET", "POST"])
@only_logged_user()
@cache(time=30)
@user_info(["username"])
def show(request: ServiceRequest, pk: int) -> dict:
    return {"pk": pk}


@action("/tag/<name>")
def tag(request: ServiceRequest, name: str) -> dict:
    return {"tag": name}


@action("/api")
@json_only()
def api(request: ServiceRequest) -> dict:
    return {}


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("conformance")
    (root / "templates").mkdir()
    (root / "templates" / "home.html").write_text("home_template\n")
    (root / "templates" / "show.html").write_text("{{ pk }}\n")
    (root / "media").mkdir()
    (root / "media" / "a.css").write_text("a {}")
    return root


def make_service(root: Path, **settings: Any) -> PlugItService:
    return PlugItService([home, show, tag, api], root=root, **settings)


@pytest.fixture(scope="module")
def good_url(root: Path) -> Iterator[str]:
    with serve(make_service(root, secret=SECRET, base_url="/base/")) as url:
        yield url + "/base"


def failing(results: list[CheckResult]) -> set[str]:
    return {r.name.split("[")[0] for r in results if not r.ok}


# -- a conforming service --------------------------------------------------------------------------


def test_good_service_passes_every_check(good_url: str) -> None:
    results = run_checks(good_url, secret=SECRET, actions=ACTIONS)
    assert [r for r in results if not r.ok] == []
    names = [r.name for r in results]
    assert len(names) == len(set(names))
    assert "meta[/show/5]" in names
    assert "template[/tag/%C3%A9t%C3%A9]" in names
    assert {n.split("[")[0] for n in names} == set(CHECK_NAMES)
    assert all(r.message for r in results)


def test_unsigned_service_gets_one_warning(root: Path, served: Callable[..., str]) -> None:
    url = served(make_service(root))
    results = run_checks(url, actions=ACTIONS)
    bad = [r for r in results if not r.ok]
    assert [(r.name, r.level) for r in bad] == [("signature_required", "warning")]
    assert "unsigned" in bad[0].message
    names = {r.name for r in results}
    assert "signed_request_accepted" not in names
    assert "replay_refused" not in names


def test_secret_service_checked_without_secret(good_url: str) -> None:
    results = run_checks(good_url, actions=[""], only=["signature_required", "version"])
    by_name = {r.name: r for r in results}
    assert by_name["signature_required"].level == "error"
    assert "give its secret" in by_name["signature_required"].message
    assert "403" in by_name["version"].message


class TestConformingService(ServiceConformance):
    """The pytest form, as a service author would use it."""

    @pytest.fixture
    def plugit_service(self, good_url: str) -> tuple[str, str, tuple[str, ...]]:
        return good_url, SECRET, ACTIONS


# -- broken services -------------------------------------------------------------------------------


def garbage_app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    """Not a PlugIt service at all: every path answers 200 with text."""
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"garbage"]


ALL_FAIL = set(CHECK_NAMES)


@pytest.mark.parametrize(
    ("secret", "expected"),
    [
        pytest.param(SECRET, ALL_FAIL, id="with-secret"),
        pytest.param(
            None, ALL_FAIL - {"signed_request_accepted", "replay_refused"}, id="no-secret"
        ),
    ],
)
def test_garbage_service_fails(
    served: Callable[..., str], secret: str | None, expected: set[str]
) -> None:
    results = run_checks(served(garbage_app), secret=secret, actions=["", "x"])
    assert failing(results) == expected
    warning = [r for r in results if r.level == "warning"]
    assert [r.name for r in warning] == ([] if secret else ["signature_required"])
    by_name = {r.name: r.message for r in results}
    assert "got HTTP 200 'garbage'" in by_name["version"]
    assert "must answer 405" in by_name["meta_refuses_post[/x]"]


def mutate(
    app: Any, transform: Callable[[Request, Response], Response | None]
) -> Callable[..., Any]:
    """Wrap a service so that ``transform`` may rewrite its replies."""

    def wrapped(environ: dict[str, Any], start_response: Any) -> Any:
        request = Request(environ)
        response = Response.from_app(app, environ)
        response = transform(request, response) or response
        return response(environ, start_response)

    return wrapped


def on(prefix: str, change: Callable[[Response], Response | None]) -> Any:
    def transform(request: Request, response: Response) -> Response | None:
        return change(response) if request.path.startswith(prefix) else None

    return transform


def edit_json(**changes: Any) -> Callable[[Response], Response]:
    def change(response: Response) -> Response:
        data = {**json.loads(response.get_data()), **changes}
        response.set_data(json.dumps(data))
        return response

    return change


def drop_header(name: str) -> Callable[[Response], None]:
    def change(response: Response) -> None:
        del response.headers[name]

    return change


def always(status: int, body: bytes = b"{}") -> Callable[..., Response]:
    return lambda *args: Response(body, status, mimetype="application/json")


@pytest.mark.parametrize(
    ("transform", "expected"),
    [
        pytest.param(on("/version", edit_json(version=1)), {"version"}, id="version-as-number"),
        # Any protocol name is accepted with version 1 (the compatibility report notes it).
        pytest.param(on("/version", edit_json(protocol="plugit-sample")), set(), id="other-name"),
        pytest.param(on("/version", edit_json(protocol="")), {"version"}, id="empty-name"),
        pytest.param(on("/version", edit_json(protocol=None)), {"version"}, id="no-name"),
        pytest.param(
            on("/ping", edit_json(data="nope")),
            {"ping", "signed_request_accepted"},
            id="ping-no-echo",
        ),
        pytest.param(
            on("/mail", always(200)),
            {"mail_requires_response_id", "mail_empty_response_id"},
            id="mail-accepts-anything",
        ),
        pytest.param(on("/meta", edit_json(send_etag=True)), {"meta"}, id="meta-unknown-key"),
        pytest.param(
            on("/meta", edit_json(only_logged_user="yes")), {"meta"}, id="meta-flag-not-bool"
        ),
        pytest.param(on("/meta", edit_json(cache_time=-1)), {"meta"}, id="meta-negative-cache"),
        pytest.param(on("/meta", edit_json(user_info="pk")), {"meta"}, id="meta-user-info-str"),
        pytest.param(
            on("/meta", edit_json(address_in_networks=["nope"])), {"meta"}, id="meta-bad-network"
        ),
        pytest.param(
            on("/meta", edit_json(fragment_assets={"css": ["/etc/x.css"]})),
            {"meta"},
            id="meta-asset-outside-media",
        ),
        pytest.param(
            on("/meta", edit_json(fragment_assets={"img": ["a.png"]})),
            {"meta"},
            id="meta-asset-unknown-kind",
        ),
        pytest.param(
            on("/meta", edit_json(template_tag=None)), {"meta", "template"}, id="meta-tag-null"
        ),
        pytest.param(
            on("/meta", drop_header("Cache-Control")), {"meta"}, id="meta-no-cache-control"
        ),
        pytest.param(on("/template", always(404)), {"template"}, id="template-missing"),
        pytest.param(
            on("/meta", edit_json(template_tag="")), {"template"}, id="template-without-tag"
        ),
        pytest.param(
            lambda request, response: Response("{}", 200) if request.method == "POST" else None,
            {"meta_refuses_post", "mail_requires_response_id", "mail_empty_response_id"},
            id="post-accepted-everywhere",
        ),
        pytest.param(
            lambda request, response: Response("x") if response.status_code == 404 else None,
            {"unknown_path", "media_traversal", "template"},
            id="never-404",
        ),
        pytest.param(on("/media", always(200, b"root:x:0:0")), {"media_traversal"}, id="traversal"),
    ],
)
def test_each_fault_fails_the_right_checks(
    root: Path,
    served: Callable[..., str],
    transform: Callable[[Request, Response], Response | None],
    expected: set[str],
) -> None:
    url = served(mutate(make_service(root, secret=SECRET), transform))
    results = run_checks(url, secret=SECRET, actions=ACTIONS)
    assert failing(results) == expected, [r for r in results if not r.ok]
    assert all(r.level == "error" for r in results)


def test_service_accepting_unsigned_and_replayed_requests(
    root: Path, served: Callable[..., str]
) -> None:
    unsigned = served(make_service(root))
    assert failing(run_checks(unsigned, secret=SECRET)) == {"signature_required", "replay_refused"}
    forgetful = make_service(root, secret=SECRET)
    forgetful._nonces = NonceRegistry(ttl=0)  # a service without replay protection
    assert failing(run_checks(served(forgetful), secret=SECRET)) == {"replay_refused"}


# -- unreachable or not HTTP: failed checks, never an exception ------------------------------------


def test_unreachable_service() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))  # bound, not listening: connections are refused
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        results = run_checks(url, secret=SECRET, actions=["", "a"])
    assert {r.name for r in results} >= {"version", "meta[/a]", "replay_refused"}
    assert not any(r.ok for r in results)
    assert results[0].message.startswith(f"cannot reach {url}: ")
    assert all("cannot reach" in r.message for r in results)
    assert all(r.message.startswith("not run: ") for r in results[1:])


@pytest.fixture
def not_http() -> Iterator[str]:
    """A TCP server that answers every connection with a line that is not HTTP."""
    stop = threading.Event()

    def loop(server: socket.socket) -> None:
        while not stop.is_set():
            try:
                connection, _ = server.accept()
            except TimeoutError:
                continue
            with connection:
                connection.recv(65536)
                connection.sendall(b"HELLO THERE\r\n")

    with socket.create_server(("127.0.0.1", 0)) as server:
        server.settimeout(0.05)
        thread = threading.Thread(target=loop, args=(server,), daemon=True)
        thread.start()
        yield f"http://127.0.0.1:{server.getsockname()[1]}"
        stop.set()
        thread.join(5)


def test_not_http_service(not_http: str) -> None:
    results = run_checks(not_http, actions=[""])
    assert not any(r.ok for r in results)
    assert "cannot reach" in results[0].message


@pytest.mark.parametrize(
    "url",
    [pytest.param("ftp://host/", id="scheme"), pytest.param("not a url", id="garbage")],
)
def test_bad_url(url: str) -> None:
    [result] = run_checks(url)
    assert (result.name, result.ok) == ("url", False)
    assert "not an http(s) URL" in result.message


def test_unknown_check_name_is_a_programming_error(good_url: str) -> None:
    with pytest.raises(ValueError, match="unknown checks: nope"):
        run_checks(good_url, only=["nope"])


# -- the pytest class reports a broken service by test name ----------------------------------------


@pytest.mark.parametrize(
    "method",
    [name for name in dir(ServiceConformance) if name.startswith("test_")],
)
def test_conformance_class_fails_on_garbage(served: Callable[..., str], method: str) -> None:
    plugit_service = (served(garbage_app), SECRET, ["", "x"])
    with pytest.raises(pytest.fail.Exception) as caught:
        getattr(ServiceConformance(), method)(plugit_service)
    check = method.removeprefix("test_")
    assert caught.value.msg.startswith(check)


def test_conformance_class_skips_warnings_and_secret_only_checks(
    root: Path, served: Callable[..., str]
) -> None:
    plugit_service = (served(make_service(root)), None, [""])
    suite = ServiceConformance()
    with pytest.raises(pytest.skip.Exception, match="accepts unsigned requests"):
        suite.test_signature_required(plugit_service)
    with pytest.raises(pytest.skip.Exception, match="only checked when a secret is given"):
        suite.test_replay_refused(plugit_service)
    suite.test_meta(plugit_service)  # passes: no exception


def ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not ipv6_loopback(), reason="no IPv6 loopback on this machine")
def test_ipv6_service(root: Path, served: Callable[..., str]) -> None:
    url = served(make_service(root, secret=SECRET), host="::1")
    assert url.startswith("http://[::1]:")
    results = run_checks(url, secret=SECRET, actions=ACTIONS)
    assert [r for r in results if not r.ok] == []


# -- the compatibility report: a service written for the original ---------------------------------

ORIGINAL_TEMPLATES = {
    # Django syntax the dialect reads: one note, set template_dialect.
    "django.html": (
        '{% extends "plugIt/base.html" %}{% load plugit_tags %}{% block content %}'
        '{% for p in polls %}{{ forloop.counter }} {{ p.title|default:"?" }}{% endfor %}'
        "<form method=post>{% csrf_token %}</form>{% endblock %}"
    ),
    # {% url %}: the dialect refuses it.
    "url.html": '{% extends "plugIt/base.html" %}{% block content %}'
    '<a href="{% url "home" %}">home</a>{% endblock %}',
    # The original's jQuery and Bootstrap 3 habits, in Jinja syntax.
    "jquery.html": (
        '{% extends "plugit/base.html" %}{% block content %}'
        '<button id="add" class="btn btn-default" onclick="add()">'
        '<span class="glyphicon glyphicon-plus"></span></button>'
        '<a href="https://example.org/help">help</a> <img src="//cdn.example/x.png">'
        '<a href="javascript:add()">+</a><a href="mailto:team@example.org">mail</a>'
        '<link rel="stylesheet" href="{{ MEDIA_URL }}s.css"><style>p {}</style>'
        "<script>$(function () { $('#add').hide(); });</script>{% endblock %}"
    ),
    # What a port to this library looks like: no note.
    "clean.html": (
        '{% extends "plugit/base.html" %}{% block content %}'
        '<a href="{{ ebuio_baseUrl }}show/1" class="btn btn-secondary">{{ x }}</a>'
        '<a href="mailto:team@example.org">mail</a> <img src="{{ MEDIA_URL }}a.png">'
        "{% for k, v in d.items() %}{{ k }}{% endfor %}{% endblock %}"
    ),
    "broken.html": "{% if %}{% endfor",
}


def _template_action(name: str) -> Any:
    def fn(request: ServiceRequest) -> dict:
        return {}

    fn.__name__ = name.removesuffix(".html")
    return action(f"/{fn.__name__}", template=name)(fn)


@action("/cached", template="clean.html")
@only_logged_user()
@cache(time=60)
@user_info(["username", "gravatar"])
def cached(request: ServiceRequest) -> dict:
    return {}


def original_style(root: Path, **settings: Any) -> Any:
    """Our library made to answer as the original's did: its meta carries cache_by_user null
    and a key no proxy reads."""
    (root / "templates").mkdir(exist_ok=True)
    for name, text in ORIGINAL_TEMPLATES.items():
        (root / "templates" / name).write_text(text)
    service = PlugItService(
        [*(_template_action(n) for n in ORIGINAL_TEMPLATES), cached, api], root=root, **settings
    )

    def original_meta(response: Response) -> Response:
        data = json.loads(response.get_data())
        if "cache_time" in data:
            data["cache_by_user"] = None
        if data.get("user_info"):
            data["plugit_version"] = "0.3.12"
        response.set_data(json.dumps(data))
        return response

    return mutate(service, on("/meta", original_meta))


ORIGINAL_ACTIONS = ("django", "url", "jquery", "clean", "broken", "cached", "api")


def test_compatibility_report_of_an_original_service(
    tmp_path: Path, served: Callable[..., str]
) -> None:
    url = served(original_style(tmp_path, api_name="plugit-sample"))
    notes = compatibility_report(url, actions=ORIGINAL_ACTIONS)
    got = {(n.where, n.what.split(" (")[0]) for n in notes}
    assert got == {
        ("version", "protocol name 'plugit-sample'"),
        ("ping", "unsigned requests accepted"),
        ("/django (template)", "Django template syntax"),
        ("/url (template)", "Django template syntax"),
        ("/url (template)", "a construct the Django dialect does not support"),
        ("/jquery (template)", "<script> elements"),
        ("/jquery (template)", "inline event handlers"),
        ("/jquery (template)", "javascript: URLs"),
        ("/jquery (template)", "jQuery"),
        ("/jquery (template)", "Bootstrap 3 classes or attributes"),
        ("/jquery (template)", "<link>, <style> elements"),
        ("/jquery (template)", "absolute links or sources"),
        ("/broken (template)", "a template that compiles in neither dialect"),
        ("/cached", "@cache(time) without byUser on a restricted action"),
        ("/cached", "meta keys 'plugit_version'"),
        ("/cached", "user_info 'gravatar'"),
    }
    by = {(n.where, n.what.split(" (")[0]): n for n in notes}
    # Each line says what, why and the advice.
    assert all(n.why and n.advice for n in notes)
    assert "PI_API_NAME = 'EBUio-PlugIt'" in by["version", "protocol name 'plugit-sample'"].advice
    assert (
        'template_dialect = "django"' in by["/django (template)", "Django template syntax"].advice
    )
    assert (
        "{% url %}" in by["/url (template)", "a construct the Django dialect does not support"].what
    )
    assert 'theme = "legacy"' in by["/jquery (template)", "jQuery"].advice
    assert 'trust = "full"' in by["/jquery (template)", "<script> elements"].advice
    assert "onclick" in by["/jquery (template)", "inline event handlers"].what
    links = by["/jquery (template)", "absolute links or sources"].what
    assert "https://example.org/help" in links and "//cdn.example/x.png" in links
    assert "mailto" not in links
    assert "secret" in by["ping", "unsigned requests accepted"].advice
    assert str(notes[0]).startswith("version: protocol name 'plugit-sample'. the proxy accepts")


def test_compatibility_report_of_a_ported_service(root: Path, good_url: str) -> None:
    """A service written for this library, signed: nothing to report."""
    assert compatibility_report(good_url, secret=SECRET, actions=ACTIONS) == []


def test_compatibility_report_never_raises(served: Callable[..., str], not_http: str) -> None:
    assert compatibility_report(served(garbage_app), actions=["", "x"]) == []
    assert compatibility_report(not_http) == []
    assert compatibility_report("ftp://example.org") == []
    port = free_port()
    assert compatibility_report(f"http://127.0.0.1:{port}") == []


def test_check_command_prints_the_report(
    tmp_path: Path, served: Callable[..., str], capsys
) -> None:
    url = served(original_style(tmp_path, api_name="plugit-sample"))
    code = main(["service", "--check", url, "--action", "jquery", "--action", "django"])
    out = capsys.readouterr().out
    assert code == 0  # differences are advice, not failures
    assert "ok    version: protocol 'plugit-sample' version 1" in out
    assert "compatibility with the original PlugIt: 10 difference(s)" in out
    assert "note  /jquery (template): jQuery ($ or jQuery)" in out
    assert '      advice: set theme = "legacy" on its mount' in out
    assert "note  version: protocol name 'plugit-sample'" in out
    assert out.strip().splitlines()[-1].endswith("0 failed")


def test_check_command_without_differences(good_url: str, capsys) -> None:
    assert main(["service", "--check", good_url, "--secret", SECRET]) == 0
    assert "compatibility with the original PlugIt: no difference(s)" in capsys.readouterr().out

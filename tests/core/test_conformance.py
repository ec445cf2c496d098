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
        pytest.param(
            on("/version", edit_json(protocol="plugit-sample")), {"version"}, id="default-name"
        ),
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

"""The service's protocol endpoints over real HTTP: ping, version, mail, meta, template, action,
media, the base URL, settings, and the clear answers to bad input (PROTOCOL.md 2 and 4)."""

from __future__ import annotations

import datetime
import http.client
import re
import types
from collections.abc import Callable, Iterator
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

import pytest
import requests

from plugit_core.service import PlugItService, ServiceConfig, ServiceRequest, action
from plugit_core.service.app import MISSING_TEMPLATE_TAG
from plugit_core.testing import serve

HOME_TAG = "c2dca2db9bb94ffbd128ee5c1644c8bb"  # md5("home_template\n"), PROTOCOL.md 2.7
GAME_TAG = "3a617592865c4a620d71ddf2311208c9"  # md5("thegame\n")


@action("/", template="home.html")
def home(request: ServiceRequest) -> dict[str, Any]:
    return {"page": "home"}


@action("/game", template="game.html")
def game(request: ServiceRequest) -> dict[str, Any]:
    return {"page": "game"}


@action("/show/<int:pk>/<slug>")
def show(request: ServiceRequest, pk: int, slug: str) -> dict[str, Any]:
    return {"pk": pk, "pk_type": type(pk).__name__, "slug": slug}


@action("/files/<path:name>")
def files(request: ServiceRequest, name: str) -> dict[str, Any]:
    return {"name": name}


@action("/vote", methods=["POST", "PUT"])
def vote(request: ServiceRequest) -> dict[str, Any]:
    uploads = {key: f.read().decode() for key, f in request.files.items()}
    return {
        "method": request.method,
        "form": request.form.to_dict(flat=False),
        "args": request.args.to_dict(flat=False),
        "files": uploads,
    }


@action("/one", methods="DELETE")
def one_method(request: ServiceRequest) -> dict[str, Any]:
    return {"deleted": True}


@action("/ghost", template="does-not-exist.html")
def ghost(request: ServiceRequest) -> dict[str, Any]:
    return {}


ACTIONS = [home, game, show, files, vote, one_method, ghost]


@pytest.fixture(scope="module")
def service_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("service")
    (root / "templates").mkdir()
    (root / "templates" / "home.html").write_bytes(b"home_template\n")
    (root / "templates" / "game.html").write_bytes(b"thegame\n")
    (root / "media" / "css").mkdir(parents=True)
    (root / "media" / "css" / "site.css").write_text("body { color: red }\n")
    (root / "secret.txt").write_text("outside the media folder\n")
    return root


@pytest.fixture(scope="module", params=["/", "/baseurl/"], ids=["root-base", "prefixed-base"])
def base(request: pytest.FixtureRequest, service_root: Path) -> Iterator[str]:
    """The service's URL including its base URL (no trailing slash), as a proxy is given it."""
    app = PlugItService(ACTIONS, root=service_root, base_url=request.param)
    with serve(app) as url:
        yield url + request.param.rstrip("/")


def raw_get(base: str, path: str) -> int:
    """GET a path exactly as written (requests would remove dot segments)."""
    split = requests.utils.urlparse(base)
    connection = http.client.HTTPConnection(split.hostname, split.port, timeout=5)
    try:
        connection.request("GET", split.path + path)
        response = connection.getresponse()
        response.read()
        response.close()
        return response.status
    finally:
        connection.close()


# -- ping, version, mail ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "echoed"),
    [
        pytest.param({"data": "Abc123xyz"}, "Abc123xyz", id="token"),
        pytest.param({}, "", id="absent"),
        pytest.param({"data": "été &?"}, "été &?", id="unicode"),
    ],
)
def test_ping_echoes_data(base: str, http: requests.Session, query: dict, echoed: str) -> None:
    response = http.get(f"{base}/ping", params=query)
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/json"
    assert response.json() == {"data": echoed}


def test_version(base: str, http: requests.Session) -> None:
    response = http.get(f"{base}/version")
    assert response.status_code == 200
    assert response.json() == {"result": "Ok", "version": "1", "protocol": "EBUio-PlugIt"}


@pytest.mark.parametrize(
    ("form", "status", "body"),
    [
        pytest.param({"message": "hi"}, 400, None, id="no-response-id"),
        pytest.param({"response_id": "", "message": "hi"}, 200, "Error", id="empty-response-id"),
        pytest.param({"response_id": "42", "message": "hi"}, 200, "Ok", id="no-callback"),
    ],
)
def test_mail(base: str, http: requests.Session, form: dict, status: int, body: str | None) -> None:
    response = http.post(f"{base}/mail", data=form)
    assert response.status_code == status
    if body is None:
        assert response.json()["status"] == 400
        assert "response_id" in response.json()["message"]
    else:
        assert response.json()["result"] == body


def test_mail_refuses_get(base: str, http: requests.Session) -> None:
    response = http.get(f"{base}/mail")
    assert response.status_code == 405
    assert "POST" in response.headers["Allow"]


@pytest.mark.parametrize(
    ("callback_result", "status", "body"),
    [
        pytest.param(
            {"result": "Ok", "seen": True}, 200, {"result": "Ok", "seen": True}, id="dict"
        ),
        pytest.param(None, 200, {"result": "Ok"}, id="none-means-ok"),
        pytest.param({"result": "Error"}, 200, {"result": "Error"}, id="refused"),
    ],
)
def test_mail_callback(
    served: Callable[..., str],
    http: requests.Session,
    callback_result: Any,
    status: int,
    body: dict,
) -> None:
    received: list[tuple[str, str]] = []

    def on_mail(request: ServiceRequest) -> Any:
        received.append((request.form["response_id"], request.form["message"]))
        return callback_result

    url = served(PlugItService([home], mail_callback=on_mail))
    response = http.post(f"{url}/mail", data={"response_id": "poll-7", "message": "Yes!"})
    assert (response.status_code, response.json()) == (status, body)
    assert received == [("poll-7", "Yes!")]


# -- meta and template -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "tag"),
    [
        pytest.param("/meta/", HOME_TAG, id="home_template"),
        pytest.param("/meta/game", GAME_TAG, id="thegame"),
        pytest.param("/meta/show/5/five", "", id="no-template"),
        # not empty: the proxy asks for the template first, gets a 404 naming it, and does not
        # call the action
        pytest.param("/meta/ghost", MISSING_TEMPLATE_TAG, id="missing-template-file"),
    ],
)
def test_meta_template_tag(base: str, http: requests.Session, path: str, tag: str) -> None:
    response = http.get(base + path)
    assert response.status_code == 200
    assert response.json() == {"template_tag": tag}


def test_template_tag_follows_file_changes(
    tmp_path: Path, served: Callable[..., str], http: requests.Session
) -> None:
    (tmp_path / "templates").mkdir()
    template = tmp_path / "templates" / "home.html"
    template.write_bytes(b"home_template\n")
    url = served(PlugItService([home], root=tmp_path))
    assert http.get(f"{url}/meta/").json()["template_tag"] == HOME_TAG
    template.write_bytes(b"thegame\n")
    assert http.get(f"{url}/meta/").json()["template_tag"] == GAME_TAG
    template.unlink()
    assert http.get(f"{url}/meta/").json()["template_tag"] == MISSING_TEMPLATE_TAG
    missing = http.get(f"{url}/template/")
    assert missing.status_code == 404
    assert "the template 'home.html' of this action is missing" in missing.text
    assert http.get(f"{url}/action/").status_code == 404  # its page cannot be shown: not run


@pytest.mark.parametrize(
    ("debug", "seconds"),
    [pytest.param(True, 0, id="debug"), pytest.param(False, 300, id="production")],
)
def test_meta_cache_headers(
    service_root: Path,
    served: Callable[..., str],
    http: requests.Session,
    debug: bool,
    seconds: int,
) -> None:
    url = served(PlugItService([home], root=service_root, debug=debug))
    before = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
    response = http.get(f"{url}/meta/")
    after = datetime.datetime.now(datetime.timezone.utc)
    assert response.headers["Cache-Control"] == f"public, max-age={seconds}"
    expire = response.headers["Expire"]  # the original's singular name
    assert re.fullmatch(r"[A-Z][a-z]{2}, \d{2} [A-Z][a-z]{2} \d{4} \d{2}:\d{2}:\d{2} GMT", expire)
    when = parsedate_to_datetime(expire)
    delta = datetime.timedelta(seconds=seconds)
    assert before + delta <= when <= after + delta


@pytest.mark.parametrize(
    ("path", "status", "body"),
    [
        pytest.param("/template/", 200, b"home_template\n", id="home"),
        pytest.param("/template/game", 200, b"thegame\n", id="game"),
        pytest.param("/template/show/5/five", 404, None, id="action-without-template"),
        pytest.param("/template/ghost", 404, None, id="template-file-missing"),
        pytest.param("/template/nothing-here", 404, None, id="unknown-action"),
    ],
)
def test_template(
    base: str, http: requests.Session, path: str, status: int, body: bytes | None
) -> None:
    response = http.get(base + path)
    assert response.status_code == status
    if body is not None:
        assert response.content == body
    else:
        assert response.json()["status"] == 404


@pytest.mark.parametrize(
    ("method", "path"),
    [
        pytest.param("POST", "/meta/", id="post-meta"),
        pytest.param("PUT", "/meta/game", id="put-meta"),
        pytest.param("DELETE", "/template/", id="delete-template"),
        pytest.param("POST", "/ping", id="post-ping"),
        pytest.param("POST", "/version", id="post-version"),
        pytest.param("POST", "/media/css/site.css", id="post-media"),
    ],
)
def test_read_only_endpoints_refuse_other_methods(
    base: str, http: requests.Session, method: str, path: str
) -> None:
    response = http.request(method, base + path)
    assert response.status_code == 405
    assert "GET" in response.headers["Allow"]
    assert response.json()["status"] == 405


# -- action ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        pytest.param("/action/", {"page": "home"}, id="root"),
        pytest.param("/action/game", {"page": "game"}, id="plain"),
        pytest.param(
            "/action/show/5/five",
            {"pk": 5, "pk_type": "int", "slug": "five"},
            id="int-and-string-converters",
        ),
        pytest.param("/action/files/a/b/c.txt", {"name": "a/b/c.txt"}, id="path-converter"),
        pytest.param(
            "/action/show/7/%C3%A9t%C3%A9", {"pk": 7, "pk_type": "int", "slug": "été"}, id="utf8"
        ),
    ],
)
def test_action_route_values_are_keyword_arguments(
    base: str, http: requests.Session, path: str, expected: dict
) -> None:
    response = http.get(base + path)
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/json"
    assert response.json() == expected


@pytest.mark.parametrize(
    ("method", "path", "status", "allow"),
    [
        pytest.param("GET", "/action/vote", 405, {"POST", "PUT"}, id="get-on-post-action"),
        pytest.param("POST", "/action/game", 405, {"GET", "HEAD"}, id="post-on-get-action"),
        pytest.param("GET", "/action/one", 405, {"DELETE"}, id="method-given-as-string"),
        pytest.param("DELETE", "/action/one", 200, None, id="string-method-works"),
        pytest.param("PUT", "/action/vote", 200, None, id="second-declared-method"),
        pytest.param("GET", "/action/nothing-here", 404, None, id="unknown-action"),
        pytest.param("GET", "/action/show/x/five", 404, None, id="converter-refuses"),
        pytest.param("GET", "/meta/nothing-here", 404, None, id="unknown-meta"),
        pytest.param("GET", "/elsewhere", 404, None, id="unknown-endpoint"),
    ],
)
def test_methods_and_unknown_paths(
    base: str,
    http: requests.Session,
    method: str,
    path: str,
    status: int,
    allow: set[str] | None,
) -> None:
    response = http.request(method, base + path)
    assert response.status_code == status
    assert response.headers["Content-Type"] == "application/json"
    if allow is not None:
        assert set(response.headers["Allow"].split(", ")) >= allow
        assert response.json()["error"] == "method_not_allowed"
    if status == 404:
        assert response.json() == {
            "error": "not_found",
            "status": 404,
            "message": response.json()["message"],
        }


def test_post_form_query_and_files(base: str, http: requests.Session) -> None:
    response = http.post(
        f"{base}/action/vote",
        params={"page": "2"},
        data={"choice": ["a", "b"], "ebuio_u_username": "alice"},
        files={"doc": ("doc.txt", b"file body", "text/plain")},
    )
    assert response.status_code == 200
    assert response.json() == {
        "method": "POST",
        "form": {"choice": ["a", "b"], "ebuio_u_username": ["alice"]},
        "args": {"page": ["2"]},
        "files": {"doc": "file body"},
    }


def test_head_on_get_action(base: str, http: requests.Session) -> None:
    response = http.head(f"{base}/action/game")
    assert response.status_code == 200
    assert response.content == b""


# -- media -----------------------------------------------------------------------------------------


def test_media_file(base: str, http: requests.Session) -> None:
    response = http.get(f"{base}/media/css/site.css")
    assert response.status_code == 200
    assert response.text == "body { color: red }\n"
    assert response.headers["Content-Type"].startswith("text/css")
    assert "max-age" in response.headers["Cache-Control"]


@pytest.mark.parametrize(
    "path",
    [
        pytest.param("/media/missing.css", id="missing"),
        pytest.param("/media/css", id="directory"),
        pytest.param("/media/../secret.txt", id="dot-dot"),
        pytest.param("/media/css/../../secret.txt", id="dot-dot-nested"),
        pytest.param("/media/%2e%2e/secret.txt", id="encoded-dot-dot"),
        pytest.param("/media/%2E%2E%2Fsecret.txt", id="encoded-slash"),
        pytest.param("/media/..%5csecret.txt", id="backslash"),
        pytest.param("/media//etc/passwd", id="absolute"),
        pytest.param("/media/%2fetc%2fpasswd", id="encoded-absolute"),
    ],
)
def test_media_not_found_and_traversal(base: str, path: str) -> None:
    assert raw_get(base, path) == 404


# -- settings and configuration --------------------------------------------------------------------


def original_settings(**extra: Any) -> types.ModuleType:
    """A settings module written for the original library."""
    settings = types.ModuleType("config")
    settings.PI_BASE_URL = "/baseurl/"
    settings.PI_ALLOWED_NETWORKS = ["127.0.0.1/32", "::1/128"]
    settings.DEBUG = True
    settings.PI_API_NAME = "EBUio-PlugIt"
    settings.API_URL = "http://proxy.example/ebuio_api/"
    for name, value in extra.items():
        setattr(settings, name, value)
    return settings


def test_from_settings_original_module() -> None:
    config = ServiceConfig.from_settings(original_settings())
    assert config.base_url == "/baseurl/"
    assert config.allowed_networks == ("127.0.0.1/32", "::1/128")
    assert config.debug is True
    assert config.meta_cache_seconds == 0
    assert config.api_name == "EBUio-PlugIt"
    assert config.api_url == "http://proxy.example/ebuio_api/"


def test_original_settings_served(
    service_root: Path, served: Callable[..., str], http: requests.Session
) -> None:
    config = ServiceConfig.from_settings(original_settings(PI_API_NAME="my-api"), root=service_root)
    url = served(PlugItService(ACTIONS, config))
    assert http.get(f"{url}/ping").status_code == 404
    assert http.get(f"{url}/baseurl/ping", params={"data": "x"}).json() == {"data": "x"}
    assert http.get(f"{url}/baseurl/version").json()["protocol"] == "my-api"
    meta = http.get(f"{url}/baseurl/meta/")
    assert meta.json() == {"template_tag": HOME_TAG}
    assert meta.headers["Cache-Control"] == "public, max-age=0"
    assert http.get(f"{url}/baseurl/media/css/site.css").status_code == 200


def test_from_module_settings_beside_actions(
    service_root: Path, served: Callable[..., str], http: requests.Session
) -> None:
    module = original_settings(PI_BASE_URL="/svc/", DEBUG=False)
    module.home = home
    module.root = game  # an action that happens to share a setting's name is not a setting
    module.media = show
    url = served(PlugItService.from_module(module, root=service_root))
    assert http.get(f"{url}/svc/action/").json() == {"page": "home"}
    assert http.get(f"{url}/svc/action/game").json() == {"page": "game"}
    assert http.get(f"{url}/svc/meta/").headers["Cache-Control"] == "public, max-age=300"


def test_from_settings_mapping_and_our_names() -> None:
    config = ServiceConfig.from_settings(
        {"PI_BASE_URL": "/a/", "debug": True, "PI_ALLOWED_NETWORKS": "10.0.0.0/8, ::1/128"},
        meta_cache=12,
    )
    assert (config.base_url, config.debug, config.meta_cache_seconds) == ("/a/", True, 12)
    assert config.allowed_networks == ("10.0.0.0/8", "::1/128")


@pytest.mark.parametrize(
    ("settings", "error", "match"),
    [
        pytest.param({"PI_BASE_URL": "baseurl/"}, ValueError, "base_url", id="no-leading-slash"),
        pytest.param({"PI_BASE_URL": "/baseurl"}, ValueError, "base_url", id="no-trailing-slash"),
        pytest.param(
            {"PI_ALLOWED_NETWORKS": ["10.0.0.0/33"]}, ValueError, "allowed_networks", id="network"
        ),
        pytest.param({"PI_SECRET": "short"}, ValueError, "16 characters", id="short-secret"),
    ],
)
def test_configuration_errors(settings: dict, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        ServiceConfig.from_settings(settings)


def test_unknown_override_is_an_error_but_unknown_module_names_are_ignored() -> None:
    with pytest.raises(TypeError, match="no_such_setting"):
        ServiceConfig.from_settings(None, no_such_setting=1)
    assert ServiceConfig.from_settings({"SQLALCHEMY_URL": "sqlite://"}) == ServiceConfig()


def test_duplicate_routes_and_names_are_refused() -> None:
    @action("/game")
    def other_game(request: ServiceRequest) -> dict:
        return {}

    with pytest.raises(ValueError, match="share the route"):
        PlugItService([game, other_game])
    service = PlugItService([game])
    service.add_action(game, name="alias")  # the same function twice is one action
    assert list(service.actions) == ["game"]
    with pytest.raises(ValueError, match="not decorated"):
        service.add_action(lambda request: {})


@pytest.mark.parametrize(
    "route",
    [pytest.param("nope", id="no-slash"), pytest.param("", id="empty")],
)
def test_action_route_must_start_with_slash(route: str) -> None:
    with pytest.raises(ValueError, match="must start with '/'"):
        action(route)
    with pytest.raises(ValueError, match="no HTTP method"):
        action("/x", methods=[])

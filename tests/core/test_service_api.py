"""The ``PlugItAPI`` client against a small fake callback API served over real HTTP
(PROTOCOL.md 6.4): every method, the Authorization header, typed errors and timeouts."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from werkzeug.exceptions import HTTPException, NotFound
from werkzeug.routing import Map, Rule
from werkzeug.wrappers import Request, Response

from plugit_core.service import (
    Orga,
    PlugItAPI,
    PlugItAPIAuthError,
    PlugItAPIError,
    PlugItAPIUnavailableError,
    User,
)
from plugit_core.testing import serve

KEY = "callback-api-key-0123456789"


class FakeCallbackAPI:
    """Answers like the proxy's callback API; records every call."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []
        self.release = threading.Event()
        self.urls = Map(
            [
                Rule("/api/user/<pk>", endpoint="user"),
                Rule("/api/user/<pk>/techgroups/", endpoint="user_techgroups"),
                Rule("/api/subscriptions/<pk>", endpoint="subscriptions"),
                Rule("/api/orgas/", endpoint="orgas"),
                Rule("/api/orga/<pk>", endpoint="orga"),
                Rule("/api/members/", endpoint="members"),
                Rule("/api/techgroups/", endpoint="techgroups"),
                Rule("/api/mail/", endpoint="mail", methods=["POST"]),
                Rule("/api/ebuio/forum/", endpoint="forum", methods=["POST"]),
                Rule("/api/ebuio/forum/search/bytag/<tag>", endpoint="forum_search"),
            ]
        )

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        request = Request(environ)
        self.calls.append(
            {
                "method": request.method,
                "uri": environ.get("REQUEST_URI"),
                "authorization": request.headers.get("Authorization"),
                "form": request.form.to_dict(flat=False),
                "args": request.args.to_dict(),
            }
        )
        try:
            endpoint, values = self.urls.bind_to_environ(environ).match()
            response = self.answer(endpoint, request, **values)
        except HTTPException as exc:
            response = exc.get_response()
        return response(environ, start_response)

    def answer(self, endpoint: str, request: Request, pk: str = "", tag: str = "") -> Response:
        if request.headers.get("Authorization") != f"Bearer {KEY}":
            return reply({"error": "forbidden"}, 403)
        special = {
            "404": lambda: reply({"error": "not_found"}, 404),
            "401": lambda: reply({"error": "unauthorized"}, 401),
            "500": lambda: Response("<h1>boom</h1>", 500),
            "503": lambda: reply({"message": "maintenance"}, 503),
            "400": lambda: reply({"error": "bad-pk", "message": "pk must be a number"}, 400),
            "html": lambda: Response("<html>", 200, mimetype="text/html"),
            "list": lambda: reply([1, 2]),
            "object": lambda: reply({"not": "a list"}),
        }
        if pk in special:
            return special[pk]()
        if pk == "slow":
            self.release.wait(2)
            return reply({})
        data: Any
        if endpoint == "user":
            data = {"pk": int(pk), "username": "alice", "orgas": [{"id": -1, "name": "EBU"}]}
        elif endpoint in ("user_techgroups", "techgroups"):
            data = ["tg-1", "tg-2"]
        elif endpoint == "subscriptions":
            data = ["gold"]
        elif endpoint == "orgas":
            data = {"data": [{"id": -1, "name": "EBU", "codops": "ZZEBU"}]}
        elif endpoint == "orga":
            data = {"name": "RTS", "codops": "chrts"}
        elif endpoint == "members":
            data = {"members": [{"pk": -1, "id": "-1", "username": "ano"}]}
        elif endpoint == "mail":
            data = {}
        elif endpoint == "forum":
            data = {"error": "no-on-ebuio"}
        else:
            if tag == "none":
                raise NotFound()
            data = {"data": [{"id": 1, "subject": f"about {tag}"}]}
        return reply(data)


def reply(data: Any, status: int = 200) -> Response:
    return Response(json.dumps(data), status, mimetype="application/json")


@pytest.fixture(scope="module")
def fake() -> Iterator[tuple[FakeCallbackAPI, str]]:
    app = FakeCallbackAPI()
    with serve(app) as url:
        yield app, url + "/api/"
        app.release.set()


@pytest.fixture
def api(fake: tuple[FakeCallbackAPI, str]) -> Iterator[PlugItAPI]:
    app, url = fake
    app.calls.clear()
    with PlugItAPI(url, KEY, timeout=2) as client:
        yield client


# -- every method ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("call", "expected", "uri"),
    [
        pytest.param(
            lambda api: api.get_user(7),
            User(pk=7, id=7, username="alice", orgas=[{"id": -1, "name": "EBU"}]),
            "/api/user/7",
            id="get_user",
        ),
        pytest.param(
            lambda api: api.get_user_techgroups(7),
            ["tg-1", "tg-2"],
            "/api/user/7/techgroups/",
            id="get_user_techgroups",
        ),
        pytest.param(
            lambda api: api.get_subscription_labels(7),
            ["gold"],
            "/api/subscriptions/7",
            id="get_subscription_labels",
        ),
        pytest.param(
            lambda api: api.get_orgas(),
            [Orga(pk=-1, id=-1, name="EBU", codops="ZZEBU")],
            "/api/orgas/",
            id="get_orgas",
        ),
        pytest.param(
            lambda api: api.get_orga(-2),
            Orga(pk=-2, id=-2, name="RTS", codops="chrts"),
            "/api/orga/-2",
            id="get_orga",
        ),
        pytest.param(
            lambda api: api.get_project_members(),
            [User(pk=-1, id="-1", username="ano")],
            "/api/members/",
            id="get_project_members",
        ),
        pytest.param(
            lambda api: api.get_techgroups(), ["tg-1", "tg-2"], "/api/techgroups/", id="techgroups"
        ),
        pytest.param(
            lambda api: api.forum_topic_get_by_tag_for_user("news", author=3),
            [{"id": 1, "subject": "about news"}],
            "/api/ebuio/forum/search/bytag/news?u=3",
            id="forum_topic_get_by_tag_for_user",
        ),
        pytest.param(
            lambda api: api.get_user("../members"),
            None,
            "/api/user/..%2Fmembers",
            id="path-injection-stays-one-segment",
        ),
    ],
)
def test_methods(
    api: PlugItAPI, fake: tuple[FakeCallbackAPI, str], call: Any, expected: Any, uri: str
) -> None:
    assert call(api) == expected
    app, _ = fake
    assert [c["uri"] for c in app.calls] == [uri]
    assert app.calls[0]["authorization"] == f"Bearer {KEY}"


def test_send_mail(api: PlugItAPI, fake: tuple[FakeCallbackAPI, str]) -> None:
    response = api.send_mail(
        "noreply@example.org", "Hi", ["a@example.org", "b@example.org"], "Body", "poll-3", True
    )
    assert response.status_code == 200
    call = fake[0].calls[-1]
    assert (call["method"], call["uri"]) == ("POST", "/api/mail/")
    assert call["form"] == {
        "sender": ["noreply@example.org"],
        "subject": ["Hi"],
        "dests": ["a@example.org", "b@example.org"],
        "message": ["Body"],
        "html_message": ["true"],
        "response_id": ["poll-3"],
    }


def test_send_mail_minimal(api: PlugItAPI, fake: tuple[FakeCallbackAPI, str]) -> None:
    api.send_mail(None, "Hi", ["a@example.org"], "Body")
    assert fake[0].calls[-1]["form"] == {
        "subject": ["Hi"],
        "dests": ["a@example.org"],
        "message": ["Body"],
        "html_message": ["false"],
    }


def test_forum(api: PlugItAPI, fake: tuple[FakeCallbackAPI, str]) -> None:
    response = api.forum_create_topic("Subject", 3, "Text", "a,b")
    assert response.json() == {"error": "no-on-ebuio"}
    assert fake[0].calls[-1]["form"] == {
        "subject": ["Subject"],
        "author": ["3"],
        "message": ["Text"],
        "tags": ["a,b"],
    }
    with pytest.deprecated_call():
        assert api.ebuio_forum("Subject", 3, "Text") == {"error": "no-on-ebuio"}
    assert api.forum_topic_get_by_tag_for_user(None) is None
    assert api.forum_topic_get_by_tag_for_user("none") is None
    assert fake[0].calls[-1]["args"] == {}


# -- failures --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("call", "expected"),
    [
        pytest.param(lambda api: api.get_user(404), None, id="user-404-none"),
        pytest.param(lambda api: api.get_orga(404), None, id="orga-404-none"),
        pytest.param(lambda api: api.get_user_techgroups(404), [], id="techgroups-404-empty"),
        pytest.param(lambda api: api.get_subscription_labels(404), [], id="labels-404-empty"),
    ],
)
def test_not_found(api: PlugItAPI, call: Any, expected: Any) -> None:
    assert call(api) == expected


@pytest.mark.parametrize(
    ("call", "error", "status", "code"),
    [
        pytest.param(lambda api: api.get_user(401), PlugItAPIAuthError, 401, "forbidden", id="401"),
        pytest.param(
            lambda api: api.get_user(500), PlugItAPIUnavailableError, 500, "unavailable", id="500"
        ),
        pytest.param(
            lambda api: api.get_orga(503), PlugItAPIUnavailableError, 503, "unavailable", id="503"
        ),
        pytest.param(lambda api: api.get_user(400), PlugItAPIError, 400, "bad-pk", id="400"),
        pytest.param(lambda api: api.get_user("html"), PlugItAPIError, 200, "error", id="html"),
        pytest.param(lambda api: api.get_user("list"), PlugItAPIError, 200, "bad_reply", id="list"),
        pytest.param(
            lambda api: api.get_subscription_labels("object"),
            PlugItAPIError,
            200,
            "bad_reply",
            id="object-for-list",
        ),
    ],
)
def test_typed_errors(
    api: PlugItAPI, call: Any, error: type[PlugItAPIError], status: int, code: str
) -> None:
    with pytest.raises(error) as caught:
        call(api)
    assert type(caught.value) is error
    assert (caught.value.status, caught.value.code) == (status, code)


def test_wrong_key_is_an_auth_error(fake: tuple[FakeCallbackAPI, str]) -> None:
    with PlugItAPI(fake[1], "wrong-key") as api, pytest.raises(PlugItAPIAuthError) as caught:
        api.get_user(1)
    assert caught.value.status == 403
    with PlugItAPI(fake[1].rstrip("/")) as api, pytest.raises(PlugItAPIAuthError):
        api.get_orgas()  # no key at all; the missing trailing slash is added
    assert fake[0].calls[-1]["authorization"] is None


def test_unreachable() -> None:
    with socket_port() as port, PlugItAPI(f"http://127.0.0.1:{port}/", KEY, timeout=2) as api:
        with pytest.raises(PlugItAPIUnavailableError, match="ConnectionError"):
            api.get_user(1)


def test_timeout(fake: tuple[FakeCallbackAPI, str]) -> None:
    with PlugItAPI(fake[1], KEY, timeout=0.2) as api:
        with pytest.raises(PlugItAPIUnavailableError, match="Timeout") as caught:
            api.get_user("slow")
    assert caught.value.status == 0


def test_given_session_is_not_closed(fake: tuple[FakeCallbackAPI, str]) -> None:
    with requests.Session() as session:
        api = PlugItAPI(fake[1], KEY, session=session)
        api.close()
        assert api.get_orga(1) == Orga(pk=1, id=1, name="RTS", codops="chrts")


@contextlib.contextmanager
def socket_port() -> Iterator[int]:
    """A port that nothing listens on (bound, never listening), for the time of a block."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]

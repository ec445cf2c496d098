"""The example voting service, over real HTTP, speaking the PlugIt protocol to no proxy at all."""

from __future__ import annotations

import re
import sqlite3
import threading
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jinja2
import pytest
import requests
from jinja2.sandbox import ImmutableSandboxedEnvironment
from markupsafe import Markup

from plugit_backends.theme_bootstrap import SERVICE_TEMPLATES_DIR
from plugit_contrib.examples.voting import create_app
from plugit_contrib.examples.voting import db as voting_db
from plugit_contrib.examples.voting.app import MEDIA_DIR, TEMPLATES_DIR, VotingService
from plugit_contrib.examples.voting.db import Database, seed
from plugit_core.testing import ServiceConformance, serve

TIMEOUT = 10
REDIRECT = "EbuIo-PlugIt-Redirect"
BOB = {"ebuio_u_pk": "5", "ebuio_u_username": "bob"}
EVIL = "<script>alert(1)</script>"
CSRF_FIELD = Markup('<input type="hidden" name="csrfmiddlewaretoken" value="TOKEN">')


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PLUGIT_DATABASE", raising=False)


@pytest.fixture
def app(tmp_path: Path) -> VotingService:
    return create_app(tmp_path / "v.sqlite3", debug=True)


@pytest.fixture
def url(app: VotingService) -> Iterator[str]:
    with serve(app) as base:
        yield base


@pytest.fixture
def polls(app: VotingService) -> list[int]:
    """Two polls: 1 "Colour?" (Red=1, Green=2, Blue=3) and 2 "Pet?" (Cat=4, Dog=5)."""
    return [
        app.db.create_poll("Colour?", "Pick one", ["Red", "Green", "Blue"]),
        app.db.create_poll("Pet?", "", ["Cat", "Dog"]),
    ]


def get(url: str, path: str, **params: Any) -> requests.Response:
    return requests.get(url + path, params=params, timeout=TIMEOUT, allow_redirects=False)


def post(url: str, path: str, data: Any = None) -> requests.Response:
    return requests.post(url + path, data=data, timeout=TIMEOUT, allow_redirects=False)


def results(url: str, poll_id: int, **user: str) -> dict[str, int]:
    data = get(url, f"/action/show/{poll_id}", **user).json()
    return {r["title"]: r["votes"] for r in data["responses"]}


# -- protocol: ping, version, meta, template ---------------------------------------------------


def test_ping_and_version(url: str) -> None:
    assert get(url, "/ping", data="abc").json() == {"data": "abc"}
    assert get(url, "/version").json() == {
        "result": "Ok",
        "version": "1",
        "protocol": "EBUio-PlugIt",
    }


@pytest.mark.parametrize(
    ("path", "expected", "has_template"),
    [
        pytest.param("/meta/", {"cache_time": 5, "cache_by_user": False}, True, id="home"),
        pytest.param(
            "/meta/show/1", {"user_info": ["ebuio_admin", "username", "pk"]}, True, id="show"
        ),
        pytest.param(
            "/meta/vote/1/1",
            {"only_logged_user": True, "user_info": ["pk", "username"]},
            False,
            id="vote",
        ),
        pytest.param("/meta/create/", {"only_member_user": True}, True, id="create"),
        pytest.param("/meta/test_json", {"json_only": True}, False, id="json"),
        pytest.param("/meta/test_xml", {"xml_only": True}, False, id="xml"),
        pytest.param("/meta/test_send_file", {}, False, id="send-file"),
    ],
)
def test_meta(url: str, path: str, expected: dict[str, Any], has_template: bool) -> None:
    response = get(url, path)
    assert response.status_code == 200
    meta = response.json()
    tag = meta.pop("template_tag")
    assert meta == expected
    if has_template:
        assert re.fullmatch(r"[0-9a-f]{32}", tag)
    else:
        assert tag == ""
    assert response.headers["Cache-Control"] == "public, max-age=0"  # debug=True


@pytest.mark.parametrize(
    ("path", "template"),
    [
        pytest.param("/template/", "home.html", id="home"),
        pytest.param("/template/show/7", "show.html", id="show"),
        pytest.param("/template/create/", "create.html", id="create"),
    ],
)
def test_template(url: str, path: str, template: str) -> None:
    response = get(url, path)
    assert response.status_code == 200
    assert response.content == (TEMPLATES_DIR / template).read_bytes()


@pytest.mark.parametrize(
    "path",
    [
        pytest.param("/template/vote/1/1", id="vote"),
        pytest.param("/template/test_json", id="json"),
        pytest.param("/template/test_send_file", id="send-file"),
        pytest.param("/template/nowhere", id="unknown-action"),
    ],
)
def test_no_template(url: str, path: str) -> None:
    assert get(url, path).status_code == 404


def test_media(url: str) -> None:
    response = get(url, "/media/voting.css")
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/css")
    assert ".voting-w-100" in response.text


# -- list and show -----------------------------------------------------------------------------


def test_home_lists_polls_with_totals(url: str, app: VotingService, polls: list[int]) -> None:
    app.db.vote(polls[1], 5, "1", "ann")
    app.db.vote(polls[1], 4, "2", "ben")
    response = get(url, "/action/")
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/json"
    assert response.json() == {
        "polls": [
            {
                "id": 1,
                "title": "Colour?",
                "description": "Pick one",
                "total_votes": 0,
                "response_count": 3,
            },
            {"id": 2, "title": "Pet?", "description": "", "total_votes": 2, "response_count": 2},
        ]
    }


def test_home_without_polls(url: str) -> None:
    assert get(url, "/action/").json() == {"polls": []}


def test_show_anonymous(url: str, app: VotingService, polls: list[int]) -> None:
    app.db.vote(1, 1, "1", "ann")
    app.db.vote(1, 1, "2", "ben")
    app.db.vote(1, 3, "3", "cyd")
    data = get(url, "/action/show/1").json()
    assert data == {
        "poll": {"id": 1, "title": "Colour?", "description": "Pick one"},
        "responses": [
            {"id": 1, "title": "Red", "votes": 2, "percent": 67},
            {"id": 2, "title": "Green", "votes": 0, "percent": 0},
            {"id": 3, "title": "Blue", "votes": 1, "percent": 33},
        ],
        "total_votes": 3,
        "voted_for": None,
        "can_vote": False,
        "is_admin": False,
    }


def test_show_logged_user_sees_own_vote_but_not_voters(
    url: str, app: VotingService, polls: list[int]
) -> None:
    app.db.vote(1, 2, "5", "bob")
    data = get(url, "/action/show/1", ebuio_u_pk="5", ebuio_u_username="bob").json()
    assert data["can_vote"] is True
    assert data["voted_for"] == 2
    assert all("voters" not in r for r in data["responses"])
    other = get(url, "/action/show/1", ebuio_u_pk="6", ebuio_u_ebuio_admin="False").json()
    assert other["voted_for"] is None
    assert other["is_admin"] is False
    assert all("voters" not in r for r in other["responses"])


def test_show_admin_sees_voters(url: str, app: VotingService, polls: list[int]) -> None:
    app.db.vote(1, 1, "1", "ann")
    app.db.vote(1, 3, "2", "ben")
    data = get(url, "/action/show/1", ebuio_u_pk="9", ebuio_u_ebuio_admin="True").json()
    assert data["is_admin"] is True
    assert {r["title"]: r["voters"] for r in data["responses"]} == {
        "Red": ["ann"],
        "Green": [],
        "Blue": ["ben"],
    }


def test_show_empty_poll_has_zero_percent(url: str, polls: list[int]) -> None:
    data = get(url, "/action/show/2").json()
    assert [r["percent"] for r in data["responses"]] == [0, 0]
    assert data["total_votes"] == 0


@pytest.mark.parametrize(
    "path",
    [
        pytest.param("/action/show/99", id="unknown-poll"),
        pytest.param("/action/show/abc", id="not-a-number"),
    ],
)
def test_show_unknown_poll(url: str, polls: list[int], path: str) -> None:
    assert get(url, path).status_code == 404


# -- vote --------------------------------------------------------------------------------------


def test_vote_records_and_redirects(url: str, app: VotingService, polls: list[int]) -> None:
    response = post(url, "/action/vote/1/2", BOB)
    assert response.status_code == 200
    assert response.headers[REDIRECT] == "show/1"
    assert "EbuIo-PlugIt-Redirect-NoPrefix" not in response.headers
    assert response.content == b""
    assert app.db.user_vote(1, "5") == 2
    assert results(url, 1) == {"Red": 0, "Green": 1, "Blue": 0}
    assert get(url, "/action/show/1", ebuio_u_pk="5").json()["voted_for"] == 2


def test_second_vote_changes_the_first(url: str, app: VotingService, polls: list[int]) -> None:
    assert post(url, "/action/vote/1/2", BOB).headers[REDIRECT] == "show/1"
    assert post(url, "/action/vote/1/3", BOB).headers[REDIRECT] == "show/1"
    assert results(url, 1) == {"Red": 0, "Green": 0, "Blue": 1}
    assert app.db.user_vote(1, "5") == 3
    # Another poll is another vote; another user is another vote.
    assert post(url, "/action/vote/2/4", BOB).headers[REDIRECT] == "show/2"
    assert post(url, "/action/vote/1/3", {"ebuio_u_pk": "6"}).headers[REDIRECT] == "show/1"
    assert results(url, 1) == {"Red": 0, "Green": 0, "Blue": 2}
    assert results(url, 2) == {"Cat": 1, "Dog": 0}


@pytest.mark.parametrize(
    ("path", "status"),
    [
        pytest.param("/action/vote/99/1", 404, id="unknown-poll"),
        pytest.param("/action/vote/1/99", 404, id="unknown-response"),
        pytest.param("/action/vote/1/4", 404, id="response-of-another-poll"),
    ],
)
def test_vote_unknown(
    url: str, app: VotingService, polls: list[int], path: str, status: int
) -> None:
    assert post(url, path, BOB).status_code == status
    assert app.db.user_vote(1, "5") is None


@pytest.mark.parametrize(
    ("data", "status"),
    [
        pytest.param({"ebuio_u_username": "bob"}, 403, id="no-pk"),
        pytest.param({}, 403, id="anonymous"),
        pytest.param({"ebuio_u_pk": ""}, 403, id="empty-pk"),
    ],
)
def test_vote_needs_a_user(url: str, polls: list[int], data: dict[str, str], status: int) -> None:
    assert post(url, "/action/vote/1/1", data).status_code == status
    assert results(url, 1) == {"Red": 0, "Green": 0, "Blue": 0}


def test_vote_identity_comes_from_the_proxy_parameters_only(url: str, polls: list[int]) -> None:
    # A user header or a query parameter on a POST is not the proxy's user_info.
    response = requests.post(
        url + "/action/vote/1/1?ebuio_u_pk=5",
        headers={"X-Plugit-User-Pk": "5"},
        timeout=TIMEOUT,
        allow_redirects=False,
    )
    assert response.status_code == 403


def test_vote_is_post_only(url: str, polls: list[int]) -> None:
    assert get(url, "/action/vote/1/1", **BOB).status_code == 405
    assert results(url, 1) == {"Red": 0, "Green": 0, "Blue": 0}


def test_concurrent_votes(url: str, app: VotingService, polls: list[int]) -> None:
    errors: list[BaseException] = []

    def voter(pk: int) -> None:
        try:
            for response_id in (1, 2, 3, 2):
                reply = post(url, f"/action/vote/1/{response_id}", {"ebuio_u_pk": str(pk)})
                assert reply.headers[REDIRECT] == "show/1"
        except BaseException as exc:  # pragma: no cover (reported below)
            errors.append(exc)

    threads = [threading.Thread(target=voter, args=(pk,)) for pk in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert errors == []
    assert results(url, 1) == {"Red": 0, "Green": 8, "Blue": 0}


# -- create ------------------------------------------------------------------------------------


def test_create_form(url: str) -> None:
    response = get(url, "/action/create/")
    assert response.status_code == 200
    assert response.json() == {
        "errors": [],
        "form": {"title": "", "description": "", "responses": ["", "", "", ""]},
    }


@pytest.mark.parametrize(
    ("data", "error", "kept_responses"),
    [
        pytest.param(
            {"title": "Lunch?", "description": "Today", "rep[]": ["Pizza", "", " "]},
            "at least 2 responses",
            ["Pizza", "", "", ""],
            id="one-response",
        ),
        pytest.param(
            {"title": "  ", "description": "Today", "rep[]": ["Pizza", "Sushi"]},
            "title",
            ["Pizza", "Sushi", "", ""],
            id="no-title",
        ),
        pytest.param(
            {"title": "Lunch?", "description": "Today", "rep[]": ["Pizza", "pizza"]},
            "different",
            ["Pizza", "pizza", "", ""],
            id="duplicate-responses",
        ),
        pytest.param(
            {"title": "L" * 201, "description": "Today", "rep[]": ["Pizza", "Sushi"]},
            "too long",
            ["Pizza", "Sushi", "", ""],
            id="title-too-long",
        ),
        pytest.param(
            {"title": "Lunch?", "description": "Today"},
            "at least 2 responses",
            ["", "", "", ""],
            id="no-responses",
        ),
    ],
)
def test_create_refused(
    url: str,
    app: VotingService,
    data: dict[str, Any],
    error: str,
    kept_responses: list[str],
) -> None:
    response = post(url, "/action/create/", data)
    assert response.status_code == 200
    assert REDIRECT not in response.headers
    body = response.json()
    assert len(body["errors"]) == 1
    assert error in body["errors"][0]
    assert body["form"]["title"] == data["title"].strip()
    assert body["form"]["description"] == "Today"
    assert body["form"]["responses"] == kept_responses
    assert app.db.list_polls() == []


def test_create_poll(url: str, app: VotingService, polls: list[int]) -> None:
    data = {
        "title": f" {EVIL} ",
        "description": "Line one\nline two",
        "rep[]": ["Yes", "", "No\x00", "Maybe"],
    }
    response = post(url, "/action/create/", data)
    assert response.status_code == 200
    assert response.headers[REDIRECT] == "show/3"
    show = get(url, "/action/show/3").json()
    assert show["poll"] == {"id": 3, "title": EVIL, "description": "Line one\nline two"}
    assert [r["title"] for r in show["responses"]] == ["Yes", "No", "Maybe"]


def test_create_is_get_or_post(url: str) -> None:
    response = requests.put(url + "/action/create/", data={"title": "x"}, timeout=TIMEOUT)
    assert response.status_code == 405


# -- json, xml, file ---------------------------------------------------------------------------


def test_json(url: str, app: VotingService, polls: list[int]) -> None:
    app.db.vote(1, 3, "1", "ann")
    response = get(url, "/action/test_json")
    assert response.status_code == 200
    assert response.json() == {
        "polls": [
            {
                "id": 1,
                "title": "Colour?",
                "description": "Pick one",
                "total_votes": 1,
                "responses": [
                    {"id": 1, "title": "Red", "votes": 0},
                    {"id": 2, "title": "Green", "votes": 0},
                    {"id": 3, "title": "Blue", "votes": 1},
                ],
            },
            {
                "id": 2,
                "title": "Pet?",
                "description": "",
                "total_votes": 0,
                "responses": [
                    {"id": 4, "title": "Cat", "votes": 0},
                    {"id": 5, "title": "Dog", "votes": 0},
                ],
            },
        ]
    }


def test_xml_is_well_formed_and_escaped(url: str, app: VotingService) -> None:
    poll_id = app.db.create_poll(f"{EVIL} & <b>", 'say "hi"', ["<a>", "b & c"])
    app.db.vote(poll_id, 1, "1", "ann")
    response = get(url, "/action/test_xml")
    assert response.status_code == 200
    document = response.json()["xml"]
    assert document.startswith("<polls>")
    assert "<script>" not in document
    assert "&lt;script&gt;" in document
    root = ET.fromstring(document)
    assert root.tag == "polls"
    poll = root.find("poll")
    assert poll is not None
    assert poll.get("id") == str(poll_id)
    assert poll.get("total_votes") == "1"
    assert poll.findtext("title") == f"{EVIL} & <b>"
    assert poll.findtext("description") == 'say "hi"'
    assert [(r.text, r.get("votes")) for r in poll.iter("response")] == [
        ("<a>", "1"),
        ("b & c", "0"),
    ]


def test_xml_without_polls(url: str) -> None:
    assert get(url, "/action/test_xml").json() == {"xml": "<polls />"}


def test_send_file(url: str) -> None:
    response = get(url, "/action/test_send_file")
    assert response.status_code == 200
    assert response.headers["EbuIo-PlugIt-ItAFile"] == "True"
    assert response.headers["Content-Disposition"] == "attachment; filename=polls.txt"
    assert response.headers["Content-Type"].startswith("text/plain")
    assert response.content == (MEDIA_DIR / "example.txt").read_bytes()


# -- mail --------------------------------------------------------------------------------------


def test_mail_stores_the_reply(url: str, app: VotingService) -> None:
    response = post(url, "/mail", {"response_id": "poll-1", "message": "Count me in"})
    assert response.status_code == 200
    assert response.json() == {"result": "Ok"}
    post(url, "/mail", {"response_id": "poll-1", "message": "Actually, no"})
    post(url, "/mail", {"response_id": "poll-2", "message": "Other"})
    assert [r["message"] for r in app.db.replies("poll-1")] == ["Count me in", "Actually, no"]
    assert [r["message"] for r in app.db.replies("poll-2")] == ["Other"]


@pytest.mark.parametrize(
    ("data", "status", "body"),
    [
        pytest.param({"message": "hi"}, 400, None, id="no-response-id"),
        pytest.param({"response_id": "", "message": "hi"}, 200, "Error", id="empty-response-id"),
    ],
)
def test_mail_refused(
    url: str, app: VotingService, data: dict[str, str], status: int, body: str | None
) -> None:
    response = post(url, "/mail", data)
    assert response.status_code == status
    if body is not None:
        assert response.json()["result"] == body
    assert app.db.replies("") == []


# -- settings, data layer, seed ----------------------------------------------------------------


def test_settings_reach_the_service(tmp_path: Path) -> None:
    app = create_app(tmp_path / "v.sqlite3", secret="s" * 32, base_url="/polls/")
    with serve(app) as base:
        assert get(base, "/polls/meta/").status_code == 403  # unsigned request
        assert get(base, "/meta/").status_code == 403  # refused before routing: no route leaks
    moved = create_app(tmp_path / "v.sqlite3", base_url="/polls/")
    with serve(moved) as base:
        assert get(base, "/polls/meta/").status_code == 200
        assert get(base, "/meta/").status_code == 404
    refused = create_app(tmp_path / "v.sqlite3", allowed_networks=["10.0.0.0/8"])
    with serve(refused) as base:
        assert get(base, "/meta/").status_code == 404


def test_database_default_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert Path(create_app().db.path) == Path("voting.sqlite3")
    monkeypatch.setenv("PLUGIT_DATABASE", str(tmp_path / "env.sqlite3"))
    app = create_app()
    assert app.db.path == str(tmp_path / "env.sqlite3")
    app.db.create_poll("Q", "", ["a", "b"])
    assert (tmp_path / "env.sqlite3").is_file()
    assert not (tmp_path / "voting.sqlite3").exists()  # nothing is created before first use


def test_schema_wal_and_foreign_keys(tmp_path: Path) -> None:
    db = Database(tmp_path / "d.sqlite3")
    poll_id = db.create_poll("Q", "", ["a", "b"])
    conn = sqlite3.connect(db.path)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        assert {"poll", "response", "vote", "reply"} <= tables
    finally:
        conn.close()
    with db.transaction(write=True) as conn:
        assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
        with pytest.raises(sqlite3.IntegrityError):
            conn.execute(
                "INSERT INTO vote (poll_id, response_id, user_pk) VALUES (?, ?, ?)",
                (poll_id, 999, "1"),
            )
    assert db.vote(poll_id, 1, "1", "ann")
    assert db.get_poll(poll_id)["responses"][0]["votes"] == 1  # type: ignore[index]


def test_transaction_rolls_back_on_error(tmp_path: Path) -> None:
    db = Database(tmp_path / "d.sqlite3")
    with pytest.raises(RuntimeError), db.transaction(write=True) as conn:
        conn.execute("INSERT INTO poll (title) VALUES (?)", ("lost",))
        raise RuntimeError("boom")
    assert db.list_polls() == []


@pytest.mark.parametrize(
    "path", [pytest.param(":memory:", id="memory"), pytest.param("", id="empty")]
)
def test_database_needs_a_file(path: str) -> None:
    with pytest.raises(ValueError, match="file"):
        Database(path)


def test_seed(tmp_path: Path) -> None:
    path = tmp_path / "seed.sqlite3"
    assert seed(str(path)) == [1, 2]
    assert seed(Database(path)) == []  # already seeded: left alone
    polls = Database(path).list_polls()
    assert len(polls) == 2
    assert all(p["response_count"] >= 2 for p in polls)


def test_seed_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "cli.sqlite3"
    assert voting_db.main(["--seed", str(path)]) == 0
    assert "created the sample polls 1, 2" in capsys.readouterr().out
    assert voting_db.main(["--seed", str(path)]) == 0
    assert "nothing added" in capsys.readouterr().out
    assert len(Database(path).list_polls()) == 2


# -- templates, rendered as the proxy does -----------------------------------------------------


def sandbox() -> ImmutableSandboxedEnvironment:
    return ImmutableSandboxedEnvironment(
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        loader=jinja2.ChoiceLoader(
            [
                jinja2.FileSystemLoader(str(TEMPLATES_DIR)),
                jinja2.FileSystemLoader(str(SERVICE_TEMPLATES_DIR)),
            ]
        ),
    )


USERS = {
    "anonymous": {"pk": None, "username": None, "ebuio_admin": None, "ebuio_member": None},
    "logged": {"pk": 5, "username": "bob", "ebuio_admin": False, "ebuio_member": False},
    "admin": {"pk": 7, "username": "root", "ebuio_admin": True, "ebuio_member": True},
}


def render(template: str, data: dict[str, Any], user: str = "anonymous") -> tuple[str, str]:
    """(page, menu) as the proxy renders them: the action's data plus the proxy's variables."""
    context = {
        **data,
        "ebuio_baseUrl": "/voting/",
        "ebuio_u": {**USERS[user], "id": None},
        "csrf_field": CSRF_FIELD,
        "MEDIA_URL": "/voting/media/",
    }
    compiled = sandbox().get_template(template)
    page = compiled.render(context)
    menu = "".join(compiled.blocks["menubar"](compiled.new_context(context)))
    return page, menu


def user_params(user: str) -> dict[str, str]:
    return {f"ebuio_u_{k}": str(v) for k, v in USERS[user].items() if v is not None}


def assert_common(page: str, menu: str) -> None:
    assert '<link rel="stylesheet" href="/voting/media/voting.css">' in page
    assert 'href="/voting/"' in menu
    assert 'href="/voting/create/"' in menu
    assert "menu-section" in menu
    assert "menu-section" not in page  # the menu is shown by the layout, not in the content
    assert "<script>" not in page
    assert "<script>" not in menu


@pytest.fixture
def evil_poll(app: VotingService) -> int:
    """A poll whose texts are a script, with one vote for each response (bob is user 5)."""
    poll_id = app.db.create_poll(EVIL, f"about {EVIL}", [EVIL, "Fine"])
    app.db.vote(poll_id, 1, "1", "<b>ann</b>")
    app.db.vote(poll_id, 2, "5", "bob")
    return poll_id


def test_render_home(url: str, evil_poll: int) -> None:
    data = get(url, "/action/").json()
    page, menu = render("home.html", data)
    assert_common(page, menu)
    assert 'id="poll-list"' in page
    assert (
        f'<a class="stretched-link text-decoration-none" href="/voting/show/{evil_poll}">' in page
    )
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert 'class="list-group-item list-group-item-action poll-item"' in page
    assert 'id="no-polls"' not in page


def test_render_home_without_polls(url: str) -> None:
    page, menu = render("home.html", get(url, "/action/").json())
    assert_common(page, menu)
    assert 'id="poll-list"' in page
    assert 'id="no-polls"' in page


@pytest.mark.parametrize(
    ("user", "buttons", "voters"),
    [
        pytest.param("anonymous", False, False, id="anonymous"),
        pytest.param("logged", True, False, id="logged"),
        pytest.param("admin", True, True, id="admin"),
    ],
)
def test_render_show(
    url: str, app: VotingService, evil_poll: int, user: str, buttons: bool, voters: bool
) -> None:
    data = get(url, f"/action/show/{evil_poll}", **user_params(user)).json()
    page, menu = render("show.html", data, user)
    assert_common(page, menu)
    assert 'id="poll-title"' in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert 'id="results"' in page
    assert page.count('class="result-count">') == 2
    assert re.search(r'class="result-count">1<', page)
    assert "voting-w-50" in page
    vote_forms = re.findall(
        r'<form class="vote-form[^"]*" method="post" action="/voting/vote/(\d+)/(\d+)">\s*'
        r'<input type="hidden" name="csrfmiddlewaretoken" value="TOKEN">',
        page,
    )
    if buttons:
        assert vote_forms == [(str(evil_poll), "1"), (str(evil_poll), "2")]
        assert 'data-response-id="1" aria-pressed=' in page
        assert 'id="login-to-vote"' not in page
    else:
        assert vote_forms == []
        assert 'id="login-to-vote"' in page
    assert ("your-vote" in page) is (user == "logged")
    assert ('<span class="voter">&lt;b&gt;ann&lt;/b&gt;</span>' in page) is voters
    assert "<b>ann" not in page


@pytest.mark.parametrize(
    ("data", "errors"),
    [
        pytest.param(None, False, id="empty"),
        pytest.param({"title": EVIL, "description": EVIL, "rep[]": [EVIL]}, True, id="errors"),
    ],
)
def test_render_create(url: str, data: dict[str, Any] | None, errors: bool) -> None:
    response = get(url, "/action/create/") if data is None else post(url, "/action/create/", data)
    page, menu = render("create.html", response.json(), "admin")
    assert_common(page, menu)
    assert '<form id="create-form"' in page
    assert 'method="post" action="/voting/create/"' in page
    assert str(CSRF_FIELD) in page
    assert page.count('name="rep[]"') >= 4
    assert 'name="title"' in page
    assert 'name="description"' in page
    assert ('id="form-errors"' in page) is errors
    if errors:
        assert 'value="&lt;script&gt;alert(1)&lt;/script&gt;"' in page
        assert ">&lt;script&gt;alert(1)&lt;/script&gt;</textarea>" in page


def test_templates_extend_the_theme_base() -> None:
    """Each page's template extends the theme's base and fills the content and menubar blocks
    (a fragment's, placed in other pages, extends nothing)."""
    env = sandbox()
    for path in sorted(TEMPLATES_DIR.glob("*.html")):
        if path.name == "latest.html":
            assert "{% extends" not in path.read_text(encoding="utf-8")
            continue
        source = path.read_text(encoding="utf-8")
        assert source.startswith('{% extends "plugit/base.html" %}'), path.name
        template = env.get_template(path.name)
        assert {"content", "menubar"} <= set(template.blocks), path.name
        assert "|safe" not in source.replace(" ", ""), path.name


class TestVotingServiceConformance(ServiceConformance):
    """The example voting service passes the protocol conformance checks, signed."""

    @pytest.fixture(scope="class")
    @classmethod
    def plugit_service(
        cls, tmp_path_factory: pytest.TempPathFactory
    ) -> Iterator[tuple[str, str, list[str]]]:
        secret = "voting-conformance-secret-0123456789"
        database = tmp_path_factory.mktemp("conformance") / "v.sqlite3"
        seed(str(database))
        with serve(create_app(database, secret=secret)) as url:
            yield url, secret, ["", "show/1", "create/", "test_json", "test_xml", "test_send_file"]

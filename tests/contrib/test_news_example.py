"""The example news service over real HTTP, speaking the PlugIt protocol to no proxy at all; and
the voting example's fragment action."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from plugit_contrib.examples import voting
from plugit_contrib.examples.news import create_app
from plugit_contrib.examples.news.app import TEMPLATES_DIR, NewsService
from plugit_contrib.examples.news.store import SAMPLE_ITEMS, NewsStore
from plugit_core.testing import ServiceConformance, serve

TIMEOUT = 10
REDIRECT = "EbuIo-PlugIt-Redirect"
MEMBER = {"ebuio_u_pk": "7", "ebuio_u_username": "mia", "ebuio_u_ebuio_member": "True"}
FRAGMENTS = {"latest.html", "headlines.html"}


@pytest.fixture
def app() -> NewsService:
    return create_app(debug=True)


@pytest.fixture
def url(app: NewsService) -> Iterator[str]:
    with serve(app) as base:
        yield base


def get(url: str, path: str, **params: Any) -> requests.Response:
    return requests.get(url + path, params=params, timeout=TIMEOUT, allow_redirects=False)


def post(url: str, path: str, data: Any) -> requests.Response:
    return requests.post(url + path, data=data, timeout=TIMEOUT, allow_redirects=False)


def titles(url: str, action: str) -> list[str]:
    return [item["title"] for item in get(url, f"/action/{action}").json()["items"]]


def test_the_pages_and_fragments_list_the_newest_first(url: str) -> None:
    newest_first = [title for title, _summary, _body in reversed(SAMPLE_ITEMS)]
    assert titles(url, "") == newest_first
    assert titles(url, "latest") == newest_first[:3]
    assert titles(url, "headlines") == newest_first[:5]
    item = get(url, "/action/item/1").json()["item"]
    assert item["title"] == SAMPLE_ITEMS[0][0] and item["body"] == SAMPLE_ITEMS[0][2]


@pytest.mark.parametrize("path", ["/action/item/0", "/action/item/99", "/action/item/-1"])
def test_an_unknown_item_is_a_404(url: str, path: str) -> None:
    assert get(url, path).status_code == 404


@pytest.mark.parametrize("action", ["latest", "headlines"])
def test_the_fragments_declare_their_stylesheet(url: str, action: str) -> None:
    meta = get(url, f"/meta/{action}").json()
    assert meta["fragment_assets"] == {"css": ["news.css"], "js": []}
    assert meta["cache_time"] == 5
    assert (
        get(url, f"/template/{action}").content == (TEMPLATES_DIR / f"{action}.html").read_bytes()
    )


def test_posting_is_for_members_and_publishes_the_item(url: str) -> None:
    assert get(url, "/meta/post").json()["only_member_user"] is True
    form = {"title": "  Hello  ", "summary": "Short", "body": "Long text", **MEMBER}
    response = post(url, "/action/post", form)
    assert response.headers[REDIRECT] == "item/4"
    item = get(url, "/action/item/4").json()["item"]
    assert (item["title"], item["summary"], item["author"]) == ("Hello", "Short", "mia")
    assert titles(url, "latest")[0] == "Hello"
    assert titles(url, "headlines")[0] == "Hello"


@pytest.mark.parametrize(
    ("form", "error"),
    [
        pytest.param({"title": " "}, "Please give the item a title.", id="no-title"),
        pytest.param({"title": "x" * 121}, "The title is too long", id="long-title"),
        pytest.param({"title": "t", "summary": "s" * 301}, "The summary is too long", id="summary"),
        pytest.param({"title": "t", "body": "b" * 5001}, "The text is too long", id="body"),
    ],
)
def test_a_bad_post_is_the_form_again_with_its_error(
    url: str, form: dict[str, str], error: str
) -> None:
    response = post(url, "/action/post", {**form, **MEMBER})
    assert response.status_code == 200
    assert REDIRECT not in response.headers
    data = response.json()
    assert len(data["errors"]) == 1 and data["errors"][0].startswith(error)
    assert data["form"]["title"] == form["title"].strip()  # kept for the next try
    assert len(titles(url, "")) == len(SAMPLE_ITEMS)  # nothing published


def test_page_templates_extend_the_base_and_fragments_nothing() -> None:
    for path in sorted(TEMPLATES_DIR.glob("*.html")):
        source = path.read_text(encoding="utf-8")
        if path.name in FRAGMENTS:
            assert "{% extends" not in source, path.name
        else:
            assert source.startswith('{% extends "plugit/base.html" %}'), path.name
        assert "|safe" not in source.replace(" ", ""), path.name


def test_the_store_numbers_items_from_one_and_can_start_empty() -> None:
    store = NewsStore(seed=False)
    assert store.latest() == [] and store.get(1) is None
    first = store.add("a", "", "", author="x")
    assert first.id == 1 and store.get(1) == first


class TestNewsServiceConformance(ServiceConformance):
    """The example news service passes the protocol conformance checks, signed."""

    @pytest.fixture(scope="class")
    @classmethod
    def plugit_service(cls) -> Iterator[tuple[str, str, list[str]]]:
        secret = "news-conformance-secret-0123456789"
        with serve(create_app(secret=secret)) as url:
            yield url, secret, ["", "item/1", "latest", "headlines", "post"]


def test_the_voting_latest_fragment(tmp_path: Path) -> None:
    app = voting.create_app(tmp_path / "v.sqlite3", debug=True)
    with serve(app) as base:
        assert get(base, "/action/latest").json() == {"polls": []}
        ids = [app.db.create_poll(f"Poll {n}", "", ["a", "b"]) for n in range(5)]
        newest = app.db.get_poll(ids[4])
        assert newest is not None
        app.db.vote(ids[4], newest["responses"][0]["id"], "1", "ann")
        polls = get(base, "/action/latest").json()["polls"]
        assert polls == [
            {"id": ids[4], "title": "Poll 4", "total_votes": 1},
            {"id": ids[3], "title": "Poll 3", "total_votes": 0},
            {"id": ids[2], "title": "Poll 2", "total_votes": 0},
        ]
        meta = get(base, "/meta/latest").json()
        assert meta["fragment_assets"] == {"css": ["voting.css"], "js": []}
        assert re.fullmatch(r"[0-9a-f]{32}", meta["template_tag"])
        assert "{% extends" not in get(base, "/template/latest").text

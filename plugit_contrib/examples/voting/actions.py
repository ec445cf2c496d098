"""The voting service's actions (the original's "SimplePolls" sample, PROTOCOL.md section 8).

* Anyone sees the polls (``/``) and a poll's results (``/show/<id>``).
* Logged-in users vote (``/vote/<poll>/<response>``, POST); a second vote changes the first.
* Members create polls (``/create/``).
* Administrators also see who voted for what.
* ``/latest``: the newest polls, a fragment other pages place (docs/fragments.md).
* ``/test_json``, ``/test_xml`` and ``/test_send_file`` show the other kinds of replies.

Who the user is comes only from ``request.user_info``: the ``ebuio_u_*`` parameters the proxy
adds (and signs, when the service has a ``secret``).  The actions find their
:class:`~.db.Database` in the WSGI environ, where the service built by :func:`.app.create_app`
puts it.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from plugit_core.service import (
    PlugItRedirect,
    PlugItSendFile,
    ServiceRequest,
    abort,
    action,
    cache,
    fragment_assets,
    json_only,
    only_logged_user,
    only_member_user,
    user_info,
    xml_only,
)

from .db import Database

__all__ = [
    "DB_ENVIRON_KEY",
    "create",
    "home",
    "latest",
    "mail_callback",
    "show",
    "test_json",
    "test_send_file",
    "test_xml",
    "vote",
]

DB_ENVIRON_KEY = "plugit_contrib.voting.db"
EXAMPLE_FILE = Path(__file__).resolve().parent / "media" / "example.txt"

MAX_TITLE = 200
MAX_DESCRIPTION = 2000
MAX_RESPONSE = 200
MAX_RESPONSES = 20
MIN_RESPONSES = 2
FORM_RESPONSE_FIELDS = 4  # the create form always offers at least this many inputs
LATEST_POLLS = 3

# Characters XML 1.0 cannot carry (C0 controls but tab, LF and CR; lone surrogates; U+FFFE/F).
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def get_db(request: ServiceRequest) -> Database:
    """The service's database (see :class:`.app.VotingService`)."""
    db = request.environ.get(DB_ENVIRON_KEY)
    if db is None:
        raise RuntimeError("no voting database: serve the actions with voting.app.create_app()")
    return db


def _clean(text: str | None) -> str:
    """Form text without surrounding blanks or characters that XML cannot hold."""
    return _NOT_XML.sub("", text or "").strip()


def _user(request: ServiceRequest) -> tuple[str | None, str]:
    """(pk, username) of the current user as sent by the proxy; pk None when anonymous."""
    info = request.user_info
    pk = info.get("pk")
    if isinstance(pk, list):  # a property is a list only when sent several times: not a pk
        pk = None
    username = info.get("username")
    return (pk or None), (username if isinstance(username, str) else "")


def _is_true(value: Any) -> bool:
    """A boolean user property: the proxy sends ``True`` / ``False`` as text."""
    return isinstance(value, str) and value.strip().lower() in ("true", "1", "yes")


def _percent(votes: int, total: int) -> int:
    return round(100 * votes / total) if total else 0


@action("/", template="home.html")
@cache(time=5)
def home(request: ServiceRequest) -> dict[str, Any]:
    """The list of polls.  The page holds nothing user-specific, so its cache is shared."""
    polls = [
        {
            "id": poll["id"],
            "title": poll["title"],
            "description": poll["description"],
            "total_votes": poll["total_votes"],
            "response_count": poll["response_count"],
        }
        for poll in get_db(request).list_polls()
    ]
    return {"polls": polls}


@action("/latest", template="latest.html")
@cache(time=5)
@fragment_assets(css=["voting.css"])
def latest(request: ServiceRequest) -> dict[str, Any]:
    """Fragment: the newest polls with their number of votes, for other pages to place (a site
    page, a sidebar); its template extends no layout."""
    polls = get_db(request).list_polls()[-LATEST_POLLS:]
    return {
        "polls": [
            {"id": poll["id"], "title": poll["title"], "total_votes": poll["total_votes"]}
            for poll in reversed(polls)
        ]
    }


@action("/show/<int:pollId>", template="show.html")
@user_info(["ebuio_admin", "username", "pk"])
def show(request: ServiceRequest, pollId: int) -> dict[str, Any]:  # noqa: N803 (route name)
    """A poll and its results; administrators also get who voted for what."""
    poll = get_db(request).get_poll(pollId)
    if poll is None:
        abort(404)
    pk, _username = _user(request)
    is_admin = _is_true(request.user_info.get("ebuio_admin"))
    total = sum(r["votes"] for r in poll["responses"])
    voted_for = None
    voters: dict[int, list[str]] = {r["id"]: [] for r in poll["responses"]}
    for vote_row in poll["votes"]:
        if pk is not None and vote_row["user_pk"] == pk:
            voted_for = vote_row["response_id"]
        voters.setdefault(vote_row["response_id"], []).append(
            vote_row["username"] or f"#{vote_row['user_pk']}"
        )
    responses = []
    for response in poll["responses"]:
        item = {
            "id": response["id"],
            "title": response["title"],
            "votes": response["votes"],
            "percent": _percent(response["votes"], total),
        }
        if is_admin:
            item["voters"] = voters[response["id"]]
        responses.append(item)
    return {
        "poll": {"id": poll["id"], "title": poll["title"], "description": poll["description"]},
        "responses": responses,
        "total_votes": total,
        "voted_for": voted_for,
        "can_vote": pk is not None,
        "is_admin": is_admin,
    }


@action("/vote/<int:pollId>/<int:responseId>", methods=["POST"])
@only_logged_user()
@user_info(["pk", "username"])
def vote(request: ServiceRequest, pollId: int, responseId: int) -> PlugItRedirect:  # noqa: N803
    """Record the user's vote (replacing an earlier one in the same poll), back to the poll."""
    pk, username = _user(request)
    if pk is None:
        abort(403)  # the proxy only sends logged-in users here; never trust anything else
    if not get_db(request).vote(pollId, responseId, pk, username):
        abort(404)
    return PlugItRedirect(f"show/{pollId}")


def _create_form(
    title: str = "", description: str = "", responses: list[str] | None = None
) -> dict[str, Any]:
    answers = list(responses or [])
    padding = max(FORM_RESPONSE_FIELDS - len(answers), 1 if len(answers) < MAX_RESPONSES else 0)
    return {
        "title": title,
        "description": description,
        "responses": answers + [""] * padding,
    }


@action("/create/", template="create.html", methods=["GET", "POST"])
@only_member_user()
def create(request: ServiceRequest) -> dict[str, Any] | PlugItRedirect:
    """The form (GET); the new poll (POST), or the form again with its errors and values."""
    if request.method != "POST":
        return {"errors": [], "form": _create_form()}
    title = _clean(request.form.get("title"))
    description = _clean(request.form.get("description"))
    responses = [r for r in (_clean(v) for v in request.form.getlist("rep[]")) if r]
    errors = []
    if not title:
        errors.append("Please give the poll a title.")
    elif len(title) > MAX_TITLE:
        errors.append(f"The title is too long (at most {MAX_TITLE} characters).")
    if len(description) > MAX_DESCRIPTION:
        errors.append(f"The description is too long (at most {MAX_DESCRIPTION} characters).")
    if len(responses) < MIN_RESPONSES:
        errors.append(f"Please give at least {MIN_RESPONSES} responses.")
    elif len(responses) > MAX_RESPONSES:
        errors.append(f"A poll has at most {MAX_RESPONSES} responses.")
    if any(len(r) > MAX_RESPONSE for r in responses):
        errors.append(f"A response is too long (at most {MAX_RESPONSE} characters).")
    if len({r.casefold() for r in responses}) != len(responses):
        errors.append("Each response must be different.")
    if errors:
        return {"errors": errors, "form": _create_form(title, description, responses)}
    poll_id = get_db(request).create_poll(title, description, responses)
    return PlugItRedirect(f"show/{poll_id}")


@action("/test_json")
@json_only()
def test_json(request: ServiceRequest) -> dict[str, Any]:
    """Every poll with its results, as JSON for the browser."""
    return {"polls": get_db(request).summary()}


@action("/test_xml")
@xml_only()
def test_xml(request: ServiceRequest) -> dict[str, str]:
    """Every poll with its results, as an XML document."""
    root = ET.Element("polls")
    for poll in get_db(request).summary():
        element = ET.SubElement(
            root, "poll", id=str(poll["id"]), total_votes=str(poll["total_votes"])
        )
        ET.SubElement(element, "title").text = _NOT_XML.sub("", poll["title"])
        ET.SubElement(element, "description").text = _NOT_XML.sub("", poll["description"])
        responses = ET.SubElement(element, "responses")
        for response in poll["responses"]:
            item = ET.SubElement(
                responses, "response", id=str(response["id"]), votes=str(response["votes"])
            )
            item.text = _NOT_XML.sub("", response["title"])
    return {"xml": ET.tostring(root, encoding="unicode")}


@action("/test_send_file")
def test_send_file(request: ServiceRequest) -> PlugItSendFile:
    """A file download, through the proxy, as an attachment."""
    return PlugItSendFile(
        str(EXAMPLE_FILE), "text/plain", as_attachment=True, attachment_filename="polls.txt"
    )


def mail_callback(request: ServiceRequest) -> dict[str, str]:
    """Keep a reply to one of our mails (PROTOCOL.md 2.5); the proxy then deletes the mail."""
    response_id = request.form.get("response_id", "")
    message = request.form.get("message", "")
    get_db(request).add_reply(response_id, message)
    return {"result": "Ok"}

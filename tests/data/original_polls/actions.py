# A polls service written as services for the original PlugIt were: decorated actions in
# actions.py, settings in config.py, Django-syntax templates in templates/, files in media/.
# Ported by changing its imports only (plugit.utils -> plugit_core.service).
#
# Served with: plugit service actions.py --port 5000

import csv
import os

import config
import models

from plugit_core.service import (
    PlugItRedirect,
    PlugItSendFile,
    abort,
    action,
    json_only,
    only_logged_user,
    only_member_user,
    user_info,
)

models.init_db()


def _current_user(request):
    """(pk, username) of the user the proxy sent, as the original read them: from the query
    string on GET, from the form on POST."""
    values = request.form if request.method == "POST" else request.args
    return values.get("ebuio_u_pk"), values.get("ebuio_u_username", "")


def _results(poll):
    total = poll.total
    return {
        "id": poll.id,
        "total": total,
        "responses": [
            {
                "id": r["id"],
                "title": r["title"],
                "votes": r["votes"],
                "percent": round(100.0 * r["votes"] / total) if total else 0,
            }
            for r in poll.responses
        ],
    }


@action(route="/menu", template="menu.html")
def menu(request):
    return {}


@action(route="/", template="home.html")
def home(request):
    polls = []
    for poll in models.Poll.all():
        polls.append(
            {"id": poll.id, "title": poll.title, "description": poll.description,
             "nbVotes": poll.votes}
        )  # fmt: skip
    return {"polls": polls}


@action(route="/show/<int:pollId>", template="show.html")
@user_info(props=["pk", "username", "ebuio_admin"])
def show(request, pollId):
    poll = models.Poll.get(pollId)
    if poll is None:
        abort(404)

    pk = _current_user(request)[0]
    voted_for = None
    for v in poll.voters:
        if pk and v["user_pk"] == pk:
            voted_for = v["response_id"]

    data = _results(poll)
    data["poll"] = {"id": poll.id, "title": poll.title, "description": poll.description}
    data["votedFor"] = voted_for
    if request.args.get("ebuio_u_ebuio_admin") == "True":
        data["voters"] = [v["username"] or v["user_pk"] for v in poll.voters]
    return data


@action(route="/vote/<int:pollId>/<int:responseId>", methods=["POST"])
@only_logged_user()
@user_info(props=["pk", "username"])
def vote(request, pollId, responseId):
    pk, username = _current_user(request)
    if not pk:
        abort(403)
    if not models.vote(pollId, responseId, pk, username):
        abort(404)
    return PlugItRedirect("show/" + str(pollId))


@action(route="/results/<int:pollId>")
@json_only()
def results(request, pollId):
    poll = models.Poll.get(pollId)
    if poll is None:
        abort(404)
    return _results(poll)


@action(route="/ajax/vote/<int:pollId>", methods=["POST"])
@only_logged_user()
@user_info(props=["pk", "username"])
@json_only()
def ajax_vote(request, pollId):
    pk, username = _current_user(request)
    try:
        response_id = int(request.form.get("response", ""))
    except ValueError:
        abort(400)
    if not pk or not models.vote(pollId, response_id, pk, username):
        abort(404)
    data = _results(models.Poll.get(pollId))
    data["votedFor"] = response_id
    return data


@action(route="/create/", template="create.html", methods=["GET", "POST"])
@only_member_user()
@user_info(props=["pk", "username"])
def create(request):
    if request.method != "POST":
        return {"responses": ["", ""]}

    title = request.form.get("title", "").strip()
    description = request.form.get("description", "").strip()
    responses = [r.strip() for r in request.form.getlist("rep[]") if r.strip()]

    errors = []
    if not title:
        errors.append("The poll needs a title.")
    if len(responses) < 2:
        errors.append("Give at least two responses.")
    if len(responses) > config.MAX_RESPONSES:
        errors.append("At most " + str(config.MAX_RESPONSES) + " responses.")
    if errors:
        return {
            "errors": errors,
            "title": title,
            "description": description,
            "responses": responses + [""] * (2 - len(responses)),
        }

    username = _current_user(request)[1]
    poll_id = models.Poll.create(title, description, responses, username)
    return PlugItRedirect("show/" + str(poll_id))


@action(route="/export/<int:pollId>")
@only_logged_user()
def export(request, pollId):
    poll = models.Poll.get(pollId)
    if poll is None:
        abort(404)

    if not os.path.isdir(config.EXPORT_FOLDER):
        os.makedirs(config.EXPORT_FOLDER)
    filename = os.path.join(config.EXPORT_FOLDER, "poll-" + str(poll.id) + ".csv")
    with open(filename, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["response", "votes"])
        for r in poll.responses:
            writer.writerow([r["title"], r["votes"]])

    return PlugItSendFile(filename, "text/csv", True, "poll-" + str(poll.id) + ".csv")

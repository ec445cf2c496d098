"""A PlugIt service exercising every feature the proxy tests need; it counts its calls."""

from __future__ import annotations

import collections
import json
import threading
import time
from pathlib import Path

from werkzeug.wrappers import Response

from plugit_core.service import (
    PlugItRedirect,
    PlugItSendFile,
    PlugItService,
    PlugItSetSession,
    abort,
    action,
    address_in_networks,
    cache,
    crossdomain,
    json_only,
    no_template,
    only_admin_user,
    only_logged_user,
    only_member_user,
    only_orga_admin_user,
    only_orga_member_user,
    public,
    send_etag,
    user_info,
    xml_only,
)

HERE = Path(__file__).parent
calls: collections.Counter[str] = collections.Counter()
_lock = threading.Lock()


def count(name: str) -> int:
    with _lock:
        calls[name] += 1
        return calls[name]


def echo(request):
    """What the service received, for the tests to look at."""
    return {
        "method": request.method,
        "args": [[k, v] for k, v in request.args.items(multi=True)],
        "form": [[k, v] for k, v in request.form.items(multi=True)],
        "files": [[k, f.filename, f.read().decode()] for k, f in request.files.items(multi=True)],
        "headers": {k: v for k, v in request.headers.items() if k.lower().startswith("x-plugit")},
        "cookie": request.headers.get("Cookie"),
        "traceparent": request.headers.get("traceparent"),
        "body": request.get_data(as_text=True) if not request.form else "",
    }


@action("/", template="page.html")
def home(request):
    return {"title": "Home <b>", "count": count("home")}


@action("/cached", template="page.html")
@cache(time=60)
def cached(request):
    return {"title": "Cached", "count": count("cached")}


@action("/cached_user", template="page.html")
@cache(time=60)
@only_logged_user()
def cached_user(request):
    return {"title": "Per user", "count": count("cached_user")}


@action("/logged", template="page.html")
@only_logged_user()
def logged(request):
    return {"title": "Logged"}


@action("/member", template="page.html")
@only_member_user()
def member(request):
    return {"title": "Member"}


@action("/admin", template="page.html")
@only_admin_user()
def admin(request):
    return {"title": "Admin"}


@action("/orga_member", template="page.html")
@only_orga_member_user()
def orga_member(request):
    return {"title": "Orga member"}


@action("/orga_admin", template="page.html")
@only_orga_admin_user()
def orga_admin(request):
    return {"title": "Orga admin"}


@action("/local_only", template="page.html")
@address_in_networks(["10.0.0.0/8"])
def local_only(request):
    return {"title": "Local"}


@action("/public_page", template="page.html")
@public()
def public_page(request):
    return {"title": "Public"}


@action("/echo", methods=["GET", "POST", "PUT", "DELETE"])
@json_only()
@user_info(["username", "pk", "ebuio_admin"])
def echo_action(request):
    return echo(request)


@action("/whoami_json", methods=["POST"])
@json_only()
@user_info(["username", "pk"])
def whoami_json(request):
    """A POST with a JSON body: the proxy's user values then come in the query."""
    return {"user": request.user_info, "body": request.get_json(silent=True)}


@action("/slow")
@json_only()
def slow(request):
    time.sleep(float(request.args.get("s", "3")))
    return {"slept": True}


@action("/xml")
@xml_only()
def xml(request):
    return {"xml": "<r><v>1 &lt; 2</v></r>"}


@action("/plain", template="plain.html")
@no_template()
def plain(request):
    return {"title": "Plain"}


@action("/hostile", template="hostile.html")
def hostile(request):
    return {}


@action("/include", template="include.html")
def include(request):
    return {"title": "Included"}


@action("/django", template="django.html")
def django_page(request):
    return {"items": ["a", "b"]}


@action("/redirect")
def redirect(request):
    return PlugItRedirect(request.args.get("to", "cached"), no_prefix=request.args.get("np") == "1")


@action("/file")
def file(request):
    return PlugItSendFile(
        HERE / "media" / "site.css", "text/css", as_attachment=True, attachment_filename="s.css"
    )


@action("/set_session")
@json_only()
def set_session(request):
    return PlugItSetSession({"ok": True}, {"color": request.args.get("v", "blue")})


@action("/status/<int:code>")
@json_only()
@send_etag()
def status(request, code):
    if code == 200:
        return {"_plugit_etag": "v1", "fine": True}
    if code == 429:
        return Response(b"", status=429, headers={"Retry-After": "7"})
    abort(code)


@action("/garbage", template="page.html")
def garbage(request):
    return Response(b"<html>not json", mimetype="application/json")


@action("/list_data", template="page.html")
def list_data(request):
    return [1, 2, 3]


@action("/cors")
@json_only()
@crossdomain(origin="https://app.example")
def cors(request):
    return {"cors": True}


@action("/bug", template="page.html")
def bug(request):
    raise RuntimeError("boom")


@action("/bad_template", template="bad.html")
def bad_template(request):
    return {}


def mail_callback(request):
    return {"result": "Ok"}


def make_app(**settings) -> PlugItService:
    return PlugItService(
        [v for v in globals().values() if callable(v) and hasattr(v, "__plugit__")],
        root=str(HERE),
        **settings,
    )


def body_json(text: str) -> dict:
    return json.loads(text)

"""The news service's actions.

* Anyone reads the news (``/``) and an item (``/item/<itemId>``).
* Members post an item (``/post``).
* ``/latest`` and ``/headlines`` are meant as fragments: other pages place them (a site page, a
  theme's sidebar, another service's template), so their templates extend no layout.

The actions find their :class:`~.store.NewsStore` in the WSGI environ, where the service built by
:func:`.app.create_app` puts it.
"""

from __future__ import annotations

from typing import Any

from plugit_core.service import (
    PlugItRedirect,
    ServiceRequest,
    abort,
    action,
    cache,
    fragment_assets,
    only_member_user,
    user_info,
)

from .store import NewsStore

__all__ = ["STORE_ENVIRON_KEY", "headlines", "home", "item", "latest", "post"]

STORE_ENVIRON_KEY = "plugit_contrib.news.store"
MAX_TITLE = 120
MAX_SUMMARY = 300
MAX_BODY = 5000
LATEST = 3
HEADLINES = 5


def get_store(request: ServiceRequest) -> NewsStore:
    """The service's items (see :class:`.app.NewsService`)."""
    store = request.environ.get(STORE_ENVIRON_KEY)
    if store is None:
        raise RuntimeError("no news store: serve the actions with news.app.create_app()")
    return store


@action("/", template="home.html")
@cache(time=5)
def home(request: ServiceRequest) -> dict[str, Any]:
    """Every item, newest first."""
    return {"items": [i.as_data() for i in get_store(request).latest()]}


@action("/item/<int:itemId>", template="item.html")
@cache(time=5)
def item(request: ServiceRequest, itemId: int) -> dict[str, Any]:  # noqa: N803 (route name)
    """One item."""
    found = get_store(request).get(itemId)
    if found is None:
        abort(404)
    return {"item": found.as_data()}


@action("/latest", template="latest.html")
@cache(time=5)
@fragment_assets(css=["news.css"])
def latest(request: ServiceRequest) -> dict[str, Any]:
    """Fragment: the newest items with their summaries (a dashboard's box)."""
    return {"items": [i.as_data() for i in get_store(request).latest(LATEST)]}


@action("/headlines", template="headlines.html")
@cache(time=5)
@fragment_assets(css=["news.css"])
def headlines(request: ServiceRequest) -> dict[str, Any]:
    """Fragment: the newest titles (a sidebar every page shows)."""
    return {"items": [i.as_data() for i in get_store(request).latest(HEADLINES)]}


@action("/post", template="post.html", methods=["GET", "POST"])
@only_member_user()
@user_info(["username"])
def post(request: ServiceRequest) -> dict[str, Any] | PlugItRedirect:
    """The form (GET); the new item (POST), or the form again with its errors and values."""
    if request.method != "POST":
        return {"errors": [], "form": {"title": "", "summary": "", "body": ""}}
    form = {key: (request.form.get(key) or "").strip() for key in ("title", "summary", "body")}
    errors = []
    if not form["title"]:
        errors.append("Please give the item a title.")
    elif len(form["title"]) > MAX_TITLE:
        errors.append(f"The title is too long (at most {MAX_TITLE} characters).")
    if len(form["summary"]) > MAX_SUMMARY:
        errors.append(f"The summary is too long (at most {MAX_SUMMARY} characters).")
    if len(form["body"]) > MAX_BODY:
        errors.append(f"The text is too long (at most {MAX_BODY} characters).")
    if errors:
        return {"errors": errors, "form": form}
    username = request.user_info.get("username")
    author = username if isinstance(username, str) and username else "a member"
    created = get_store(request).add(form["title"], form["summary"], form["body"], author=author)
    return PlugItRedirect(f"item/{created.id}")

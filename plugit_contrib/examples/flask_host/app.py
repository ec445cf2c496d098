"""A Flask site with its own pages and login, hosting a PlugIt service at ``/polls/``.

The site answers ``/`` (home), ``/login`` and ``/logout`` itself; its login stores ``user_id``
in Flask's session.  :class:`~plugit_core.proxy.app.PlugItMiddleware` wraps ``app.wsgi_app``: it
answers ``/polls/...`` (the mounted service, rendered in the PlugIt layout) and ``/_plugit/...``
(the proxy's own files), and asks :func:`load_user`, through
:func:`~plugit_contrib.flask.plugit_identity_from_flask`, who the visitor is.  Everything else is
Flask's, with client ``X-Plugit-*`` headers removed.

Run it::

    python -m plugit_contrib.examples.flask_host.app [--port 8000]

This starts the example voting service on a free loopback port (its data in a temporary
folder) and serves the site at http://127.0.0.1:8000/.  Log in as ``alice`` / ``alice-password``
(member of the polls) or ``bob`` / ``bob-password`` (logged in, no member).  With the
environment variable ``PLUGIT_CONFIG`` naming a PlugIt TOML file, that file is used instead and
no service is started (it must mount a service at ``/polls/`` for the home page's link).

In your own code, :func:`create_app` takes the PlugIt configuration (a mapping, a TOML path or a
:class:`~plugit_core.config.ProxyConfig`) and returns the Flask app; the middleware is
``app.extensions["plugit"]``.
"""

from __future__ import annotations

import argparse
import hmac
import os
import secrets
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import flask
from flask.sessions import SessionMixin
from werkzeug.security import check_password_hash, generate_password_hash

from plugit_contrib.flask import plugit_identity_from_flask, plugit_logout_fields_from_flask
from plugit_core.config import ProxyConfig
from plugit_core.proxy.app import PlugItMiddleware
from plugit_core.users import PlugItUser

__all__ = ["USERS", "DemoUser", "create_app", "load_user", "main"]

SERVICE_NAME = "polls"
MOUNT = "/polls/"


@dataclass(frozen=True)
class DemoUser:
    """One account of the example site (a real site keeps them in its database)."""

    pk: int
    username: str
    password_hash: str
    first_name: str
    last_name: str
    email: str
    member: bool = False  # member of the polls service
    admin: bool = False  # administrator of the polls service


def _account(pk: int, username: str, first: str, last: str, **rights: bool) -> DemoUser:
    password = f"{username}-password"  # the demo's published passwords
    email = f"{username}@example.org"
    return DemoUser(pk, username, generate_password_hash(password), first, last, email, **rights)


USERS: dict[int, DemoUser] = {
    user.pk: user
    for user in (
        _account(1, "alice", "Alice", "Martin", member=True, admin=True),
        _account(2, "bob", "Bob", "Keller"),
    )
}


def load_user(session: SessionMixin) -> PlugItUser | None:
    """The PlugIt user of a Flask session (None for anonymous visitors)."""
    user = USERS.get(session.get("user_id"))  # type: ignore[arg-type]
    if user is None:
        return None
    return PlugItUser(
        pk=user.pk,
        username=user.username,
        first_name=user.first_name,
        last_name=user.last_name,
        email=user.email,
        is_authenticated=True,
        member_of=frozenset({SERVICE_NAME}) if user.member else frozenset(),
        admin_of=frozenset({SERVICE_NAME}) if user.admin else frozenset(),
        backend="flask_host",
    )


_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{{ title }}</title>
<link rel="stylesheet" href="{{ request.script_root }}/_plugit/static/plugit.css"></head>
<body><main>
<h1>{{ title }}</h1>
{% if error %}<p id="error" role="alert">{{ error }}</p>{% endif %}
{% if user %}
<p id="hello">Hello, {{ user.first_name }} ({{ user.username }}).</p>
<form method="post" action="{{ url_for('logout') }}">
<input type="hidden" name="csrf_token" value="{{ csrf }}">
<button type="submit">Log out</button></form>
{% elif login_form %}
<form method="post" action="{{ url_for('login') }}">
<input type="hidden" name="csrf_token" value="{{ csrf }}">
<input type="hidden" name="next" value="{{ next }}">
<label>User name <input name="username" autocomplete="username" required></label>
<label>Password <input name="password" type="password" autocomplete="current-password" required>
</label>
<button type="submit">Log in</button></form>
{% else %}<p id="hello">Hello, visitor. <a href="{{ url_for('login') }}">Log in</a></p>{% endif %}
<p><a id="polls-link" href="{{ request.script_root }}{{ mount }}">Polls</a> (a PlugIt service)</p>
</main></body></html>
"""


def _csrf_token() -> str:
    token = flask.session.get("csrf")
    if not isinstance(token, str):
        token = secrets.token_urlsafe(32)
        flask.session["csrf"] = token
    return token


def _check_csrf() -> None:
    expected = flask.session.get("csrf")
    sent = flask.request.form.get("csrf_token", "")
    if not isinstance(expected, str) or not hmac.compare_digest(sent.encode(), expected.encode()):
        flask.abort(400, "The form has expired: reload the page and try again.")


def _logout_fields(session: SessionMixin) -> dict[str, str] | None:
    """The hidden fields of the PlugIt layout's logout form: the session's CSRF token."""
    token = session.get("csrf")
    return {"csrf_token": token} if isinstance(token, str) else None


def _local_path(target: str | None) -> str:
    """``target`` when it is a path of this site, else the home page (no open redirects)."""
    if (
        not target
        or not target.startswith("/")
        or target.startswith(("//", "/\\"))
        or any(c in target for c in "\r\n\\")
    ):
        return flask.url_for("home")
    return target


def _render(title: str, status: int = 200, **context: Any) -> tuple[str, int]:
    user_id = flask.session.get("user_id")
    context.setdefault("user", USERS.get(user_id) if isinstance(user_id, int) else None)
    html = flask.render_template_string(
        _PAGE, title=title, csrf=_csrf_token(), mount=MOUNT, **context
    )
    return html, status


def create_app(
    plugit_config: ProxyConfig | Mapping[str, Any] | str | os.PathLike[str],
    *,
    secret_key: str | None = None,
    **proxy_options: Any,
) -> flask.Flask:
    """The example site, with the PlugIt proxy configured by ``plugit_config`` inside.

    ``secret_key`` signs Flask's session cookie (default: a random key, so sessions end when
    the process does).  ``proxy_options`` go to :class:`PlugItMiddleware` (``plugins``,
    ``check_services``, ...).
    """
    app = flask.Flask(__name__)
    app.secret_key = secret_key or secrets.token_urlsafe(48)
    app.config.update(SESSION_COOKIE_HTTPONLY=True, SESSION_COOKIE_SAMESITE="Lax")

    @app.get("/")
    def home() -> tuple[str, int]:
        return _render("Flask host")

    @app.route("/login", methods=["GET", "POST"])
    def login() -> Any:
        if flask.request.method == "GET":
            next_path = _local_path(flask.request.args.get("next"))
            return _render("Log in", login_form=True, next=next_path)
        _check_csrf()
        username = flask.request.form.get("username", "")
        password = flask.request.form.get("password", "")
        next_path = _local_path(flask.request.form.get("next"))
        user = next((u for u in USERS.values() if u.username == username), None)
        if user is None or not check_password_hash(user.password_hash, password):
            return _render(
                "Log in", 401, login_form=True, next=next_path, error="Wrong user name or password."
            )
        flask.session.clear()  # a new session for the logged-in user...
        flask.session["user_id"] = user.pk
        _csrf_token()  # ...with a new CSRF token, there for the PlugIt layout's logout form
        return flask.redirect(next_path, code=303)

    @app.post("/logout")
    def logout() -> Any:
        _check_csrf()
        flask.session.clear()
        return flask.redirect(flask.url_for("home"), code=303)

    identify = plugit_identity_from_flask(app, load_user)
    config: ProxyConfig | Mapping[str, Any] | str | Path
    if isinstance(plugit_config, Mapping):
        config = dict(plugit_config)
    elif isinstance(plugit_config, os.PathLike):
        config = Path(plugit_config)  # what the proxy reads as a file
    else:
        config = plugit_config
    # The layout's "Log in" leads to the site's login; its "Log out" button posts to the site's
    # logout with the site's own CSRF token (the proxy's would be refused).
    proxy_options.setdefault("login_url", "/login")
    proxy_options.setdefault("logout_url", "/logout")
    proxy_options.setdefault("logout_fields", plugit_logout_fields_from_flask(app, _logout_fields))
    middleware = PlugItMiddleware(app.wsgi_app, config, identify=identify, **proxy_options)
    app.extensions["plugit"] = middleware
    app.wsgi_app = middleware  # type: ignore[method-assign]
    return app


def _voting_service(folder: Path, secret: str) -> Any:
    from plugit_contrib.examples.voting import db
    from plugit_contrib.examples.voting.app import create_app as create_voting

    database = folder / "voting.sqlite3"
    db.seed(str(database))
    return create_voting(database, secret=secret)


def main(argv: Sequence[str] | None = None) -> int:
    """Serve the example (see the module's documentation)."""
    from werkzeug.serving import run_simple

    from plugit_core.testing import serve

    parser = argparse.ArgumentParser(description="A Flask site hosting a PlugIt service.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args(argv)
    config_file = os.environ.get("PLUGIT_CONFIG")
    if config_file:
        run_simple(args.host, args.port, create_app(config_file), threaded=True)
        return 0
    secret = secrets.token_urlsafe(32)
    folder = Path(tempfile.mkdtemp(prefix="plugit-flask-host-"))
    with serve(_voting_service(folder, secret)) as service_url:
        config = {
            "secret_key": secrets.token_urlsafe(48),
            "site_name": "Flask host example",
            "session_cookie": {"secure": False},  # plain HTTP on this machine
            "services": [
                {
                    "name": SERVICE_NAME,
                    "title": "Polls",
                    "url": service_url,
                    "mount": MOUNT,
                    "secret": secret,
                }
            ],
        }
        app = create_app(config)
        print(f"\n  Flask host: http://{args.host}:{args.port}/   (poll data in {folder})\n")
        run_simple(args.host, args.port, app, threaded=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

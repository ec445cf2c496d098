"""Flask helpers for PlugIt, on both sides of the protocol.

**A Flask site hosting PlugIt services** (the proxy runs inside the site): let the site's own
login decide who the PlugIt user is::

    from plugit_contrib.flask import plugit_identity_from_flask
    from plugit_core.proxy.app import PlugItMiddleware
    from plugit_core.users import PlugItUser

    def load_user(session):
        user = USERS.get(session.get("user_id"))
        return None if user is None else PlugItUser(pk=user.id, username=user.name,
                                                    is_authenticated=True)

    app.wsgi_app = PlugItMiddleware(
        app.wsgi_app, "plugit.toml", identify=plugit_identity_from_flask(app, load_user)
    )

**A PlugIt service written with Flask**: the actions are the usual decorated functions (they
receive the request as their first argument), and may also use ``flask.request``, ``flask.g``,
``flask.current_app`` and ``flask.abort`` as in the original library::

    from plugit_contrib.flask import make_flask_service

    app = make_flask_service(my_actions, secret="...", templates="templates")

    @app.get("/health")             # a plain Flask view beside the actions
    def health():
        return {"ok": True}

See :class:`FlaskService` for what runs where.
"""

from __future__ import annotations

import sys
import types
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import flask
from flask.ctx import RequestContext
from flask.sessions import SessionMixin
from werkzeug.exceptions import NotFound

from plugit_core.service import PlugItService, ServiceRequest
from plugit_core.users import PlugItUser

if TYPE_CHECKING:

    class FlaskServiceRequest(ServiceRequest, flask.Request):
        """What :func:`_request_class` makes (there, from the two apps' own request classes)."""


__all__ = [
    "FlaskService",
    "make_flask_service",
    "plugit_identity_from_flask",
    "plugit_logout_fields_from_flask",
]

Identify = Callable[[dict[str, Any]], "PlugItUser | None"]
LogoutFields = Callable[[dict[str, Any]], "Mapping[str, str] | None"]


# -- host side ------------------------------------------------------------------------------------


def plugit_identity_from_flask(
    flask_app: flask.Flask, load_user: Callable[[SessionMixin], PlugItUser | None]
) -> Identify:
    """An ``identify(environ)`` for :class:`~plugit_core.proxy.app.PlugItMiddleware`.

    For each proxied request, the Flask session is opened from the request's cookies with the
    app's own ``session_interface`` (inside an app context, so ``current_app`` and ``g`` work),
    and ``load_user(session)`` maps it to a :class:`~plugit_core.users.PlugItUser`, or None for
    an anonymous visitor.  The session is only read, never saved.
    """

    def identify(environ: dict[str, Any]) -> PlugItUser | None:
        return _with_session(flask_app, environ, load_user)

    return identify


def plugit_logout_fields_from_flask(
    flask_app: flask.Flask, fields: Callable[[SessionMixin], Mapping[str, str] | None]
) -> LogoutFields:
    """A ``logout_fields(environ)`` for :class:`~plugit_core.proxy.app.PlugItMiddleware`: the
    hidden fields the layout's logout form posts to the site's own logout view.

    ``fields(session)`` gets the Flask session (opened as :func:`plugit_identity_from_flask`
    does, read-only) and returns them, typically the site's CSRF token for the visitor::

        logout_fields=plugit_logout_fields_from_flask(
            app, lambda session: {"csrf_token": session.get("csrf", "")}
        )

    The session is never saved: the token must already be in it (create it at login).
    """

    def logout_fields(environ: dict[str, Any]) -> Mapping[str, str] | None:
        return _with_session(flask_app, environ, fields)

    return logout_fields


def _with_session(
    flask_app: flask.Flask, environ: dict[str, Any], use: Callable[[SessionMixin], Any]
) -> Any:
    """``use(session)`` with the request's Flask session (None when Flask has no session)."""
    # populate_request=False: leave the proxy's own request object in the environ.
    request = flask_app.request_class(environ, populate_request=False)
    with flask_app.app_context():
        session = flask_app.session_interface.open_session(flask_app, request)
        if session is None:  # no secret_key: Flask has no session at all
            return None
        return use(session)


# -- service side ---------------------------------------------------------------------------------


class FlaskService:
    """The WSGI callable of a Flask app that serves the PlugIt protocol first.

    Each request is given to ``service`` (a :class:`~plugit_core.service.PlugItService`) with a
    Flask request context pushed, so the actions see ``flask.request`` (the very object they
    receive as argument: a :class:`~plugit_core.service.ServiceRequest` that is also a Flask
    request), ``flask.g``, ``flask.current_app`` and ``flask.session``; ``flask.abort(404)``
    answers like ``plugit_core.service.abort``.  Flask's ``teardown_request`` and
    ``teardown_appcontext`` functions run after each call; ``before_request``,
    ``after_request`` and Flask's error handlers do not (the service answers, not Flask), and
    ``flask.session`` is not saved (the caller is the proxy, not a browser: keep per-user state
    with :class:`~plugit_core.service.PlugItSetSession`).

    When the service answers 404 and one of the Flask app's own routes matches the URL, the
    request goes to Flask instead, so plain Flask views may live beside the actions.  Those
    views are reachable only by callers in the service's ``allowed_networks``, like the
    protocol, but the proxy's signature is not checked for them: protect them as any view.
    """

    def __init__(self, flask_app: flask.Flask, service: PlugItService) -> None:
        self.flask_app = flask_app
        self.service = service
        self.flask_wsgi_app = flask_app.wsgi_app  # Flask's own dispatch, for the fall-through
        self.request_class = _request_class(flask_app, service)

    def __call__(
        self, environ: dict[str, Any], start_response: Callable[..., Any]
    ) -> Iterable[bytes]:
        request = self.request_class(environ)
        request.json_module = self.flask_app.json
        # The context gets our request, so that flask.request is the action's argument.
        context = RequestContext(self.flask_app, environ, request=request)
        context.push()
        try:
            response = self.service.handle(request)
            fall_through = (
                response.status_code == 404
                # Flask has a view for this URL (maybe for other methods, or with a slash)
                and not isinstance(request.routing_exception, NotFound)
                and self.service.caller_allowed(request)
            )
            if not fall_through:
                response.call_on_close(request.close)  # uploaded files are temporary files
                return response(environ, start_response)
        finally:
            context.pop()
        response.close()
        return self.flask_wsgi_app(environ, start_response)


def _request_class(flask_app: flask.Flask, service: PlugItService) -> type[FlaskServiceRequest]:
    """A request class that is both the service's request and the Flask app's request."""
    config = service.config

    def body(namespace: dict[str, Any]) -> None:
        namespace["__module__"] = __name__
        # The service's limits, not Flask's MAX_CONTENT_LENGTH (read-only in Flask < 3.1).
        namespace["max_content_length"] = property(lambda self: config.max_content_length)
        namespace["max_form_memory_size"] = property(lambda self: config.max_form_memory_size)

    bases = (service.request_class, flask_app.request_class)  # classes known when it runs
    made = types.new_class("FlaskServiceRequest", bases, exec_body=body)
    return cast("type[FlaskServiceRequest]", made)


def make_flask_service(
    actions_module: types.ModuleType | str,
    *,
    import_name: str | None = None,
    **settings: Any,
) -> flask.Flask:
    """A Flask app serving the decorated actions of ``actions_module`` (a module or its name).

    ``settings`` go to :meth:`PlugItService.from_module <plugit_core.service.PlugItService.
    from_module>` (``settings=``, ``mail_callback=``, or service settings such as ``secret``,
    ``templates``, ``base_url``); relative ``templates`` and ``media`` folders are found beside
    the module unless ``root`` says otherwise.  ``import_name`` (default: the module's name) is
    the Flask app's.  The service is ``app.extensions["plugit"]``.
    """
    if isinstance(actions_module, str):
        __import__(actions_module)
        actions_module = sys.modules[actions_module]
    module_file = getattr(actions_module, "__file__", None)
    if module_file and "root" not in settings:
        settings["root"] = str(Path(module_file).resolve().parent)
    service = PlugItService.from_module(actions_module, **settings)
    app = flask.Flask(import_name or actions_module.__name__)
    app.extensions["plugit"] = service
    app.wsgi_app = FlaskService(app, service)  # type: ignore[method-assign]
    return app

"""What a service reads and writes on the wire: :class:`ServiceRequest` (werkzeug's request plus
the proxy's PlugIt data) and the JSON answers, errors and body limits of the endpoints.

Bad input gets a JSON answer, never a traceback: a malformed form is a 400, a refused signature a
403 naming the reason.
"""

from __future__ import annotations

import datetime
import decimal
import io
import json
import time
import uuid
from typing import Any

from werkzeug.exceptions import Forbidden, HTTPException, MethodNotAllowed, RequestEntityTooLarge
from werkzeug.formparser import FormDataParser
from werkzeug.wrappers import Request, Response

from .. import protocol
from ..signing import SignatureError

#: Set in the environ of a request whose signature was checked.
SIGNED_ENVIRON_KEY = "plugit.signed"


class _StrictFormDataParser(FormDataParser):
    """Malformed form bodies are an error (400), not silently an empty form."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["silent"] = False
        super().__init__(*args, **kwargs)


class ServiceRequest(Request):
    """The request an action receives: werkzeug's, plus the proxy's PlugIt data."""

    form_data_parser_class = _StrictFormDataParser

    @property
    def user_info(self) -> dict[str, Any]:
        """The user properties the proxy sent (``ebuio_u_<prop>``), keyed by property name.

        A property sent several times (a list such as ``subscription_labels``) is a list.
        """
        info: dict[str, Any] = {}
        values = self._proxy_values()
        for key in values:
            if key.startswith("ebuio_u_"):
                items = values.getlist(key)
                info[key[len("ebuio_u_") :]] = items if len(items) > 1 else items[0]
        return info

    @property
    def deadline(self) -> float | None:
        """When the proxy stops waiting for this request's answer (seconds since the epoch,
        ``X-Plugit-Deadline``, signed with the request), or None when it sent none (or sent
        something that is not a deadline).  The service's clock must be set (NTP)."""
        try:
            return protocol.parse_deadline(self.headers.get(protocol.H_DEADLINE))
        except ValueError:
            return None

    def time_left(self) -> float | None:
        """Seconds until :attr:`deadline` (negative once passed), or None without one: an
        action doing long work checks it between steps and stops when the proxy has gone."""
        deadline = self.deadline
        return None if deadline is None else deadline - time.time()

    @property
    def orga_pk(self) -> str | None:
        """The current organisation's id in orga mode (``ebuio_orgapk``), else None."""
        orga_pk: str | None = self._proxy_values().get("ebuio_orgapk")
        return orga_pk

    def _proxy_values(self) -> Any:
        """Where the proxy put its ``ebuio_*`` values: the query, but the form of a POST (as in
        the original).  A POST without a form (a JSON body) has them in the query: they are
        read there only when the request's signature was checked, since only then the query
        is the proxy's for sure."""
        if self.method != "POST":
            return self.args
        if self.form or not self.environ.get(SIGNED_ENVIRON_KEY):
            return self.form
        return self.args

    @property
    def plugit_session(self) -> dict[str, str]:
        """This service's session values sent by the proxy (lower-cased keys)."""
        from .helpers import get_session_from_request

        return get_session_from_request(self)


def _json_default(value: Any) -> Any:
    if isinstance(value, (datetime.datetime, datetime.date, datetime.time)):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return float(value)
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def json_response(data: Any, status: int = 200) -> Response:
    body = json.dumps(
        data, default=_json_default, ensure_ascii=False, allow_nan=False, separators=(",", ":")
    )
    response = Response(body, status=status, mimetype="application/json")
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response


def error_response(exc: HTTPException, error: str | None = None) -> Response:
    code = exc.code or 500
    payload = {"error": error or (exc.name or "error").lower().replace(" ", "_"), "status": code}
    if exc.description:
        payload["message"] = exc.description
    response = json_response(payload, status=code)
    if isinstance(exc, MethodNotAllowed) and exc.valid_methods:
        response.headers["Allow"] = ", ".join(exc.valid_methods)
    return response


def status_response(exc: HTTPException) -> Response:
    """The reply for an HTTPException below 400 (a service's own ``NotModified`` class, say):
    werkzeug's, without a body for the statuses that have none."""
    response = exc.get_response()
    if response.status_code in (204, 304):
        bare = Response(status=response.status_code)
        for name, value in response.headers.items():
            if name.lower() not in ("content-type", "content-length"):
                bare.headers.add(name, value)
        return bare
    return response


def buffer_unsized_body(request: Request, limit: int | None) -> None:
    """Read a body sent without Content-Length (chunked) into memory, refusing it above ``limit``.

    werkzeug stops reading such a body silently at ``max_content_length``: a form would be cut
    short instead of refused with 413.
    """
    environ = request.environ
    if limit is None or environ.get("CONTENT_LENGTH") or not environ.get("wsgi.input_terminated"):
        return
    stream = environ["wsgi.input"]
    chunks: list[bytes] = []
    size = 0
    while chunk := stream.read(min(65536, limit + 1 - size)):
        chunks.append(chunk)
        size += len(chunk)
        if size > limit:
            raise RequestEntityTooLarge()
    environ["wsgi.input"] = io.BytesIO(b"".join(chunks))
    environ["CONTENT_LENGTH"] = str(size)
    del environ["wsgi.input_terminated"]
    environ.pop("HTTP_TRANSFER_ENCODING", None)  # no longer chunked: the length is known
    for cached in ("content_length", "stream"):  # werkzeug caches both on first use
        request.__dict__.pop(cached, None)


def set_etag(response: Response, value: str) -> None:
    """``value`` as the ETag header, exactly as the action gave it (as the original library sent
    it): a service that compares ``X-Plugit-If-None-Match`` with its own value must find it
    unchanged.  ValueError for a value no header can carry (a line break)."""
    response.headers["ETag"] = value


class SignatureRefused(Forbidden):
    def __init__(self, error: SignatureError) -> None:
        super().__init__(error.message)
        self.error = error

    name = "Forbidden"


def signature_error_response(exc: SignatureRefused) -> Response:
    return json_response(
        {"error": "signature", "code": exc.error.code, "message": exc.error.message, "status": 403},
        status=403,
    )

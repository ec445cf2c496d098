"""Handing a werkzeug response to the WSGI server, for the proxy and the service library."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from werkzeug.wrappers import Response


def answer(
    response: Response, environ: dict[str, Any], start_response: Callable[..., Any]
) -> Iterable[bytes]:
    """``response(environ, start_response)``, with a body held in memory given as a list.

    werkzeug hands every body over as an iterator that closes the response.  A server can send
    a list of one ``bytes`` in one piece, where an iterator costs it a call into Python per chunk
    and one to close (granian takes the interpreter's lock for each: more hand-overs between
    its threads on every page).  So a body in memory is joined here and the response closed (its
    ``call_on_close`` callbacks run) before the server sends it; a streamed body (a file, a
    generator) is handed over as werkzeug hands it, and closed by the server.
    """
    body, status, headers = response.get_wsgi_response(environ)
    start_response(status, headers)
    if not response.is_sequence:
        return body
    try:
        return [b"".join(body)]
    finally:
        response.close()

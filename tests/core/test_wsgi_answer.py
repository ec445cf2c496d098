"""How a response is handed to the server (plugit_core/wsgi.py): a body in memory as a list of
one ``bytes``, the response closed first; a streamed body as werkzeug gives it."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from werkzeug.test import EnvironBuilder
from werkzeug.wrappers import Response

from plugit_core.wsgi import answer


def started() -> tuple[list[Any], Any]:
    seen: list[Any] = []

    def start_response(status: str, headers: list, exc_info: Any = None) -> None:
        seen.append((status, dict(headers)))

    return seen, start_response


def test_a_body_in_memory_is_one_bytes_in_a_list_and_the_response_is_closed_first() -> None:
    closed = []
    response = Response("é" * 3, status=201, mimetype="text/html")
    response.call_on_close(lambda: closed.append(True))
    seen, start_response = started()
    body = answer(response, EnvironBuilder().get_environ(), start_response)
    assert body == ["ééé".encode()]
    assert closed == [True]  # before the server sends it (uploads closed, nothing left open)
    [(status, headers)] = seen
    assert status == "201 CREATED"
    assert headers["Content-Length"] == "6"
    assert headers["Content-Type"] == "text/html; charset=utf-8"


def test_a_head_request_gets_the_headers_and_no_body() -> None:
    seen, start_response = started()
    body = answer(
        Response(b"0123456789"), EnvironBuilder(method="HEAD").get_environ(), start_response
    )
    assert b"".join(body) == b""
    assert seen[0][1]["Content-Length"] == "10"


def test_a_streamed_body_is_left_to_the_server_to_iterate_and_close() -> None:
    produced = []
    closed = []

    def chunks() -> Iterator[bytes]:
        for part in (b"a", b"b"):
            produced.append(part)
            yield part

    response = Response(chunks(), mimetype="text/plain")
    response.call_on_close(lambda: closed.append(True))
    seen, start_response = started()
    body = answer(response, EnvironBuilder().get_environ(), start_response)
    assert not isinstance(body, list)
    assert (produced, closed) == ([], [])  # nothing read, nothing closed yet
    assert b"".join(body) == b"ab"
    body.close()  # type: ignore[attr-defined]
    assert closed == [True]
    assert seen[0][0] == "200 OK"

"""What an action returns or raises, as the proxy receives it over HTTP (PROTOCOL.md 2.9, 4.5),
and the clear answers to bad input: 400, 413, 500 without traceback."""

from __future__ import annotations

import datetime
import decimal
import io
import logging
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from werkzeug.exceptions import Conflict, Forbidden, HTTPException
from werkzeug.wrappers import Response

from plugit_core.service import (
    PlugItRedirect,
    PlugItSendFile,
    PlugItService,
    PlugItSetSession,
    ServiceRequest,
    abort,
    action,
    send_etag,
)
from plugit_core.testing import serve

RESULTS: dict[str, Any] = {}


class Later:
    """A result built (or an exception raised) inside the action, at request time."""

    def __init__(self, make: Any) -> None:
        self.make = make


@action("/r/<key>", methods=["GET", "POST"])
@send_etag()
def result_of(request: ServiceRequest, key: str) -> Any:
    """Returns (or raises) whatever the test stored under ``key``."""
    value = RESULTS[key]
    if isinstance(value, Later):
        return value.make()
    return value


@pytest.fixture(scope="module")
def files_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("results")
    (root / "report.pdf").write_bytes(b"%PDF-1.4 fake")
    return root


@pytest.fixture(scope="module")
def url(files_root: Path) -> Iterator[str]:
    service = PlugItService([result_of], root=files_root, max_content_length=1024)
    with serve(service) as base:
        yield base


def call(http: requests.Session, url: str, value: Any, method: str = "GET") -> requests.Response:
    key = uuid.uuid4().hex
    RESULTS[key] = value
    return http.request(method, f"{url}/action/r/{key}")


# -- redirect, file, session -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("result", "headers"),
    [
        pytest.param(
            PlugItRedirect("/show/5"),
            {"EbuIo-PlugIt-Redirect": "/show/5", "EbuIo-PlugIt-Redirect-NoPrefix": None},
            id="prefixed",
        ),
        pytest.param(
            PlugItRedirect("https://other.example/x", no_prefix=True),
            {
                "EbuIo-PlugIt-Redirect": "https://other.example/x",
                "EbuIo-PlugIt-Redirect-NoPrefix": "True",
            },
            id="no-prefix",
        ),
    ],
)
def test_redirect(
    http: requests.Session, url: str, result: Any, headers: dict[str, str | None]
) -> None:
    response = call(http, url, result)
    assert response.status_code == 200
    assert response.content == b""
    for name, value in headers.items():
        assert response.headers.get(name) == value


@pytest.mark.parametrize(
    ("make", "content_type", "disposition"),
    [
        pytest.param(
            lambda root: PlugItSendFile("report.pdf", "application/pdf"),
            "application/pdf",
            None,
            id="relative-path-inline",
        ),
        pytest.param(
            lambda root: PlugItSendFile(
                str(root / "report.pdf"), "application/pdf", True, "year.pdf"
            ),
            "application/pdf",
            "attachment; filename=year.pdf",
            id="attachment-named",
        ),
        pytest.param(
            lambda root: PlugItSendFile(root / "report.pdf", "application/x-custom", True),
            "application/x-custom",
            "attachment; filename=report.pdf",
            id="attachment-default-name",
        ),
        pytest.param(
            lambda root: PlugItSendFile(root / "report.pdf", "application/pdf", False, "y.pdf"),
            "application/pdf",
            None,
            id="name-without-attachment",
        ),
        pytest.param(
            lambda root: PlugItSendFile(io.BytesIO(b"%PDF-1.4 fake"), "application/pdf"),
            "application/pdf",
            None,
            id="file-object",
        ),
        pytest.param(
            lambda root: PlugItSendFile(io.BytesIO(b"%PDF-1.4 fake"), "application/pdf", True),
            "application/pdf",
            "attachment",
            id="file-object-attachment-without-name",
        ),
    ],
)
def test_send_file(
    http: requests.Session,
    url: str,
    files_root: Path,
    make: Any,
    content_type: str,
    disposition: str | None,
) -> None:
    response = call(http, url, Later(lambda: make(files_root)))
    assert response.status_code == 200
    assert response.content == b"%PDF-1.4 fake"
    assert response.headers["EbuIo-PlugIt-ItAFile"] == "True"
    assert response.headers["Content-Type"] == content_type
    assert response.headers.get("Content-Disposition") == disposition
    assert "ETag" not in response.headers  # send_etag with a file does not crash (W21)


def test_send_missing_file_is_404(http: requests.Session, url: str) -> None:
    response = call(http, url, PlugItSendFile("nope.pdf", "application/pdf"))
    assert response.status_code == 404


@pytest.mark.parametrize(
    ("result", "body", "headers"),
    [
        pytest.param(
            PlugItSetSession({"a": 1}, {"cart": 3, "theme": "dark"}),
            {"a": 1},
            {"EbuIo-PlugIt-SetSession-cart": "3", "EbuIo-PlugIt-SetSession-theme": "dark"},
            id="json",
        ),
        pytest.param(
            PlugItSetSession(PlugItRedirect("/done"), {"step": "2"}),
            b"",
            {"EbuIo-PlugIt-SetSession-step": "2", "EbuIo-PlugIt-Redirect": "/done"},
            id="with-redirect",
        ),
        pytest.param(
            PlugItSetSession(PlugItSetSession({"x": 1}, {"inner": "1"}), {"outer": "2"}),
            {"x": 1},
            {"EbuIo-PlugIt-SetSession-inner": "1", "EbuIo-PlugIt-SetSession-outer": "2"},
            id="nested",
        ),
        pytest.param(PlugItSetSession({"x": 1}), {"x": 1}, {}, id="nothing-to-set"),
    ],
)
def test_set_session(
    http: requests.Session, url: str, result: Any, body: Any, headers: dict[str, str]
) -> None:
    response = call(http, url, result)
    assert response.status_code == 200
    if isinstance(body, bytes):
        assert response.content == body
    else:
        assert response.json() == body
    for name, value in headers.items():
        assert response.headers[name] == value


@pytest.mark.parametrize(
    ("result", "body"),
    [
        pytest.param({"when": datetime.date(2024, 5, 1)}, {"when": "2024-05-01"}, id="date"),
        pytest.param({"n": decimal.Decimal("1.5")}, {"n": 1.5}, id="decimal"),
        pytest.param(
            {"id": uuid.UUID(int=1)}, {"id": "00000000-0000-0000-0000-000000000001"}, id="uuid"
        ),
        pytest.param({"t": (1, 2)}, {"t": [1, 2]}, id="tuple"),
        pytest.param([1, "two"], [1, "two"], id="list"),
        pytest.param({"text": "été"}, {"text": "été"}, id="unicode"),
    ],
)
def test_json_data(http: requests.Session, url: str, result: Any, body: Any) -> None:
    response = call(http, url, result)
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/json"
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.json() == body


def test_response_passes_through(http: requests.Session, url: str) -> None:
    response = call(http, url, Response("<p>hi</p>", status=201, mimetype="text/html"))
    assert (response.status_code, response.text) == (201, "<p>hi</p>")


# -- errors ----------------------------------------------------------------------------------------


def fail(exc: BaseException) -> Later:
    def raiser() -> Any:
        raise exc

    return Later(raiser)


@pytest.mark.parametrize(
    ("raised", "status", "error"),
    [
        pytest.param(Later(lambda: abort(401)), 401, "unauthorized", id="abort-401"),
        pytest.param(Later(lambda: abort(403)), 403, "forbidden", id="abort-403"),
        pytest.param(Later(lambda: abort(404)), 404, "not_found", id="abort-404"),
        pytest.param(Later(lambda: abort(429)), 429, "too_many_requests", id="abort-429"),
        pytest.param(
            Later(lambda: abort(403, "members only")), 403, "forbidden", id="abort-message"
        ),
    ],
)
def test_abort(http: requests.Session, url: str, raised: Any, status: int, error: str) -> None:
    response = call(http, url, raised)
    assert response.status_code == status
    assert response.json()["error"] == error
    assert response.json()["status"] == status


def test_abort_304_and_abort_response(http: requests.Session, url: str) -> None:
    response = call(http, url, Later(lambda: abort(304)))
    assert (response.status_code, response.content) == (304, b"")
    custom = Response("slow down", status=429, headers={"Retry-After": "7"})
    response = call(http, url, Later(lambda: abort(custom)))
    assert (response.status_code, response.text) == (429, "slow down")
    assert response.headers["Retry-After"] == "7"


class NotModified(HTTPException):
    """What original services defined for ``abort(NotModified())`` (werkzeug has no 304)."""

    code = 304
    description = "not modified"


@pytest.mark.parametrize(
    "raised",
    [
        pytest.param(Later(lambda: abort(NotModified())), id="abort-instance"),
        pytest.param(Later(lambda: abort(NotModified)), id="abort-class"),
        pytest.param(fail(NotModified()), id="raised"),
        pytest.param(Later(lambda: abort(304)), id="abort-code"),
    ],
)
def test_not_modified_the_original_ways(http: requests.Session, url: str, raised: Any) -> None:
    response = call(http, url, raised)
    assert (response.status_code, response.content) == (304, b"")
    assert "Content-Type" not in response.headers


@action("/poll")
@send_etag()
def poll(request: ServiceRequest) -> dict:
    """The original's idiom: compare the proxy's X-Plugit-If-None-Match with its own tag."""
    if request.headers.get("X-Plugit-If-None-Match") == "poll-7":
        abort(NotModified())
    return {"_plugit_etag": "poll-7", "title": "Lunch?"}


def test_etag_round_trip_as_the_original(
    http: requests.Session, served: Callable[..., str]
) -> None:
    url = served(PlugItService([poll]))
    first = http.get(f"{url}/action/poll")
    assert (first.status_code, first.headers["ETag"]) == (200, "poll-7")
    assert first.json() == {"title": "Lunch?"}
    again = http.get(
        f"{url}/action/poll", headers={"X-Plugit-If-None-Match": first.headers["ETag"]}
    )
    assert (again.status_code, again.content) == (304, b"")


@pytest.mark.parametrize(
    ("raised", "status", "error"),
    [
        pytest.param(Later(lambda: abort(Forbidden())), 403, "forbidden", id="instance"),
        pytest.param(Later(lambda: abort(Forbidden)), 403, "forbidden", id="class"),
        pytest.param(Later(lambda: abort(Conflict, "taken")), 409, "conflict", id="class-args"),
        pytest.param(Later(lambda: abort(420)), 420, "error", id="code-werkzeug-lacks"),
        pytest.param(
            Later(lambda: abort(499, "client left")), 499, "error", id="code-with-message"
        ),
    ],
)
def test_abort_with_exceptions_and_any_code(
    http: requests.Session, url: str, raised: Any, status: int, error: str
) -> None:
    response = call(http, url, raised)
    assert response.status_code == status
    assert response.headers["Content-Type"] == "application/json"
    assert response.json()["error"] == error
    assert response.json()["status"] == status


def test_abort_with_a_flask_response(http: requests.Session, url: str) -> None:
    flask = pytest.importorskip("flask")
    response = call(http, url, Later(lambda: abort(flask.Response("tea", status=418))))
    assert (response.status_code, response.text) == (418, "tea")


@pytest.mark.parametrize(
    ("result", "log_text"),
    [
        pytest.param(fail(RuntimeError("db password is hunter2")), "RuntimeError", id="raises"),
        pytest.param(fail(KeyError("k")), "KeyError", id="key-error"),
        pytest.param(None, "returned NoneType", id="returns-none"),
        pytest.param("<p>html</p>", "returned str", id="returns-str"),
        pytest.param(42, "returned int", id="returns-int"),
        pytest.param({"x": object()}, "not JSON serialisable", id="not-serialisable"),
        pytest.param(PlugItSetSession({}, {"bad key": 1}), "session key", id="bad-session-key"),
        pytest.param({"_plugit_etag": "a\nb"}, "newline", id="etag-no-header-can-carry"),
        pytest.param(Later(lambda: abort("teapot")), "abort() takes", id="abort-text"),
        pytest.param(Later(lambda: abort(1000)), "not an HTTP status", id="abort-1000"),
    ],
)
def test_failures_are_500_without_traceback(
    http: requests.Session,
    url: str,
    caplog: pytest.LogCaptureFixture,
    result: Any,
    log_text: str,
) -> None:
    with caplog.at_level(logging.ERROR, logger="plugit.service"):
        response = call(http, url, result)
    assert response.status_code == 500
    assert response.headers["Content-Type"] == "application/json"
    body = response.json()
    assert body["error"] == "internal_server_error"
    assert body["status"] == 500
    for leak in ("Traceback", "hunter2", "File ", "result_of", "raise"):
        assert leak not in response.text
    records = [r for r in caplog.records if r.name == "plugit.service"]
    assert records, "the failure must be logged"
    assert "action 'result_of' failed" in records[-1].getMessage()
    assert log_text in caplog.text


# -- bad input -------------------------------------------------------------------------------------


def test_upload_over_max_content_length_is_413(http: requests.Session, url: str) -> None:
    RESULTS["upload"] = {"stored": True}
    response = http.post(
        f"{url}/action/r/upload", files={"doc": ("big.bin", b"x" * 64 * 1024, "text/plain")}
    )
    assert response.status_code == 413
    assert response.json()["status"] == 413
    small = http.post(f"{url}/action/r/upload", files={"doc": ("s.bin", b"x", "text/plain")})
    assert small.status_code == 200


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        pytest.param(
            b'--XX\r\nContent-Disposition: form-data; name="a"\r\n\r\nvalue',
            "multipart/form-data; boundary=XX",
            id="truncated-multipart",
        ),
        pytest.param(b"garbage", "multipart/form-data", id="no-boundary"),
        pytest.param(
            b"--XX\r\nno headers here\r\n--XX--\r\n",
            "multipart/form-data; boundary=XX",
            id="bad-part-headers",
        ),
    ],
)
def test_malformed_form_is_400(
    http: requests.Session, url: str, body: bytes, content_type: str
) -> None:
    RESULTS["form"] = {"called": True}
    response = http.post(f"{url}/action/r/form", data=body, headers={"Content-Type": content_type})
    assert response.status_code == 400
    assert response.json()["error"] == "bad_request"
    assert "malformed form data" in response.json()["message"]


def test_malformed_mail_form_is_400(http: requests.Session, url: str) -> None:
    response = http.post(
        f"{url}/mail", data=b"junk", headers={"Content-Type": "multipart/form-data; boundary=Z"}
    )
    assert response.status_code == 400


@pytest.mark.parametrize(
    ("size", "status"),
    [
        pytest.param(98, 200, id="chunked-within-limit"),
        pytest.param(99, 413, id="chunked-one-byte-over"),
        pytest.param(5000, 413, id="chunked-far-over"),
    ],
)
def test_chunked_body_is_refused_not_truncated(
    served: Callable[..., str], http: requests.Session, size: int, status: int
) -> None:
    # werkzeug alone would silently cut a chunked body at max_content_length.
    @action("/echo", methods=["POST"])
    def echo(request: ServiceRequest) -> dict:
        return {"length": len(request.form["a"])}

    url = served(PlugItService([echo], max_content_length=100))
    body = iter([b"a=", b"x" * size])  # a generator body is sent chunked
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    response = http.post(f"{url}/action/echo", data=body, headers=headers)
    assert response.status_code == status
    if status == 200:
        assert response.json() == {"length": size}
    else:
        assert response.json()["error"] == "request_entity_too_large"

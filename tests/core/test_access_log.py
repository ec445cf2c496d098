"""The access log written on granian (plugit_core/cli/access_log.py): its lines, what escapes
them, and the batches that write them off the request threads."""

from __future__ import annotations

import io
import os
import re
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from werkzeug.test import EnvironBuilder

from plugit_core.cli.access_log import AccessLog, LineBatches, request_line, whole_lines
from plugit_core.testing import wait_until

LINE = re.compile(
    r'(?P<addr>\S+) - - \[\d\d/\w{3}/\d{4}:\d\d:\d\d:\d\d [+-]\d{4}\] "(?P<request>[^"]*)" '
    r"(?P<status>\d{3}) (?P<size>\d+|-) (?P<ms>\d+\.\d)\n"
)


def environ(path: str = "/", query: str = "", method: str = "GET", **extra: Any) -> dict:
    """A server's environ without ``RAW_URI``/``REQUEST_URI`` (granian gives neither)."""
    env = EnvironBuilder(path=path, query_string=query, method=method).get_environ()
    for key in ("RAW_URI", "REQUEST_URI"):
        env.pop(key, None)
    env.update(extra)
    return env


class Collected(LineBatches):
    """Batches that keep what they would write (the writer thread still runs)."""

    def __init__(self) -> None:
        self.out = io.StringIO()
        super().__init__(self.out, interval=60)

    def lines(self) -> list[str]:
        self.flush()
        return self.out.getvalue().splitlines(keepends=True)


def call(app: Callable[..., Any], env: dict) -> tuple[list[str], bytes]:
    seen: list[str] = []

    def start_response(status: str, headers: list, exc_info: Any = None) -> None:
        seen.append(status)

    body = app(env, start_response)
    try:
        data = b"".join(body)
    finally:
        close = getattr(body, "close", None)
        if close is not None:
            close()
    return seen, data


# -- the request line ---------------------------------------------------------------------------


def test_the_request_line_keeps_the_path_and_the_query() -> None:
    env = environ("/polls/show/1", "page=2&q=a%20b", SERVER_PROTOCOL="HTTP/1.1")
    assert request_line(env) == "GET /polls/show/1?page=2&q=a%20b HTTP/1.1"


def test_a_decoded_new_line_in_the_path_cannot_forge_a_log_line() -> None:
    # "%0A" and "%22" arrive decoded in PATH_INFO: they are quoted again
    forged = '/x\n127.0.0.1 - - [01/Jan/2026:00:00:00 +0000] "GET /admin'
    env = environ("/", "", PATH_INFO=forged)
    line = request_line(env)
    assert "\n" not in line and '"' not in line
    assert line.startswith("GET /x%0A127.0.0.1%20-%20-%20%5B01/Jan/2026:00:00:00%20+0000%5D%20%22")


def test_quotes_backslashes_and_control_characters_are_escaped_anywhere_in_the_line() -> None:
    env = environ("/", 'a="b"&c=\\&d=\x1b[31m', REQUEST_METHOD='GE"T', SERVER_PROTOCOL="HTTP/1.1")
    line = request_line(env)
    assert line == "GE\\x22T /?a=\\x22b\\x22&c=\\x5c&d=\\x1b[31m HTTP/1.1"
    assert all(" " <= c <= "~" for c in line)


def test_the_raw_uri_of_the_server_is_logged_when_it_gives_one() -> None:
    env = environ("/decoded path", "", RAW_URI='/raw%20path?x="1"', SERVER_PROTOCOL="HTTP/1.0")
    assert request_line(env) == "GET /raw%20path?x=\\x221\\x22 HTTP/1.0"


def test_non_ascii_paths_are_written_as_their_utf8_bytes_quoted() -> None:
    # PATH_INFO holds the UTF-8 bytes of "/été" one character per byte (PEP 3333)
    env = environ("/", "", PATH_INFO="/été".encode().decode("latin-1"))
    assert request_line(env) == "GET /%C3%A9t%C3%A9 HTTP/1.1"


# -- the middleware -----------------------------------------------------------------------------


def test_a_list_body_is_logged_at_once_with_its_status_and_size() -> None:
    def app(env: dict, start_response: Callable[..., Any]) -> list[bytes]:
        start_response("404 NOT FOUND", [("Content-Type", "text/plain")])
        return [b"not ", b"here"]

    batches = Collected()
    logged = AccessLog(app, batches)
    seen, data = call(logged, environ("/nowhere", REMOTE_ADDR="192.0.2.7"))
    assert (seen, data) == (["404 NOT FOUND"], b"not here")
    [line] = batches.lines()
    match = LINE.fullmatch(line)
    assert match, line
    assert match["addr"] == "192.0.2.7"
    assert match["request"] == "GET /nowhere HTTP/1.1"
    assert (match["status"], match["size"]) == ("404", "8")


def test_a_streamed_body_is_logged_when_the_server_closes_it() -> None:
    closed = []

    class Body:
        def __iter__(self) -> Iterator[bytes]:
            yield b"a" * 10
            yield b"b" * 5

        def close(self) -> None:
            closed.append(True)

    def app(env: dict, start_response: Callable[..., Any]) -> Body:
        start_response("200 OK", [])
        return Body()

    batches = Collected()
    logged = AccessLog(app, batches)
    body = logged(environ("/file"), lambda status, headers, exc_info=None: None)
    assert batches.lines() == []  # not yet: nothing was sent
    assert b"".join(body) == b"a" * 10 + b"b" * 5
    body.close()
    assert closed == [True]  # the app's body is closed, as the server would have
    [line] = batches.lines()
    assert LINE.fullmatch(line)["size"] == "15"


def test_a_generator_app_gets_the_status_it_gives_once_iterated() -> None:
    def app(env: dict, start_response: Callable[..., Any]) -> Iterator[bytes]:
        start_response("201 CREATED", [])  # runs on the first next(), after the app returned
        yield b"made"

    batches = Collected()
    call(AccessLog(app, batches), environ("/make", method="POST"))
    [line] = batches.lines()
    match = LINE.fullmatch(line)
    assert (match["request"], match["status"], match["size"]) == ("POST /make HTTP/1.1", "201", "4")


def test_an_app_that_raises_is_logged_as_a_500_and_the_error_goes_on() -> None:
    def app(env: dict, start_response: Callable[..., Any]) -> list[bytes]:
        raise RuntimeError("broken")

    batches = Collected()
    with pytest.raises(RuntimeError, match="broken"):
        call(AccessLog(app, batches), environ("/boom"))
    [line] = batches.lines()
    assert LINE.fullmatch(line)["status"] == "500"
    assert LINE.fullmatch(line)["size"] == "-"


# -- the batches --------------------------------------------------------------------------------


def test_lines_are_written_by_the_writer_within_its_interval() -> None:
    out = io.StringIO()
    batches = LineBatches(out, interval=0.05)
    try:
        batches.add("one\n")
        batches.add("two\n")
        wait_until(lambda: out.getvalue() == "one\ntwo\n", timeout=10)
    finally:
        batches.close()


def test_closed_batches_write_what_waits_and_then_each_line_at_once() -> None:
    out = io.StringIO()
    batches = LineBatches(out, interval=3600)
    batches.add("before\n")
    batches.close()
    assert out.getvalue() == "before\n"
    batches.add("after\n")
    assert out.getvalue() == "before\nafter\n"


def test_a_full_batch_is_written_without_waiting_for_the_interval() -> None:
    out = io.StringIO()
    batches = LineBatches(out, interval=3600, limit=100)
    batches.add("x" * 60 + "\n")
    assert out.getvalue() == ""  # under the limit: it waits (for an hour here)
    batches.add("y" * 60 + "\n")
    wait_until(lambda: out.getvalue() == "x" * 60 + "\n" + "y" * 60 + "\n", timeout=10)


def test_every_line_of_many_threads_is_written_once_while_batches_are_written() -> None:
    out = io.StringIO()
    batches = LineBatches(out, interval=0.001, limit=512)
    threads = [
        threading.Thread(target=lambda t=t: [batches.add(f"{t}:{i}\n") for i in range(2000)])
        for t in range(8)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    batches.close()
    lines = out.getvalue().splitlines()
    assert sorted(lines) == sorted(f"{t}:{i}" for t in range(8) for i in range(2000))


def test_an_output_that_fails_loses_its_lines_and_nothing_else() -> None:
    out = io.StringIO()
    out.close()
    batches = LineBatches(out, interval=3600)
    batches.add("lost\n")
    batches.flush()  # no error: a closed output must not fail the requests that log
    batches.add("also lost\n")
    batches.flush()


def test_pieces_end_with_a_line_and_stay_within_the_size() -> None:
    lines = [f"{i:03d}" + "x" * 20 + "\n" for i in range(50)] + ["L" * 300 + "\n", "end\n"]
    pieces = list(whole_lines(lines, 100))
    assert b"".join(pieces) == "".join(lines).encode()
    for piece in pieces:
        assert piece.endswith(b"\n")
        assert len(piece) <= 100 or piece.count(b"\n") == 1  # only a long line alone is longer
    assert b"L" * 300 + b"\n" in pieces


def test_workers_sharing_a_pipe_never_mix_their_lines() -> None:
    # Two processes' batches (here two writers in threads) on one pipe, as granian's workers
    # share standard output: every line read back is whole.
    read_fd, write_fd = os.pipe()
    expected = {
        f"worker-{w} line {i:05d} " + "x" * (40 + i % 60) for w in range(2) for i in range(3000)
    }
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(_read_all(read_fd)))
    reader.start()
    with open(write_fd, "w", closefd=True) as out:
        writers = [LineBatches(out, interval=3600, limit=1 << 30) for _ in range(2)]
        for w, batches in enumerate(writers):
            for i in range(3000):
                batches.add(f"worker-{w} line {i:05d} " + "x" * (40 + i % 60) + "\n")
        threads = [threading.Thread(target=batches.flush) for batches in writers]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    reader.join()
    assert sorted(got[0].decode().splitlines()) == sorted(expected)


def _read_all(fd: int) -> bytes:
    with open(fd, "rb", closefd=True) as f:
        return f.read()

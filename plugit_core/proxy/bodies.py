"""Request bodies: a size limit that holds whatever the framing.

werkzeug checks a declared ``Content-Length`` against ``max_content_length``, but it reads a
body without one (``Transfer-Encoding: chunked``) only up to the limit and then reports the end of
the body: a chunked upload larger than the limit would be parsed, and forwarded, cut at the limit
as if it were complete.  :func:`bound_body` puts a counting stream under the request's input so
that reading one byte more than the limit raises :class:`RequestEntityTooLarge` (413), for a
declared length, a chunked body, a form (urlencoded or multipart) or a raw body alike.  The
proxy calls it for every request with ``max_upload_size``; the callback API calls it again with
its own, smaller limit through :func:`read_body`.

werkzeug also reads a form it cannot parse (not UTF-8, a multipart body without its boundary or
cut short) as an empty form, silently.  The request still does so (the CSRF check and the login
pages read ``request.form``), but the problem is kept: :func:`form_problem` says what it was, and
neither the page pipeline nor the callback API passes such a form on as an empty one.

A body sent with ``Transfer-Encoding`` to a WSGI server that does not decode it (one that does
not set ``wsgi.input_terminated``) cannot be read safely; werkzeug would read it as empty, so
:func:`read_body` refuses it with 411 rather than passing on an empty body.
"""

from __future__ import annotations

import io
from typing import IO, Any

from werkzeug.exceptions import LengthRequired, RequestEntityTooLarge
from werkzeug.formparser import FormDataParser
from werkzeug.wrappers import Request

__all__ = ["bound_body", "close_body", "form_problem", "read_body", "unreadable_framing"]

_FILES = "plugit.body_files"
_FORM_PROBLEM = "plugit.form_problem"


class _CappedInput(io.RawIOBase):
    """A WSGI input stream that raises RequestEntityTooLarge past ``limit`` bytes."""

    def __init__(self, stream: IO[bytes], limit: int) -> None:
        self._stream = stream
        self._limit = limit
        self._seen = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray) -> int:  # type: ignore[override]
        # Ask for at most one byte more than allowed: enough to know the body is too large.
        wanted = min(len(buffer), self._limit - self._seen + 1)
        data = self._stream.read(wanted) if wanted > 0 else b""
        size = len(data)
        self._seen += size
        if self._seen > self._limit:
            raise RequestEntityTooLarge()
        buffer[:size] = data
        return size


def bound_body(request: Request, limit: int) -> None:
    """From now on, reading more than ``limit`` bytes of ``request``'s body raises
    :class:`RequestEntityTooLarge`, whether the body has a declared length or is chunked.

    Call it before anything reads the body (``form``, ``files``, ``get_data``, ``stream``).  It
    may be called again with a smaller limit; the smallest applies.
    """
    if "stream" in request.__dict__ or "form" in request.__dict__:
        raise RuntimeError("bound_body must be called before the body is read")
    environ = request.environ
    if not request.content_length and "HTTP_TRANSFER_ENCODING" not in environ:
        # No body (most requests): werkzeug reads nothing; skip the wrapping, a few µs.
        current = request.max_content_length
        request.max_content_length = limit if current is None else min(current, limit)
        return
    environ["wsgi.input"] = _CappedInput(environ["wsgi.input"], limit)
    if _FILES not in environ:
        _track_files(request)
        _keep_form_problems(request)
    current = request.max_content_length
    if request.content_length is not None:
        # werkzeug refuses a declared length over the limit before reading anything.
        request.max_content_length = limit if current is None else min(current, limit)
    else:
        # werkzeug stops silently at max_content_length: let one more byte reach the counter.
        request.max_content_length = limit + 1 if current is None else min(current, limit + 1)


def _track_files(request: Request) -> None:
    """Keep every file werkzeug opens for uploaded parts, for :func:`close_body`.

    werkzeug's multipart parser leaves the file of the part it was writing open when parsing
    stops with an error (a body over the limit): only the request's parsed ``files`` are closed
    by ``request.close()``.
    """
    opened: list[IO[bytes]] = []
    make_file = request._get_file_stream

    def tracked(*args: Any, **kwargs: Any) -> IO[bytes]:
        stream = make_file(*args, **kwargs)
        opened.append(stream)
        return stream

    request._get_file_stream = tracked  # type: ignore[method-assign]
    request.environ[_FILES] = opened


def _keep_form_problems(request: Request) -> None:
    """Parse forms as werkzeug does (a malformed one reads as empty), but keep the reason."""
    make_parser = request.make_form_data_parser

    def recording_parser() -> FormDataParser:
        parser = make_parser()
        parser.silent = False
        parse = parser.parse

        def recording_parse(
            stream: IO[bytes],
            mimetype: str,
            content_length: int | None,
            options: dict[str, str] | None = None,
        ) -> Any:
            try:
                return parse(stream, mimetype, content_length, options)
            except ValueError as exc:
                if content_length == 0:  # no body: an empty form, whatever the content type
                    return stream, parser.cls(), parser.cls()
                request.environ[_FORM_PROBLEM] = (
                    "the form is not UTF-8"
                    if isinstance(exc, UnicodeDecodeError)
                    else f"the form is malformed: {str(exc)[:100]}"
                )
                return stream, parser.cls(), parser.cls()

        parser.parse = recording_parse  # type: ignore[method-assign]
        return parser

    request.make_form_data_parser = recording_parser  # type: ignore[method-assign]


def form_problem(request: Request) -> str | None:
    """Why the request's form could not be parsed (it then reads as empty), or None.

    Parses the form if nothing did yet.
    """
    if request.mimetype not in ("application/x-www-form-urlencoded", "multipart/form-data"):
        return None
    request.form  # noqa: B018 (parse now)
    return request.environ.get(_FORM_PROBLEM)


def close_body(request: Request) -> None:
    """Close what reading the body opened: the uploaded files, parsed or left half-written."""
    request.close()
    for stream in request.environ.get(_FILES, ()):
        stream.close()


def unreadable_framing(request: Request) -> bool:
    """True when the body is framed with ``Transfer-Encoding`` but the WSGI server did not
    decode it (no ``wsgi.input_terminated``): werkzeug would read it as empty."""
    return (
        request.content_length is None
        and bool(request.headers.get("Transfer-Encoding"))
        and not request.environ.get("wsgi.input_terminated")
    )


def read_body(request: Request, limit: int) -> bytes:
    """The whole body, read now and kept on the request (``form``/``files`` then parse it from
    memory).

    Raises :class:`RequestEntityTooLarge` when it is larger than ``limit`` bytes (declared or
    chunked) and :class:`LengthRequired` when its framing cannot be read (see
    :func:`unreadable_framing`).
    """
    if unreadable_framing(request):
        raise LengthRequired("this server cannot read a chunked body: send a Content-Length")
    if "stream" not in request.__dict__ and "form" not in request.__dict__:
        bound_body(request, limit)
    data = request.get_data(cache=True)
    if len(data) > limit:  # bounded earlier with a larger limit
        raise RequestEntityTooLarge()
    return data

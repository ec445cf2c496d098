"""Request signatures: what is covered, freshness, replays and malformed input."""

from __future__ import annotations

import time
from typing import Any

import pytest

from plugit_core.signing import (
    NONCE_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    NonceRegistry,
    SignatureError,
    sign_request,
    verify_request,
)

SECRET = "signing-secret-0123456789abcdef"
NOW = 1_700_000_000.0

REQUEST: dict[str, Any] = {
    "method": "POST",
    "path": "/baseurl/action/show/5",
    "query": "a=1&b=%C3%A9",
    "body": b"ebuio_u_username=alice&x=1",
    "headers": {"X-Plugit-Remote-Addr": "192.0.2.1", "X-Plugitsession-Cart": "3"},
}


def signed(**changes: Any) -> dict[str, Any]:
    """The request above, signed at NOW, then changed by ``changes`` (what an attacker sends)."""
    headers = {**REQUEST["headers"], "Content-Type": "application/x-www-form-urlencoded"}
    headers.update(sign_request(SECRET, **{**REQUEST, "headers": headers}, now=NOW))
    request = {**REQUEST, "headers": headers}
    extra_headers = changes.pop("extra_headers", {})
    request.update(changes)
    request["headers"] = {**request["headers"], **extra_headers}
    return request


def verify(request: dict[str, Any], **kwargs: Any) -> None:
    kwargs.setdefault("now", NOW)
    verify_request(SECRET, **request, **kwargs)


def test_signed_request_verifies() -> None:
    verify(signed())


def test_sign_returns_the_three_headers() -> None:
    headers = sign_request(SECRET, method="GET", path="/ping", now=NOW)
    assert set(headers) == {SIGNATURE_HEADER, TIMESTAMP_HEADER, NONCE_HEADER}
    assert headers[TIMESTAMP_HEADER] == str(int(NOW))
    assert headers[SIGNATURE_HEADER].startswith("v1=")
    assert len(headers[SIGNATURE_HEADER]) == 3 + 64


def test_nonces_differ_between_requests() -> None:
    first = sign_request(SECRET, method="GET", path="/ping", now=NOW)
    second = sign_request(SECRET, method="GET", path="/ping", now=NOW)
    assert first[NONCE_HEADER] != second[NONCE_HEADER]
    assert first[SIGNATURE_HEADER] != second[SIGNATURE_HEADER]


@pytest.mark.parametrize(
    ("changes", "code"),
    [
        pytest.param({"method": "PUT"}, "mismatch", id="method"),
        pytest.param({"path": "/baseurl/action/show/6"}, "mismatch", id="path"),
        pytest.param({"query": "a=2&b=%C3%A9"}, "mismatch", id="query"),
        pytest.param({"query": "b=%C3%A9&a=1"}, "mismatch", id="query-reordered"),
        pytest.param({"body": b"ebuio_u_username=mallory&x=1"}, "mismatch", id="body"),
        pytest.param({"body": None}, "mismatch", id="body-dropped"),
        pytest.param(
            {"extra_headers": {"X-Plugit-Remote-Addr": "10.0.0.1"}}, "mismatch", id="plugit-header"
        ),
        pytest.param(
            {"extra_headers": {"X-Plugit-User-Username": "admin"}},
            "mismatch",
            id="added-plugit-header",
        ),
        pytest.param(
            {"extra_headers": {"X-Plugitsession-Cart": "999"}}, "mismatch", id="session-header"
        ),
        pytest.param(
            {"extra_headers": {SIGNATURE_HEADER: "v1=" + "0" * 64}}, "mismatch", id="signature"
        ),
        pytest.param(
            {"extra_headers": {TIMESTAMP_HEADER: str(int(NOW) + 1)}}, "mismatch", id="timestamp"
        ),
        pytest.param({"extra_headers": {NONCE_HEADER: "other-nonce"}}, "mismatch", id="nonce"),
        pytest.param({"extra_headers": {SIGNATURE_HEADER: ""}}, "missing", id="empty-signature"),
        pytest.param({"extra_headers": {SIGNATURE_HEADER: "v2=abc"}}, "malformed", id="version"),
        pytest.param({"extra_headers": {SIGNATURE_HEADER: "v1=zz"}}, "malformed", id="not-hex"),
        pytest.param(
            {"extra_headers": {SIGNATURE_HEADER: "v1=" + "é" * 64}}, "malformed", id="non-ascii"
        ),
        pytest.param(
            {"extra_headers": {TIMESTAMP_HEADER: "soon"}}, "malformed", id="timestamp-word"
        ),
        pytest.param(
            {"extra_headers": {TIMESTAMP_HEADER: "1²"}}, "malformed", id="timestamp-superscript"
        ),
        pytest.param(
            {"extra_headers": {TIMESTAMP_HEADER: "9" * 5000}}, "malformed", id="timestamp-huge"
        ),
        pytest.param({"extra_headers": {NONCE_HEADER: "n" * 129}}, "malformed", id="nonce-long"),
        pytest.param({"extra_headers": {NONCE_HEADER: "a b"}}, "malformed", id="nonce-space"),
    ],
)
def test_tampering_is_refused(changes: dict[str, Any], code: str) -> None:
    with pytest.raises(SignatureError) as caught:
        verify(signed(**changes))
    assert caught.value.code == code
    assert SECRET not in caught.value.message


def test_wrong_secret_is_a_mismatch() -> None:
    with pytest.raises(SignatureError) as caught:
        verify_request("another-secret-0123456789abcdef", **signed(), now=NOW)
    assert caught.value.code == "mismatch"


@pytest.mark.parametrize(
    "missing",
    [
        pytest.param(SIGNATURE_HEADER, id="signature"),
        pytest.param(TIMESTAMP_HEADER, id="timestamp"),
        pytest.param(NONCE_HEADER, id="nonce"),
    ],
)
def test_missing_header(missing: str) -> None:
    request = signed()
    del request["headers"][missing]
    with pytest.raises(SignatureError) as caught:
        verify(request)
    assert caught.value.code == "missing"


@pytest.mark.parametrize(
    ("offset", "ok"),
    [
        pytest.param(0, True, id="now"),
        pytest.param(299, True, id="just-fresh"),
        pytest.param(-299, True, id="clock-skew-ahead"),
        pytest.param(301, False, id="stale"),
        pytest.param(-301, False, id="from-the-future"),
    ],
)
def test_freshness(offset: int, ok: bool) -> None:
    request = signed()
    if ok:
        verify(request, now=NOW + offset, max_age=300)
    else:
        with pytest.raises(SignatureError) as caught:
            verify(request, now=NOW + offset, max_age=300)
        assert caught.value.code == "stale"


def test_replay_is_refused_and_mismatch_burns_no_nonce() -> None:
    nonces = NonceRegistry(ttl=600)
    request = signed()
    forged = signed(body=b"other")
    forged["headers"] = dict(request["headers"])
    with pytest.raises(SignatureError):
        verify(forged, nonces=nonces)  # a forgery must not use up the genuine nonce
    verify(request, nonces=nonces)
    with pytest.raises(SignatureError) as caught:
        verify(request, nonces=nonces)
    assert caught.value.code == "replayed"


def test_nonce_registry_forgets_after_ttl() -> None:
    nonces = NonceRegistry(ttl=0.05)
    assert nonces.add("abc")
    assert not nonces.add("abc")
    time.sleep(0.1)
    assert nonces.add("abc")


def test_header_names_are_case_and_underscore_insensitive() -> None:
    request = signed()
    request["headers"] = {
        name.lower().replace("-", "_") if name.startswith("X-Plugit-R") else name.upper(): value
        for name, value in request["headers"].items()
    }
    verify(request)


def test_headers_as_pairs_and_bytes_or_str_query() -> None:
    pairs = [("X-Plugit-Org", "7")]
    headers = sign_request(SECRET, method="get", path="/p", query=b"q=1", headers=pairs, now=NOW)
    verify_request(
        SECRET,
        method="GET",
        path="/p",
        query="q=1",
        body=b"",
        headers=[*pairs, *headers.items()],
        now=NOW,
    )


def test_unrelated_headers_are_not_signed() -> None:
    verify(signed(extra_headers={"User-Agent": "changed", "Accept": "*/*"}))

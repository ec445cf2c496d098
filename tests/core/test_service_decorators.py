"""Every decorator, as seen by a proxy over HTTP: the meta it produces, CORS, send_etag, and the
request helpers actions use (PROTOCOL.md 3 and 4.4)."""

from __future__ import annotations

import datetime
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import requests

from plugit_core.service import (
    PlugItService,
    ServiceRequest,
    action,
    address_in_networks,
    cache,
    crossdomain,
    get_session_from_request,
    json_only,
    no_template,
    only_admin_user,
    only_logged_user,
    only_member_user,
    only_orga_admin_user,
    only_orga_member_user,
    public,
    send_etag,
    user_info,
    xml_only,
)
from plugit_core.testing import serve


def make(*decorators: Callable[[Any], Any], route: str = "/a", **action_kwargs: Any) -> Any:
    """A fresh action at ``route`` with ``decorators`` applied (the first listed is outermost)."""

    def fn(request: ServiceRequest, **values: Any) -> Any:
        return {"ok": True}

    for decorator in reversed(decorators):
        fn = decorator(fn)
    return action(route, **action_kwargs)(fn)


def meta_of(http: requests.Session, served: Callable[..., str], fn: Any) -> dict[str, Any]:
    url = served(PlugItService([fn]))
    response = http.get(f"{url}/meta/a")
    assert response.status_code == 200
    return response.json()


@pytest.mark.parametrize(
    ("decorators", "expected"),
    [
        pytest.param((), {}, id="undecorated"),
        pytest.param((only_logged_user(),), {"only_logged_user": True}, id="only_logged_user"),
        pytest.param((only_member_user(),), {"only_member_user": True}, id="only_member_user"),
        pytest.param((only_admin_user(),), {"only_admin_user": True}, id="only_admin_user"),
        pytest.param(
            (only_orga_member_user(),), {"only_orga_member_user": True}, id="only_orga_member"
        ),
        pytest.param(
            (only_orga_admin_user(),), {"only_orga_admin_user": True}, id="only_orga_admin"
        ),
        pytest.param((public(),), {"public": True}, id="public"),
        pytest.param((json_only(),), {"json_only": True}, id="json_only"),
        pytest.param((xml_only(),), {"xml_only": True}, id="xml_only"),
        pytest.param((no_template(),), {"no_template": True}, id="no_template"),
        pytest.param(
            (user_info(["username", "email"]),),
            {"user_info": ["username", "email"]},
            id="user_info",
        ),
        pytest.param((user_info("pk"),), {"user_info": ["pk"]}, id="user_info-one-string"),
        pytest.param(
            (address_in_networks(["10.0.0.0/8", "2001:db8::/32"]),),
            {"address_in_networks": ["10.0.0.0/8", "2001:db8::/32"]},
            id="address_in_networks",
        ),
        pytest.param((address_in_networks([]),), {"address_in_networks": []}, id="address_in_none"),
        pytest.param(
            (cache(time=60, byUser=False),),
            {"cache_time": 60, "cache_by_user": False},
            id="cache-shared",
        ),
        pytest.param(
            (cache(time=60, byUser=True),),
            {"cache_time": 60, "cache_by_user": True},
            id="cache-per-user",
        ),
        pytest.param(
            (cache(time=60),), {"cache_time": 60, "cache_by_user": False}, id="cache-public-default"
        ),
        # Weakness W5: a restricted action's page is never shared between users by default.
        pytest.param(
            (cache(time=60), only_logged_user()),
            {"cache_time": 60, "cache_by_user": True, "only_logged_user": True},
            id="w5-cache-above-restriction",
        ),
        pytest.param(
            (only_member_user(), cache(time=60)),
            {"cache_time": 60, "cache_by_user": True, "only_member_user": True},
            id="w5-cache-below-restriction",
        ),
        pytest.param(
            (only_orga_admin_user(), cache(time=5, byUser=False)),
            {"cache_time": 5, "cache_by_user": False, "only_orga_admin_user": True},
            id="explicit-share-wins",
        ),
        pytest.param((send_etag(),), {}, id="send_etag-not-in-meta"),
        pytest.param((crossdomain(origin="*"),), {}, id="crossdomain-not-in-meta"),
        pytest.param(
            (only_logged_user(), public(), json_only(), user_info(["pk"])),
            {"only_logged_user": True, "public": True, "json_only": True, "user_info": ["pk"]},
            id="stacked",
        ),
    ],
)
def test_meta_keys(
    http: requests.Session,
    served: Callable[..., str],
    decorators: tuple[Any, ...],
    expected: dict[str, Any],
) -> None:
    assert meta_of(http, served, make(*decorators)) == {"template_tag": "", **expected}


def test_decorators_work_above_or_below_action(
    http: requests.Session, served: Callable[..., str]
) -> None:
    @only_admin_user()
    @action("/a")
    @json_only()
    def fn(request: ServiceRequest) -> dict:
        return {}

    assert meta_of(http, served, fn) == {
        "template_tag": "",
        "only_admin_user": True,
        "json_only": True,
    }


@pytest.mark.parametrize(
    ("call", "error"),
    [
        pytest.param(lambda: cache(time=-1), "cache time", id="negative-cache"),
        pytest.param(lambda: cache(time=True), "cache time", id="bool-cache"),
        pytest.param(lambda: cache(time=1.5), "cache time", id="float-cache"),
        pytest.param(
            lambda: address_in_networks(["10.0.0.0/99"]), "not an IP network", id="bad-network"
        ),
    ],
)
def test_bad_decorator_arguments_fail_at_import(call: Callable[[], Any], error: str) -> None:
    with pytest.raises(ValueError, match=error):
        call()


# -- crossdomain -----------------------------------------------------------------------------------


@action("/plain", methods=["GET", "POST"])
def plain(request: ServiceRequest) -> dict:
    return {"called": True}


@crossdomain(origin="https://a.example", headers=["x-one", "x-two"], max_age=60)
@action("/cors-above", methods=["GET", "POST"])
def cors_above(request: ServiceRequest) -> dict:
    return {"called": True}


@action("/cors-below")
@crossdomain(
    origin=["https://a.example", "https://b.example"],
    methods="put",
    headers="X-Custom",
    max_age=datetime.timedelta(hours=1),
)
def cors_below(request: ServiceRequest) -> dict:
    return {"called": True}


@crossdomain(methods=["post", "get"])
@action("/cors-default")
def cors_default(request: ServiceRequest) -> dict:
    return {"called": True}


@pytest.fixture(scope="module")
def cors_url() -> Iterator[str]:
    with serve(PlugItService([plain, cors_above, cors_below, cors_default])) as url:
        yield url


@pytest.mark.parametrize(
    ("method", "path", "headers"),
    [
        pytest.param(
            "GET",
            "/action/cors-above",
            {
                "Access-Control-Allow-Origin": "https://a.example",
                "Access-Control-Max-Age": "60",
                "Access-Control-Allow-Methods": "GET, OPTIONS, POST",
                "Access-Control-Allow-Headers": "X-ONE, X-TWO",
            },
            id="decorator-above-action",
        ),
        pytest.param(
            "OPTIONS",
            "/action/cors-above",
            {"Access-Control-Allow-Origin": "https://a.example"},
            id="options-above",
        ),
        pytest.param(
            "OPTIONS",
            "/action/cors-below",
            {
                "Access-Control-Allow-Origin": "https://a.example, https://b.example",
                "Access-Control-Max-Age": "3600",
                "Access-Control-Allow-Methods": "PUT",
                "Access-Control-Allow-Headers": "X-Custom",
            },
            id="decorator-below-action",
        ),
        pytest.param(
            "GET",
            "/action/cors-default",
            {
                "Access-Control-Allow-Origin": "*",
                "Access-Control-Max-Age": "21600",
                "Access-Control-Allow-Methods": "GET, POST",
            },
            id="defaults",
        ),
    ],
)
def test_crossdomain_headers(
    cors_url: str, http: requests.Session, method: str, path: str, headers: dict[str, str]
) -> None:
    response = http.request(method, cors_url + path)
    assert response.status_code == 200
    for name, value in headers.items():
        assert response.headers[name] == value
    if method == "OPTIONS":
        assert response.json() == {}  # the action is not called
    else:
        assert response.json() == {"called": True}


def test_crossdomain_does_not_leak_into_other_actions(
    cors_url: str, http: requests.Session
) -> None:
    # W15: the original mutated the shared default method list, so every later action gained
    # OPTIONS.
    response = http.options(f"{cors_url}/action/plain")
    assert response.status_code == 405
    assert "OPTIONS" not in response.headers["Allow"]
    assert "Access-Control-Allow-Origin" not in http.get(f"{cors_url}/action/plain").headers
    assert plain.__plugit__.methods == ("GET", "POST")


def test_crossdomain_headers_absent_when_not_configured(
    cors_url: str, http: requests.Session
) -> None:
    response = http.get(f"{cors_url}/action/cors-default")
    assert "Access-Control-Allow-Headers" not in response.headers


# -- send_etag -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("decorated", "result", "etag", "body"),
    [
        # Sent exactly as the action gave it, as the original did: never quoted for it.
        pytest.param(True, {"_plugit_etag": "v1", "a": 1}, "v1", {"a": 1}, id="moved-to-header"),
        pytest.param(True, {"_plugit_etag": '"v2"', "a": 1}, '"v2"', {"a": 1}, id="already-quoted"),
        pytest.param(True, {"_plugit_etag": 'W/"v3"'}, 'W/"v3"', {}, id="weak"),
        pytest.param(True, {"_plugit_etag": 7}, "7", {}, id="number"),
        pytest.param(True, {"_plugit_etag": 'a"b c'}, 'a"b c', {}, id="any-text"),
        pytest.param(True, {"_plugit_etag": "", "a": 1}, None, {"a": 1}, id="empty-removed"),
        pytest.param(True, {"a": 1}, None, {"a": 1}, id="no-etag-key"),
        pytest.param(True, {}, None, {}, id="empty-result"),
        pytest.param(
            False, {"_plugit_etag": "v1", "a": 1}, None, {"_plugit_etag": "v1", "a": 1}, id="off"
        ),
    ],
)
def test_send_etag(
    http: requests.Session,
    served: Callable[..., str],
    decorated: bool,
    result: dict,
    etag: str | None,
    body: dict,
) -> None:
    def fn(request: ServiceRequest) -> dict:
        return dict(result)

    if decorated:
        fn = send_etag()(fn)
    url = served(PlugItService([action("/e")(fn)]))
    response = http.get(f"{url}/action/e")
    assert response.status_code == 200
    assert response.headers.get("ETag") == etag
    assert response.json() == body  # W21: never left in the body


# -- request helpers -------------------------------------------------------------------------------


@action("/who", methods=["GET", "POST"])
@user_info(["username", "subscription_labels"])
def who(request: ServiceRequest) -> dict:
    return {
        "user": request.user_info,
        "orga": request.orga_pk,
        "session": request.plugit_session,
        "helper_session": get_session_from_request(request),
    }


@pytest.mark.parametrize(
    ("method", "channel"),
    [pytest.param("GET", "params", id="query"), pytest.param("POST", "data", id="form")],
)
def test_user_orga_and_session_reach_the_action(
    http: requests.Session, served: Callable[..., str], method: str, channel: str
) -> None:
    url = served(PlugItService([who]))
    fields = {
        "ebuio_u_username": "alice",
        "ebuio_u_subscription_labels": ["gold", "beta"],
        "ebuio_orgapk": "-2",
        "other": "x",
    }
    response = http.request(
        method,
        f"{url}/action/who",
        headers={"X-Plugitsession-Cart": "3", "X-PlugItSession-Theme": "dark"},
        **{channel: fields},
    )
    assert response.json() == {
        "user": {"username": "alice", "subscription_labels": ["gold", "beta"]},
        "orga": "-2",
        "session": {"cart": "3", "theme": "dark"},
        "helper_session": {"cart": "3", "theme": "dark"},
    }


def test_anonymous_user_has_no_info(http: requests.Session, served: Callable[..., str]) -> None:
    url = served(PlugItService([who]))
    assert http.get(f"{url}/action/who").json() == {
        "user": {},
        "orga": None,
        "session": {},
        "helper_session": {},
    }

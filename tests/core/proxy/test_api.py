"""The callback API, called the way services call it: over HTTP, with their own key."""

from __future__ import annotations

import contextlib

import pytest
import requests
from proxy_helpers import SECRET, STRONG_KEY, proxy_config

from plugit_core.hookspecs import hookimpl
from plugit_core.proxy.api import MAX_API_BODY, ApiError
from plugit_core.proxy.app import ProxyApp
from plugit_core.service import PlugItAPI, PlugItAPIAuthError, PlugItAPIError
from plugit_core.testing import serve

KEY_ONE = "api-key-of-service-one-0123456789"
KEY_TWO = "api-key-of-service-two-9876543210"


def test_dev_mode_api_serves_the_simulated_world(make_browser):
    browser = make_browser()
    api = PlugItAPI(browser.base + "/svc/ebuio_api/")
    try:
        member = api.get_user(-2)
        assert member.username == "Member" and member.id == "-2" and member.ebuio_member is True
        assert member.orgas == []
        assert [m.username for m in api.get_project_members()] == ["Logged", "Member", "Admin"]
        assert [o.name for o in api.get_orgas()] == ["BBC", "CNN", "EBU", "RTS"]
        assert api.get_orga(-1).codops == "zzebu"
        assert api.get_orga(-42) is None
        assert api.get_user(12345) is None
        assert api.get_subscription_labels(-1) == []
        assert api.get_techgroups() == []
    finally:
        api.session.close()
    assert browser.post("/svc/ebuio_api/ebuio/forum/").json() == {"error": "no-on-ebuio"}
    refused = browser.post(
        "/svc/ebuio_api/mail/", data={"subject": "s", "message": "m", "dests": "a@b.c"}
    )
    assert refused.status_code == 503 and refused.json()["error"] == "mail_unavailable"
    assert browser.get("/svc/ebuio_api/nope").status_code == 404
    wrong_method = browser.delete("/svc/ebuio_api/members/")
    assert wrong_method.status_code == 405 and "GET" in wrong_method.headers["Allow"]
    home = browser.get("/svc/ebuio_api/")
    assert home.status_code == 200 and "/svc/ebuio_api/members/" in home.text


class KarmaPlugin:
    @hookimpl
    def plugit_register_api_endpoints(self, register, proxy):
        def karma(call, pk):
            user = call.user(pk)
            if user.username == "erin":
                raise ApiError(409, "no_karma", "erin has no karma")
            return {"service": call.service, "user": user.username, "karma": 42}

        register("karma/<pk>", karma)
        register("echo", lambda call: {"size": len(call.request.form["text"])}, ("POST",))


@pytest.fixture
def site(service_url, tmp_path):
    services = [
        {"name": "one", "url": service_url, "mount": "/one/", "secret": SECRET, "api_key": KEY_ONE},
        {"name": "two", "url": service_url, "mount": "/two/", "secret": SECRET, "api_key": KEY_TWO},
    ]
    config = proxy_config(
        service_url,
        services=services,
        dev_mode=False,
        secret_key=STRONG_KEY,
        session_cookie={"secure": False},
        users="sqlite",
        users_sqlite={"path": str(tmp_path / "dir.sqlite3")},
    )
    proxy = ProxyApp(config, plugins=[KarmaPlugin()], load_entry_points=False)
    store = proxy.users
    dana = store.create_user("dana", email="dana@example.org", first_name="Dana")
    erin = store.create_user("erin")
    store.grant(dana.pk, "one", "admin")
    store.grant(erin.pk, "one", "member")
    store.grant(erin.pk, "two", "member")
    acme = store.create_orga("Acme", "acme")
    store.add_to_orga(dana.pk, acme.pk, admin=True)
    with contextlib.ExitStack() as stack:
        stack.callback(proxy.close)
        stack.callback(store.close)
        base = stack.enter_context(serve(proxy))
        yield base, {"dana": dana.pk, "erin": erin.pk, "acme": acme.pk}


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param({}, id="no-key"),
        pytest.param({"Authorization": "Bearer wrong-key"}, id="wrong-key"),
        pytest.param({"Authorization": f"Bearer {KEY_TWO}"}, id="other-services-key"),
        pytest.param({"Authorization": f"Basic {KEY_ONE}"}, id="wrong-scheme"),
    ],
)
def test_every_call_needs_the_services_own_key(site, headers):
    base, _ = site
    response = requests.get(f"{base}/one/ebuio_api/members/", headers=headers, timeout=10)
    assert response.status_code == 403
    assert response.json()["error"] == "forbidden"
    assert KEY_ONE not in response.text


def test_key_in_the_url_is_not_accepted(site):
    base, _ = site
    response = requests.get(
        f"{base}/one/ebuio_api/members/?key={KEY_ONE}&api_key={KEY_ONE}", timeout=10
    )
    assert response.status_code == 403


def test_a_service_sees_only_its_own_members(site):
    base, ids = site
    one = PlugItAPI(f"{base}/one/ebuio_api/", KEY_ONE)
    two = PlugItAPI(f"{base}/two/ebuio_api/", KEY_TWO)
    try:
        dana = one.get_user(ids["dana"])
        assert dana.username == "dana" and dana.email == "dana@example.org"
        assert dana.ebuio_admin is True and dana.ebuio_member is True
        assert dana.orgas == [
            {"id": ids["acme"], "name": "Acme", "codops": "acme", "is_admin": True}
        ]
        assert sorted(m.username for m in one.get_project_members()) == ["dana", "erin"]
        assert [m.username for m in two.get_project_members()] == ["erin"]
        assert two.get_user(ids["dana"]) is None  # not a member of two: same answer as unknown
        assert two.get_user(99999) is None
        assert one.get_orga(ids["acme"]).name == "Acme"
    finally:
        one.session.close()
        two.session.close()


def test_typed_errors_of_the_client(site):
    base, _ = site
    wrong = PlugItAPI(f"{base}/one/ebuio_api/", "not-the-key")
    try:
        with pytest.raises(PlugItAPIAuthError):
            wrong.get_project_members()
    finally:
        wrong.session.close()


def test_a_plugin_adds_an_api_endpoint(site):
    base, ids = site
    auth = {"Authorization": f"Bearer {KEY_ONE}"}
    ok = requests.get(f"{base}/one/ebuio_api/karma/{ids['dana']}", headers=auth, timeout=10)
    assert ok.json() == {"service": "one", "user": "dana", "karma": 42}
    conflict = requests.get(f"{base}/one/ebuio_api/karma/{ids['erin']}", headers=auth, timeout=10)
    assert conflict.status_code == 409 and conflict.json()["error"] == "no_karma"
    scoped = requests.get(
        f"{base}/two/ebuio_api/karma/{ids['dana']}",
        headers={"Authorization": f"Bearer {KEY_TWO}"},
        timeout=10,
    )
    assert scoped.status_code == 404


def test_no_endpoint_gets_a_cut_body(site):
    base, _ = site
    headers = {
        "Authorization": f"Bearer {KEY_ONE}",
        "Content-Type": "application/x-www-form-urlencoded",
    }

    def chunks(size):  # no Content-Length: sent chunked
        yield b"text="
        for _ in range(size // 65536):
            yield b"x" * 65536

    url = f"{base}/one/ebuio_api/echo"
    small = requests.post(url, data=chunks(MAX_API_BODY // 2), headers=headers, timeout=10)
    assert small.json() == {"size": MAX_API_BODY // 2}
    big = requests.post(url, data=chunks(MAX_API_BODY + 65536), headers=headers, timeout=10)
    assert big.status_code == 413 and big.json()["error"] == "too_large", big.text
    declared = requests.post(url, data=b"text=" + b"x" * MAX_API_BODY, headers=headers, timeout=10)
    assert declared.status_code == 413


def test_registering_an_endpoint_twice_is_refused(service_url):
    class Twice:
        @hookimpl
        def plugit_register_api_endpoints(self, register, proxy):
            register("members/", lambda call: {})

    with pytest.raises(ValueError, match="registered twice"):
        ProxyApp(proxy_config(service_url), plugins=[Twice()], load_entry_points=False)


def test_client_error_on_unexpected_answers(site):
    base, _ = site
    api = PlugItAPI(f"{base}/one/ebuio_api/", KEY_ONE)
    try:
        with pytest.raises(PlugItAPIError):
            api.send_mail(None, "subject", ["x@example.org"], "body")  # no mail backend: 503
    finally:
        api.session.close()

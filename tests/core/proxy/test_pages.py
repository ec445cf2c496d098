"""Pages through the proxy: rendering, layout, access rules, forwarding, replies."""

from __future__ import annotations

import json

import pytest
from proxy_helpers import SECRET

MODES = ("ano", "log", "mem", "adm")


def test_page_renders_service_template_inside_layout(browser):
    response = browser.get("/svc/")
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/html")
    html = response.text
    assert '<h1 id="title">Home &lt;b&gt;</h1>' in html  # service data is escaped
    assert 'id="plugit-content"' in html  # inside the theme's layout
    assert '<p id="base">/svc/</p>' in html
    # the menubar block becomes the menu, not part of the content
    assert 'id="plugit-menu"' in html and html.count('id="menu-link"') == 1
    assert "{~__PLUGIT_CSRF_TOKEN__~}" not in html


def test_csrf_placeholder_replaced_by_the_users_token(browser):
    token = browser.csrf()
    assert len(token) >= 32
    assert browser.csrf() == token  # stable within the session


@pytest.mark.parametrize(
    ("path", "allowed"),
    [
        pytest.param("logged", {"log", "mem", "adm"}, id="only_logged_user"),
        pytest.param("member", {"mem", "adm"}, id="only_member_user"),
        pytest.param("admin", {"adm"}, id="only_admin_user"),
        pytest.param("orga_member", {"mem", "adm"}, id="only_orga_member_user"),
        pytest.param("orga_admin", {"adm"}, id="only_orga_admin_user"),
    ],
)
@pytest.mark.parametrize("orga_mode", [True, False], ids=["orga-mode", "no-orga-mode"])
def test_access_matrix_of_simulated_users(make_browser, service_url, path, allowed, orga_mode):
    # As in the original, the simulated users' organisation rights are their service rights,
    # whether orga mode is on (the current simulated organisation) or off.
    from proxy_helpers import proxy_config

    browser = make_browser(proxy_config(service_url, mount_options={"orga_mode": orga_mode}))
    for mode in MODES:
        browser.as_user(mode)
        response = browser.get(f"/svc/{path}")
        expected = 200 if mode in allowed else 403
        assert response.status_code == expected, (mode, response.status_code)
        if expected == 403:
            assert f"{path.replace('orga_', 'orga_')}" in response.text  # reason shown in dev mode


def test_403_reason_hidden_outside_dev_mode(make_browser, service_url):
    from proxy_helpers import STRONG_KEY, proxy_config

    browser = make_browser(
        proxy_config(
            service_url, dev_mode=False, secret_key=STRONG_KEY, session_cookie={"secure": False}
        )
    )
    response = browser.get("/svc/logged")
    assert response.status_code == 403
    assert "only_logged_user" not in response.text
    assert "Please log in" in response.text


def test_address_in_networks_uses_the_peer_not_client_headers(browser):
    response = browser.get(
        "/svc/local_only", headers={"X-Forwarded-For": "10.1.2.3", "X-Real-IP": "10.1.2.3"}
    )
    assert response.status_code == 403
    assert "address_in_networks" in response.text


def test_unknown_action_is_404(browser):
    response = browser.get("/svc/does/not/exist")
    assert response.status_code == 404
    assert 'data-status="404"' in response.text


def test_user_info_and_client_parameters_forwarded(browser):
    browser.as_user("adm")
    response = browser.get(
        "/svc/echo",
        params=[
            ("a", "1"),
            ("a", "2"),
            ("b", "x"),
            ("ebuio_u_username", "forged"),
            ("EBUIO_orgapk", "9"),
        ],
    )
    assert response.status_code == 200
    data = response.json()
    args = data["args"]
    assert ["a", "1"] in args and ["a", "2"] in args and ["b", "x"] in args
    assert ["ebuio_u_username", "Admin"] in args  # ours, not the client's
    assert ["ebuio_u_pk", "-3"] in args
    assert ["ebuio_u_ebuio_admin", "True"] in args
    assert not any(name.lower() == "ebuio_orgapk" for name, _ in args)
    assert sum(1 for name, _ in args if name == "ebuio_u_username") == 1


def test_anonymous_user_info_omits_null_values(browser):
    data = browser.get("/svc/echo").json()
    names = [name for name, _ in data["args"]]
    assert "ebuio_u_pk" not in names  # null is omitted, as in the original
    assert ["ebuio_u_ebuio_admin", "False"] in data["args"]


def test_post_form_and_files_forwarded_with_user_info_in_body(browser):
    browser.as_user("log")
    token = browser.csrf()
    response = browser.post(
        "/svc/echo?q=1",
        data=[("csrfmiddlewaretoken", token), ("f", "1"), ("f", "2"), ("ebuio_u_pk", "forged")],
        files=[
            ("upload", ("hello.txt", b"hello world", "text/plain")),
            ("ebuio_file", ("x", b"x")),
        ],
    )
    assert response.status_code == 200, response.text
    data = response.json()
    assert data["method"] == "POST"
    assert ["q", "1"] in data["args"]
    assert ["f", "1"] in data["form"] and ["f", "2"] in data["form"]
    assert ["ebuio_u_pk", "-1"] in data["form"]
    assert not any(name == "csrfmiddlewaretoken" for name, _ in data["form"])
    assert data["files"] == [["upload", "hello.txt", "hello world"]]


def test_put_body_is_forwarded(browser):
    browser.as_user("log")
    token = browser.csrf()
    response = browser.put(
        "/svc/echo",
        data=json.dumps({"k": "v"}),
        headers={"Content-Type": "application/json", "X-CSRFToken": token},
    )
    assert response.status_code == 200
    data = response.json()
    assert data["method"] == "PUT"
    assert json.loads(data["body"]) == {"k": "v"}
    assert ["ebuio_u_pk", "-1"] in data["args"]


def test_unsafe_methods_need_the_csrf_token(browser, calls):
    browser.as_user("log")
    for method in ("post", "put", "delete"):
        response = getattr(browser, method)("/svc/echo", data={"a": "1"})
        assert response.status_code == 403, method
    response = browser.post("/svc/echo", data={"csrfmiddlewaretoken": "wrong" * 10})
    assert response.status_code == 403


@pytest.mark.parametrize(
    "header",
    [
        pytest.param("X-Plugit-Remote-Addr", id="dashes"),
        pytest.param("X-Plugit_Remote_Addr", id="underscores"),
        pytest.param("x-plugit-remote-addr", id="lower"),
        pytest.param("X-Plugit-User-Username", id="user-header"),
        pytest.param("X-Plugitsession-color", id="session-header"),
    ],
)
def test_client_plugit_headers_are_stripped(browser, header):
    data = browser.get("/svc/echo", headers={header: "10.9.9.9-forged"}).json()
    assert all("forged" not in value for value in data["headers"].values()), data["headers"]
    assert data["headers"]["X-Plugit-Remote-Addr"] == "127.0.0.1"


def test_information_headers(browser):
    data = browser.get(
        "/svc/echo",
        headers={
            "If-None-Match": '"abc"',
            "Origin": "https://o.example",
            "Access-Control-Request-Method": "PUT",
        },
    ).json()
    headers = data["headers"]
    assert headers["X-Plugit-If-None-Match"] == '"abc"'
    assert headers["X-Plugit-Origin"] == "https://o.example"
    assert headers["X-Plugit-Access-Control-Request-Method"] == "PUT"
    assert "X-Plugit-Signature" in headers  # the proxy signs what it sends


def test_service_session_values_round_trip_and_stay_private(make_browser, service_url):
    from proxy_helpers import proxy_config

    services = [
        {"name": "one", "url": service_url, "mount": "/one/", "secret": SECRET},
        {"name": "two", "url": service_url, "mount": "/two/", "secret": SECRET},
    ]
    browser = make_browser(proxy_config(service_url, services=services))
    assert browser.get("/one/set_session", params={"v": "green"}).status_code == 200
    one = browser.get("/one/echo").json()
    assert one["headers"]["X-Plugitsession-Color"] == "green"
    assert "color=green" in one["cookie"]
    two = browser.get("/two/echo").json()
    assert not any(k.lower().startswith("x-plugitsession") for k in two["headers"])
    assert two["cookie"] is None


@pytest.mark.parametrize(
    ("code", "status"),
    [
        pytest.param(401, 401, id="401"),
        pytest.param(403, 403, id="403"),
        pytest.param(404, 404, id="404"),
        pytest.param(409, 409, id="409-kept"),
        pytest.param(500, 502, id="500-service-error"),
        pytest.param(503, 502, id="503-service-error"),
    ],
)
def test_status_mapping(browser, code, status):
    response = browser.get(f"/svc/status/{code}")
    assert response.status_code == status
    assert 'id="plugit-error"' in response.text


def test_429_keeps_retry_after(browser):
    response = browser.get("/svc/status/429")
    assert response.status_code == 429
    assert response.headers["Retry-After"] == "7"


def test_etag_forwarded_and_removed_from_body(browser):
    response = browser.get("/svc/status/200")
    assert response.status_code == 200
    assert response.headers["ETag"] == "v1"  # as the action gave it, as the original sent it
    assert response.json() == {"fine": True}


def test_json_only_is_json_with_nosniff_whatever_the_accept_header(browser):
    response = browser.get("/svc/echo", headers={"Accept": "text/html"})
    assert response.headers["Content-Type"].startswith("application/json")
    assert response.headers["X-Content-Type-Options"] == "nosniff"


def test_xml_only(browser):
    response = browser.get("/svc/xml")
    assert response.headers["Content-Type"].startswith("application/xml")
    assert response.text == "<r><v>1 &lt; 2</v></r>"


def test_no_template_page_has_no_layout(browser):
    response = browser.get("/svc/plain")
    assert response.status_code == 200
    assert response.text.startswith('<p id="plain">Plain|')
    assert "plugit-content" not in response.text
    assert "{~__PLUGIT_CSRF_TOKEN__~}" not in response.text


def test_redirect_is_prefixed(browser):
    response = browser.get("/svc/redirect", params={"to": "/cached"})
    assert response.status_code == 302
    assert response.headers["Location"] == "/svc/cached"


@pytest.mark.parametrize(
    ("target", "status"),
    [
        pytest.param("/elsewhere", 302, id="site-path"),
        pytest.param("//evil.example/x", 502, id="protocol-relative"),
        pytest.param("https://evil.example/", 502, id="foreign-host"),
        pytest.param("javascript:alert(1)", 502, id="javascript"),
        pytest.param("https://trusted.example/ok", 302, id="allow-listed-host"),
    ],
)
def test_no_prefix_redirects_are_checked(make_browser, service_url, target, status):
    from proxy_helpers import proxy_config

    browser = make_browser(proxy_config(service_url, allowed_redirect_hosts=["trusted.example"]))
    response = browser.get("/svc/redirect", params={"to": target, "np": "1"})
    assert response.status_code == status
    if status == 302:
        assert response.headers["Location"] == target


def test_file_reply(browser):
    response = browser.get("/svc/file")
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/css")
    assert response.headers["Content-Disposition"] == "attachment; filename=s.css"
    assert response.text == "body { color: red; }\n"


def test_media_proxy(browser):
    response = browser.get("/svc/media/site.css")
    assert response.status_code == 200
    assert response.text == "body { color: red; }\n"
    assert response.headers["Cache-Control"] == "public, max-age=3600"
    assert browser.get("/svc/media/missing.css").status_code == 404
    assert browser.get("/svc/media/%2e%2e/proxy_service.py").status_code == 404


def test_cors_headers_forwarded_and_options_skips_access_rules(browser):
    response = browser.get("/svc/cors")
    assert response.headers["Access-Control-Allow-Origin"] == "https://app.example"
    preflight = browser.options("/svc/cors", headers={"Origin": "https://app.example"})
    assert preflight.status_code == 200
    assert preflight.headers["Access-Control-Allow-Origin"] == "https://app.example"


@pytest.mark.parametrize(
    "path",
    [
        pytest.param("garbage", id="not-json"),
        pytest.param("list_data", id="json-not-object"),
        pytest.param("bug", id="service-exception"),
        pytest.param("bad_template", id="template-syntax-error"),
        pytest.param("hostile", id="sandbox-escape"),
    ],
)
def test_service_faults_give_a_themed_502(browser, path):
    response = browser.get(f"/svc/{path}")
    assert response.status_code == 502
    assert 'data-status="502"' in response.text
    assert "Traceback" not in response.text
    assert "subclasses" not in response.text.split('id="plugit-error"')[0]


def test_include_and_get_user(browser):
    response = browser.get("/svc/include")
    assert response.status_code == 200
    assert '<div id="inc"><p id="plain">Included|' in response.text
    assert '<div id="who">Member</div>' in response.text


def test_django_dialect(make_browser, service_url):
    from proxy_helpers import proxy_config

    browser = make_browser(proxy_config(service_url, mount_options={"template_dialect": "django"}))
    response = browser.get("/svc/django")
    assert response.status_code == 200, response.text
    html = response.text
    assert '<span id="ratio">75</span>' in html
    assert '<span id="dflt">none</span>' in html
    assert "<i>1a</i><i>2b</i>" in html
    assert 'name="csrfmiddlewaretoken" value="' in html
    assert "zzcommentzz" not in html


@pytest.mark.parametrize(
    "target",
    [
        pytest.param("/\t/evil.example/", id="tab"),
        pytest.param("/\x0b/evil.example/", id="vertical-tab"),
        pytest.param("/ /evil.example/", id="space"),
        pytest.param("/\x7f/evil.example/", id="del"),
    ],
)
def test_no_prefix_redirects_refuse_control_characters(browser, target):
    response = browser.get("/svc/redirect", params={"to": target, "np": "1"})
    assert response.status_code == 502
    assert "Location" not in response.headers


def test_405_keeps_the_services_allow_header(browser):
    response = browser.patch("/svc/echo", headers={"X-CSRFToken": browser.csrf()})
    assert response.status_code == 405
    allowed = {m.strip() for m in response.headers["Allow"].split(",")}
    assert {"GET", "POST", "PUT", "DELETE"} <= allowed
    assert "PATCH" not in allowed


def test_a_json_post_still_carries_the_users_values(browser):
    browser.as_user("log")
    response = browser.post(
        "/svc/whoami_json", json={"vote": 1}, headers={"X-CSRFToken": browser.csrf()}
    )
    assert response.status_code == 200
    assert response.json() == {"user": {"username": "Logged", "pk": "-1"}, "body": {"vote": 1}}

"""The callback API, called the way services call it: over HTTP, with their own key.

The sites run on SQLite and on PostgreSQL (``PLUGIT_TEST_POSTGRES_DSN``, default
``postgresql://postgres@127.0.0.1:5432/test``; skipped when unreachable, unless
``PLUGIT_REQUIRE_SERVERS=1``): users, billing, and the mail endpoint.
"""

from __future__ import annotations

import contextlib
from datetime import datetime, timedelta, timezone

import pytest
import requests
from postgres_schema import DSN, fresh_schema
from proxy_helpers import SECRET, STRONG_KEY, proxy_config

from plugit_core.hookspecs import hookimpl
from plugit_core.proxy.api import MAX_API_BODY, ApiError, parse_id
from plugit_core.proxy.app import ProxyApp
from plugit_core.service import PlugItAPI, PlugItAPIAuthError, PlugItAPIError
from plugit_core.testing import free_port, serve

KEY_ONE = "api-key-of-service-one-0123456789"
KEY_TWO = "api-key-of-service-two-9876543210"


@contextlib.contextmanager
def _store_config(store: str, tmp_path):
    """The users and billing sections for ``store``; a PostgreSQL schema of its own, dropped."""
    if store == "sqlite":
        yield {
            "users": "sqlite",
            "users_sqlite": {"path": str(tmp_path / "dir.sqlite3")},
            "billing": "sqlite",
            "billing_sqlite": {"path": str(tmp_path / "billing.sqlite3")},
        }
        return
    with fresh_schema() as schema:
        section = {"dsn": DSN, "schema": schema}
        yield {
            "users": "postgres",
            "users_postgres": section,
            "billing": "postgres",
            "billing_postgres": section,
        }


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


@pytest.fixture(params=["sqlite", "postgres"])
def site(request, service_url, tmp_path):
    """Services ``one`` and ``two``: dana administers one and belongs to Acme; erin is a member
    of both and belongs to Globex; nobody belongs to Initech.  Billing has a plan ``pro`` for
    one, and a subscription of dana's; mail is configured (nothing is ever sent)."""
    services = [
        {"name": "one", "url": service_url, "mount": "/one/", "secret": SECRET, "api_key": KEY_ONE},
        {"name": "two", "url": service_url, "mount": "/two/", "secret": SECRET, "api_key": KEY_TWO},
    ]
    with contextlib.ExitStack() as stack:
        stores = stack.enter_context(_store_config(request.param, tmp_path))
        config = proxy_config(
            service_url,
            services=services,
            dev_mode=False,
            secret_key=STRONG_KEY,
            session_cookie={"secure": False},
            mail="smtp",
            mail_smtp={
                "host": "127.0.0.1",
                "port": free_port(),
                "sender": "site@example.org",
                "queue_path": str(tmp_path / "mail.sqlite3"),
                "send_in_background": False,
            },
            **stores,
        )
        proxy = ProxyApp(config, plugins=[KarmaPlugin()], load_entry_points=False)
        store = proxy.users
        stack.callback(proxy.close)
        stack.callback(store.close)
        stack.callback(proxy.billing.close)
        dana = store.create_user("dana", email="dana@example.org", first_name="Dana")
        erin = store.create_user("erin")
        store.grant(dana.pk, "one", "admin")
        store.grant(erin.pk, "one", "member")
        store.grant(erin.pk, "two", "member")
        acme = store.create_orga("Acme", "acme")
        store.add_to_orga(dana.pk, acme.pk, admin=True)
        globex = store.create_orga("Globex", "globex")
        store.add_to_orga(erin.pk, globex.pk)
        initech = store.create_orga("Initech", "initech")
        proxy.billing.create_plan("one", "pro", "Pro")
        later = datetime.now(timezone.utc) + timedelta(days=30)
        subscription = proxy.billing.grant("one", "pro", user_pk=dana.pk, end=later)
        base = stack.enter_context(serve(proxy))
        yield (
            base,
            {
                "dana": dana.pk,
                "erin": erin.pk,
                "acme": acme.pk,
                "globex": globex.pk,
                "initech": initech.pk,
                "subscription": subscription.id,
            },
        )


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
        with pytest.raises(PlugItAPIError) as refused:
            api.send_mail(None, "subject", ["x@example.org"], "body")  # not a member's address
        assert refused.value.status == 403
    finally:
        api.session.close()


# -- organisations: a service sees those of its members --------------------------------------------


def test_a_service_sees_only_the_organisations_of_its_members(site):
    base, ids = site
    one = PlugItAPI(f"{base}/one/ebuio_api/", KEY_ONE)
    two = PlugItAPI(f"{base}/two/ebuio_api/", KEY_TWO)
    try:
        assert [o.name for o in one.get_orgas()] == ["Acme", "Globex"]  # dana's, erin's
        assert [o.name for o in two.get_orgas()] == ["Globex"]  # erin's only
        assert one.get_orga(ids["acme"]).codops == "acme"
        assert two.get_orga(ids["globex"]).name == "Globex"
        assert two.get_orga(ids["acme"]) is None  # exists, but none of two's members is in it
        assert one.get_orga(ids["initech"]) is None  # nobody's organisation
        assert two.get_orga(99999) is None
    finally:
        one.session.close()
        two.session.close()
    hidden = requests.get(
        f"{base}/two/ebuio_api/orga/{ids['acme']}",
        headers={"Authorization": f"Bearer {KEY_TWO}"},
        timeout=10,
    )
    unknown = requests.get(
        f"{base}/two/ebuio_api/orga/99999",
        headers={"Authorization": f"Bearer {KEY_TWO}"},
        timeout=10,
    )
    assert hidden.status_code == unknown.status_code == 404
    assert hidden.json() == unknown.json()  # a service cannot probe other organisations


def test_billing_grants_only_to_the_organisations_of_its_members(site):
    base, ids = site
    one = {"Authorization": f"Bearer {KEY_ONE}"}
    two = {"Authorization": f"Bearer {KEY_TWO}"}
    url = "ebuio_api/billing/subscriptions/"
    for service, headers, orga, status in [
        ("one", one, "acme", 201),  # dana's
        ("one", one, "globex", 201),  # erin's
        ("two", two, "acme", 404),  # dana is not a member of two
        ("two", two, "initech", 404),  # nobody's
    ]:
        body = {"plan": "pro" if service == "one" else "gold", "orga": ids[orga]}
        answer = requests.post(f"{base}/{service}/{url}", json=body, headers=headers, timeout=10)
        assert answer.status_code == status, (service, orga, answer.text)
        if status == 404:
            assert answer.json()["message"] == "no such organisation"
    listed = requests.get(
        f"{base}/two/{url}", params={"orga": ids["acme"]}, headers=two, timeout=10
    )
    assert listed.status_code == 404 and listed.json()["error"] == "not_found"


# -- malformed input: a 4xx JSON error, never a 5xx ----------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (5, 5),
        ("5", 5),
        ("-2", -2),
        (" 7 ", 7),
        (2**63 - 1, 2**63 - 1),
        ("-9223372036854775808", -(2**63)),
        ("0c1c1c1c-2d2d-4e4e-8f8f-a0a0a0a0a0a0", "0c1c1c1c-2d2d-4e4e-8f8f-a0a0a0a0a0a0"),
        ("9" * 30, None),
        (2**63, None),
        ("9223372036854775808", None),
        (True, None),
        (1.0, None),
        (["1"], None),
        (None, None),
        ("", None),
        ("١٢", None),  # Arabic-Indic digits: int() would read 12
        ("12\x00", None),
        ("a b", None),
        ("x" * 129, None),
        ("-", None),
    ],
)
def test_ids_a_store_can_hold(value, expected):
    assert parse_id(value) == expected


DEEP_JSON = b"[" * 50_000 + b"]" * 50_000
DEEP_OBJECT = b'{"a":' * 20_000 + b"1" + b"}" * 20_000
FORM = "application/x-www-form-urlencoded"
JSON = "application/json"

# (name, content type, body): bodies no endpoint can use.
BODIES = [
    ("deep-json-array", JSON, DEEP_JSON),
    ("deep-json-object", JSON, DEEP_OBJECT),
    ("invalid-utf8-json", JSON, b'{"plan": "\xff\xfe"}'),
    ("invalid-json", JSON, b'{"plan": '),
    ("json-array", JSON, b'["pro", 1]'),
    ("json-string", JSON, b'"pro"'),
    ("json-null", JSON, b"null"),
    ("json-huge-int", JSON, b'{"plan": "pro", "user": ' + b"9" * 5000 + b"}"),
    ("json-30-digit-user", JSON, b'{"plan": "pro", "user": 123456789012345678901234567890}'),
    ("json-infinite-user", JSON, b'{"plan": "pro", "user": 1e999}'),
    ("json-float-user", JSON, b'{"plan": "pro", "user": 1.5}'),
    ("json-bool-user", JSON, b'{"plan": "pro", "user": true}'),
    ("json-object-orga", JSON, b'{"plan": "pro", "orga": {"pk": 1}}'),
    ("json-list-plan", JSON, b'{"plan": ["pro"], "user": 1}'),
    ("json-number-dates", JSON, b'{"plan": "pro", "user": 1, "start": 5, "at": []}'),
    ("json-date-overflow", JSON, b'{"plan": "pro", "at": "0001-01-01T00:00:00+01:00"}'),
    ("json-nul", JSON, b'{"plan": "p\\u0000ro", "at": "2030\\u0000"}'),
    ("invalid-utf8-form", FORM, b"subject=\xff\xfe&plan=\xff&at=\xff"),
    ("nul-form", FORM, b"subject=a%00b&message=m%00&plan=p%00&at=2030%00&dests=a%00@b.c"),
    ("unicode-digit-user", FORM, "plan=pro&user=١٢&orga=".encode()),
    ("repeated-fields", FORM, b"plan=pro&plan=pro&at=2030-01-01&at=2031-01-01"),
    ("unknown-fields", FORM, b"colour=red&__class__=x"),
    ("text-plain", "text/plain", b"plan=pro"),
    ("xml", "application/xml", b"<plan>pro</plan>"),
    ("multipart-no-boundary", "multipart/form-data", b"--x\r\nplan\r\n"),
    ("multipart-garbage", "multipart/form-data; boundary=zz", b"--zz\r\n\r\n\xff\x00--zz--"),
    (
        "multipart-file",
        "multipart/form-data; boundary=zz",
        b'--zz\r\nContent-Disposition: form-data; name="plan"; filename="p"\r\n\r\n'
        b"pro\r\n--zz--\r\n",
    ),
    ("empty-json", JSON, b""),
]
BAD_IDS = [
    "123456789012345678901234567890",  # 30 digits
    "9223372036854775808",  # one past the 64-bit range
    "-9223372036854775809",
    "abc",
    "-5",
    "%D9%A1%D9%A2",  # Arabic-Indic digits
    "%00",
    "1%002",
    "%FF%FE",
    "0x10",
    "1e3",
    "x" * 300,
]


def _endpoints(ids):
    """(method, path) of every endpoint, built in or added by a backend; {id} is where an id
    goes."""
    sub = ids["subscription"]
    return [
        ("GET", ""),
        ("GET", "user/{id}"),
        ("GET", "user/{id}/techgroups/"),
        ("GET", "subscriptions/{id}"),
        ("GET", "orga/{id}"),
        ("GET", "orgas/"),
        ("GET", "members/"),
        ("GET", "techgroups/"),
        ("POST", "mail/"),
        ("POST", "ebuio/forum/"),
        ("GET", "ebuio/forum/search/bytag/{id}"),
        ("GET", "billing/plans/"),
        ("GET", "billing/subscriptions/?user={id}"),
        ("GET", "billing/subscriptions/?orga={id}"),
        ("POST", "billing/subscriptions/"),
        ("GET", "billing/subscriptions/{id}"),
        ("DELETE", "billing/subscriptions/{id}".replace("{id}", str(sub))),
        ("DELETE", "billing/subscriptions/{id}"),
    ]


# The endpoints that read a body: any body above is a 4xx for them.
BODY_READERS = {"mail/", "billing/subscriptions/", "billing/subscriptions/{sub}"}


def _is_json_error(response: requests.Response) -> bool:
    try:
        data = response.json()
    except ValueError:
        return False
    return (
        response.headers.get("Content-Type", "").startswith("application/json")
        and isinstance(data, dict)
        and isinstance(data.get("error"), str)
        and isinstance(data.get("message"), str)
        and data.get("status") == response.status_code
    )


def test_no_malformed_input_gets_a_5xx(site):
    """Every endpoint, every malformed body and every id no store can hold: a 4xx JSON error
    where the endpoint uses the input, never a 5xx, never anything but JSON."""
    base, ids = site
    sub_path = f"billing/subscriptions/{ids['subscription']}"
    problems = []
    with requests.Session() as http:
        http.headers["Authorization"] = f"Bearer {KEY_ONE}"

        def check(method, path, reads_it, **kwargs):
            response = http.request(method, f"{base}/one/ebuio_api/{path}", timeout=20, **kwargs)
            ok = response.status_code < 500 and (
                _is_json_error(response) if response.status_code >= 400 else not reads_it
            )
            if path == "" and response.status_code == 200:  # the HTML list of endpoints
                ok = not reads_it
            elif response.status_code < 400:
                ok = ok and response.headers["Content-Type"].startswith("application/json")
            if not ok:
                label = f"{method} {path[:60]} {kwargs.get('headers', '')}"
                problems.append(f"{label}: {response.status_code} {response.text[:200]!r}")

        for name, content_type, body in BODIES:
            for method, path in _endpoints(ids):
                path = path.replace("{id}", str(ids["dana"]))
                reads = path in ("mail/", "billing/subscriptions/") and method == "POST"
                reads = reads or (method == "DELETE" and path == sub_path)
                if name == "json-date-overflow" and path == "billing/subscriptions/":
                    reads = True  # no user: 400 before the date is looked at, still a 4xx
                check(method, path, reads, data=body, headers={"Content-Type": content_type})
            assert not problems, f"body {name}:\n" + "\n".join(problems)
        for bad in BAD_IDS:
            for method, path in _endpoints(ids):
                if "{id}" not in path:
                    continue
                if "bytag" in path:  # a tag, not an id: any text is a fine tag
                    check(method, path.replace("{id}", bad), False)
                    continue
                check(method, path.replace("{id}", bad), True)
            for field in ("user", "orga"):
                check("POST", "billing/subscriptions/", True, json={"plan": "pro", field: bad})
                check("POST", "billing/subscriptions/", True, data={"plan": "pro", field: bad})
            assert not problems, f"id {bad!r}:\n" + "\n".join(problems)
    # Nothing was written by any of it: dana's subscription is still the only one, active.
    with requests.get(
        f"{base}/one/ebuio_api/billing/subscriptions/",
        params={"all": "1"},
        headers={"Authorization": f"Bearer {KEY_ONE}"},
        timeout=10,
    ) as listed:
        assert [s["id"] for s in listed.json()["subscriptions"]] == [ids["subscription"]]
        (only,) = listed.json()["subscriptions"]
        assert only["active"] is True and only["state"] != "cancelled", only

"""Billing: the store contract, dates, organisations, labels delivered to services, the API over
real HTTP, a writer killed mid-batch, a replacement backend from a plugin, and the command."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import signal
import sqlite3
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from types import SimpleNamespace
from typing import Any

import pytest
import requests

from plugit_backends.billing import (
    ConflictError,
    InvalidError,
    NotFoundError,
    Plan,
    SQLiteBillingStore,
    Subscription,
    with_subscriptions,
)
from plugit_backends.billing.cli import main as billing_main
from plugit_backends.billing.sqlite import SCHEMA_VERSION, factory
from plugit_backends.users_sqlite import SQLiteUserStore
from plugit_core.config import ConfigError, ProxyConfig
from plugit_core.hookspecs import hookimpl
from plugit_core.kinds.billing import (
    check_code,
    check_holder,
    check_period,
    check_service,
    check_text,
    derive_state,
    parse_datetime,
    utc,
)
from plugit_core.kinds.billing.testing import BillingStoreConformance
from plugit_core.proxy.api import MAX_API_BODY
from plugit_core.proxy.app import ProxyApp
from plugit_core.service import PlugItService, action, json_only, user_info
from plugit_core.testing import serve
from plugit_core.users import Orga, PlugItUser

STRONG_KEY = "k3y-for-tests-9f8e7d6c5b4a39281706f5e4d3c2b1a0"
SECRET = "service-secret-for-billing-tests-0123"
KEY_ONE = "api-key-of-service-one-0123456789"
KEY_TWO = "api-key-of-service-two-9876543210"
DAY = timedelta(days=1)


# -- the contract, against SQLite and against a third party's store --------------------------------


class TestSQLiteBillingStore(BillingStoreConformance):
    @pytest.fixture
    def store(self, tmp_path):
        store = SQLiteBillingStore(tmp_path / "billing.sqlite3")
        yield store
        store.close()


class MemoryBillingStore:
    """A third party's billing backend: dicts, the protocol and nothing more (no
    ``labels_by_service``, so the proxy asks ``labels`` per service)."""

    def __init__(self, note: str = "") -> None:
        self.note = note
        self.closed = False
        self._lock = threading.Lock()
        self._plans: dict[tuple[str, str], Plan] = {}
        self._subs: dict[int, dict[str, Any]] = {}

    def create_plan(self, service, code, label, description=""):
        service, code = check_service(service), check_code(code)
        label = check_text(label, "label", 200, required=True)
        with self._lock:
            if (service, code) in self._plans:
                raise ConflictError(f"{service} already has a plan {code!r}")
            plan = Plan(service, code, label, description, datetime.now(timezone.utc))
            self._plans[service, code] = plan
        return plan

    def list_plans(self, service):
        return sorted(
            (p for p in self._plans.values() if p.service == service), key=lambda p: p.code
        )

    def _view(self, rec):
        now = datetime.now(timezone.utc)
        state, active = derive_state(now, rec["start"], rec["end"], rec["cancelled"])
        plan = self._plans[rec["service"], rec["plan"]]
        return Subscription(
            rec["id"], plan.service, plan.code, plan.label, rec["user"], rec["orga"],
            rec["start"], rec["end"], state, rec["created"], rec["cancelled"], active,
        )  # fmt: skip

    def grant(self, service, plan_code, *, user_pk=None, orga_pk=None, start=None, end=None):
        check_holder(user_pk, orga_pk)
        now = datetime.now(timezone.utc)
        start = now if start is None else utc(start)
        end = None if end is None else utc(end)
        check_period(start, end)
        with self._lock:
            if (service, plan_code) not in self._plans:
                raise NotFoundError(f"{service} has no plan {plan_code!r}")
            rec = {"id": len(self._subs) + 1, "service": service, "plan": plan_code}
            rec.update(user=user_pk, orga=orga_pk, start=start, end=end, created=now)
            rec["cancelled"] = None
            self._subs[rec["id"]] = rec
        return self._view(rec)

    def cancel(self, subscription_id, *, at=None):
        now = datetime.now(timezone.utc)
        at = now if at is None else utc(at)
        with self._lock:
            rec = self._subs.get(subscription_id)
            if rec is None:
                raise NotFoundError(f"no subscription {subscription_id!r}")
            if rec["cancelled"] is not None and rec["cancelled"] <= now:
                return self._view(rec)
            if rec["cancelled"] is None and rec["end"] is not None and rec["end"] <= now:
                raise ConflictError("it has already expired")
            rec["cancelled"] = at if rec["cancelled"] is None else min(rec["cancelled"], at)
            end = max(rec["start"], rec["cancelled"])
            rec["end"] = end if rec["end"] is None else min(rec["end"], end)
        return self._view(rec)

    def get(self, subscription_id):
        rec = self._subs.get(subscription_id)
        return None if rec is None else self._view(rec)

    def subscriptions(self, service, *, user_pk=None, orga_pk=None, include_inactive=False):
        with self._lock:
            records = sorted(self._subs.values(), key=lambda r: r["id"])
        found = [self._view(rec) for rec in records]
        return [
            s
            for s in found
            if s.service == service
            and (user_pk is None or s.user_pk == user_pk)
            and (orga_pk is None or s.orga_pk == orga_pk)
            and (include_inactive or s.active)
        ]

    def labels(self, service, user_pk, orga_pks=()):
        orgas = set(orga_pks)
        return sorted(
            {
                s.label
                for s in self.subscriptions(service)
                if (s.user_pk is not None and s.user_pk == user_pk) or s.orga_pk in orgas
            }
        )

    def close(self):
        self.closed = True


class TestMemoryBillingStore(BillingStoreConformance):
    @pytest.fixture
    def store(self):
        return MemoryBillingStore()


# -- SQLite particulars ----------------------------------------------------------------------------


@dataclass
class Clock:
    now: datetime = field(default_factory=lambda: datetime(2030, 1, 1, tzinfo=timezone.utc))

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def store(tmp_path, clock):
    store = SQLiteBillingStore(tmp_path / "billing.sqlite3", clock=clock)
    yield store
    store.close()


def test_the_file_is_in_wal_mode_with_a_schema_version(store, tmp_path):
    db = sqlite3.connect(tmp_path / "billing.sqlite3")
    try:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    finally:
        db.close()


def test_a_newer_schema_is_refused(tmp_path):
    path = tmp_path / "future.sqlite3"
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.close()
    with pytest.raises(sqlite3.DatabaseError, match="newer"):
        SQLiteBillingStore(path)


def test_a_file_is_needed():
    with pytest.raises(ValueError, match="file"):
        SQLiteBillingStore(":memory:")


def test_reopening_keeps_everything(store, tmp_path, clock):
    store.create_plan("polls", "pro", "Pro", "All the polls")
    sub = store.grant("polls", "pro", user_pk=3, end=clock.now + DAY)
    store.close()
    again = SQLiteBillingStore(tmp_path / "billing.sqlite3", clock=clock)
    try:
        assert again.get(sub.id) == sub
        assert again.list_plans("polls")[0].description == "All the polls"
    finally:
        again.close()


def test_a_subscription_over_time(store, clock):
    store.create_plan("polls", "pro", "Pro")
    start = clock.now + DAY
    sub = store.grant("polls", "pro", user_pk=1, start=start, end=start + 30 * DAY)
    assert (sub.state, sub.active) == ("active", False)
    assert store.labels("polls", 1) == []
    clock.now = start - timedelta(microseconds=1)
    assert store.labels("polls", 1) == []
    clock.now = start  # the start is included
    assert store.labels("polls", 1) == ["Pro"]
    assert store.get(sub.id).active is True
    clock.now = start + 30 * DAY - timedelta(microseconds=1)
    assert store.labels("polls", 1) == ["Pro"]
    clock.now = start + 30 * DAY  # the end is not
    assert store.labels("polls", 1) == []
    assert (store.get(sub.id).state, store.get(sub.id).active) == ("expired", False)
    assert store.subscriptions("polls") == []
    assert [s.id for s in store.subscriptions("polls", include_inactive=True)] == [sub.id]
    with pytest.raises(ConflictError, match="expired"):
        store.cancel(sub.id)


def test_a_scheduled_cancellation_takes_effect_later(store, clock):
    store.create_plan("polls", "pro", "Pro")
    sub = store.grant("polls", "pro", user_pk=1)
    when = clock.now + 10 * DAY
    assert store.cancel(sub.id, at=when).state == "active"
    assert store.cancel(sub.id, at=when + DAY).end == when  # the earlier date stays
    clock.now = when
    cancelled = store.get(sub.id)
    assert (cancelled.state, cancelled.active, cancelled.cancelled) == ("cancelled", False, when)
    assert store.labels("polls", 1) == []


def test_cancelling_before_the_start_means_never(store, clock):
    store.create_plan("polls", "pro", "Pro")
    sub = store.grant("polls", "pro", user_pk=1, start=clock.now + 5 * DAY)
    cancelled = store.cancel(sub.id)
    assert cancelled.end == cancelled.start == clock.now + 5 * DAY
    assert cancelled.state == "cancelled"
    clock.now += 6 * DAY
    assert store.labels("polls", 1) == []


def test_every_grant_and_cancellation_is_in_the_audit_trail(store, clock):
    store.create_plan("polls", "pro", "Pro")
    sub = store.grant("polls", "pro", orga_pk=4)
    clock.now += DAY
    store.cancel(sub.id, at=clock.now + DAY)
    events = store.events(sub.id)
    assert [e["action"] for e in events] == ["grant", "cancel"]
    assert events[1]["at"] == clock.now and events[1]["effective"] == clock.now + DAY


def test_a_pk_and_its_text_are_the_same_holder(store):
    store.create_plan("polls", "pro", "Pro")
    store.grant("polls", "pro", user_pk="12")
    store.grant("polls", "pro", orga_pk=-3)
    store.grant("polls", "pro", user_pk="8d0c5c2e-uuid")
    assert store.labels("polls", 12) == ["Pro"]
    assert store.labels("polls", 99, ["-3"]) == ["Pro"]
    assert store.labels("polls", "8d0c5c2e-uuid") == ["Pro"]
    assert store.subscriptions("polls", user_pk=12)[0].user_pk == 12


def test_refused_writes_leave_nothing(store):
    store.create_plan("polls", "pro", "Pro")
    for bad in (
        {"user_pk": True},
        {"user_pk": " "},
        {"user_pk": 1.5},
        {"user_pk": 1, "start": "2030-01-01"},
        {"user_pk": 1, "end": 5},
    ):
        with pytest.raises(InvalidError):
            store.grant("polls", "pro", **bad)
    with pytest.raises(InvalidError):
        store.create_plan("polls", "x", "bad\x00label")
    with pytest.raises(InvalidError):
        store.create_plan("no service", "x", "X")
    with pytest.raises(NotFoundError, match="no plan 'gold'"):
        store.grant("polls", "gold", user_pk=1)
    assert store.subscriptions("polls", include_inactive=True) == []
    assert [p.code for p in store.list_plans("polls")] == ["pro"]


def test_threads_share_the_pooled_connections(store):
    store.create_plan("polls", "pro", "Pro")
    for n in range(5):
        thread = threading.Thread(target=store.grant, args=("polls", "pro"), kwargs={"user_pk": n})
        thread.start()
        thread.join()
    assert len(store.db._idle) == 1  # each thread in turn used the same connection
    assert len(store.subscriptions("polls")) == 5


def test_dates_are_read_in_iso_8601():
    assert parse_datetime("2030-01-31", "end") == datetime(2030, 1, 31, tzinfo=timezone.utc)
    assert parse_datetime("2030-01-31T12:00:00Z", "end").hour == 12
    assert parse_datetime("2030-01-31T12:00:00+02:00", "end").hour == 10
    assert parse_datetime("2030-01-31T12:00", "end").tzinfo is timezone.utc
    assert parse_datetime("", "end") is None
    for bad in ("tomorrow", "2030-13-01", "31/01/2030", 20300131):
        with pytest.raises(InvalidError, match="end"):
            parse_datetime(bad, "end")


def test_the_factory_reads_its_table(tmp_path):
    config = ProxyConfig(secret_key=STRONG_KEY, source="plugit.toml")
    built = factory(config, {"path": str(tmp_path / "b.sqlite3")})
    built.close()
    with pytest.raises(ConfigError, match=r"billing_sqlite\.pth: unknown setting"):
        factory(config, {"pth": "x"})
    with pytest.raises(ConfigError, match=r"billing_sqlite\.path"):
        factory(config, {"path": ":memory:"})
    with pytest.raises(ConfigError, match="cannot open"):
        factory(config, {"path": str(tmp_path / "missing" / "b.sqlite3")})


# -- with_subscriptions ----------------------------------------------------------------------------


def _proxy(billing: Any, *services: str) -> Any:
    mounts = [SimpleNamespace(name=name) for name in services]
    return SimpleNamespace(billing=billing, config=SimpleNamespace(services=mounts))


def _user(pk: Any = 1, orgas: tuple[Orga, ...] = (), **kwargs: Any) -> PlugItUser:
    return PlugItUser(pk=pk, username=f"u{pk}", is_authenticated=True, orgas=orgas, **kwargs)


@pytest.mark.parametrize("make", [pytest.param(None, id="sqlite"), pytest.param(1, id="memory")])
def test_with_subscriptions_fills_every_mounted_service(store, make):
    billing = store if make is None else MemoryBillingStore()
    billing.create_plan("polls", "pro", "Pro")
    billing.create_plan("polls", "team", "Team")
    billing.create_plan("wiki", "gold", "Gold")
    billing.create_plan("gone", "old", "Old")  # a service no longer mounted
    billing.grant("polls", "pro", user_pk=1)
    billing.grant("polls", "team", orga_pk=7)
    billing.grant("gone", "old", user_pk=1)
    acme = Orga(7, "Acme")
    proxy = _proxy(billing, "polls", "wiki")
    user = with_subscriptions(proxy, _user(1, (acme,), subscriptions={"polls": ("Beta",)}))
    assert user.subscriptions == {"polls": ("Beta", "Pro", "Team"), "wiki": ()}
    assert user.for_service("polls").get("subscription_labels") == ["Beta", "Pro", "Team"]
    assert with_subscriptions(proxy, _user(2, (acme,))).subscriptions["polls"] == ("Team",)
    assert with_subscriptions(proxy, _user(2)).subscriptions == {"polls": (), "wiki": ()}
    anonymous = PlugItUser()
    assert with_subscriptions(proxy, anonymous) is anonymous
    assert with_subscriptions(_proxy(None, "polls"), user) is user


def test_with_subscriptions_survives_a_failing_store(caplog):
    class Broken:
        def labels_by_service(self, user_pk, orga_pks):
            raise sqlite3.OperationalError("disk I/O error")

    user = _user(1)
    with caplog.at_level(logging.ERROR, logger="plugit.billing"):
        assert with_subscriptions(_proxy(Broken(), "polls"), user) is user
    assert "cannot read the subscriptions of user 1" in caplog.text


# -- the API, over real HTTP -----------------------------------------------------------------------


@action("/labels")
@json_only()
@user_info(["username", "subscription_labels"])
def labels_action(request):
    return {"labels": request.args.getlist("ebuio_u_subscription_labels")}


class HeaderIdentity:
    """Who the user is, from a test header (a stand-in for a login backend)."""

    @hookimpl
    def plugit_identify_user(self, request, proxy):
        name = request.headers.get("X-Test-User")
        return proxy.users.get_by_username(name) if name else None


class MemoryBillingPlugin:
    """A third-party plugin offering the billing backend ``memory``."""

    def __init__(self) -> None:
        self.built: list[MemoryBillingStore] = []

    @hookimpl
    def plugit_register_backends(self, register):
        def build(config, section):
            self.built.append(MemoryBillingStore(note=section.get("note", "")))
            return self.built[-1]

        register("billing", "memory", build)

    @hookimpl
    def plugit_register_api_endpoints(self, register, proxy):
        def note(call):
            return {"note": call.proxy.billing.note, "service": call.service}

        register("billing/memory-note", note)


@dataclass
class Site:
    base: str
    proxy: ProxyApp
    ids: dict[str, Any]
    sessions: dict[str, requests.Session]

    def call(self, service: str, method: str, path: str, **kwargs: Any) -> requests.Response:
        kwargs.setdefault("timeout", 10)
        return self.sessions[service].request(
            method, f"{self.base}/{service}/ebuio_api/{path}", **kwargs
        )

    def page(self, service: str, path: str, username: str) -> requests.Response:
        return self.sessions["browser"].get(
            f"{self.base}/{service}/{path}", headers={"X-Test-User": username}, timeout=10
        )


@pytest.fixture(scope="module")
def service_url():
    with serve(PlugItService([labels_action], secret=SECRET)) as url:
        yield url


@pytest.fixture
def make_site(tmp_path, service_url):
    with contextlib.ExitStack() as stack:

        def build(billing: str | None = "sqlite", plugins: tuple[Any, ...] = (), **top: Any):
            services = [
                {"name": name, "url": service_url, "secret": SECRET, "api_key": key}
                for name, key in (("one", KEY_ONE), ("two", KEY_TWO))
            ]
            config: dict[str, Any] = {
                "secret_key": STRONG_KEY,
                "services": services,
                "users": "sqlite",
                "users_sqlite": {"path": str(tmp_path / "directory.sqlite3")},
                **top,
            }
            if billing is not None:
                config["billing"] = billing
            if billing == "sqlite":
                config["billing_sqlite"] = {"path": str(tmp_path / "billing.sqlite3")}
            proxy = ProxyApp(
                config,
                plugins=(HeaderIdentity(), *plugins),
                load_entry_points=False,
                check_services=False,
            )
            stack.callback(proxy.users.close)
            stack.callback(proxy.close)
            if proxy.billing is not None:
                stack.callback(proxy.billing.close)
            users = proxy.users
            dana = users.create_user("dana")
            erin = users.create_user("erin")
            frank = users.create_user("frank")
            users.grant(dana.pk, "one", "admin")
            users.grant(erin.pk, "one", "member")
            users.grant(erin.pk, "two", "member")
            users.grant(frank.pk, "two", "member")
            acme = users.create_orga("Acme", "acme")
            users.add_to_orga(dana.pk, acme.pk)
            if proxy.billing is not None:
                proxy.billing.create_plan("one", "pro", "Pro", "Unlimited polls")
                proxy.billing.create_plan("one", "team", "Team")
                proxy.billing.create_plan("two", "gold", "Gold")
            base = stack.enter_context(serve(proxy))
            sessions = {}
            for name, key in (("one", KEY_ONE), ("two", KEY_TWO), ("browser", None)):
                session = stack.enter_context(requests.Session())
                if key:
                    session.headers["Authorization"] = f"Bearer {key}"
                sessions[name] = session
            ids = {"dana": dana.pk, "erin": erin.pk, "frank": frank.pk, "acme": acme.pk}
            return Site(base, proxy, ids, sessions)

        yield build


@pytest.fixture
def site(make_site):
    return make_site()


def test_plans_are_per_service(site):
    one = site.call("one", "GET", "billing/plans/")
    assert one.status_code == 200
    assert [(p["code"], p["label"]) for p in one.json()["plans"]] == [
        ("pro", "Pro"),
        ("team", "Team"),
    ]
    assert one.json()["plans"][0]["description"] == "Unlimited polls"
    assert [p["code"] for p in site.call("two", "GET", "billing/plans/").json()["plans"]] == [
        "gold"
    ]


def test_grant_read_and_cancel_a_users_subscription(site):
    dana = site.ids["dana"]
    granted = site.call(
        "one",
        "POST",
        "billing/subscriptions/",
        json={"plan": "pro", "user": dana, "end": "2999-01-01"},
    )
    assert granted.status_code == 201, granted.text
    assert granted.headers["Content-Type"] == "application/json"
    body = granted.json()
    assert body["service"] == "one" and body["plan"] == "pro" and body["label"] == "Pro"
    assert body["user"] == dana and body["orga"] is None
    assert body["state"] == "active" and body["active"] is True
    assert body["end"] == "2999-01-01T00:00:00+00:00"
    sub_id = body["id"]

    assert site.call("one", "GET", f"billing/subscriptions/{sub_id}").json() == body
    listed = site.call("one", "GET", "billing/subscriptions/", params={"user": dana}).json()
    assert [s["id"] for s in listed["subscriptions"]] == [sub_id]
    # the labels reach the service: the API, and the user info sent with each action call
    assert site.call("one", "GET", f"subscriptions/{dana}").json() == ["Pro"]
    assert site.call("one", "GET", f"user/{dana}").json()["subscription_labels"] == ["Pro"]
    page = site.page("one", "labels", "dana")
    assert page.status_code == 200, page.text
    assert page.json() == {"labels": ["Pro"]}

    cancelled = site.call("one", "DELETE", f"billing/subscriptions/{sub_id}")
    assert cancelled.status_code == 200
    assert cancelled.json()["state"] == "cancelled" and cancelled.json()["active"] is False
    assert site.call("one", "GET", f"subscriptions/{dana}").json() == []
    assert site.page("one", "labels", "dana").json() == {"labels": []}
    listed = site.call("one", "GET", "billing/subscriptions/", params={"user": dana})
    assert listed.json() == {"subscriptions": []}
    everything = site.call(
        "one", "GET", "billing/subscriptions/", params={"user": dana, "all": "1"}
    ).json()["subscriptions"]
    assert [s["state"] for s in everything] == ["cancelled"]
    again = site.call("one", "DELETE", f"billing/subscriptions/{sub_id}")
    assert again.status_code == 200 and again.json() == cancelled.json()


def test_an_organisations_subscription_gives_labels_to_its_members(site):
    granted = site.call(
        "one", "POST", "billing/subscriptions/", data={"plan": "team", "orga": site.ids["acme"]}
    )
    assert granted.status_code == 201, granted.text
    assert granted.json()["orga"] == site.ids["acme"] and granted.json()["user"] is None
    assert site.call("one", "GET", f"subscriptions/{site.ids['dana']}").json() == ["Team"]
    assert site.call("one", "GET", f"subscriptions/{site.ids['erin']}").json() == []
    assert site.page("one", "labels", "dana").json() == {"labels": ["Team"]}
    listed = site.call("one", "GET", "billing/subscriptions/", params={"orga": site.ids["acme"]})
    assert [s["id"] for s in listed.json()["subscriptions"]] == [granted.json()["id"]]
    # a later cancellation: still active, and the member keeps the label until then
    later = site.call(
        "one",
        "DELETE",
        f"billing/subscriptions/{granted.json()['id']}",
        params={"at": "2999-06-30T12:00:00Z"},
    )
    assert later.json()["end"] == "2999-06-30T12:00:00+00:00" and later.json()["active"] is True
    assert site.call("one", "GET", f"subscriptions/{site.ids['dana']}").json() == ["Team"]


def test_a_service_manages_only_its_own_plans_subscriptions_and_members(site):
    dana, erin, frank = site.ids["dana"], site.ids["erin"], site.ids["frank"]
    mine = site.call("one", "POST", "billing/subscriptions/", data={"plan": "pro", "user": erin})
    assert mine.status_code == 201
    sub_id = mine.json()["id"]
    # two cannot see, cancel or list one's subscription, nor subscribe one's member
    for method in ("GET", "DELETE"):
        response = site.call("two", method, f"billing/subscriptions/{sub_id}")
        assert response.status_code == 404 and response.json()["error"] == "not_found"
    assert site.call("two", "GET", "billing/subscriptions/").json() == {"subscriptions": []}
    foreign = site.call(
        "two", "POST", "billing/subscriptions/", data={"plan": "gold", "user": dana}
    )
    assert foreign.status_code == 404 and foreign.json()["error"] == "not_found"
    listed = site.call("two", "GET", "billing/subscriptions/", params={"user": dana})
    assert listed.status_code == 404
    # nor use one's plan
    plan = site.call("two", "POST", "billing/subscriptions/", data={"plan": "pro", "user": erin})
    assert plan.status_code == 404 and plan.json()["error"] == "unknown_plan"
    # erin is a member of both: each service sees only its own labels
    site.call("two", "POST", "billing/subscriptions/", data={"plan": "gold", "user": frank})
    assert site.call("two", "GET", f"subscriptions/{erin}").json() == []
    assert site.call("one", "GET", f"subscriptions/{erin}").json() == ["Pro"]
    assert site.call("two", "GET", f"subscriptions/{frank}").json() == ["Gold"]
    assert site.call("one", "GET", f"subscriptions/{frank}").status_code == 404
    assert site.proxy.billing.get(sub_id).state == "active"  # two's DELETE changed nothing


DANA = {"plan": "pro", "user": "@dana"}  # "@dana" is dana's pk
JSON = {"Content-Type": "application/json"}
BAD_GRANTS = [
    ({"data": {"plan": "pro", "user": "99999"}}, 404, "not_found", "no such user"),
    ({"data": {"plan": "pro", "orga": "99999"}}, 404, "not_found", "no such organisation"),
    ({"data": {**DANA, "plan": "nope"}}, 404, "unknown_plan", "no plan 'nope'"),
    ({"data": {"user": "@dana"}}, 400, "bad_request", "plan is required"),
    ({"data": {"plan": "pro"}}, 400, "bad_request", "give the user or the orga"),
    ({"data": {**DANA, "orga": "@acme"}}, 400, "bad_request", "not both"),
    ({"data": {**DANA, "start": "soon"}}, 400, "bad_request", "start is not"),
    ({"data": {**DANA, "end": "2030-02-30"}}, 400, "bad_request", "end is not"),
    (
        {"data": {**DANA, "start": "2030-02-01", "end": "2030-01-01"}},
        400,
        "bad_request",
        "after its start",
    ),
    ({"data": {"plan": "pro", "users": "@dana"}}, 400, "bad_request", "unknown field 'users'"),
    ({"data": [("plan", "pro"), ("plan", "team")]}, 400, "bad_request", "more than once"),
    ({"json": {**DANA, "end": 2030}}, 400, "bad_request", "end must be"),
    ({"json": {"plan": "pro", "user": ["@dana"]}}, 400, "bad_request", "user must be a pk"),
    ({"json": ["pro", "@dana"]}, 400, "bad_request", "must be an object"),
    ({"data": b"{not json", "headers": JSON}, 400, "bad_request", "not valid JSON"),
    ({"data": b"\xff", "headers": JSON}, 400, "bad_request", "not valid JSON"),
    ({"data": b"plan=pro", "headers": {"Content-Type": "text/plain"}}, 415, "unsupported", "JSON"),
    ({"files": {"plan": ("plan.txt", b"pro")}}, 400, "bad_request", "no files"),
]


@pytest.mark.parametrize(
    ("kwargs", "status", "error", "message"), BAD_GRANTS, ids=[b[3] for b in BAD_GRANTS]
)
def test_bad_grants_are_clear_json_errors_and_write_nothing(site, kwargs, status, error, message):
    def real(value):
        if isinstance(value, str) and value.startswith("@"):
            return site.ids[value[1:]]
        if isinstance(value, dict):
            return {k: real(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return type(value)(real(v) for v in value)
        return value

    kwargs = {
        key: real(value) if key in ("data", "json") else value for key, value in kwargs.items()
    }
    response = site.call("one", "POST", "billing/subscriptions/", **kwargs)
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"] == "application/json"
    assert response.json()["error"].startswith(error) and response.json()["status"] == status
    assert message in response.json()["message"]
    assert site.proxy.billing.subscriptions("one", include_inactive=True) == []


def test_other_bad_requests(site):
    assert site.call("one", "GET", "billing/subscriptions/", params={"usr": "1"}).status_code == 400
    both = site.call(
        "one", "GET", "billing/subscriptions/", params={"user": site.ids["dana"], "orga": "1"}
    )
    assert both.status_code == 400 and "not both" in both.json()["message"]
    assert site.call("one", "GET", "billing/subscriptions/424242").status_code == 404
    assert site.call("one", "GET", "billing/subscriptions/abc").status_code == 404
    assert site.call("one", "PUT", "billing/subscriptions/").status_code == 405
    granted = site.call(
        "one", "POST", "billing/subscriptions/", data={"plan": "pro", "user": site.ids["erin"]}
    ).json()
    bad_at = site.call(
        "one", "DELETE", f"billing/subscriptions/{granted['id']}", params={"at": "x"}
    )
    assert bad_at.status_code == 400 and "at is not" in bad_at.json()["message"]
    assert site.proxy.billing.get(granted["id"]).state == "active"
    wrong_key = requests.get(f"{site.base}/one/ebuio_api/billing/plans/", timeout=10)
    assert wrong_key.status_code == 403


def test_oversized_bodies_are_refused(site):
    big = b"plan=pro&user=" + b"1" * MAX_API_BODY
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    declared = site.call("one", "POST", "billing/subscriptions/", data=big, headers=headers)
    assert declared.status_code == 413 and declared.json()["error"] == "too_large"

    def chunks():  # no Content-Length: sent chunked
        yield b"plan=pro&user=1"
        for _ in range(17):
            yield b"1" * 65536

    streamed = site.call("one", "POST", "billing/subscriptions/", data=chunks(), headers=headers)
    assert streamed.status_code == 413 and streamed.json()["error"] == "too_large", streamed.text
    assert site.proxy.billing.subscriptions("one", include_inactive=True) == []


def test_without_a_billing_backend_the_endpoints_say_so(make_site):
    site = make_site(billing=None)
    response = site.call("one", "GET", "billing/plans/")
    assert response.status_code == 503 and response.json()["error"] == "billing_unavailable"
    assert site.call("one", "GET", f"subscriptions/{site.ids['dana']}").json() == []


def test_a_plugin_replaces_the_billing_backend(make_site):
    plugin = MemoryBillingPlugin()
    site = make_site(billing="memory", plugins=(plugin,), billing_memory={"note": "third party"})
    assert site.proxy.billing is plugin.built[0]
    assert site.call("two", "GET", "billing/memory-note").json() == {
        "note": "third party",
        "service": "two",
    }
    granted = site.call(
        "one", "POST", "billing/subscriptions/", json={"plan": "pro", "user": site.ids["dana"]}
    )
    assert granted.status_code == 201, granted.text
    assert site.call("one", "GET", f"subscriptions/{site.ids['dana']}").json() == ["Pro"]
    assert site.page("one", "labels", "dana").json() == {"labels": ["Pro"]}
    assert site.call("one", "DELETE", f"billing/subscriptions/{granted.json()['id']}").ok
    assert site.call("one", "GET", f"subscriptions/{site.ids['dana']}").json() == []


def test_an_unknown_billing_backend_is_a_config_error(tmp_path):
    config = {"secret_key": STRONG_KEY, "billing": "nope"}
    with pytest.raises(ConfigError, match="no billing backend named 'nope'"):
        ProxyApp(config, load_entry_points=False, check_services=False)


# -- a writer killed with SIGKILL ------------------------------------------------------------------

CHILD = """
import sys
from plugit_backends.billing.sqlite import SQLiteBillingStore

class Store(SQLiteBillingStore):
    pause = False

    def _event(self, db, subscription_id, *args):
        super()._event(db, subscription_id, *args)
        if self.pause:  # the subscription and its event are written, not committed
            print("paused", subscription_id, flush=True)
            sys.stdin.read()  # until killed

store = Store(sys.argv[1])
mode, count = sys.argv[2], int(sys.argv[3])
n = 0
while mode == "forever" or n < count:
    sub = store.grant("svc", "pro", user_pk=n)
    print("granted", sub.id, flush=True)
    if n % 3 == 0:
        print("cancelled", store.cancel(sub.id).id, flush=True)
    n += 1
store.pause = True
store.grant("svc", "pro", user_pk=n)
"""


def _run_and_kill(path: str, mode: str, lines_before_kill: int) -> tuple[list[str], int]:
    """Run the writer; SIGKILL it after ``lines_before_kill`` lines (or when it pauses)."""
    process = subprocess.Popen(
        [sys.executable, "-c", CHILD, path, mode, str(lines_before_kill)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    watchdog = threading.Timer(60, process.kill)  # only if the child hangs
    watchdog.start()
    lines: list[str] = []
    try:
        assert process.stdout is not None
        for line in process.stdout:
            lines.append(line.strip())
            if line.startswith("paused") or (mode == "forever" and len(lines) >= lines_before_kill):
                os.kill(process.pid, signal.SIGKILL)
                break
    finally:
        watchdog.cancel()
        process.kill()
        process.wait()
        for pipe in (process.stdin, process.stdout):
            if pipe is not None:
                pipe.close()
    return lines, process.returncode


def _check_after_kill(path: str, lines: list[str]) -> SQLiteBillingStore:
    granted = [int(line.split()[1]) for line in lines if line.startswith("granted")]
    cancelled = [int(line.split()[1]) for line in lines if line.startswith("cancelled")]
    db = sqlite3.connect(path)
    try:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        rows = db.execute(
            "SELECT s.id, s.cancelled_at, "
            "(SELECT count(*) FROM events e WHERE e.subscription_id = s.id AND action = 'grant'), "
            "(SELECT count(*) FROM events e WHERE e.subscription_id = s.id AND action = 'cancel') "
            "FROM subscriptions s"
        ).fetchall()
    finally:
        db.close()
    found = {row[0]: row for row in rows}
    assert set(granted) <= set(found)  # every grant that returned is there
    assert {i for i in cancelled if found[i][1] is not None} == set(cancelled)
    for _, cancelled_at, grants, cancels in rows:  # and nothing is half-written
        assert grants == 1
        assert cancels == (0 if cancelled_at is None else 1)
    store = SQLiteBillingStore(path)  # it opens, and takes writes
    store.grant("svc", "pro", user_pk="after")
    return store


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_a_writer_killed_in_the_middle_of_a_grant_leaves_no_partial_subscription(tmp_path):
    path = str(tmp_path / "billing.sqlite3")
    setup = SQLiteBillingStore(path)
    setup.create_plan("svc", "pro", "Pro")
    setup.close()
    lines, status = _run_and_kill(path, "count", 30)
    assert status == -signal.SIGKILL
    assert lines[-1].startswith("paused"), lines[-3:]
    paused = int(lines[-1].split()[1])
    store = _check_after_kill(path, lines)
    try:
        assert store.get(paused) is None or store.get(paused).user_pk == "after"
        assert len([line for line in lines if line.startswith("granted")]) == 30
        assert len(store.subscriptions("svc", include_inactive=True)) == 31
    finally:
        store.close()


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_a_writer_killed_at_any_moment_loses_no_returned_write(tmp_path):
    path = str(tmp_path / "billing.sqlite3")
    setup = SQLiteBillingStore(path)
    setup.create_plan("svc", "pro", "Pro")
    setup.close()
    lines, status = _run_and_kill(path, "forever", 60)
    assert status == -signal.SIGKILL and len(lines) == 60
    _check_after_kill(path, lines).close()


# -- the command -----------------------------------------------------------------------------------


@pytest.fixture
def cli_config(tmp_path):
    directory = SQLiteUserStore(tmp_path / "directory.sqlite3")
    dana = directory.create_user("dana")
    directory.create_user("erin")
    directory.grant(dana.pk, "polls", "member")
    acme = directory.create_orga("Acme")
    directory.add_to_orga(dana.pk, acme.pk)
    directory.close()
    path = tmp_path / "plugit.toml"
    path.write_text(
        f"""
secret_key = "{STRONG_KEY}"
users = "sqlite"
billing = "sqlite"

[users_sqlite]
path = "{tmp_path / "directory.sqlite3"}"

[billing_sqlite]
path = "{tmp_path / "billing.sqlite3"}"

[[services]]
name = "polls"
url = "http://127.0.0.1:9"
""",
        encoding="utf-8",
    )
    return str(path)


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    status = billing_main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


@pytest.mark.embedded_backends  # the directory is seeded in its SQLite file
def test_the_command_manages_plans_and_subscriptions(cli_config, capsys, tmp_path):
    c = ("--config", cli_config)
    assert _run(capsys, *c, "plan-add", "polls", "pro", "Pro", "--description", "More")[0] == 0
    assert _run(capsys, *c, "plan-add", "polls", "team", "Team")[0] == 0
    status, out, _ = _run(capsys, *c, "plans", "polls")
    assert status == 0 and re.search(r"pro\s+Pro\s+More", out) and "team" in out

    status, out, err = _run(
        capsys, *c, "grant", "polls", "pro", "--user", "dana", "--end", "2999-01-01"
    )
    assert status == 0 and "dana has Pro in polls" in out and "until 2999-01-01" in out and not err
    dana_sub = int(re.search(r"subscription (\d+)", out).group(1))
    status, out, err = _run(capsys, *c, "grant", "polls", "team", "--orga", "acme")
    assert status == 0 and "Acme has Team in polls" in out
    status, out, err = _run(capsys, *c, "grant", "polls", "team", "--user", "erin")
    assert status == 0 and "erin is not a member of polls" in err

    status, out, _ = _run(capsys, *c, "list", "polls")
    assert status == 0 and "user:dana" in out and "orga:Acme" in out and "user:erin" in out
    status, out, _ = _run(capsys, *c, "list", "polls", "--orga", "Acme")
    assert "orga:Acme" in out and "user:dana" not in out

    status, out, _ = _run(capsys, *c, "cancel", str(dana_sub))
    assert status == 0 and f"subscription {dana_sub} (Pro in polls) is cancelled" in out
    status, out, _ = _run(capsys, *c, "list", "polls", "--user", "dana")
    assert "no active subscriptions" in out
    status, out, _ = _run(capsys, *c, "list", "polls", "--user", "dana", "--all")
    assert "cancelled" in out

    store = SQLiteBillingStore(tmp_path / "billing.sqlite3")
    try:
        assert store.labels("polls", 1, []) == []
        assert store.labels("polls", 1, [1]) == ["Team"]
    finally:
        store.close()


@pytest.mark.embedded_backends
@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (("grant", "polls", "pro", "--user", "nobody"), "no user named 'nobody'"),
        (("grant", "polls", "pro", "--orga", "Nobody"), "no organisation named 'Nobody'"),
        (("grant", "polls", "gold", "--user", "dana"), "polls has no plan 'gold'"),
        (("grant", "wiki", "pro", "--user", "dana"), "no service named 'wiki'"),
        (("grant", "polls", "pro", "--user", "dana", "--end", "someday"), "--end is not"),
        (("plan-add", "polls", "pro", "Again"), "already has a plan 'pro'"),
        (("plan-add", "polls", "bad code", "Bad"), "a plan code is"),
        (("cancel", "4242"), "no subscription 4242"),
    ],
)
def test_the_command_explains_mistakes(cli_config, capsys, argv, message):
    assert _run(capsys, "--config", cli_config, "plan-add", "polls", "pro", "Pro")[0] == 0
    status, _, err = _run(capsys, "--config", cli_config, *argv)
    assert status == 2 and message in err and err.startswith("plugit: error:")


def test_the_command_needs_billing_in_the_configuration(tmp_path, capsys):
    path = tmp_path / "plugit.toml"
    path.write_text(f'secret_key = "{STRONG_KEY}"\n', encoding="utf-8")
    status, _, err = _run(capsys, "--config", str(path), "plans", "polls")
    assert status == 2 and 'set billing = "sqlite"' in err


@pytest.mark.embedded_backends  # the directory is seeded in its SQLite file
def test_python_dash_m_and_plugit_billing(cli_config, capsys):
    from plugit_core.cli import main as plugit_main

    done = subprocess.run(
        [sys.executable, "-m", "plugit_backends.billing", "--config", cli_config, "plans", "polls"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0 and "polls has no plans" in done.stdout, done.stderr
    assert plugit_main(["billing", "--config", cli_config, "plan-add", "polls", "x", "X"]) == 0
    assert "added plan x (X) to polls" in capsys.readouterr().out


def test_the_service_client_covers_the_billing_endpoints(site):
    from plugit_core.service import PlugItAPI, PlugItAPIError

    dana = site.ids["dana"]
    with PlugItAPI(f"{site.base}/one/ebuio_api/", KEY_ONE) as api:
        assert [plan["code"] for plan in api.get_plans()] == ["pro", "team"]
        granted = api.grant_subscription("team", user=dana, end="2999-01-01")
        assert granted["plan"] == "team" and granted["active"] is True
        assert [s["id"] for s in api.get_subscriptions(user=dana)] == [granted["id"]]
        assert api.get_subscription_labels(dana) == ["Team"]
        cancelled = api.cancel_subscription(granted["id"])
        assert cancelled["state"] == "cancelled"
        assert api.get_subscriptions(user=dana) == []
        assert [s["id"] for s in api.get_subscriptions(user=dana, all=True)] == [granted["id"]]
        with pytest.raises(PlugItAPIError) as refused:
            api.grant_subscription("gold", user=dana)  # another service's plan
        assert refused.value.status == 404
        with pytest.raises(PlugItAPIError):
            api.grant_subscription("pro", user=site.ids["frank"])  # not a member of "one"

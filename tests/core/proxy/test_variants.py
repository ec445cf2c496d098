"""Per-user routing to another build of a service, and a shadow target, with real processes."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time

import pytest
import requests
from proxy_helpers import proxy_config

from plugit_core.config import ConfigError, ProxyConfig
from plugit_core.proxy.app import ProxyApp
from plugit_core.testing import free_port, serve, wait_for_port

SERVICE = """
import os
import threading

from plugit_core.service import action, cache, json_only

BUILD = os.environ["BUILD"]
CALLS = {"n": 0}
LOCK = threading.Lock()


@action("/")
@json_only()
def home(request):
    with LOCK:
        CALLS["n"] += 1
    return {"build": BUILD}


@action("/page", template="page.html")
@cache(time=60)
def page(request):
    return {"build": BUILD}


@action("/calls")
@json_only()
def calls(request):
    return CALLS
"""


@pytest.fixture(scope="module")
def builds(tmp_path_factory):
    """Three `plugit service` processes of one service: main, canary and shadow builds."""
    folder = tmp_path_factory.mktemp("variants")
    (folder / "svc.py").write_text(SERVICE)
    (folder / "templates").mkdir()
    (folder / "templates" / "page.html").write_text(
        '{% extends "plugit/base.html" %}'
        '{% block content %}<p id="build">{{ build }}</p>{% endblock %}'
    )
    urls = {}
    with contextlib.ExitStack() as stack:
        for build in ("main", "canary", "shadow"):
            port = free_port()
            process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "plugit_core.cli",
                    "service",
                    str(folder / "svc.py"),
                    "--port",
                    str(port),
                ],
                env={**__import__("os").environ, "BUILD": build},
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            stack.callback(process.wait, 20)
            stack.callback(process.terminate)
            urls[build] = f"http://127.0.0.1:{port}"
        for url in urls.values():
            wait_for_port("127.0.0.1", int(url.rsplit(":", 1)[1]), timeout=60)
        yield urls


@pytest.fixture
def site(builds, service_url):
    services = [
        {
            "name": "svc",
            "url": builds["main"],
            "mount": "/svc/",
            "shadow_url": builds["shadow"],
            "variants": [
                {"name": "canary", "url": builds["canary"], "roles": ["admin"], "users": ["Member"],
                 "cookie": "canary=1"},
            ],
        }
    ]  # fmt: skip
    proxy = ProxyApp(proxy_config(service_url, services=services), load_entry_points=False)
    with contextlib.ExitStack() as stack:
        stack.callback(proxy.close)
        yield stack.enter_context(serve(proxy))


def build_seen(session: requests.Session, base: str) -> str:
    return session.get(base + "/svc/", timeout=10).json()["build"]


@pytest.mark.parametrize(
    ("mode", "cookie", "build"),
    [
        pytest.param("ano", None, "main", id="anonymous"),
        pytest.param("log", None, "main", id="logged"),
        pytest.param("mem", None, "canary", id="by-user-name"),
        pytest.param("adm", None, "canary", id="by-role"),
        pytest.param("ano", "1", "canary", id="by-cookie"),
        pytest.param("ano", "0", "main", id="other-cookie-value"),
    ],
)
def test_each_user_sees_their_build(site, mode, cookie, build):
    with requests.Session() as session:
        session.get(f"{site}/svc/ebuio_setUser?mode={mode}", timeout=10)
        if cookie is not None:
            session.cookies.set("canary", cookie)
        assert build_seen(session, site) == build


def test_cached_pages_are_kept_per_build(site):
    with requests.Session() as everyone, requests.Session() as tester:
        tester.cookies.set("canary", "1")
        assert '<p id="build">main</p>' in everyone.get(site + "/svc/page", timeout=10).text
        assert '<p id="build">canary</p>' in tester.get(site + "/svc/page", timeout=10).text
        assert '<p id="build">main</p>' in everyone.get(site + "/svc/page", timeout=10).text


def test_shadow_gets_a_copy_and_its_answer_never_reaches_the_user(site, builds):
    before = requests.get(builds["shadow"] + "/action/calls", timeout=10).json()["n"]
    with requests.Session() as session:
        for _ in range(3):
            assert build_seen(session, site) == "main"
    deadline = time.monotonic() + 10
    calls = before
    while time.monotonic() < deadline and calls < before + 3:
        calls = requests.get(builds["shadow"] + "/action/calls", timeout=10).json()["n"]
    assert calls == before + 3


def test_variant_rules_are_validated():
    base = {"dev_mode": True, "services": [{"name": "a", "url": "http://127.0.0.1:1"}]}
    for variant, key in (
        ({"name": "c", "url": "http://127.0.0.1:2"}, "services[0].variants[0].name"),
        ({"name": "c", "url": "ftp://x", "users": ["a"]}, "services[0].variants[0].url"),
        (
            {"name": "c", "url": "http://127.0.0.1:2", "cookie": "novalue"},
            "services[0].variants[0].cookie",
        ),
        (
            {"name": "c", "url": "http://127.0.0.1:2", "roles": ["god"]},
            "services[0].variants[0].roles",
        ),
    ):
        config = {**base, "services": [{**base["services"][0], "variants": [variant]}]}
        with pytest.raises(ConfigError) as info:
            ProxyConfig.from_mapping(config)
        assert info.value.key == key

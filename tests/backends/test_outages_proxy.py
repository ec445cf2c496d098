"""Readiness per service: a service marked ``required`` makes ``/_plugit/ready`` answer 503 while
its circuit is open (the site cannot do its job without it); one that is not never does."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import requests

from plugit_core.config import ConfigError, ProxyConfig
from plugit_core.proxy.app import ProxyApp
from plugit_core.service import PlugItService, action, json_only
from plugit_core.testing import free_port, serve

STRONG_KEY = "k3y-for-outage-tests-9f8e7d6c5b4a39281706f5e4d3c2b1a0"


@action("/")
@json_only()
def hello(request):
    return {"hello": "world"}


def _service(required: bool | None, url: str, name: str) -> dict:
    mount = {"name": name, "url": url, "breaker_failures": 1, "breaker_reset": 0.2}
    if required is not None:
        mount["required"] = required
    return mount


@pytest.fixture
def site() -> Iterator[tuple[str, int, int]]:
    """A proxy with a required service and an optional one, neither running yet."""
    core_port, extra_port = free_port(), free_port()
    config = {
        "secret_key": STRONG_KEY,
        "session_cookie": {"secure": False},
        "services": [
            _service(True, f"http://127.0.0.1:{core_port}", "core"),
            _service(None, f"http://127.0.0.1:{extra_port}", "extra"),
        ],
    }
    proxy = ProxyApp(config, load_entry_points=False, check_services=False)
    try:
        with serve(proxy) as base:
            yield base, core_port, extra_port
    finally:
        proxy.close()


def _ready(base: str) -> requests.Response:
    return requests.get(base + "/_plugit/ready", timeout=10)


def _open_circuit(base: str, name: str) -> None:
    """Ask the dead service's page until its circuit is open."""
    for _ in range(20):
        assert requests.get(f"{base}/{name}/", timeout=10).status_code in (502, 503)
        if _ready(base).json()["services"][name]["circuit"] == "open":
            return
    raise AssertionError(f"the circuit of {name} never opened")


def test_an_optional_service_down_keeps_the_proxy_ready(site):
    base, _core_port, _extra_port = site
    _open_circuit(base, "extra")
    ready = _ready(base)
    assert ready.status_code == 200
    assert ready.json()["services"]["extra"] == {
        "ready": False,
        "required": False,
        "protocol": "unknown",
        "circuit": "open",
        "in_flight": 0,
    }


def test_a_required_service_whose_circuit_is_open_makes_the_proxy_not_ready(site):
    base, core_port, _extra_port = site
    _open_circuit(base, "core")
    ready = _ready(base)
    assert ready.status_code == 503
    body = ready.json()
    assert body["status"] == "unavailable"
    assert body["unavailable"] == ["service:core"]
    assert body["services"]["core"]["required"] is True
    assert body["services"]["core"]["ready"] is False

    # the service comes back: after breaker_reset one trial call closes the circuit
    with serve(PlugItService([hello]), port=core_port):
        deadline = time.monotonic() + 10
        while requests.get(base + "/core/", timeout=10).status_code != 200:
            assert time.monotonic() < deadline, "the service never answered through the proxy"
            time.sleep(0.05)
        ready = _ready(base)
        assert ready.status_code == 200
        assert ready.json()["services"]["core"]["circuit"] == "closed"


def test_required_is_a_boolean():
    service = {"name": "core", "url": "http://127.0.0.1:1", "required": "yes"}
    with pytest.raises(ConfigError, match=r"required"):
        ProxyConfig.from_mapping({"secret_key": STRONG_KEY, "services": [service]})
    mount = ProxyConfig.from_mapping(
        {"secret_key": STRONG_KEY, "services": [{"name": "core", "url": "http://127.0.0.1:1"}]}
    ).services[0]
    assert mount.required is False

"""Dev mode answers only loopback clients and ``dev_allowed_clients``, under any WSGI server.

The proxy is served on every address of this machine (``0.0.0.0``, ``::``) by real WSGI servers
(werkzeug's and the standard library's), and reached once through loopback and once through one
of the machine's own non-loopback addresses, so the server sees a non-loopback peer.
"""

from __future__ import annotations

import contextlib
import io
import logging
import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import pytest

from plugit_core.config import ProxyConfig
from plugit_core.proxy import PlugItMiddleware
from plugit_core.proxy.app import ProxyApp
from plugit_core.proxy.dev_guard import DevGuard
from plugit_core.testing import serve

STRONG = "dev-guard-tests-0123456789-abcdefghijklmnopqrstuvwxyz"
REFUSAL = "runs in dev mode"


def own_address(family: socket.AddressFamily) -> str | None:
    """A non-loopback address of this machine (the source address of a route outwards)."""
    targets = ("192.0.2.1", "10.255.255.255", "8.8.8.8")
    if family == socket.AF_INET6:
        targets = ("2001:db8::1", "fd00::1", "2001:4860:4860::8888")
    for target in targets:
        with socket.socket(family, socket.SOCK_DGRAM) as sock:
            try:
                sock.connect((target, 9))  # UDP: nothing is sent
            except OSError:
                continue
            address = sock.getsockname()[0]
        if not address.startswith(("127.", "::1", "fe80:")) and address != "::":
            return address
    return None


IPV4 = own_address(socket.AF_INET)
IPV6 = own_address(socket.AF_INET6) if socket.has_ipv6 else None


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


class _V6Server(WSGIServer):
    address_family = socket.AF_INET6


@contextlib.contextmanager
def serve_wsgiref(app: Callable[..., Any], host: str) -> Iterator[int]:
    """The standard library's WSGI server on ``host``: yields its port."""
    server_class = _V6Server if ":" in host else WSGIServer
    server = make_server(host, 0, app, server_class=server_class, handler_class=_QuietHandler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.daemon = True
    thread.start()
    try:
        yield server.server_port
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@contextlib.contextmanager
def serve_werkzeug(app: Callable[..., Any], host: str) -> Iterator[int]:
    with serve(app, host=host) as url:
        yield int(url.rsplit(":", 1)[1])


SERVERS = {"werkzeug": serve_werkzeug, "wsgiref": serve_wsgiref}


def url(host: str, port: int, path: str = "/") -> str:
    return f"http://{f'[{host}]' if ':' in host else host}:{port}{path}"


@pytest.fixture
def proxies() -> Iterator[Callable[..., ProxyApp]]:
    with contextlib.ExitStack() as stack:

        def make(**top: Any) -> ProxyApp:
            proxy = ProxyApp({"dev_mode": True, **top}, load_entry_points=False)
            stack.callback(proxy.close)
            return proxy

        yield make


def host_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"the host app"]


needs_ipv4 = pytest.mark.skipif(IPV4 is None, reason="this machine has no non-loopback IPv4")
needs_ipv6 = pytest.mark.skipif(IPV6 is None, reason="this machine has no non-loopback IPv6")


@needs_ipv4
@pytest.mark.parametrize("server", sorted(SERVERS))
def test_non_loopback_client_is_refused(server, proxies, http):
    proxy = proxies()
    with SERVERS[server](proxy, "0.0.0.0") as port:
        remote = http.get(url(IPV4, port, "/"), headers={"X-Forwarded-For": "127.0.0.1"})
        local = http.get(url("127.0.0.1", port, "/"))
        remote_switch = http.get(url(IPV4, port, "/_plugit/health"))
    assert remote.status_code == 403
    assert remote.headers["Content-Type"].startswith("text/plain")
    lines = remote.text.strip().splitlines()
    assert len(lines) == 1 and REFUSAL in lines[0] and "dev_allowed_clients" in lines[0]
    assert "plugit_session" not in remote.headers.get("Set-Cookie", "")
    assert remote_switch.status_code == 403
    assert local.status_code == 200
    assert REFUSAL not in local.text


@needs_ipv6
def test_non_loopback_ipv6_client_is_refused(proxies, http):
    proxy = proxies()
    with serve_werkzeug(proxy, "::") as port:
        remote = http.get(url(IPV6, port, "/"))
        local = http.get(url("::1", port, "/"))
    assert remote.status_code == 403 and REFUSAL in remote.text
    assert local.status_code == 200


@needs_ipv4
def test_allow_listed_client_is_served(proxies, http):
    network = IPV4.rsplit(".", 1)[0] + ".0/24"
    proxy = proxies(dev_allowed_clients=[network])
    other = proxies(dev_allowed_clients=["198.51.100.0/24"])
    with serve_werkzeug(proxy, "0.0.0.0") as port, serve_werkzeug(other, "0.0.0.0") as other_port:
        allowed = http.get(url(IPV4, port, "/"))
        refused = http.get(url(IPV4, other_port, "/"))
    assert allowed.status_code == 200 and REFUSAL not in allowed.text
    assert refused.status_code == 403


@needs_ipv4
def test_middleware_refuses_non_loopback_clients_for_every_path(http):
    app = PlugItMiddleware(host_app, {"dev_mode": True}, load_entry_points=False)
    try:
        with serve_wsgiref(app, "0.0.0.0") as port:
            host_remote = http.get(url(IPV4, port, "/host-page"))
            proxy_remote = http.get(url(IPV4, port, "/_plugit/health"))
            host_local = http.get(url("127.0.0.1", port, "/host-page"))
            proxy_local = http.get(url("127.0.0.1", port, "/_plugit/health"))
    finally:
        app.proxy.close()
    assert host_remote.status_code == 403 and REFUSAL in host_remote.text
    assert proxy_remote.status_code == 403 and REFUSAL in proxy_remote.text
    assert host_local.text == "the host app"
    assert proxy_local.status_code == 200


@needs_ipv4
def test_outside_dev_mode_every_client_is_served(http):
    proxy = ProxyApp({"secret_key": STRONG}, load_entry_points=False)
    app = PlugItMiddleware(host_app, {"secret_key": STRONG}, load_entry_points=False)
    try:
        assert proxy.dev_guard is None
        with serve_werkzeug(proxy, "0.0.0.0") as port, serve_werkzeug(app, "0.0.0.0") as port2:
            assert http.get(url(IPV4, port, "/")).status_code == 200
            assert http.get(url(IPV4, port2, "/host-page")).text == "the host app"
    finally:
        proxy.close()
        app.proxy.close()


def test_start_up_warning_says_who_may_connect(caplog, proxies):
    with caplog.at_level(logging.WARNING, logger="plugit.proxy"):
        proxies(dev_allowed_clients=["10.1.2.0/24"])
    warnings = [r.getMessage() for r in caplog.records if "dev mode is on" in r.getMessage()]
    assert len(warnings) == 1
    assert "loopback clients and 10.1.2.0/24" in warnings[0]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="plugit.proxy"):
        ProxyApp({"secret_key": STRONG}, load_entry_points=False).close()
    assert not [r for r in caplog.records if "dev mode" in r.getMessage()]


@pytest.mark.parametrize(
    ("peer", "allowed"),
    [
        ("127.0.0.1", True),
        ("127.8.9.10", True),
        ("::1", True),
        ("::ffff:127.0.0.1", True),
        ("10.1.2.3", True),  # allow-listed below
        ("::ffff:10.1.2.3", True),
        ("10.1.3.1", False),
        ("192.0.2.2", False),
        ("fd00::2", False),
        ("0.0.0.0", False),
        ("", False),
        (None, False),  # a Unix socket: the client is unknown
        ("localhost", False),  # not an address
        ("127.0.0.1, 192.0.2.2", False),
    ],
)
def test_which_peers_are_allowed(peer, allowed):
    config = ProxyConfig.from_mapping({"dev_mode": True, "dev_allowed_clients": ["10.1.2.0/24"]})
    guard = DevGuard(config.dev_allowed_clients)
    environ = {} if peer is None else {"REMOTE_ADDR": peer}
    assert guard.allows(environ) is allowed


def test_refusal_without_a_server():
    """Any WSGI caller gets the same refusal, whatever it puts in the environ besides the peer."""
    proxy = ProxyApp({"dev_mode": True}, load_entry_points=False)
    statuses: list[str] = []
    try:
        environ = {
            "REQUEST_METHOD": "GET",
            "PATH_INFO": "/svc/ebuio_setUser",
            "QUERY_STRING": "mode=adm",
            "REMOTE_ADDR": "203.0.113.9",
            "HTTP_X_FORWARDED_FOR": "127.0.0.1",
            "HTTP_X_REAL_IP": "127.0.0.1",
            "SERVER_NAME": "localhost",
            "SERVER_PORT": "80",
            "wsgi.url_scheme": "http",
            "wsgi.input": io.BytesIO(b""),
        }
        body = b"".join(proxy(environ, lambda status, headers: statuses.append(status)))
    finally:
        proxy.close()
    assert statuses == ["403 Forbidden"]
    assert REFUSAL.encode() in body

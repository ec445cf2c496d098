"""`plugit proxy` and `plugit service` as real processes on their servers: granian (the default)
and gunicorn, over HTTP/1.1, HTTP/2 and TLS; the process environment stays out of requests; a
slowloris crowd does not take the default server's threads."""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from plugit_core.cli import main
from plugit_core.testing import free_port, wait_for_port

pytestmark = pytest.mark.slow

SECRET = "servers-test-secret-0123456789abcdef"
CANARY = "canary-of-the-process-environment-4f1b9c"

SERVICE = """\
from plugit_core.service import action, json_only


@action("/", template="home.html")
def home(request):
    return {"hello": "Hello through the proxy"}


@action("/environ")
@json_only()
def environ(request):
    return {k: v for k, v in request.environ.items() if isinstance(v, str)}
"""


@contextlib.contextmanager
def started(args: list[str], port: int, env: dict[str, str] | None = None) -> Iterator[Path]:
    """``plugit ARGS`` as a process, until it listens on ``port``; yields its log file."""
    with tempfile.NamedTemporaryFile(suffix=".log", delete=False) as log:
        log_path = Path(log.name)
        process = subprocess.Popen(
            [sys.executable, "-m", "plugit_core.cli", *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
        )
        try:
            try:
                wait_for_port("127.0.0.1", port, timeout=60)
            except TimeoutError:
                process.kill()
                process.wait(20)
                raise AssertionError(log_path.read_text(errors="replace")) from None
            yield log_path
        finally:
            process.terminate()
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(20)
                raise
            finally:
                log_path.unlink(missing_ok=True)


@pytest.fixture(scope="module")
def service_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("service")
    (folder / "templates").mkdir()
    (folder / "templates" / "home.html").write_text(
        '{% extends "plugit/base.html" %}'
        '{% block content %}<p id="hello">{{ hello }}</p>{% endblock %}'
    )
    (folder / "hello.py").write_text(SERVICE)
    return folder / "hello.py"


@pytest.fixture(scope="module")
def service(service_file: Path) -> Iterator[str]:
    """`plugit service` on its default server."""
    port = free_port()
    with started(["service", str(service_file), "--port", str(port), "--secret", SECRET], port):
        yield f"http://127.0.0.1:{port}"


def proxy_config(folder: Path, service_url: str) -> Path:
    path = folder / "plugit.toml"
    path.write_text(
        'secret_key = "servers-proxy-key-0123456789-abcdefghijklmnopqrstuvwxyz"\n'
        "[session_cookie]\nsecure = false\n"
        f'[[services]]\nname = "hello"\nurl = "{service_url}"\nsecret = "{SECRET}"\n'
    )
    return path


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory, service: str) -> Path:
    return proxy_config(tmp_path_factory.mktemp("proxy"), service)


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and its key (PEM, PKCS#8)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)

    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    folder = tmp_path_factory.mktemp("tls")
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def assert_page(response: requests.Response) -> None:
    assert response.status_code == 200
    assert '<p id="hello">Hello through the proxy</p>' in response.text
    assert 'id="plugit-content"' in response.text


# -- the servers -----------------------------------------------------------------------------------


def test_the_default_server_is_granian(config: Path) -> None:
    port = free_port()
    with started(["proxy", "--config", str(config), "--port", str(port)], port):
        page = requests.get(f"http://127.0.0.1:{port}/hello/", timeout=10)
        assert_page(page)
        assert page.headers["Server"] == "granian"


@pytest.mark.parametrize("server", ["granian", "gunicorn"])
def test_each_server_serves_the_proxy_with_workers_and_threads(config: Path, server: str) -> None:
    port = free_port()
    args = ["proxy", "--config", str(config), "--port", str(port), "--server", server]
    with started([*args, "--workers", "2", "--threads", "4"], port):
        session = requests.Session()
        for _ in range(20):  # keep-alive and new connections, spread over both processes
            assert_page(session.get(f"http://127.0.0.1:{port}/hello/", timeout=10))
            assert_page(requests.get(f"http://127.0.0.1:{port}/hello/", timeout=10))


@pytest.mark.parametrize("server", ["granian", "gunicorn"])
def test_tls(config: Path, tls_files: tuple[Path, Path], server: str) -> None:
    cert, key = tls_files
    port = free_port()
    args = ["proxy", "--config", str(config), "--port", str(port), "--server", server]
    with started([*args, "--tls-cert", str(cert), "--tls-key", str(key)], port):
        assert_page(requests.get(f"https://127.0.0.1:{port}/hello/", verify=str(cert), timeout=10))
        with pytest.raises(requests.exceptions.SSLError):  # the certificate is checked
            requests.get(f"https://127.0.0.1:{port}/hello/", timeout=10)
        with pytest.raises(requests.exceptions.ConnectionError):  # no clear HTTP on that port
            requests.get(f"http://127.0.0.1:{port}/hello/", timeout=10)


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl drives HTTP/2 here")
def test_http2_with_and_without_tls(config: Path, tls_files: tuple[Path, Path]) -> None:
    """granian speaks HTTP/2 by ALPN over TLS and by prior knowledge in clear; HTTP/1.1 stays."""
    cert, key = tls_files

    def curl(*args: str) -> tuple[str, str]:
        out = subprocess.run(
            ["curl", "--silent", "--show-error", "--max-time", "10", "--write-out",
             "\n%{http_version} %{http_code}", *args],
            capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
        body, _, last = out.rpartition("\n")
        return last, body

    port = free_port()
    with started(["proxy", "--config", str(config), "--port", str(port)], port):
        url = f"http://127.0.0.1:{port}/hello/"
        version, body = curl("--http2-prior-knowledge", url)
        assert version == "2 200" and '<p id="hello">' in body
        assert curl("--http1.1", url)[0] == "1.1 200"
    port = free_port()
    args = ["proxy", "--config", str(config), "--port", str(port)]
    with started([*args, "--tls-cert", str(cert), "--tls-key", str(key)], port):
        url = f"https://127.0.0.1:{port}/hello/"
        version, body = curl("--http2", "--cacert", str(cert), url)
        assert version == "2 200" and '<p id="hello">' in body
        assert curl("--http1.1", "--cacert", str(cert), url)[0] == "1.1 200"
    port = free_port()
    args = ["proxy", "--config", str(config), "--port", str(port), "--http", "1"]
    with started(args, port):  # HTTP/2 can be turned off
        url = f"http://127.0.0.1:{port}/hello/"
        assert curl("--http1.1", url)[0] == "1.1 200"
        completed = subprocess.run(
            ["curl", "--silent", "--max-time", "10", "--http2-prior-knowledge", url],
            capture_output=True,
        )
        assert completed.returncode != 0


@pytest.mark.parametrize("server", ["granian", "gunicorn"])
def test_the_process_environment_never_reaches_a_request(service_file: Path, server: str) -> None:
    """granian copies the process environment into each environ: PlugIt takes it out again, so
    no secret of the process travels with requests and no variable poses as a header."""
    port = free_port()
    env = {"PLUGIT_TEST_CANARY": CANARY, "HTTP_X_PLUGIT_USER": "admin", "CONTENT_TYPE": "x/y"}
    args = ["service", str(service_file), "--port", str(port), "--server", server, "--debug"]
    with started([*args, "--allowed-networks", "127.0.0.0/8"], port, env=env):
        environ = requests.get(f"http://127.0.0.1:{port}/action/environ", timeout=10).json()
        assert CANARY not in str(environ)
        assert "HTTP_X_PLUGIT_USER" not in environ and "CONTENT_TYPE" not in environ
        assert "PATH" not in environ and "HOME" not in environ
        assert environ["REMOTE_ADDR"] == "127.0.0.1"
        assert environ["REQUEST_METHOD"] == "GET"
        # the request's own headers are kept, whatever the environment holds
        sent = requests.get(
            f"http://127.0.0.1:{port}/action/environ",
            headers={"X-Plugit-User": "bob", "X-Other": "1"},
            timeout=10,
        ).json()
        assert sent["HTTP_X_PLUGIT_USER"] == "bob" and sent["HTTP_X_OTHER"] == "1"


# -- options that cannot be served -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--tls-cert", "cert.pem"], "--tls-cert and --tls-key go together"),
        (["--tls-key", "key.pem"], "--tls-cert and --tls-key go together"),
        (["--tls-cert", "nope.pem", "--tls-key", "nope.pem"], "--tls-cert: no such file"),
        (["--server", "gunicorn", "--http", "2"], "--http 2: HTTP/2 is served by granian"),
        (["--workers", "0"], "--workers: must be 1 or more"),
        (["--threads", "-1"], "--threads: must be 1 or more"),
        (["--port", "70000"], "--port: 70000 is not a TCP port"),
    ],
)
def test_options_that_cannot_be_served_are_one_line(
    config: Path, capsys: pytest.CaptureFixture[str], options: list[str], message: str
) -> None:
    assert main(["proxy", "--config", str(config), *options]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"plugit: error: {message}") and "\n" not in err


def test_a_key_password_needs_granian(
    config: Path,
    tls_files: tuple[Path, Path],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cert, key = tls_files
    monkeypatch.setenv("PLUGIT_TLS_KEY_PASSWORD", "secret")
    args = ["proxy", "--config", str(config), "--tls-cert", str(cert), "--tls-key", str(key)]
    assert main([*args, "--server", "gunicorn"]) == 2
    assert "read by granian only" in capsys.readouterr().err


# -- slow clients ----------------------------------------------------------------------------------

SLOW_CLIENTS = 80
REQUEST = b"GET /hello/ HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: slow\r\nX-Slow: "


class SlowClients:
    """``count`` connections that trickle a request's headers, a byte per second each, never
    ending them; they stop after ``seconds`` or when closed."""

    def __init__(self, port: int, count: int = SLOW_CLIENTS, seconds: float = 30.0) -> None:
        self.sockets = [
            socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(count)
        ]
        self.sent = 0
        self.dropped = 0
        self._stop = threading.Event()
        self._deadline = time.monotonic() + seconds
        self._thread = threading.Thread(target=self._trickle, daemon=True)
        self._thread.start()

    def _trickle(self) -> None:
        position = 0
        while not self._stop.is_set() and time.monotonic() < self._deadline:
            byte = REQUEST[position : position + 1] or b"x"
            for sock in list(self.sockets):
                try:
                    sock.sendall(byte)
                except OSError:
                    self.sockets.remove(sock)
                    self.dropped += 1
            position += 1
            self.sent += 1
            self._stop.wait(1.0)

    def wait_started(self, sent: int = 2) -> None:
        while self.sent < sent:
            time.sleep(0.05)

    def connected(self) -> int:
        """How many slow connections the server still holds open."""
        open_ = 0
        for sock in self.sockets:
            sock.setblocking(False)
            try:
                open_ += sock.recv(1, socket.MSG_PEEK) != b""
            except BlockingIOError:  # nothing to read: still open
                open_ += 1
            except OSError:
                pass
            finally:
                sock.setblocking(True)
        return open_

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        for sock in self.sockets:
            sock.close()


@contextlib.contextmanager
def slow_clients(port: int) -> Iterator[SlowClients]:
    clients = SlowClients(port)
    try:
        clients.wait_started()
        yield clients
    finally:
        clients.close()


def test_a_healthy_page_answers_while_slow_clients_hold_connections(config: Path) -> None:
    """Slowloris on `plugit proxy` with its default settings (granian, one process, 16 threads):
    80 clients trickling their headers hold no Python thread; a page answers meanwhile."""
    port = free_port()
    with started(["proxy", "--config", str(config), "--port", str(port)], port):
        with slow_clients(port) as clients:
            for _ in range(5):
                assert_page(requests.get(f"http://127.0.0.1:{port}/hello/", timeout=10))
            assert clients.connected() == SLOW_CLIENTS  # the attack was on all along


def test_gunicorn_threads_are_taken_by_slow_clients(config: Path) -> None:
    """The same attack against `--server gunicorn` with as many threads: every thread waits on a
    slow client and the healthy page does not answer (why granian is the default)."""
    port = free_port()
    args = ["proxy", "--config", str(config), "--port", str(port), "--server", "gunicorn"]
    with started(args, port):
        assert_page(requests.get(f"http://127.0.0.1:{port}/hello/", timeout=10))
        with slow_clients(port):
            with pytest.raises(requests.exceptions.Timeout):
                requests.get(f"http://127.0.0.1:{port}/hello/", timeout=4)

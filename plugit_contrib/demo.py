"""``plugit demo``: the proxy and the example voting service, on embedded defaults.

The service runs in a child process on a free loopback port, signed with a fresh secret; the
proxy runs in dev mode (simulated users) with the memory cache, signed-cookie sessions and
SQLite, and prints its URL.
"""

from __future__ import annotations

import functools
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from plugit_core.cli import CommandError, ServeOptions, run_server
from plugit_core.testing import free_port, wait_for_port

__all__ = ["demo_config", "run_demo"]


def demo_config(service_url: str, secret: str) -> dict[str, Any]:
    """The demo proxy's configuration (what a ``plugit.toml`` would hold)."""
    return {
        "dev_mode": True,
        "site_name": "PlugIt demo",
        "services": [
            {
                "name": "voting",
                "title": "Polls",
                "url": service_url,
                "mount": "/voting/",
                "secret": secret,
                "timeout": 5,
            }
        ],
    }


def _wait_for_service(service: subprocess.Popen[bytes], port: int) -> None:
    """Wait until the service listens; a service that stops first is a one-line error."""
    deadline = time.monotonic() + 60
    while True:
        code = service.poll()
        if code is not None:
            raise CommandError(
                f"the demo's voting service stopped at start-up (exit status {code})"
            )
        try:
            wait_for_port("127.0.0.1", port, timeout=0.5)
            return
        except TimeoutError:
            if time.monotonic() > deadline:
                raise CommandError("the demo's voting service did not start within 60 s") from None


def _watch(service: subprocess.Popen[bytes]) -> None:
    """Say so when the service dies while the proxy serves (its pages then answer 502)."""
    code = service.wait()
    if code not in (0, -signal.SIGTERM):
        print(
            f"\n  plugit demo: the voting service stopped (exit status {code}); its pages answer "
            "502 until you restart plugit demo\n",
            file=sys.stderr,
            flush=True,
        )


def run_demo(
    *,
    port: int = 8000,
    host: str = "127.0.0.1",
    data_dir: str | None = None,
    options: ServeOptions | None = None,
) -> int:
    """Start the service, then serve the proxy in the foreground until interrupted.

    ``options`` says how the proxy is served (granian, 16 threads, by default); when given, its
    host and port win over ``host`` and ``port``.  The service is served by the same server.
    """
    from plugit_contrib.examples.voting import db
    from plugit_core.proxy.app import ProxyApp

    if options is None:
        options = ServeOptions(host=host, port=port, threads=16, name="plugit-demo")
    options.check()
    host, port = options.host, options.port
    folder = Path(data_dir) if data_dir else Path(tempfile.mkdtemp(prefix="plugit-demo-"))
    folder.mkdir(parents=True, exist_ok=True)
    database = folder / "voting.sqlite3"
    if not database.exists():
        db.seed(str(database))
    service_port = free_port("127.0.0.1")
    secret = secrets.token_urlsafe(32)
    env = dict(os.environ, PLUGIT_DATABASE=str(database), PLUGIT_SERVICE_SECRET=secret)
    service = subprocess.Popen(  # noqa: S603 (our own interpreter and module)
        [
            sys.executable,
            "-m",
            "plugit_core.cli",
            "service",
            "plugit_contrib.examples.voting.app:create_app",
            "--host",
            "127.0.0.1",
            "--port",
            str(service_port),
            "--server",
            options.server,
        ],
        env=env,
    )
    try:
        _wait_for_service(service, service_port)
        watcher = threading.Thread(target=_watch, args=(service,), daemon=True)
        watcher.start()
        config = demo_config(f"http://127.0.0.1:{service_port}", secret)
        shown = f"[{host}]" if ":" in host else host
        scheme = "https" if options.tls_cert else "http"
        print(
            f"\n  PlugIt demo: {scheme}://{shown}:{port}/voting/   (data in {folder})\n",
            flush=True,
        )
        run_server(functools.partial(ProxyApp, config), options=options)
    finally:
        if service.poll() is None:
            service.send_signal(signal.SIGTERM)
            try:
                service.wait(10)
            except subprocess.TimeoutExpired:
                service.kill()
    return 0

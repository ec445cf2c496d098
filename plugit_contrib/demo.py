"""``plugit demo``: the proxy and the example voting and news services, on embedded defaults.

Each service runs in a child process on a free loopback port, signed with a fresh secret; the
proxy runs in dev mode (simulated users) with the memory cache, signed-cookie sessions and
SQLite, and prints its URL.  The site's home (``/``) is a page composed of fragments of both
services (``[[pages]]``), and the demo's theme (the default one with a sidebar region) shows the
news headlines, a fragment, beside every page (docs/fragments.md).
"""

from __future__ import annotations

import functools
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from plugit_backends.theme_bootstrap import SERVICE_TEMPLATES_DIR, STATIC_DIR, TEMPLATES_DIR
from plugit_core.backends import Theme
from plugit_core.cli import CommandError, ServeOptions, run_server
from plugit_core.hookspecs import hookimpl
from plugit_core.testing import free_port, wait_for_port

__all__ = ["FRAGMENT_TIMEOUT", "DemoTheme", "demo_config", "make_demo_theme", "run_demo"]

#: Seconds the home page waits for each of its fragments before showing its fallback.
FRAGMENT_TIMEOUT = 2.0

#: The demo theme's layout: the default theme's, with a sidebar region beside every page that
#: uses the default layout (the site's pages included): the news headlines, a fragment.
DEMO_LAYOUT = """\
{#- The demo theme's layout: the default theme's (plugit/bootstrap-layout.html, same context)
with a sidebar region: the news service's headlines, a fragment (docs/fragments.md). -#}
{% extends "plugit/bootstrap-layout.html" %}
{% block main %}
<div class="container-lg">
  <div class="row">
    <div class="col-lg-9">{{ super() }}</div>
    <aside id="demo-sidebar" class="col-lg-3 py-4" aria-label="Sidebar">
      {{- plugit_fragment(
            "news",
            "/headlines",
            fallback='<p class="text-body-secondary small">The headlines are resting.</p>',
          ) -}}
    </aside>
  </div>
</div>
{%- endblock %}
"""


def make_demo_theme(folder: str | os.PathLike[str]) -> Path:
    """Write the demo theme's site templates into ``folder`` (the default theme's, with
    ``plugit/layout.html`` adding the sidebar region); return the templates folder."""
    templates = Path(folder) / "theme-templates"
    shutil.copytree(TEMPLATES_DIR, templates, dirs_exist_ok=True)
    shutil.copyfile(
        TEMPLATES_DIR / "plugit" / "layout.html", templates / "plugit" / "bootstrap-layout.html"
    )
    (templates / "plugit" / "layout.html").write_text(DEMO_LAYOUT, encoding="utf-8")
    return templates


class DemoTheme:
    """Plugin registering the ``theme`` backend ``demo``: the default theme with the demo's
    layout (its site templates in ``templates``, made by :func:`make_demo_theme`)."""

    def __init__(self, templates: str | os.PathLike[str]) -> None:
        self.templates = Path(templates)

    @hookimpl
    def plugit_register_backends(self, register: Any) -> None:
        theme = Theme("demo", self.templates, SERVICE_TEMPLATES_DIR, STATIC_DIR)
        register("theme", "demo", lambda config, section: theme)


def demo_config(
    voting_url: str,
    voting_secret: str,
    news_url: str,
    news_secret: str,
    *,
    theme: str = "demo",
    fragment_timeout: float = FRAGMENT_TIMEOUT,
) -> dict[str, Any]:
    """The demo proxy's configuration (what a ``plugit.toml`` would hold).

    ``theme = "demo"`` needs the :class:`DemoTheme` plugin; ``"bootstrap"`` shows no sidebar.
    """
    return {
        "dev_mode": True,
        "site_name": "PlugIt demo",
        "theme": theme,
        "services": [
            {
                "name": "voting",
                "title": "Polls",
                "url": voting_url,
                "mount": "/voting/",
                "secret": voting_secret,
                "timeout": 5,
            },
            {
                "name": "news",
                "title": "News",
                "url": news_url,
                "mount": "/news/",
                "secret": news_secret,
                "timeout": 5,
            },
        ],
        "pages": [
            {
                "path": "/",
                "title": "Welcome",
                "columns": 2,
                "fragments": [
                    {
                        "service": "voting",
                        "path": "/latest",
                        "title": "Latest polls",
                        "timeout": fragment_timeout,
                        "fallback": '<p class="text-body-secondary">The polls will be back '
                        "soon.</p>",
                    },
                    {
                        "service": "news",
                        "path": "/latest",
                        "title": "News",
                        "timeout": fragment_timeout,
                        "fallback": '<p class="text-body-secondary">The news will be back '
                        "soon.</p>",
                    },
                ],
            }
        ],
    }


def _wait_for_service(service: subprocess.Popen[bytes], port: int, name: str = "voting") -> None:
    """Wait until the service listens; a service that stops first is a one-line error."""
    deadline = time.monotonic() + 60
    while True:
        code = service.poll()
        if code is not None:
            raise CommandError(
                f"the demo's {name} service stopped at start-up (exit status {code})"
            )
        try:
            wait_for_port("127.0.0.1", port, timeout=0.5)
            return
        except TimeoutError:
            if time.monotonic() > deadline:
                raise CommandError(f"the demo's {name} service did not start within 60 s") from None


def _watch(service: subprocess.Popen[bytes], name: str = "voting") -> None:
    """Say so when the service dies while the proxy serves (its pages then answer 502)."""
    code = service.wait()
    if code not in (0, -signal.SIGTERM):
        print(
            f"\n  plugit demo: the {name} service stopped (exit status {code}); its pages answer "
            "502 until you restart plugit demo\n",
            file=sys.stderr,
            flush=True,
        )


def _start_service(
    app: str, options: ServeOptions, env: dict[str, str]
) -> tuple[subprocess.Popen[bytes], int]:
    """``plugit service <app>`` in a child process on a free loopback port."""
    port = free_port("127.0.0.1")
    process = subprocess.Popen(  # noqa: S603 (our own interpreter and module)
        [
            sys.executable,
            "-m",
            "plugit_core.cli",
            "service",
            app,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--server",
            options.server,
        ],
        env=env,
    )
    return process, port


def _stop(service: subprocess.Popen[bytes]) -> None:
    if service.poll() is None:
        service.send_signal(signal.SIGTERM)
        try:
            service.wait(10)
        except subprocess.TimeoutExpired:
            service.kill()


def run_demo(
    *,
    port: int = 8000,
    host: str = "127.0.0.1",
    data_dir: str | None = None,
    options: ServeOptions | None = None,
) -> int:
    """Start the services, then serve the proxy in the foreground until interrupted.

    ``options`` says how the proxy is served (granian, 16 threads, by default); when given, its
    host and port win over ``host`` and ``port``.  The services are served by the same server.
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
    theme = DemoTheme(make_demo_theme(folder))
    secrets_ = {name: secrets.token_urlsafe(32) for name in ("voting", "news")}
    started: list[subprocess.Popen[bytes]] = []
    try:
        ports = {}
        for name, app, extra in (
            (
                "voting",
                "plugit_contrib.examples.voting.app:create_app",
                {"PLUGIT_DATABASE": str(database)},
            ),
            ("news", "plugit_contrib.examples.news.app:create_app", {}),
        ):
            env = dict(os.environ, PLUGIT_SERVICE_SECRET=secrets_[name], **extra)
            service, ports[name] = _start_service(app, options, env)
            started.append(service)
            _wait_for_service(service, ports[name], name)
            watcher = threading.Thread(target=_watch, args=(service, name), daemon=True)
            watcher.start()
        config = demo_config(
            f"http://127.0.0.1:{ports['voting']}",
            secrets_["voting"],
            f"http://127.0.0.1:{ports['news']}",
            secrets_["news"],
        )
        shown = f"[{host}]" if ":" in host else host
        scheme = "https" if options.tls_cert else "http"
        print(
            f"\n  PlugIt demo: {scheme}://{shown}:{port}/   (polls at /voting/, news at /news/;"
            f" data in {folder})\n",
            flush=True,
        )
        run_server(functools.partial(ProxyApp, config, plugins=(theme,)), options=options)
    finally:
        for service in started:
            _stop(service)
    return 0

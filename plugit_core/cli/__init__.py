"""The ``plugit`` command: serve a service, serve a proxy, check a service, run the demo.

::

    plugit service MODULE [--host H] [--port P] [--templates DIR] [--media DIR] [--secret S]
                   [--base-url PATH] [--allowed-networks CIDR,...] [--debug] [SERVING]
    plugit service --check URL [--secret S] [--action PATH ...]
    plugit proxy [--config FILE] [--force] [--reload] [SERVING]
    plugit config check [--config FILE]
    plugit users [--config FILE] add|passwd|grant|...   (added by the users backends)
    plugit demo [SERVING]        (added by plugit_contrib's plugin)
    plugit --version

    SERVING: [--host H] [--port P] [--server granian|gunicorn] [--workers N] [--threads N]
             [--tls-cert FILE --tls-key FILE] [--http auto|1|2]

Servers run under granian (``pip install 'plugit-wsgi[server]'``) or, with ``--server gunicorn``,
under gunicorn's threaded workers (``pip install 'plugit-wsgi[gunicorn]'``).  ``--reload`` serves
with werkzeug's development server instead, restarted when a Python file or the configuration
changes.

A command that reads a configuration takes ``--config FILE`` anywhere on its line (before or
after its sub-command); without it, the file named by ``$PLUGIT_CONFIG``, else ``./plugit.toml``.

The package has one module per job: :mod:`.servers` (how the commands that serve run their app),
:mod:`.access_log` (the access log written on granian),
:mod:`.services` (``plugit service``), :mod:`.proxy` (``plugit proxy``, ``plugit config check``),
:mod:`.directory` (helpers of the commands on a configuration's backends), :mod:`.main` (the
parser and entry point). Commands of backends and extras (``plugit users``, ``plugit billing``,
``plugit mail``, ``plugit demo``) are added by their plugins through ``plugit_add_commands``: the
CLI imports no backend and no extra.
"""

from __future__ import annotations

from .directory import find_orga, find_user, installed_backends
from .errors import CommandError
from .main import main
from .servers import ServeOptions, add_serve_options, run_server, serve_options
from .services import load_service

__all__ = [
    "CommandError",
    "ServeOptions",
    "add_serve_options",
    "find_orga",
    "find_user",
    "installed_backends",
    "load_service",
    "main",
    "run_server",
    "serve_options",
]

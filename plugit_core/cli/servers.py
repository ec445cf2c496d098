"""How the commands that serve run their WSGI app: granian, gunicorn or the reloader.

``plugit service``, ``plugit proxy`` and plugins' commands (``plugit demo``) share the serving
options (:func:`add_serve_options`, :func:`serve_options`) and :func:`run_server`.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import importlib.metadata
import importlib.util
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .access_log import AccessLog
from .errors import CommandError

if TYPE_CHECKING:
    pass

log = logging.getLogger("plugit")


# The access log, one line per request on standard output: the Common Log Format (address,
# -, user, [time], "request line", status, bytes) followed by the duration in milliseconds.  On
# granian it is written by PlugIt's own middleware (access_log.py), not granian's, which costs a
# Python logging record per request; gunicorn's is gunicorn's, in the same format.
GUNICORN_ACCESS_LOG = '%(h)s %(l)s %(u)s %(t)s "%(r)s" %(s)s %(b)s %(M)s'

SERVERS = ("granian", "gunicorn")
HTTP_VERSIONS = ("auto", "1", "2")


@dataclass(frozen=True)
class ServeOptions:
    """How ``plugit proxy``, ``plugit service`` and ``plugit demo`` serve their WSGI app.

    ``server`` is ``"granian"`` (the default: HTTP/1.1 and HTTP/2, connections and request
    parsing in Rust, outside the GIL) or ``"gunicorn"`` (threaded workers, HTTP/1.1).  ``threads``
    are the Python threads that run the app in each of the ``workers`` processes.  ``tls_cert`` and
    ``tls_key`` (PEM files; granian wants the key in PKCS#8) serve HTTPS; ``tls_key_password``
    opens an encrypted key (granian only).  ``http`` is ``"auto"`` (HTTP/1.1, and HTTP/2 for
    clients that ask: ALPN over TLS, prior knowledge in clear), ``"1"`` or ``"2"`` (granian only).
    """

    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 1
    threads: int = 8
    server: str = "granian"
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_key_password: str | None = None
    http: str = "auto"
    timeout: int = 60
    name: str = "plugit"
    access_log: bool = True

    def check(self) -> None:
        """Raise :class:`CommandError` naming the option that cannot be served."""
        if self.server not in SERVERS:
            raise CommandError(f"--server: {self.server!r} is not one of {', '.join(SERVERS)}")
        if self.http not in HTTP_VERSIONS:
            raise CommandError(f"--http: {self.http!r} is not one of {', '.join(HTTP_VERSIONS)}")
        for option, value in (("--workers", self.workers), ("--threads", self.threads)):
            if value < 1:
                raise CommandError(f"{option}: must be 1 or more, not {value}")
        if not 0 <= self.port <= 65535:
            raise CommandError(f"--port: {self.port} is not a TCP port")
        if bool(self.tls_cert) != bool(self.tls_key):
            raise CommandError("--tls-cert and --tls-key go together: give both, or neither")
        for option, path in (("--tls-cert", self.tls_cert), ("--tls-key", self.tls_key)):
            if path and not Path(path).is_file():
                raise CommandError(f"{option}: no such file: {path}")
        if self.tls_key_password and not self.tls_key:
            raise CommandError("PLUGIT_TLS_KEY_PASSWORD is set but no --tls-key is given")
        if self.server == "gunicorn":
            if self.http == "2":
                raise CommandError(
                    "--http 2: HTTP/2 is served by granian (--server granian, the default); "
                    "gunicorn serves HTTP/1.1 here"
                )
            if self.tls_key_password:
                raise CommandError(
                    "an encrypted TLS key (PLUGIT_TLS_KEY_PASSWORD) is read by granian only: "
                    "use --server granian, or a key without a password"
                )
        if importlib.util.find_spec(self.server) is None:
            raise CommandError(
                f"--server: {self.server} is not installed: "
                f"pip install 'plugit-wsgi[server]' (or pip install {self.server})"
            )


# What granian puts in every environ itself (from the request, or its own constants).
_GRANIAN_KEYS = frozenset(
    {
        "GATEWAY_INTERFACE", "SCRIPT_NAME", "SERVER_SOFTWARE", "SERVER_PROTOCOL", "SERVER_NAME",
        "SERVER_PORT", "REMOTE_ADDR", "REQUEST_METHOD", "PATH_INFO", "QUERY_STRING",
        "CONTENT_LENGTH",
    }
)  # fmt: skip


def _without_process_environment(app: Callable[..., Any]) -> Callable[..., Any]:
    """``app`` without the process environment in its WSGI environ.

    granian starts every request's environ from a copy of ``os.environ`` taken when the worker
    starts: the process's secrets would travel with every request to whatever reads the environ,
    and a variable named ``HTTP_X_SOMETHING`` (``HTTP_PROXY`` is a common one) would read as a
    request header the client never sent.  Each inherited entry still holding its inherited value
    is removed (so a request header equal to an ``HTTP_*`` variable of the process is dropped
    too); a few microseconds per request.  Call it right after the app is made, in the worker.
    """
    inherited = tuple((k, v) for k, v in os.environ.items() if k not in _GRANIAN_KEYS)

    def wsgi(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        for key, value in inherited:
            if environ.get(key) == value:
                del environ[key]
        return app(environ, start_response)

    return wsgi


def run_server(
    factory: Callable[[], Any],
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    workers: int = 1,
    threads: int = 8,
    timeout: int = 60,
    name: str = "plugit",
    options: ServeOptions | None = None,
) -> None:
    """Serve the WSGI app made by ``factory`` until interrupted (SIGINT or SIGTERM).

    ``options`` says how (granian by default, see :class:`ServeOptions`); without it the
    keyword arguments make one.  ``factory`` runs in each worker process, so connection pools are
    never shared between processes: a module-level function or a :func:`functools.partial` of one
    works with every start method; a closure only where processes fork (Linux before Python 3.14).
    """
    if options is None:
        options = ServeOptions(
            host=host, port=port, workers=workers, threads=threads, timeout=timeout, name=name
        )
    options.check()
    if options.server == "gunicorn":
        _run_gunicorn(factory, options)
    else:
        _run_granian(factory, options)


def _run_granian(factory: Callable[[], Any], options: ServeOptions) -> None:
    try:
        from granian.constants import HTTPModes, Interfaces
        from granian.http import HTTP1Settings
        from granian.server import Server
    except ImportError:
        raise CommandError(
            "granian is needed to serve: pip install 'plugit-wsgi[server]' (or --server gunicorn)"
        ) from None
    server = Server(
        options.name,
        address=options.host,
        port=options.port,
        interface=Interfaces.WSGI,
        workers=options.workers,
        blocking_threads=options.threads,
        http={"auto": HTTPModes.auto, "1": HTTPModes.http1, "2": HTTPModes.http2}[options.http],
        # Headers must arrive within 10 s: a client trickling them holds a connection (in Rust,
        # no Python thread) for that long at most.
        http1_settings=HTTP1Settings(header_read_timeout=10_000),
        websockets=False,
        ssl_cert=Path(options.tls_cert) if options.tls_cert else None,
        ssl_key=Path(options.tls_key) if options.tls_key else None,
        ssl_key_password=options.tls_key_password,
        # A request still running this long after SIGTERM is abandoned.
        workers_kill_timeout=options.timeout,
        log_access=False,  # written by AccessLog, see _granian_app
    )
    loader = functools.partial(_granian_app, factory, access_log=options.access_log)
    server.serve(target_loader=loader, wrap_loader=False)


def _granian_app(factory: Callable[[], Any], access_log: bool = True) -> Callable[..., Any]:
    """Runs in each granian worker: the app to serve."""
    app = _without_process_environment(factory())
    return AccessLog(app) if access_log else app


def _run_gunicorn(factory: Callable[[], Any], options: ServeOptions) -> None:
    try:
        from gunicorn.app.base import BaseApplication
    except ImportError:
        raise CommandError(
            "gunicorn is needed for --server gunicorn: pip install 'plugit-wsgi[gunicorn]'"
        ) from None

    host, port = options.host, options.port

    class _Server(BaseApplication):
        def load_config(self) -> None:
            bind = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
            settings: dict[str, Any] = {
                "bind": bind,
                "workers": options.workers,
                "threads": options.threads,
                "worker_class": "gthread",
                "timeout": options.timeout,
                "proc_name": options.name,
                "accesslog": "-" if options.access_log else None,
                "access_log_format": GUNICORN_ACCESS_LOG,
                "errorlog": "-",
                "loglevel": "info",
            }
            if options.tls_cert:
                settings["certfile"] = options.tls_cert
                settings["keyfile"] = options.tls_key
            if "control_socket_disable" in self.cfg.settings:  # gunicorn >= 25: one per server
                settings["control_socket_disable"] = True
            for key, value in settings.items():
                self.cfg.set(key, value)

        def load(self) -> Any:
            return factory()

    _Server().run()


def reloader_child() -> bool:
    """True in the process werkzeug's reloader starts (and restarts) to serve."""
    return os.environ.get("WERKZEUG_RUN_MAIN") == "true"


def _broken_app(message: str) -> Callable[..., Any]:
    """What ``--reload`` serves while the code or the configuration is broken: the error, in
    plain text, until the next save restarts the server."""
    body = f"plugit: error: {message}\n\nFix it and save: the server restarts.\n".encode()

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        headers = [("Content-Type", "text/plain; charset=utf-8"), ("Cache-Control", "no-store")]
        start_response("500 Internal Server Error", headers)
        return [body]

    return app


def serve_reloading(factory: Callable[[], Any], options: ServeOptions, watch: list[str]) -> int:
    """Serve ``factory()`` for development (``--reload``): werkzeug's server in one process,
    restarted when a loaded Python file or one of the ``watch`` files changes.

    The first process only watches; each restart runs in a new child, whose app is made anew
    (an edit that breaks it is served as an error page and the watch goes on).  The serving
    options other than host, port and the access log do not apply.
    """
    from werkzeug.serving import run_simple

    from ..config import ConfigError

    app: Callable[..., Any] = _broken_app("not started")
    if reloader_child():
        try:
            app = factory()
        except (CommandError, ConfigError) as exc:
            log.error("%s", exc)
            app = _broken_app(str(exc))
        except Exception as exc:
            log.exception("the app cannot be made")
            app = _broken_app(f"{type(exc).__name__}: {exc}")
    if not options.access_log:
        logging.getLogger("werkzeug").setLevel(logging.WARNING)
    try:
        run_simple(
            options.host,
            options.port,
            app,
            use_reloader=True,
            reloader_type="stat",
            extra_files=watch,
            threaded=True,
        )
    except OSError as exc:
        raise CommandError(
            f"--port: cannot listen on {options.host}:{options.port}: {exc.strerror or exc}"
        ) from None
    return 0


def add_serve_options(parser: argparse.ArgumentParser, *, port: int, threads: int) -> None:
    """The options of the commands that serve: host, port, server, processes, TLS, HTTP/2
    (read back by :func:`serve_options`); for plugins' commands too."""
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=port)
    parser.add_argument(
        "--server",
        choices=SERVERS,
        default="granian",
        help="the HTTP server (default: granian; gunicorn serves HTTP/1.1 only)",
    )
    parser.add_argument("--workers", type=int, default=1, help="processes (default: 1)")
    parser.add_argument(
        "--threads", type=int, default=threads, help=f"threads per process (default: {threads})"
    )
    parser.add_argument("--tls-cert", metavar="FILE", help="serve HTTPS with this certificate")
    parser.add_argument(
        "--tls-key",
        metavar="FILE",
        help="its private key (PEM, PKCS#8 for granian; password in PLUGIT_TLS_KEY_PASSWORD)",
    )
    parser.add_argument(
        "--http",
        choices=HTTP_VERSIONS,
        default="auto",
        help="HTTP versions (default: auto, HTTP/1.1 and HTTP/2; granian only for 2)",
    )
    parser.add_argument(
        "--access-log",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="one line per request on standard output, in the Common Log Format",
    )


def serve_options(args: argparse.Namespace, name: str) -> ServeOptions:
    """The :class:`ServeOptions` of a command's parsed arguments, checked."""
    options = ServeOptions(
        host=args.host,
        port=args.port,
        workers=args.workers,
        threads=args.threads,
        server=args.server,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        tls_key_password=os.environ.get("PLUGIT_TLS_KEY_PASSWORD") or None,
        http=args.http,
        access_log=getattr(args, "access_log", True),
        name=name,
    )
    options.check()
    return options


#: Help of the ``--reload`` option of the commands that serve.
RELOAD_HELP = (
    "development: serve with werkzeug's server, restarted when a Python file or the "
    "configuration changes (one process; --server, --workers, TLS and HTTP/2 do not apply)"
)

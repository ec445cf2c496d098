"""The ``plugit`` command: serve a service, serve a proxy, check a service, run the demo.

::

    plugit service MODULE [--host H] [--port P] [--templates DIR] [--media DIR] [--secret S]
                   [--base-url PATH] [--allowed-networks CIDR,...] [--debug] [SERVING]
    plugit service --check URL [--secret S] [--action PATH ...]
    plugit proxy [--config FILE] [--force] [--reload] [SERVING]
    plugit config check [--config FILE]
    plugit users [--config FILE] add|passwd|grant|revoke|disable|enable|orga-add|orga-join|...
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
"""

from __future__ import annotations

import argparse
import functools
import getpass
import importlib
import importlib.metadata
import importlib.util
import inspect
import logging
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from .networks import is_loopback_host

if TYPE_CHECKING:
    from .backends import Backends
    from .config import ProxyConfig

__all__ = [
    "CommandError",
    "ServeOptions",
    "add_serve_options",
    "main",
    "run_server",
    "serve_options",
]

log = logging.getLogger("plugit")

_ORGA_HINT = " (plugit users orga-add NAME creates one)"


class CommandError(Exception):
    """A user error: printed as one line, exit status 2."""


# The access log, one line per request on standard output: the Common Log Format (address,
# -, user, [time], "request line", status, bytes) followed by the duration in milliseconds.
# granian knows neither the user nor the size (-) and logs the path without its query string.
GRANIAN_ACCESS_LOG = (
    '%(addr)s - - [%(time)s] "%(method)s %(path)s %(protocol)s" %(status)d - %(dt_ms).1f'
)
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
        log_access=options.access_log,
        log_access_format=GRANIAN_ACCESS_LOG,
    )
    server.serve(target_loader=functools.partial(_granian_app, factory), wrap_loader=False)


def _granian_app(factory: Callable[[], Any]) -> Callable[..., Any]:
    """Runs in each granian worker: the app to serve."""
    return _without_process_environment(factory())


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


def _reloader_child() -> bool:
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

    from .config import ConfigError

    app: Callable[..., Any] = _broken_app("not started")
    if _reloader_child():
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


# -- plugit service --------------------------------------------------------------------------------


# The service settings `plugit service` takes on its command line, with their option names.
SERVICE_OPTIONS = {
    "templates": "--templates",
    "media": "--media",
    "secret": "--secret",
    "base_url": "--base-url",
    "allowed_networks": "--allowed-networks",
    "debug": "--debug",
}


def _import_target(module_name: str) -> tuple[Any, str | None]:
    """The module named ``module_name`` (a dotted name or a ``.py`` path), and the folder of its
    file when it was given as a path."""
    if module_name.endswith(".py") or os.sep in module_name:
        path = Path(module_name).resolve()
        if not path.is_file():
            raise CommandError(f"no such file: {module_name}")
        sys.path.insert(0, str(path.parent))
        spec = importlib.util.spec_from_file_location(path.stem, path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[path.stem] = module
        spec.loader.exec_module(module)
        return module, str(path.parent)
    try:
        return importlib.import_module(module_name), None
    except ImportError as exc:
        raise CommandError(f"cannot import {module_name}: {exc}") from None


def _is_factory(value: Any) -> bool:
    """A callable that can be called without arguments (``create_app``), not a WSGI app (which
    needs ``environ`` and ``start_response``)."""
    if not callable(value):
        return False
    try:
        inspect.signature(value).bind()
    except TypeError:  # required arguments: a WSGI app
        return False
    except ValueError:  # no signature to read (a builtin)
        return False
    return True


def _call_factory(factory: Callable[..., Any], settings: dict[str, Any]) -> tuple[Any, set[str]]:
    """``factory(**settings)`` with the settings its signature takes; and their names."""
    parameters = inspect.signature(factory).parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        taken = set(settings)
    else:
        names = {
            p.name
            for p in parameters
            if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
        }
        taken = set(settings) & names
    return factory(**{k: v for k, v in settings.items() if k in taken}), taken


def _apply_settings(app: Any, settings: dict[str, Any], taken: set[str], what: str) -> Any:
    """``app`` with ``settings`` applied: a :class:`PlugItService` is re-configured with them
    (they win over its own); any other app must have taken them all already (``taken``)."""
    from .service import PlugItService

    if isinstance(app, PlugItService):
        try:
            return app.with_settings(**settings)
        except (TypeError, ValueError) as exc:
            raise CommandError(f"cannot apply the options to {what}: {exc}") from None
    left = [SERVICE_OPTIONS.get(name, name) for name in settings if name not in taken]
    if left:
        raise CommandError(
            f"{', '.join(left)} cannot be applied to {what}: it is a {type(app).__name__}, "
            "not a PlugItService (set them where that app is built)"
        )
    return app


def load_service(target: str, **overrides: Any) -> Any:
    """The WSGI app to serve for ``module``, ``module:attribute`` or a ``.py`` file path, with the
    settings ``overrides`` (``None`` values ignored) applied.

    The module may define ``app`` (a service), ``create_app()`` (a factory, given the overrides
    its signature takes), or just decorated actions with ``PI_*`` settings beside them.  The
    overrides win over the module's own settings: a :class:`PlugItService` found in the module or
    made by a factory is re-configured with them (:meth:`PlugItService.with_settings`).  Any
    other WSGI app cannot be re-configured: an override it did not take is an error, never
    silently dropped.
    """
    from .service import PlugItService

    module_name, _, attribute = target.partition(":")
    module, root = _import_target(module_name)
    settings = {k: v for k, v in overrides.items() if v is not None}
    if attribute:
        value = getattr(module, attribute, None)
        if value is None:
            raise CommandError(f"{module_name} has no attribute {attribute!r}")
        what = f"{module_name}:{attribute}"
        if _is_factory(value) and not isinstance(value, PlugItService):
            value, taken = _call_factory(value, settings)
        else:
            taken = set()
        return _apply_settings(value, settings, taken, what)
    if isinstance(getattr(module, "app", None), PlugItService):
        return _apply_settings(module.app, settings, set(), f"{module_name}:app")
    if callable(getattr(module, "create_app", None)):
        app, taken = _call_factory(module.create_app, settings)
        return _apply_settings(app, settings, taken, f"{module_name}:create_app()")
    if root is not None:  # templates and media beside the file
        settings.setdefault("root", root)
    try:  # the module's PI_* settings, and those of the config.py beside it (the original's)
        return PlugItService.from_module(module, **settings)
    except (TypeError, ValueError) as exc:
        raise CommandError(f"the settings of {module_name}: {exc}") from None


def _service_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The settings given on the command line (and PLUGIT_SERVICE_SECRET), each checked on its
    own so that a bad value is reported with the option's name."""
    from .service import ServiceConfig

    secret = args.secret
    from_environment = secret is None and bool(os.environ.get("PLUGIT_SERVICE_SECRET"))
    if from_environment:
        secret = os.environ["PLUGIT_SERVICE_SECRET"]
    overrides: dict[str, Any] = {
        # Folders given on the command line are the user's, relative to the current directory.
        "templates": str(Path(args.templates).resolve()) if args.templates else None,
        "media": str(Path(args.media).resolve()) if args.media else None,
        "secret": secret,
        "base_url": args.base_url,
        "allowed_networks": args.allowed_networks,
        "debug": True if args.debug else None,
    }
    for name, value in overrides.items():
        if value is None:
            continue
        option = SERVICE_OPTIONS[name]
        if name == "secret" and from_environment:
            option = "PLUGIT_SERVICE_SECRET"
        try:
            ServiceConfig(**{name: value})
        except (TypeError, ValueError) as exc:
            raise CommandError(f"{option}: {exc}") from None
    return {name: value for name, value in overrides.items() if value is not None}


def _service(args: argparse.Namespace) -> int:
    if args.check:
        return _check(args)
    if not args.module:
        raise CommandError("give a MODULE to serve, or --check URL")
    overrides = _service_overrides(args)
    options = serve_options(args, f"plugit-service:{args.module}")
    factory = functools.partial(load_service, args.module, **overrides)
    module_file = args.module.partition(":")[0]
    watched = [module_file] if Path(module_file).is_file() else []
    if args.reload and _reloader_child():
        return serve_reloading(factory, options, watched)  # a broken edit is shown, not fatal
    load_service(args.module, **overrides)  # fail now, in the master, with a clear message
    if args.reload:
        return serve_reloading(factory, options, watched)
    run_server(factory, options=options)
    return 0


def _check(args: argparse.Namespace) -> int:
    from .testing import compatibility_report, run_checks

    secret = args.secret or os.environ.get("PLUGIT_SERVICE_SECRET")
    actions = args.action or ("",)
    results = run_checks(args.check, secret=secret, actions=actions)
    failed = 0
    for result in results:
        if result.ok:
            mark = "ok  "
        elif result.level == "warning":
            mark = "warn"
        else:
            mark = "FAIL"
            failed += 1
        print(f"{mark}  {result.name}: {result.message}")
    # What works differently behind this proxy than behind the original PlugIt: advice, never a
    # failure.
    notes = compatibility_report(args.check, secret=secret, actions=actions)
    print(f"compatibility with the original PlugIt: {len(notes) or 'no'} difference(s)")
    for note in notes:
        print(f"note  {note.where}: {note.what}")
        print(f"      why: {note.why}")
        print(f"      advice: {note.advice}")
    print(f"{len(results) - failed} passed, {failed} failed")
    return 1 if failed else 0


# -- plugit proxy ----------------------------------------------------------------------------------


def _proxy(args: argparse.Namespace) -> int:
    from .config import load_config
    from .proxy.app import ProxyApp

    if args.reload and _reloader_child():  # the parent checked all below; a broken edit is shown
        factory = functools.partial(_proxy_app, args.config)
        return serve_reloading(factory, serve_options(args, "plugit-proxy"), [args.config])
    config = load_config(args.config)
    if config.dev_mode:
        if not is_loopback_host(args.host):
            if not args.force:
                raise CommandError(
                    f"dev mode lets anyone switch to any simulated user: refusing to listen on "
                    f"{args.host}. Use 127.0.0.1, or --force if this network is yours alone."
                )
            print("!" * 78, file=sys.stderr)
            print(
                f"!! DEV MODE ON {args.host}: anyone who reaches this port is an admin",
                file=sys.stderr,
            )
            print("!" * 78, file=sys.stderr)
        else:
            print(
                "PlugIt proxy in DEV MODE (simulated users; never use in production)",
                file=sys.stderr,
            )
    options = serve_options(args, "plugit-proxy")
    ProxyApp(config, check_services=False).close()  # fail now with a clear message
    if args.reload:
        factory = functools.partial(_proxy_app, args.config)
        return serve_reloading(factory, options, [args.config])
    from .metrics import shared_directory

    with shared_directory():  # every worker's metrics in one place: one answer per scrape
        run_server(functools.partial(_proxy_app, args.config), options=options)
    return 0


def _proxy_app(config_path: str) -> Any:
    """The proxy of ``config_path``: made in each worker process."""
    from .config import load_config
    from .proxy.app import ProxyApp

    return ProxyApp(load_config(config_path))


# -- commands on the backends of a configuration ---------------------------------------------------


def installed_backends(config: ProxyConfig) -> Backends:
    """The registry of the installed backends, for a command that builds a few of them without a
    proxy: every table of ``config`` must belong to one (``[users_sqlit]`` is refused, not
    ignored)."""
    from .backends import KINDS, Backends
    from .config import ConfigError
    from .plugins import PluginError, make_plugin_manager

    backends = Backends()
    try:
        pm = make_plugin_manager()
    except PluginError as exc:
        raise CommandError(str(exc)) from None
    pm.hook.plugit_register_backends.call_historic(kwargs={"register": backends.register})
    known = {f"{kind}_{name}" for kind in KINDS for name in backends.names(kind)}
    for section in config.sections:
        if section not in known:
            raise ConfigError(
                section, "unknown table: no backend of that name is installed", config.source
            )
    return backends


def find_user(store: Any, username: str) -> Any:
    """The user of the directory ``store`` named ``username``, or a CommandError."""
    user = store.get_by_username(username)
    if user is None:
        raise CommandError(f"no user named {username!r}")
    return user


def find_orga(store: Any, name: str, hint: str = "") -> Any:
    """The organisation of the directory ``store`` named ``name`` (any case) or with that id,
    or a CommandError (``hint`` added to its message)."""
    orgas = store.list_orgas()
    for orga in orgas:
        if orga.name.lower() == name.lower():
            return orga
    for orga in orgas:
        if str(orga.pk) == name:
            return orga
    raise CommandError(f"no organisation named {name!r}{hint}")


# -- plugit users ----------------------------------------------------------------------------------


def _directory(config_path: str) -> tuple[Any, Any, Any]:
    """The configuration, its directory (``users`` backend) and its local-accounts backend.

    Only the directory is built: no proxy, no service is contacted.  The local-accounts backend
    (``auth`` backend ``session``, for the password rules) is None when it is not installed.
    """
    from .config import load_config

    config = load_config(config_path)
    if not config.users:
        raise CommandError(
            f'{config_path} has no directory: set auth = ["session"] (or users = "sqlite")'
        )
    backends = installed_backends(config)
    accounts = None
    if "session" in backends.names("auth"):
        accounts = backends.build("auth", "session", config)
    store = backends.build("users", config.users, config)
    return config, store, accounts


def _read_password(args: argparse.Namespace, accounts: Any) -> str:
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
        if not password:
            raise CommandError("no password on standard input")
    else:
        try:
            password = getpass.getpass("Password: ")
            again = getpass.getpass("Password (again): ")
        except EOFError:
            raise CommandError("no terminal to ask the password: use --password-stdin") from None
        if password != again:
            raise CommandError("the two passwords differ")
    problem = accounts.password_problem(password)
    if problem is not None:
        raise CommandError(problem)
    return password


def _hash(args: argparse.Namespace, accounts: Any, user: Any = None) -> str:
    if accounts is None:
        raise CommandError("local accounts are not installed (auth backend 'session')")
    if user is not None and user.extra.get("source", "local") != "local":
        source = user.extra.get("source")
        raise CommandError(f"{user.username} logs in through {source}: no local password")
    return str(accounts.hash_password(_read_password(args, accounts)))


def _services_text(user: Any) -> str:
    roles = sorted(
        f"{service}:{'admin' if service in user.admin_of else 'member'}"
        for service in user.member_of | user.admin_of
    )
    return ",".join(roles) or "-"


def _users_command(args: argparse.Namespace) -> int:
    config, store, accounts = _directory(args.config)
    try:
        return _users_action(args, config, store, accounts)
    except (ValueError, KeyError) as exc:
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        raise CommandError(str(message)) from None
    finally:
        close = getattr(store, "close", None)
        if close is not None:
            close()


def _users_action(args: argparse.Namespace, config: Any, store: Any, accounts: Any) -> int:
    action = args.action
    if action == "add":
        username = args.username.strip()
        if store.get_by_username(username) is not None:
            raise CommandError(f"the user name {username!r} is taken")
        password_hash = _hash(args, accounts)
        user = store.create_user(
            username,
            email=args.email or "",
            first_name=args.first_name or "",
            last_name=args.last_name or "",
            password_hash=password_hash,
            is_superuser=args.superuser,
        )
        print(f"added {user.username} (id {user.pk}{', superuser' if args.superuser else ''})")
        if "session" not in config.auth:
            print(
                f'note: auth in {args.config} does not list "session": '
                "local accounts cannot log in yet",
                file=sys.stderr,
            )
    elif action == "passwd":
        user = find_user(store, args.username)
        store.set_password_hash(user.pk, _hash(args, accounts, user))
        print(f"password of {user.username} changed (their sessions have ended)")
    elif action == "grant":
        user = find_user(store, args.username)
        known = [mount.name for mount in config.services]
        if args.service != "*" and args.service not in known:
            listed = ", ".join(known) or "none"
            raise CommandError(
                f"no service named {args.service!r} in {args.config} "
                f"(known: {listed}; * means every service)"
            )
        store.grant(user.pk, args.service, args.role)
        print(f"{user.username} is {args.role} of {args.service}")
    elif action == "revoke":
        user = find_user(store, args.username)
        store.revoke(user.pk, args.service)
        print(f"{user.username} has no role in {args.service} any more")
    elif action in ("disable", "enable"):
        user = find_user(store, args.username)
        store.set_active(user.pk, action == "enable")
        print(f"{user.username} is {action}d")
    elif action == "orga-add":
        orga = store.create_orga(args.name, args.codops or "")
        print(f"added organisation {orga.name} (id {orga.pk})")
    elif action == "orga-join":
        user = find_user(store, args.username)
        orga = find_orga(store, args.orga, _ORGA_HINT)
        store.add_to_orga(user.pk, orga.pk, admin=args.admin)
        role = "an administrator" if args.admin else "a member"
        print(f"{user.username} is {role} of {orga.name}")
    elif action == "orga-leave":
        user = find_user(store, args.username)
        orga = find_orga(store, args.orga, _ORGA_HINT)
        store.remove_from_orga(user.pk, orga.pk)
        print(f"{user.username} left {orga.name}")
    elif action == "list":
        _list_users(store)
    return 0


def _list_users(store: Any) -> None:
    rows = [("USERNAME", "ID", "SOURCE", "STATE", "EMAIL", "SERVICES", "ORGANISATIONS")]
    for user in store.list_users():
        state = "active" if store.is_active(user.pk) else "disabled"
        if user.is_superuser:
            state += ",superuser"
        orgas = ",".join(f"{o.name}{':admin' if o.is_admin else ''}" for o in user.orgas)
        rows.append(
            (
                user.username,
                str(user.pk),
                str(user.extra.get("source", "local")),
                state,
                user.email or "-",
                _services_text(user),
                orgas or "-",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row[:-1], widths, strict=True)]
        print("  ".join([*cells, row[-1]]).rstrip())


# -- plugit config check ---------------------------------------------------------------------------


def _config_command(args: argparse.Namespace) -> int:
    """``plugit config check``: the configuration is read and its proxy built (backends, themes,
    plugins), then every service is asked its protocol version; one line per service, exit status
    1 when one fails."""
    import concurrent.futures

    from .config import load_config
    from .proxy.app import ProxyApp

    config = load_config(args.config)
    try:
        proxy = ProxyApp(config, check_services=False)
    except (RuntimeError, OSError) as exc:
        raise CommandError(f"{args.config}: the proxy cannot start: {exc}") from None
    try:
        print(f"ok    {args.config}: a valid configuration, {len(config.services)} service(s)")
        clients = proxy.clients
        workers = max(1, min(8, len(clients)))
        with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
            futures = {name: pool.submit(client.check_version) for name, client in clients.items()}
        failed = 0
        for mount in config.services:
            ok, message = futures[mount.name].result()
            failed += not ok
            print(f"{'ok  ' if ok else 'FAIL'}  service {mount.name} ({mount.url}): {message}")
    finally:
        proxy.close()
    if failed:
        print(f"{failed} of {len(config.services)} service(s) failed", file=sys.stderr)
    return 1 if failed else 0


# -- main ------------------------------------------------------------------------------------------

DISTRIBUTION = "plugit-wsgi"
CONFIG_ENV = "PLUGIT_CONFIG"
DEFAULT_CONFIG = "plugit.toml"
_CONFIG_HELP = f"TOML configuration file (default: ${CONFIG_ENV}, else ./{DEFAULT_CONFIG})"
_RELOAD_HELP = (
    "development: serve with werkzeug's server, restarted when a Python file or the "
    "configuration changes (one process; --server, --workers, TLS and HTTP/2 do not apply)"
)
# Help for the options that have none, so that --help can show their defaults.
_OPTION_HELP = {"host": "address to listen on", "port": "TCP port to listen on"}


def version_text() -> str:
    """The distribution's name and installed version, as ``plugit --version`` prints them."""
    try:
        version = importlib.metadata.version(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        version = "(not installed: run from a source tree)"
    return f"{DISTRIBUTION} {version}"


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Help that shows each option's default, unless its text already says it."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if "default" in text or action.default in (None, False, argparse.SUPPRESS):
            return action.help
        return super()._get_help_string(action)


class _Parser(argparse.ArgumentParser):
    """A parser whose errors are one line naming the option, and whose help shows defaults.

    Sub-command parsers are made of the same class (argparse uses the parent's class).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _subparsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    found: list[argparse.ArgumentParser] = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            found.extend(dict.fromkeys(action.choices.values()))  # aliases appear twice
    return found


def _finish(parser: argparse.ArgumentParser, config: argparse.Action | None = None) -> None:
    """Every parser below ``parser`` (plugins' commands too): options without help get some, so
    their defaults show; a command with ``--config`` takes it before or after its sub-commands
    and never requires it (:func:`config_path` finds the default)."""
    for action in parser._actions:
        if action.help is None and action.option_strings and action.dest in _OPTION_HELP:
            action.help = _OPTION_HELP[action.dest]
        if "--config" in action.option_strings:
            action.required = False
            action.default = argparse.SUPPRESS
            action.metavar = "FILE"
            action.help = _CONFIG_HELP
            config = action
    if config is not None:
        parser.set_defaults(takes_config=True)
        if not any("--config" in action.option_strings for action in parser._actions):
            parser.add_argument(
                "--config", default=argparse.SUPPRESS, metavar="FILE", help=_CONFIG_HELP
            )
    for sub in _subparsers(parser):
        _finish(sub, config)


def config_path(given: str | None) -> str:
    """The configuration file: ``given`` (``--config``), else ``$PLUGIT_CONFIG``, else
    ``./plugit.toml``; a :class:`CommandError` naming where it looked when there is none."""
    if given:
        if not Path(given).is_file():
            raise CommandError(f"--config: no such file: {given}")
        return given
    from_environment = os.environ.get(CONFIG_ENV)
    if from_environment:
        if not Path(from_environment).is_file():
            raise CommandError(f"{CONFIG_ENV}: no such file: {from_environment}")
        return from_environment
    if Path(DEFAULT_CONFIG).is_file():
        return DEFAULT_CONFIG
    raise CommandError(
        f"--config: no configuration file given, {CONFIG_ENV} is not set and there is no "
        f"./{DEFAULT_CONFIG} in {Path.cwd()}"
    )


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="plugit", description="PlugIt: many web services, one site.")
    parser.add_argument("--version", action="version", version=version_text())
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    service = commands.add_parser("service", help="serve a PlugIt service, or check one")
    service.add_argument("module", nargs="?", help="module, module:attribute or path/to/file.py")
    service.add_argument(
        "--check", metavar="URL", help="run the protocol conformance checks on URL"
    )
    service.add_argument("--action", action="append", help="action path to check (repeatable)")
    add_serve_options(service, port=5000, threads=8)
    service.add_argument("--templates", help="templates folder (default: templates)")
    service.add_argument("--media", help="media folder (default: media)")
    service.add_argument("--secret", help="shared secret with the proxy (or PLUGIT_SERVICE_SECRET)")
    service.add_argument("--base-url", help="prefix of the protocol endpoints (default: /)")
    service.add_argument("--allowed-networks", help="comma-separated CIDR allow-list")
    service.add_argument("--debug", action="store_true", help="no meta caching")
    service.add_argument("--reload", action="store_true", help=_RELOAD_HELP)
    service.set_defaults(handler=_service)

    proxy = commands.add_parser("proxy", help="serve the proxy")
    proxy.add_argument("--config", help="TOML configuration file")
    add_serve_options(proxy, port=8000, threads=16)
    proxy.add_argument(
        "--force", action="store_true", help="allow dev mode on a non-loopback address"
    )
    proxy.add_argument("--reload", action="store_true", help=_RELOAD_HELP)
    proxy.set_defaults(handler=_proxy)

    users = commands.add_parser(
        "users", help="manage the directory: local accounts, roles, organisations"
    )
    users.add_argument("--config", help="TOML configuration file")
    actions = users.add_subparsers(dest="action", required=True, metavar="ACTION")
    add = actions.add_parser("add", help="add a local account (asks the password twice)")
    add.add_argument("username")
    add.add_argument("--email")
    add.add_argument("--first-name")
    add.add_argument("--last-name")
    add.add_argument("--superuser", action="store_true", help="member and admin of everything")
    add.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
    passwd = actions.add_parser("passwd", help="set a local account's password")
    passwd.add_argument("username")
    passwd.add_argument("--password-stdin", action="store_true")
    grant = actions.add_parser("grant", help="make a user member or admin of a service")
    grant.add_argument("username")
    grant.add_argument("service", help="a service name, or * for every service")
    grant.add_argument("role", choices=("member", "admin"))
    revoke = actions.add_parser("revoke", help="remove a user's role in a service")
    revoke.add_argument("username")
    revoke.add_argument("service")
    for name, text in (("disable", "refuse logins and end sessions"), ("enable", "allow again")):
        actions.add_parser(name, help=text).add_argument("username")
    orga_add = actions.add_parser("orga-add", help="add an organisation")
    orga_add.add_argument("name")
    orga_add.add_argument("--codops", help="its code (sent to services as ebu_codops)")
    orga_join = actions.add_parser("orga-join", help="make a user member of an organisation")
    orga_join.add_argument("username")
    orga_join.add_argument("orga", help="the organisation's name (or id)")
    orga_join.add_argument("--admin", action="store_true", help="as its administrator")
    orga_leave = actions.add_parser("orga-leave", help="remove a user from an organisation")
    orga_leave.add_argument("username")
    orga_leave.add_argument("orga")
    actions.add_parser("list", help="every user, with state, roles and organisations")
    users.set_defaults(handler=_users_command)

    config = commands.add_parser("config", help="check a configuration")
    config.add_argument("--config", help="TOML configuration file")
    config_actions = config.add_subparsers(dest="action", required=True, metavar="ACTION")
    config_actions.add_parser(
        "check", help="read the configuration, build the proxy, ask every service its version"
    )
    config.set_defaults(handler=_config_command)

    from .plugins import make_plugin_manager

    # plugins' own commands (plugit demo comes from plugit_contrib's plugin)
    make_plugin_manager().hook.plugit_add_commands(commands=commands)
    _finish(parser)
    # Before the command too (plugit --config FILE users list); a command that reads no
    # configuration refuses it (main).
    parser.add_argument("--config", default=argparse.SUPPRESS, metavar="FILE", help=_CONFIG_HELP)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``plugit`` console script."""
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    from .config import ConfigError

    try:
        if getattr(args, "takes_config", False):
            args.config = config_path(getattr(args, "config", None))
        elif hasattr(args, "config"):
            raise CommandError(f"--config: plugit {args.command} reads no configuration file")
        status: int = args.handler(args)
        return status
    except (CommandError, ConfigError) as exc:
        print(f"plugit: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())

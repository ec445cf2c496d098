"""The ``plugit`` command: serve a service, serve a proxy, check a service, run the demo.

::

    plugit service MODULE [--host H] [--port P] [--templates DIR] [--media DIR] [--secret S]
    plugit service --check URL [--secret S] [--action PATH ...]
    plugit proxy --config FILE [--host H] [--port P] [--force]
    plugit demo [--port P]

Servers run under gunicorn (threaded workers), installed with ``pip install plugit[server]``.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import ipaddress
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

__all__ = ["main", "run_server"]

log = logging.getLogger("plugit")


class CommandError(Exception):
    """A user error: printed as one line, exit status 2."""


def run_server(
    factory: Callable[[], Any],
    *,
    host: str,
    port: int,
    workers: int = 1,
    threads: int = 8,
    timeout: int = 60,
    name: str = "plugit",
) -> None:
    """Serve the WSGI app made by ``factory`` with gunicorn's threaded workers.

    ``factory`` runs in each worker process after the fork, so connection pools are never
    shared between processes.
    """
    try:
        from gunicorn.app.base import BaseApplication
    except ImportError:
        raise CommandError("a production server is needed: pip install 'plugit[server]'") from None

    class _Server(BaseApplication):  # type: ignore[misc]
        def load_config(self) -> None:
            bind = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
            settings = {
                "bind": bind,
                "workers": workers,
                "threads": threads,
                "worker_class": "gthread",
                "timeout": timeout,
                "proc_name": name,
                "accesslog": None,
                "errorlog": "-",
                "loglevel": "info",
            }
            if "control_socket_disable" in self.cfg.settings:  # gunicorn >= 25: one per server
                settings["control_socket_disable"] = True
            for key, value in settings.items():
                self.cfg.set(key, value)

        def load(self) -> Any:
            return factory()

    _Server().run()


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


# -- plugit service --------------------------------------------------------------------------------


def load_service(target: str, **overrides: Any) -> Any:
    """A :class:`PlugItService` from ``module``, ``module:attribute`` or a ``.py`` file path.

    The module may define ``app`` (a service), ``create_app()`` (a factory taking the settings
    overrides), or just decorated actions with ``PI_*`` settings beside them.
    """
    from .service import PlugItService

    module_name, _, attribute = target.partition(":")
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
        root = str(path.parent)
    else:
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise CommandError(f"cannot import {module_name}: {exc}") from None
        root = None
    settings = {k: v for k, v in overrides.items() if v is not None}
    if attribute:
        value = getattr(module, attribute, None)
        if value is None:
            raise CommandError(f"{module_name} has no attribute {attribute!r}")
        return (
            value(**settings) if callable(value) and not isinstance(value, PlugItService) else value
        )
    if isinstance(getattr(module, "app", None), PlugItService):
        return module.app
    if callable(getattr(module, "create_app", None)):
        return module.create_app(**settings)
    if root is not None:  # templates and media beside the file
        settings.setdefault("root", root)
    return PlugItService.from_module(module, **settings)


def _service(args: argparse.Namespace) -> int:
    if args.check:
        return _check(args)
    if not args.module:
        raise CommandError("give a MODULE to serve, or --check URL")
    secret = args.secret or os.environ.get("PLUGIT_SERVICE_SECRET")
    overrides = {
        "templates": args.templates,
        "media": args.media,
        "secret": secret,
        "base_url": args.base_url,
        "allowed_networks": args.allowed_networks,
    }
    if args.debug:
        overrides["debug"] = True
    load_service(args.module, **overrides)  # fail now, in the master, with a clear message
    run_server(
        lambda: load_service(args.module, **overrides),
        host=args.host,
        port=args.port,
        workers=args.workers,
        threads=args.threads,
        name=f"plugit-service:{args.module}",
    )
    return 0


def _check(args: argparse.Namespace) -> int:
    from .testing import run_checks

    results = run_checks(
        args.check,
        secret=args.secret or os.environ.get("PLUGIT_SERVICE_SECRET"),
        actions=args.action or ("",),
    )
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
    print(f"{len(results) - failed} passed, {failed} failed")
    return 1 if failed else 0


# -- plugit proxy ----------------------------------------------------------------------------------


def _proxy(args: argparse.Namespace) -> int:
    from .config import load_config
    from .proxy.app import ProxyApp

    config = load_config(args.config)
    if config.dev_mode:
        if not _is_loopback(args.host):
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
    ProxyApp(config, check_services=False).close()  # fail now with a clear message
    run_server(
        lambda: ProxyApp(load_config(args.config)),
        host=args.host,
        port=args.port,
        workers=args.workers,
        threads=args.threads,
        name="plugit-proxy",
    )
    return 0


def _demo(args: argparse.Namespace) -> int:
    from plugit_contrib.demo import run_demo

    return run_demo(port=args.port, data_dir=args.data_dir, host=args.host)


# -- main ------------------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="plugit", description="PlugIt: many web services, one site."
    )
    commands = parser.add_subparsers(dest="command", required=True)

    service = commands.add_parser("service", help="serve a PlugIt service, or check one")
    service.add_argument("module", nargs="?", help="module, module:attribute or path/to/file.py")
    service.add_argument(
        "--check", metavar="URL", help="run the protocol conformance checks on URL"
    )
    service.add_argument("--action", action="append", help="action path to check (repeatable)")
    service.add_argument("--host", default="127.0.0.1")
    service.add_argument("--port", type=int, default=5000)
    service.add_argument("--templates", help="templates folder (default: templates)")
    service.add_argument("--media", help="media folder (default: media)")
    service.add_argument("--secret", help="shared secret with the proxy (or PLUGIT_SERVICE_SECRET)")
    service.add_argument("--base-url", help="prefix of the protocol endpoints (default: /)")
    service.add_argument("--allowed-networks", help="comma-separated CIDR allow-list")
    service.add_argument("--debug", action="store_true", help="no meta caching")
    service.add_argument("--workers", type=int, default=1)
    service.add_argument("--threads", type=int, default=8)
    service.set_defaults(handler=_service)

    proxy = commands.add_parser("proxy", help="serve the proxy")
    proxy.add_argument("--config", required=True, help="TOML configuration file")
    proxy.add_argument("--host", default="127.0.0.1")
    proxy.add_argument("--port", type=int, default=8000)
    proxy.add_argument("--workers", type=int, default=1)
    proxy.add_argument("--threads", type=int, default=16)
    proxy.add_argument(
        "--force", action="store_true", help="allow dev mode on a non-loopback address"
    )
    proxy.set_defaults(handler=_proxy)

    demo = commands.add_parser("demo", help="run the proxy and the example voting service")
    demo.add_argument("--host", default="127.0.0.1")
    demo.add_argument("--port", type=int, default=8000)
    demo.add_argument(
        "--data-dir", help="where the demo keeps its SQLite file (default: a temp dir)"
    )
    demo.set_defaults(handler=_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``plugit`` console script."""
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    from .config import ConfigError

    try:
        return args.handler(args)
    except (CommandError, ConfigError) as exc:
        print(f"plugit: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())

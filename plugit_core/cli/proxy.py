"""``plugit proxy`` (serve the proxy of a configuration) and ``plugit config check``."""

from __future__ import annotations

import argparse
import functools
import sys
from typing import TYPE_CHECKING, Any

from ..networks import is_loopback_host
from .errors import CommandError
from .servers import (
    RELOAD_HELP,
    add_serve_options,
    reloader_child,
    run_server,
    serve_options,
    serve_reloading,
)

if TYPE_CHECKING:
    pass


def _proxy(args: argparse.Namespace) -> int:
    from ..config import load_config
    from ..proxy.app import ProxyApp

    if args.reload and reloader_child():  # the parent checked all below; a broken edit is shown
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
    from ..metrics import shared_directory

    with shared_directory():  # every worker's metrics in one place: one answer per scrape
        run_server(functools.partial(_proxy_app, args.config), options=options)
    return 0


def _proxy_app(config_path: str) -> Any:
    """The proxy of ``config_path``: made in each worker process."""
    from ..config import load_config
    from ..proxy.app import ProxyApp

    return ProxyApp(load_config(config_path))


# -- plugit config check ---------------------------------------------------------------------------


def _config_command(args: argparse.Namespace) -> int:
    """``plugit config check``: the configuration is read and its proxy built (backends, themes,
    plugins), then every service is asked its protocol version; one line per service, exit status
    1 when one fails."""
    import concurrent.futures

    from ..config import load_config
    from ..proxy.app import ProxyApp

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


def add_proxy_parser(commands: Any) -> None:
    """Add ``plugit proxy`` to the ``plugit`` sub-commands ``commands``."""
    proxy = commands.add_parser("proxy", help="serve the proxy")
    proxy.add_argument("--config", help="TOML configuration file")
    add_serve_options(proxy, port=8000, threads=16)
    proxy.add_argument(
        "--force", action="store_true", help="allow dev mode on a non-loopback address"
    )
    proxy.add_argument("--reload", action="store_true", help=RELOAD_HELP)
    proxy.set_defaults(handler=_proxy)


def add_config_parser(commands: Any) -> None:
    """Add ``plugit config check`` to the ``plugit`` sub-commands ``commands``."""
    config = commands.add_parser("config", help="check a configuration")
    config.add_argument("--config", help="TOML configuration file")
    config_actions = config.add_subparsers(dest="action", required=True, metavar="ACTION")
    config_actions.add_parser(
        "check", help="read the configuration, build the proxy, ask every service its version"
    )
    config.set_defaults(handler=_config_command)

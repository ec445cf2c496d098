"""``plugit service``: load a service module and serve it, or check a running service."""

from __future__ import annotations

import argparse
import functools
import importlib
import importlib.metadata
import importlib.util
import inspect
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

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
    from ..service import PlugItService

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
    from ..service import PlugItService

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
    from ..service import ServiceConfig

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
    if args.reload and reloader_child():
        return serve_reloading(factory, options, watched)  # a broken edit is shown, not fatal
    load_service(args.module, **overrides)  # fail now, in the master, with a clear message
    if args.reload:
        return serve_reloading(factory, options, watched)
    run_server(factory, options=options)
    return 0


def _check(args: argparse.Namespace) -> int:
    from ..testing import compatibility_report, run_checks

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


def add_service_parser(commands: Any) -> None:
    """Add ``plugit service`` to the ``plugit`` sub-commands ``commands``."""
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
    service.add_argument("--reload", action="store_true", help=RELOAD_HELP)
    service.set_defaults(handler=_service)

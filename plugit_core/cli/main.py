"""The ``plugit`` parser and entry point: built-in commands, then plugins' commands."""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import importlib.util
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from .errors import CommandError
from .proxy import add_config_parser, add_proxy_parser
from .services import add_service_parser

if TYPE_CHECKING:
    pass


# -- main ------------------------------------------------------------------------------------------

DISTRIBUTION = "plugit-wsgi"
CONFIG_ENV = "PLUGIT_CONFIG"
DEFAULT_CONFIG = "plugit.toml"
_CONFIG_HELP = f"TOML configuration file (default: ${CONFIG_ENV}, else ./{DEFAULT_CONFIG})"
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

    add_service_parser(commands)
    add_proxy_parser(commands)
    add_config_parser(commands)

    from ..plugins import make_plugin_manager

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
    from ..config import ConfigError

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

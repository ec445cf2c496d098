"""The plugin of ``plugit_contrib``: the ``plugit demo`` command.

Registered through the entry-point group ``plugit`` (``setup.py``), like any installed plugin, so
the core's command line knows nothing of the demo.  The demo itself is only imported when the
command runs.
"""

from __future__ import annotations

import argparse
from typing import Any

from plugit_core.hookspecs import hookimpl

__all__ = ["plugit_add_commands"]


def _demo(args: argparse.Namespace) -> int:
    from plugit_core.cli import serve_options

    from .demo import run_demo

    return run_demo(data_dir=args.data_dir, options=serve_options(args, "plugit-demo"))


@hookimpl(trylast=True)  # listed after the backends' commands, as before
def plugit_add_commands(commands: Any) -> None:
    """``plugit demo``: the proxy and the example voting service."""
    from plugit_core.cli import add_serve_options

    demo = commands.add_parser("demo", help="run the proxy and the example voting service")
    add_serve_options(demo, port=8000, threads=16)
    demo.add_argument(
        "--data-dir", help="where the demo keeps its SQLite file (default: a temp dir)"
    )
    demo.set_defaults(handler=_demo)

"""Serve any WSGI app the way `plugit proxy` serves the proxy (same servers, same settings).

Usage: ``python benchmarks/serve_app.py MODULE:ATTRIBUTE --port P [--server granian|gunicorn]
[--threads N] [--workers N]``; the module is imported from this folder or the repository.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from plugit_core.cli import CommandError, ServeOptions, run_server  # noqa: E402


def load(target: str) -> Any:
    module, _, attribute = target.partition(":")
    return getattr(importlib.import_module(module), attribute or "app")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("target")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--server", default="granian")
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    options = ServeOptions(
        host=args.host,
        port=args.port,
        server=args.server,
        threads=args.threads,
        workers=args.workers,
        name=f"bench:{args.target}",
    )
    try:
        run_server(functools.partial(load, args.target), options=options)
    except CommandError as exc:
        print(f"serve_app: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

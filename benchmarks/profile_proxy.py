"""Where the proxy's time goes per page: the WSGI app called in-process, without a server.

Starts the benchmark service and the voting example as real processes (on granian, as in
``run.py``), builds the same proxy as ``run.py`` in this process, then for each path calls the
WSGI app directly (one thread, the page's CPU work and its wait on the service) and prints the
mean wall time and CPU time per page, and the functions that take the most time under cProfile
(cumulative and own time).  Usage:
``python benchmarks/profile_proxy.py [--requests 2000] [--top 25] [--path /bench/page ...]``.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import io
import pstats
import secrets
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from run import free_port, plugit, process, proxy_config  # noqa: E402

PATHS = ("/bench/cached", "/bench/page", "/voting/show/1", "/voting/")


def call(app, path: str, cookies: dict[str, str] | None = None) -> bytes:
    """GET ``path`` from ``app`` with ``cookies``, which take the cookies the reply sets."""
    status = []

    def start_response(line, headers, exc_info=None):
        status.append(line)
        if cookies is not None:
            for name, value in headers:
                if name.lower() == "set-cookie":
                    key, _, rest = value.partition("=")
                    cookies[key] = rest.split(";", 1)[0]

    environ = {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": path,
        "QUERY_STRING": "",
        "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "8000",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "127.0.0.1",
        "HTTP_HOST": "127.0.0.1:8000",
        "HTTP_USER_AGENT": "wrk",
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(),
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": True,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
        "wsgi.version": (1, 0),
        "CONTENT_LENGTH": "0",
    }
    if cookies:
        environ["HTTP_COOKIE"] = "; ".join(f"{k}={v}" for k, v in cookies.items())
    result = app(environ, start_response)
    try:
        body = b"".join(result)
    finally:
        if hasattr(result, "close"):
            result.close()
    if not status or not status[0].startswith("200"):
        raise RuntimeError(f"{path}: {status} {body[:300]!r}")
    return body


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--path", action="append", help="paths to profile (default: all four)")
    parser.add_argument("--sort", default="tottime", help="cProfile sort key (default tottime)")
    parser.add_argument(
        "--new-visitor",
        action="store_true",
        help="send no cookie (each page a first visit); default: a browser's session cookies",
    )
    args = parser.parse_args()
    from plugit_contrib.examples.voting import db
    from plugit_core.config import load_config
    from plugit_core.proxy.app import ProxyApp

    secret = secrets.token_urlsafe(32)
    ports = {name: free_port() for name in ("service", "signed", "voting")}
    urls = {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}
    service_app = str(HERE / "bench_service.py") + ":create_app"
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        for name, extra in (("service", []), ("signed", ["--secret", secret])):
            command = plugit("service", service_app, "--port", str(ports[name]), *extra)
            stack.enter_context(process(command, ports[name]))
        database = Path(tmp) / "voting.sqlite3"
        db.seed(str(database))
        command = plugit(
            "service", "plugit_contrib.examples.voting.app:create_app", "--port",
            str(ports["voting"]),
        )  # fmt: skip
        stack.enter_context(
            process(command, ports["voting"], env={"PLUGIT_DATABASE": str(database)})
        )
        config = Path(tmp) / "bench.toml"
        proxy_config(config, urls, secret)
        app = ProxyApp(load_config(str(config)))
        try:
            for path in args.path or PATHS:
                cookies = None if args.new_visitor else {}
                for _ in range(200):  # warm up: pools, meta, compiled templates, page cache
                    call(app, path, cookies)
                wall, cpu = time.perf_counter(), time.process_time()
                for _ in range(args.requests):
                    call(app, path, cookies)
                wall = (time.perf_counter() - wall) / args.requests * 1e6
                cpu = (time.process_time() - cpu) / args.requests * 1e6
                profile = cProfile.Profile()
                profile.enable()
                for _ in range(args.requests):
                    call(app, path, cookies)
                profile.disable()
                out = io.StringIO()
                stats = pstats.Stats(profile, stream=out)
                stats.sort_stats(args.sort).print_stats(args.top)
                print(f"\n=== {path}: {wall:.0f} us wall, {cpu:.0f} us CPU per page (no profiler)")
                print("\n".join(out.getvalue().splitlines()[4:]))
        finally:
            app.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())

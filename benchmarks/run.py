"""Throughput and latency of the proxy against what it fronts, side by side, on one server.

Every process (services, proxy, the comparison apps) runs on the same server, as ``plugit proxy``
serves (granian by default, or gunicorn; 1 worker, 8 threads), loaded by wrk over loopback
(1 thread, 8 connections).  Scenarios:

* ``hello``           a hello-world WSGI app (``hello_app.py``): the server's own limit;
* ``direct``          the benchmark service's JSON action, called directly;
* ``cache-hit``       a page through the proxy, served from the page cache;
* ``uncached``        a page through the proxy, the action called and its template rendered;
* ``signed``          the same uncached page with request signing on (service secret set);
* ``forward``         the JSON action forwarded through the proxy's transport, nothing else
                      (``forward_app.py``: the floor of any proxy calling the service);
* ``werkzeug``        the JSON action through werkzeug's ProxyMiddleware (forwards bytes only);
* ``voting-direct``   the voting example (SQLite) ``show/1`` JSON action, called directly;
* ``voting-uncached`` its ``show/1`` page through the proxy (not cacheable: called each time);
* ``voting-cached``   its home page ``/`` through the proxy (cached by the proxy for 5 s).

Rounds are interleaved (every scenario of every server once per round) and the median round is
reported, so a slow moment of the machine does not favour one scenario.  Prints req/s, median
latency and the ratios, then the targets.  Usage:
``python benchmarks/run.py [--server granian|gunicorn|both] [--duration 8] [--rounds 3]``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

from plugit_core.proxy.transport import httptools_available  # noqa: E402
from plugit_core.testing import free_port, wait_for_port  # noqa: E402

THREADS = 8
CONNECTIONS = 8
SERVERS = ("granian", "gunicorn")

# scenario: (what it is, the scenario it is compared with)
SCENARIOS: dict[str, tuple[str, str | None]] = {
    "hello": ("hello-world WSGI app (the server's limit)", None),
    "direct": ("benchmark service JSON action, direct", "hello"),
    "cache-hit": ("page through the proxy, page cache hit", "hello"),
    "uncached": ("page through the proxy, uncached", "direct"),
    "signed": ("the same, signed requests", "direct"),
    "forward": ("JSON action through the proxy's transport", "direct"),
    "werkzeug": ("JSON action through werkzeug ProxyMiddleware", "direct"),
    "voting-direct": ("voting show/1 JSON action, direct", None),
    "voting-uncached": ("voting show/1 page through the proxy", "voting-direct"),
    "voting-cached": ("voting home page through the proxy, cached", "voting-direct"),
}

# (scenario, compared with, the least ratio the issue asks for on granian)
TARGETS = (
    ("cache-hit", "hello", 0.5),
    ("uncached", "direct", 0.35),
    ("voting-uncached", "voting-direct", 0.95),
    ("voting-cached", "voting-direct", 8.0),
)


@contextlib.contextmanager
def process(
    args: list[str], port: int, env: dict[str, str] | None = None, cwd: Path = ROOT
) -> Iterator[None]:
    log = tempfile.TemporaryFile()
    proc = subprocess.Popen(
        args, cwd=cwd, env={**os.environ, **(env or {})}, stdout=log, stderr=log
    )
    try:
        wait_for_port("127.0.0.1", port, timeout=60)
        yield
    except TimeoutError:
        log.seek(0)
        sys.stderr.write(log.read().decode(errors="replace"))
        raise
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def plugit(*args: str) -> list[str]:
    return [sys.executable, "-m", "plugit_core.cli", *args]


def serve_app(target: str, port: int, server: str) -> list[str]:
    """Any WSGI app served as `plugit proxy` serves (``serve_app.py``)."""
    return [
        sys.executable, str(HERE / "serve_app.py"), target, "--port", str(port),
        "--server", server, "--threads", str(THREADS),
    ]  # fmt: skip


def wrk(url: str, duration: int, connections: int = CONNECTIONS) -> tuple[float, float]:
    """(requests per second, median latency in ms)."""
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--latency", url],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if errors:
        raise RuntimeError(f"{url}: {errors.group(1)} error responses\n{out}")
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    value, unit = re.search(r"50%\s+([\d.]+)(us|ms|s)", out).groups()
    median = float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]
    return rps, median


def proxy_config(path: Path, urls: dict[str, str], secret: str) -> None:
    key = secrets.token_urlsafe(48)
    path.write_text(
        f'secret_key = "{key}"\n'
        "[session_cookie]\nsecure = false\n"
        f'[[services]]\nname = "bench"\nurl = "{urls["service"]}"\nmount = "/bench/"\n'
        f'[[services]]\nname = "signed"\nurl = "{urls["signed"]}"\nmount = "/signed/"\n'
        f'secret = "{secret}"\n'
        f'[[services]]\nname = "voting"\nurl = "{urls["voting"]}"\nmount = "/voting/"\n'
    )


def start(stack: contextlib.ExitStack, server: str, folder: Path) -> dict[str, str]:
    """Every process of one server's set; the URL of each scenario."""
    folder.mkdir()
    secret = secrets.token_urlsafe(32)
    names = ("service", "signed", "voting", "proxy", "forward", "werkzeug", "hello")
    ports = {name: free_port() for name in names}
    urls = {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}
    service_app = str(HERE / "bench_service.py") + ":create_app"
    on = ["--server", server, "--threads", str(THREADS)]

    def service(name: str, *args: str, env: dict[str, str] | None = None) -> None:
        command = plugit("service", *args, "--port", str(ports[name]), *on)
        stack.enter_context(process(command, ports[name], env=env))

    service("service", service_app)
    service("signed", service_app, "--secret", secret)
    from plugit_contrib.examples.voting import db

    database = folder / "voting.sqlite3"
    db.seed(str(database))
    service(
        "voting",
        "plugit_contrib.examples.voting.app:create_app",
        env={"PLUGIT_DATABASE": str(database)},
    )
    config = folder / "bench.toml"
    proxy_config(config, urls, secret)
    proxy_args = ["--config", str(config), "--port", str(ports["proxy"]), *on]
    stack.enter_context(process(plugit("proxy", *proxy_args), ports["proxy"]))
    env = {"BENCH_SERVICE_URL": urls["service"], "PYTHONPATH": str(ROOT)}
    for name, target in (
        ("forward", "forward_app:app"),
        ("werkzeug", "proxy_middleware_app:app"),
        ("hello", "hello_app:app"),
    ):
        command = serve_app(target, ports[name], server)
        stack.enter_context(process(command, ports[name], env=env, cwd=HERE))
    proxy = urls["proxy"]
    return {
        "hello": f"{urls['hello']}/",
        "direct": f"{urls['service']}/action/data",
        "cache-hit": f"{proxy}/bench/cached",
        "uncached": f"{proxy}/bench/page",
        "signed": f"{proxy}/signed/page",
        "forward": f"{urls['forward']}/action/data",
        "werkzeug": f"{urls['werkzeug']}/action/data",
        "voting-direct": f"{urls['voting']}/action/show/1",
        "voting-uncached": f"{proxy}/voting/show/1",
        "voting-cached": f"{proxy}/voting/",
    }


def table(server: str, results: dict[str, list[tuple[float, float]]]) -> dict[str, float]:
    """Print one server's table; return the median req/s of each scenario."""
    rps = {name: statistics.median(r for r, _ in values) for name, values in results.items()}
    latency = {name: statistics.median(m for _, m in values) for name, values in results.items()}
    print(f"\n{server}")
    print("| scenario | req/s | median latency | ratio |\n| --- | --- | --- | --- |")
    for name, (_, reference) in SCENARIOS.items():
        ratio = f"{rps[name] / rps[reference]:.2f}x {reference}" if reference else "(reference)"
        print(f"| {name} | {rps[name]:.0f} | {latency[name]:.2f} ms | {ratio} |")
    return rps


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--server", choices=(*SERVERS, "both"), default="granian")
    parser.add_argument("--duration", type=int, default=8, help="seconds per measurement")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        print("wrk is needed: apt-get install wrk", file=sys.stderr)
        return 2
    servers = SERVERS if args.server == "both" else (args.server,)
    results = {s: {name: [] for name in SCENARIOS} for s in servers}
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        urls = {server: start(stack, server, Path(tmp) / server) for server in servers}
        for server in servers:  # warm up: pools, caches, compiled templates
            for url in urls[server].values():
                wrk(url, 1)
        for round_ in range(args.rounds):
            for name in SCENARIOS:
                for server in servers:
                    results[server][name].append(wrk(urls[server][name], args.duration))
            print(f"round {round_ + 1}/{args.rounds} done", file=sys.stderr)
    medians = {server: table(server, results[server]) for server in servers}
    if len(servers) == 2:
        print("\n| scenario | granian / gunicorn |\n| --- | --- |")
        for name in SCENARIOS:
            print(f"| {name} | {medians['granian'][name] / medians['gunicorn'][name]:.2f}x |")
    for server in servers:
        print(f"\ntargets ({server}; the issue sets them on granian):")
        for name, reference, least in TARGETS:
            ratio = medians[server][name] / medians[server][reference]
            mark = "met" if ratio >= least else "NOT met"
            print(f"  {name} >= {least}x {reference}: {ratio:.2f}x  {mark}")
    print(
        f"\n1 worker {THREADS} threads per server; wrk 1 thread {CONNECTIONS} connections; "
        f"{args.rounds} rounds of {args.duration}s, median shown; {os.cpu_count()} cores shared "
        f"by all; proxy http_client {'httptools' if httptools_available() else 'urllib3'} (auto)."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

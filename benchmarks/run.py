"""Throughput and latency of the proxy against the service it fronts, side by side.

Everything runs on this machine under the same WSGI server (gunicorn, 1 worker, gthread, 8
threads), loaded by wrk over loopback.  Scenarios:

* ``direct``     the service's JSON action, called directly (the baseline);
* ``cache-hit``  a page through the proxy, served from the page cache;
* ``uncached``   a page through the proxy, the action called and its template rendered each time;
* ``signed``     the same uncached page with request signing on (service secret set);
* ``forward``    the JSON action forwarded through the proxy's transport, nothing else (the
                 floor of any proxy calling the service per request);
* ``werkzeug``   the JSON action through werkzeug's ProxyMiddleware (forwards bytes only).

Rounds are interleaved (every scenario once per round) and the median round is reported, so a
slow moment of the machine does not favour one scenario.  Prints req/s, median latency and the
ratio to ``direct``.  Usage: ``python benchmarks/run.py [--duration 8] [--rounds 3]``.
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


def gunicorn(app: str, port: int) -> list[str]:
    return [
        sys.executable, "-m", "gunicorn", "--workers", "1", "--worker-class", "gthread",
        "--threads", str(THREADS), "--bind", f"127.0.0.1:{port}", "--log-level", "warning",
        "--no-control-socket", app,
    ]  # fmt: skip


def wrk(url: str, duration: int) -> tuple[float, float]:
    """(requests per second, median latency in ms)."""
    out = subprocess.run(
        ["wrk", "-t1", f"-c{CONNECTIONS}", f"-d{duration}s", "--latency", url],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if errors:
        raise RuntimeError(f"{url}: {errors.group(1)} error responses\n{out}")
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    value, unit = re.search(r"50%\s+([\d.]+)(us|ms|s)", out).groups()
    median = float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]
    return rps, median


def proxy_config(path: Path, service_url: str, signed_url: str, secret: str) -> None:
    key = secrets.token_urlsafe(48)
    path.write_text(
        f'secret_key = "{key}"\n'
        "[session_cookie]\nsecure = false\n"
        f'[[services]]\nname = "bench"\nurl = "{service_url}"\nmount = "/bench/"\n'
        f'[[services]]\nname = "signed"\nurl = "{signed_url}"\nmount = "/signed/"\n'
        f'secret = "{secret}"\n'
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=int, default=8, help="seconds per measurement")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        print("wrk is needed: apt-get install wrk", file=sys.stderr)
        return 2
    secret = secrets.token_urlsafe(32)
    ports = {name: free_port() for name in ("service", "signed", "proxy", "forward", "werkzeug")}
    service_url = f"http://127.0.0.1:{ports['service']}"
    signed_url = f"http://127.0.0.1:{ports['signed']}"
    service_app = str(HERE / "bench_service.py") + ":create_app"
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        config = Path(tmp) / "bench.toml"
        proxy_config(config, service_url, signed_url, secret)
        stack.enter_context(
            process(
                plugit("service", service_app, "--port", str(ports["service"])), ports["service"]
            )
        )
        stack.enter_context(
            process(
                plugit("service", service_app, "--port", str(ports["signed"]), "--secret", secret),
                ports["signed"],
            )
        )
        proxy_args = [
            "--config",
            str(config),
            "--port",
            str(ports["proxy"]),
            "--threads",
            str(THREADS),
        ]
        stack.enter_context(process(plugit("proxy", *proxy_args), ports["proxy"]))
        for name, app in (("forward", "forward_app:app"), ("werkzeug", "proxy_middleware_app:app")):
            stack.enter_context(
                process(gunicorn(app, ports[name]), ports[name],
                        env={"BENCH_SERVICE_URL": service_url, "PYTHONPATH": str(ROOT)}, cwd=HERE)
            )  # fmt: skip
        proxy = f"http://127.0.0.1:{ports['proxy']}"
        scenarios = {
            "direct": f"{service_url}/action/data",
            "cache-hit": f"{proxy}/bench/cached",
            "uncached": f"{proxy}/bench/page",
            "signed": f"{proxy}/signed/page",
            "forward": f"http://127.0.0.1:{ports['forward']}/action/data",
            "werkzeug": f"http://127.0.0.1:{ports['werkzeug']}/action/data",
        }
        for url in scenarios.values():  # warm up: pools, caches, compiled templates
            wrk(url, 1)
        results: dict[str, list[tuple[float, float]]] = {name: [] for name in scenarios}
        for round_ in range(args.rounds):
            for name, url in scenarios.items():
                results[name].append(wrk(url, args.duration))
            print(f"round {round_ + 1}/{args.rounds} done", file=sys.stderr)
    base_rps = statistics.median(r for r, _ in results["direct"])
    print(f"\n{'scenario':<10} {'req/s':>9} {'median ms':>10} {'vs direct':>10}")
    for name, values in results.items():
        rps = statistics.median(r for r, _ in values)
        latency = statistics.median(m for _, m in values)
        print(f"{name:<10} {rps:>9.0f} {latency:>10.2f} {rps / base_rps:>9.2f}x")
    print(
        f"\ngunicorn 1 worker gthread {THREADS} threads per server; "
        f"wrk 1 thread {CONNECTIONS} connections; {args.rounds} rounds of {args.duration}s, "
        f"median shown; {os.cpu_count()} cores shared by all; proxy http_client "
        f"{'httptools' if httptools_available() else 'urllib3'} (auto)."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

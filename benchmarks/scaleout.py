"""Two proxy processes against one, sharing Redis, on page-cache hits.

The proxy runs (on granian by default, or ``--server gunicorn``) with 1, then 2 worker processes (8
threads each) on the same port, with `cache = "redis"` and `session = "redis"`: the page cache and
the sessions live in Redis, shared by the processes. wrk (2 threads, 16 connections) loads a cached
page. Rounds are interleaved; the median is reported with the ratio (target: 2 processes >= 1.4x
one).

On this 2-core machine wrk shares the cores with the proxies, so two processes can at best use
what wrk leaves; with N cores and the load generator elsewhere, throughput grows with the number
of processes until Redis or the network is the limit (each hit is one Redis GET at most, or none
once a process holds the wrapped page in memory).

Usage: ``python benchmarks/scaleout.py [--server granian|gunicorn] [--duration 8] [--rounds 3]``
(needs Redis on 127.0.0.1:6379 and wrk).
"""

from __future__ import annotations

import argparse
import contextlib
import re
import secrets
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from run import free_port, plugit, process  # noqa: E402


def wrk(url: str, duration: int) -> float:
    out = subprocess.run(
        ["wrk", "-t2", "-c16", f"-d{duration}s", url],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    if "Non-2xx" in out:
        raise RuntimeError(out)
    return float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--server", choices=("granian", "gunicorn"), default="granian")
    parser.add_argument("--duration", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    args = parser.parse_args()
    prefix = f"plugit-bench-{secrets.token_hex(4)}:"
    service_port = free_port()
    results: dict[int, list[float]] = {1: [], 2: []}
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        config = Path(tmp) / "proxy.toml"
        config.write_text(
            f'secret_key = "{secrets.token_urlsafe(48)}"\n'
            'cache = "redis"\nsession = "redis"\n'
            f'[cache_redis]\nurl = "{args.redis}"\nprefix = "{prefix}cache:"\n'
            f'[session_redis]\nurl = "{args.redis}"\nprefix = "{prefix}session:"\nsecure = false\n'
            f'[[services]]\nname = "bench"\nurl = "http://127.0.0.1:{service_port}"\n'
            'mount = "/bench/"\n'
        )
        service_app = str(HERE / "bench_service.py") + ":create_app"
        stack.enter_context(
            process(plugit("service", service_app, "--port", str(service_port)), service_port)
        )
        for round_ in range(args.rounds):
            for workers in (1, 2):
                port = free_port()
                proxy_args = [
                    "--config",
                    str(config),
                    "--port",
                    str(port),
                    "--workers",
                    str(workers),
                ]
                proxy_args += ["--threads", "8", "--server", args.server]
                with process(plugit("proxy", *proxy_args), port):
                    url = f"http://127.0.0.1:{port}/bench/cached"
                    wrk(url, 1)  # warm up every worker
                    results[workers].append(wrk(url, args.duration))
            print(f"round {round_ + 1}/{args.rounds} done", file=sys.stderr)
    import redis

    with redis.Redis.from_url(args.redis) as client:  # leave nothing behind
        for key in client.scan_iter(match=prefix + "*"):
            client.delete(key)
    one, two = statistics.median(results[1]), statistics.median(results[2])
    print(f"\npage-cache hits, Redis shared ({args.server})")
    print(f"  1 proxy process:   {one:8.0f} req/s")
    print(f"  2 proxy processes: {two:8.0f} req/s   ({two / one:.2f}x; target >= 1.4x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Slowloris against `plugit proxy`: does a healthy page still answer, and how fast?

For each server (granian, the default, and gunicorn), one proxy (``--workers`` and ``--threads``
as given, default 1 and 16 as ``plugit proxy``) mounts the benchmark service.  The script
measures the median latency of a cached page (sequential requests from one client), then opens
``--clients`` connections (80) that each send a request's headers a byte per second and never
finish them, and measures the same page again while they are connected.  A request that takes
more than ``--timeout`` seconds counts as timed out.  Everything stays on loopback and is
bounded: the slow clients stop after ``--seconds`` (default 30) whatever happens, and each
measurement sends ``--requests`` requests.

Target (the issue's): on the default server, the page stays within 2x its normal latency.
Usage: ``python benchmarks/slow_clients.py [--server granian|gunicorn|both] [--clients 80]``.
"""

from __future__ import annotations

import argparse
import contextlib
import secrets
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from run import free_port, plugit, process  # noqa: E402

REQUEST = b"GET /bench/cached HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: slow\r\nX-Slow: "


class SlowClients:
    """``count`` loopback connections trickling headers, a byte per second each, for at most
    ``seconds``."""

    def __init__(self, port: int, count: int, seconds: float) -> None:
        self.sockets: list[socket.socket] = []
        for _ in range(count):
            self.sockets.append(socket.create_connection(("127.0.0.1", port), timeout=5))
        self.dropped = 0
        self.sent = 0
        self._stop = threading.Event()
        self._deadline = time.monotonic() + seconds
        self._thread = threading.Thread(target=self._trickle, daemon=True)
        self._thread.start()

    def _trickle(self) -> None:
        position = 0
        while not self._stop.is_set() and time.monotonic() < self._deadline:
            byte = REQUEST[position : position + 1] or b"x"
            for sock in list(self.sockets):
                try:
                    sock.sendall(byte)
                except OSError:  # the server closed it
                    self.sockets.remove(sock)
                    self.dropped += 1
            position += 1
            self.sent += 1
            self._stop.wait(1.0)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        for sock in self.sockets:
            sock.close()


def latencies(url: str, count: int, timeout: float) -> tuple[list[float], int]:
    """Latencies in ms of ``count`` sequential GETs of ``url``, and how many timed out."""
    values: list[float] = []
    timed_out = 0
    with requests.Session() as session:
        for _ in range(count):
            start = time.perf_counter()
            try:
                response = session.get(url, timeout=timeout)
                response.raise_for_status()
            except requests.Timeout:
                timed_out += 1
                continue
            values.append((time.perf_counter() - start) * 1000)
    return values, timed_out


def measure(server: str, args: argparse.Namespace, service_url: str, folder: Path) -> str:
    config = folder / f"{server}.toml"
    config.write_text(
        f'secret_key = "{secrets.token_urlsafe(48)}"\n'
        "[session_cookie]\nsecure = false\n"
        f'[[services]]\nname = "bench"\nurl = "{service_url}"\nmount = "/bench/"\n'
    )
    port = free_port()
    proxy_args = ["--config", str(config), "--port", str(port), "--server", server]
    proxy_args += ["--workers", str(args.workers), "--threads", str(args.threads)]
    with process(plugit("proxy", *proxy_args), port):
        url = f"http://127.0.0.1:{port}/bench/cached"
        latencies(url, 50, args.timeout)  # warm up every worker
        normal, _ = latencies(url, args.requests, args.timeout)
        clients = SlowClients(port, args.clients, args.seconds)
        try:
            while clients.sent < 3:  # the headers have started to trickle
                time.sleep(0.05)
            attacked, timed_out = latencies(url, args.requests, args.timeout)
            still = len(clients.sockets)
        finally:
            clients.close()
    base = statistics.median(normal)
    if attacked:
        under = statistics.median(attacked)
        shown = f"{under:7.2f} ms ({under / base:.2f}x)"
    else:
        shown = "no answer"
    return (
        f"| {server} --workers {args.workers} --threads {args.threads} | {base:.2f} ms | {shown} | "
        f"{timed_out} of {args.requests} | {still} of {args.clients} |"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--server", choices=("granian", "gunicorn", "both"), default="both")
    parser.add_argument("--clients", type=int, default=80)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--threads", type=int, default=16)
    parser.add_argument("--requests", type=int, default=20, help="pages per measurement")
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds before a page fails")
    parser.add_argument("--seconds", type=float, default=30.0, help="the slow clients' limit")
    args = parser.parse_args()
    servers = ("granian", "gunicorn") if args.server == "both" else (args.server,)
    rows = []
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        service_port = free_port()
        service_app = str(HERE / "bench_service.py") + ":create_app"
        command = plugit("service", service_app, "--port", str(service_port))
        stack.enter_context(process(command, service_port))
        for server in servers:
            rows.append(measure(server, args, f"http://127.0.0.1:{service_port}", Path(tmp)))
            print(f"{server} done", file=sys.stderr)
    print(f"\ncached page, {args.clients} slow clients trickling headers")
    print("| proxy | median latency | under attack | timed out | slow clients still connected |")
    print("| --- | --- | --- | --- | --- |")
    print("\n".join(rows))
    print("target: the default server (granian) within 2x its normal latency, nothing timed out")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""A hanging service must not slow the others down.

One proxy (granian by default, or ``--server gunicorn``; 1 worker, 16 threads) mounts the benchmark
service and a service whose every action hangs. wrk loads a healthy page of the benchmark service
twice, side by side in interleaved rounds: alone, and while 8 clients keep calling the hanging
service (each calls again one second after its previous call ended, like a user clicking again). The
hanging service has a concurrency cap of 4 and a timeout of 2 s, so it never holds more than 4 of
the proxy's threads; the other calls to it are refused at once.

Prints the healthy page's req/s in both runs and their ratio (target: within 10%).
Usage: ``python benchmarks/isolation.py [--server granian|gunicorn] [--duration 8] [--rounds 3]
[--path /bench/page]``.
"""

from __future__ import annotations

import argparse
import contextlib
import secrets
import statistics
import sys
import tempfile
import threading
from pathlib import Path

import requests

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from run import free_port, plugit, process, wrk  # noqa: E402

HANG_SERVICE = """
import time
from plugit_core.service import action, json_only

@action("/")
@json_only()
def hang(request):
    time.sleep(30)
    return {}
"""


class HangingClients:
    """Threads that keep calling the hanging service until stopped."""

    def __init__(self, url: str, count: int, pause: float) -> None:
        self.url = url
        self.pause = pause
        self.stop = threading.Event()
        self.statuses: list[int] = []
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(count)]

    def _run(self) -> None:
        with requests.Session() as session:
            while not self.stop.is_set():
                try:
                    status = session.get(self.url, timeout=10).status_code
                except requests.RequestException:
                    status = 0
                self.statuses.append(status)
                self.stop.wait(self.pause)  # a user clicking again

    def __enter__(self) -> HangingClients:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(15)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--server", choices=("granian", "gunicorn"), default="granian")
    parser.add_argument("--duration", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--path", default="/bench/page", help="the healthy page to load")
    parser.add_argument("--hanging-clients", type=int, default=8)
    parser.add_argument("--pause", type=float, default=1.0, help="seconds between a client's calls")
    args = parser.parse_args()
    ports = {name: free_port() for name in ("service", "hang", "proxy")}
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        hang_file = Path(tmp) / "hang_service.py"
        hang_file.write_text(HANG_SERVICE)
        config = Path(tmp) / "proxy.toml"
        config.write_text(
            f'secret_key = "{secrets.token_urlsafe(48)}"\n'
            "[session_cookie]\nsecure = false\n"
            f'[[services]]\nname = "bench"\nurl = "http://127.0.0.1:{ports["service"]}"\n'
            'mount = "/bench/"\n'
            f'[[services]]\nname = "hang"\nurl = "http://127.0.0.1:{ports["hang"]}"\n'
            'mount = "/hang/"\ntimeout = 2\nmax_concurrency = 4\n'
        )
        service_app = str(HERE / "bench_service.py") + ":create_app"
        on = ["--server", args.server]
        service_args = [service_app, "--port", str(ports["service"]), *on]
        stack.enter_context(process(plugit("service", *service_args), ports["service"]))
        hang_args = [str(hang_file), "--port", str(ports["hang"]), "--threads", "64", *on]
        stack.enter_context(process(plugit("service", *hang_args), ports["hang"]))
        proxy_args = [
            "--config",
            str(config),
            "--port",
            str(ports["proxy"]),
            "--threads",
            "16",
            *on,
        ]
        stack.enter_context(process(plugit("proxy", *proxy_args), ports["proxy"]))
        proxy = f"http://127.0.0.1:{ports['proxy']}"
        healthy = proxy + args.path
        wrk(healthy, 1)
        alone: list[float] = []
        loaded: list[float] = []
        statuses: list[int] = []
        for round_ in range(args.rounds):
            alone.append(wrk(healthy, args.duration)[0])
            with HangingClients(proxy + "/hang/", args.hanging_clients, args.pause) as clients:
                loaded.append(wrk(healthy, args.duration)[0])
            statuses += clients.statuses
            print(f"round {round_ + 1}/{args.rounds} done", file=sys.stderr)
    base, hung = statistics.median(alone), statistics.median(loaded)
    refused = sum(1 for s in statuses if s == 503)
    timed_out = sum(1 for s in statuses if s == 504)
    print(f"\nhealthy page {args.path} ({args.server})")
    print(f"  alone:                     {base:8.0f} req/s")
    print(f"  with a hanging service:    {hung:8.0f} req/s   ({hung / base:.2f}x)")
    print(
        f"  calls to the hanging one:  {len(statuses)} "
        f"({timed_out} timed out, {refused} refused at once)"
    )
    print("  target: within 10% (>= 0.90x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

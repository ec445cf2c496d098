"""Fragments: a page of 4 fragments, one slow, one hung, all cached.

Serves four small PlugIt services on loopback (werkzeug's threaded server, in this process)
and calls a proxy's WSGI app in-process for a ``[[pages]]`` page of one fragment of each:

* ``slow``: one fragment's action takes 200 ms, the three others answer at once; the page
  should take about 200 ms plus the proxy's own work, not the sum;
* ``hung``: one fragment's service never answers; the page should come within that fragment's
  timeout (0.5 s) plus 10 %;
* ``cached``: every fragment has a cache time; the page should cost about one page-cache hit
  per fragment (compared with one cached service page, measured the same way).

Usage: ``python benchmarks/fragments.py [--requests 50]``.  Prints the median and the 90th
percentile per case.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from werkzeug.test import Client
from werkzeug.wrappers import Request, Response

from plugit_core.proxy.app import ProxyApp
from plugit_core.testing import serve

HANG = threading.Event()


def service(delay: float = 0.0, cache_time: int = 0, hang: bool = False) -> Any:
    """A PlugIt service with one action, ``item``, that waits ``delay`` (or until the end)."""

    def app(environ: dict[str, Any], start_response: Any) -> Any:
        kind = Request(environ).path.lstrip("/").partition("/")[0]
        if kind == "version":
            body: Any = {"result": "Ok", "version": "1", "protocol": "EBUio-PlugIt"}
        elif kind == "meta":
            body = {"template_tag": "t1", "cache_time": cache_time}
        elif kind == "template":
            return Response("<p>item {{ n }}</p>")(environ, start_response)
        else:
            if hang:
                HANG.wait(30)
            elif delay:
                time.sleep(delay)
            body = {"n": 1}
        return Response(json.dumps(body), mimetype="application/json")(environ, start_response)

    return app


def measure(client: Client, path: str, requests: int) -> tuple[float, float]:
    times = []
    for _ in range(requests):
        started = time.perf_counter()
        response = client.get(path, environ_base={"REMOTE_ADDR": "127.0.0.1"})
        times.append(time.perf_counter() - started)
        assert response.status_code == 200, (response.status_code, response.get_data()[:300])
    times.sort()
    return statistics.median(times), times[int(len(times) * 0.9) - 1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=50)
    args = parser.parse_args()
    with contextlib.ExitStack() as stack:
        urls = {
            "fast1": stack.enter_context(serve(service())),
            "fast2": stack.enter_context(serve(service())),
            "fast3": stack.enter_context(serve(service())),
            "slow": stack.enter_context(serve(service(delay=0.2))),
            "hung": stack.enter_context(serve(service(hang=True))),
            "cached": stack.enter_context(serve(service(cache_time=3600))),
        }
        stack.callback(HANG.set)
        fast = [{"service": name, "path": "item"} for name in ("fast1", "fast2", "fast3")]
        config = {
            "dev_mode": True,
            "services": [
                {"name": name, "url": url, "timeout": 5, "max_concurrency": 64}
                for name, url in urls.items()
            ],
            "pages": [
                {
                    "path": "/page-slow",
                    "title": "Slow",
                    "fragments": [*fast, {"service": "slow", "path": "item"}],
                },
                {
                    "path": "/page-hung",
                    "title": "Hung",
                    "fragments": [*fast, {"service": "hung", "path": "item", "timeout": 0.5}],
                },
                {
                    "path": "/page-cached",
                    "title": "Cached",
                    "fragments": [{"service": "cached", "path": f"item?n={n}"} for n in range(4)],
                },
            ],
        }
        proxy = ProxyApp(config, load_entry_points=False)
        stack.callback(proxy.close)
        client = Client(proxy)
        # warm: meta, templates, caches, layouts
        for path in ("/page-slow", "/page-cached", "/cached/item", "/fast1/item"):
            client.get(path, environ_base={"REMOTE_ADDR": "127.0.0.1"})
        print(f"{'case':<34}{'median ms':>10}{'p90 ms':>10}")
        for label, path, requests in (
            ("4 fragments, one of 200 ms", "/page-slow", args.requests),
            ("4 fragments, one hung (0.5 s)", "/page-hung", max(5, args.requests // 5)),
            ("4 cached fragments", "/page-cached", args.requests * 4),
            ("one cached service page", "/cached/item", args.requests * 4),
            ("one uncached service page", "/fast1/item", args.requests),
        ):
            median, p90 = measure(client, path, requests)
            print(f"{label:<34}{median * 1000:>10.1f}{p90 * 1000:>10.1f}")


if __name__ == "__main__":
    main()

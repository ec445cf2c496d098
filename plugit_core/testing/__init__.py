"""Test tooling for PlugIt services, proxies and plugins (needs the ``test`` extra for pytest).

Its boundary: test code and the CLI's ``plugit service --check`` import it; no code that serves
does (an import-linter contract checks it).  It imports the core's protocol model, never a
backend nor the proxy.

* :mod:`~plugit_core.testing.helpers`: :func:`serve` runs any WSGI app on a real loopback port
  in a thread for the length of a ``with`` block; :func:`free_port`, :func:`wait_for_port`,
  :func:`wait_until` (polling, never a fixed sleep) and :class:`FakeClock`.
* :mod:`~plugit_core.testing.checks`: :func:`run_checks` checks a running service against the
  protocol (PROTOCOL.md sections 2 and 3, plus request signatures) and returns one
  :class:`CheckResult` per check, never raising; :class:`ServiceConformance` is the same checks
  as a pytest test class (subclass it as ``TestMyService``, give it a ``plugit_service``
  fixture returning ``(url, secret, actions)``).
* :mod:`~plugit_core.testing.compat`: :func:`compatibility_report` lists what a service
  written for the original PlugIt uses that behaves differently behind this proxy.
* :mod:`~plugit_core.testing.redis`: a Redis to test against, or a private ``redis-server``.

The conformance suites of the backend kinds live beside each kind's interface, in
``plugit_core.kinds.<kind>.testing``.
"""

from __future__ import annotations

from .checks import CHECK_NAMES, CheckResult, ServiceConformance, run_checks
from .compat import CompatibilityNote, compatibility_report
from .helpers import FakeClock, free_port, serve, wait_for_port, wait_until

__all__ = [
    "CHECK_NAMES",
    "CheckResult",
    "CompatibilityNote",
    "FakeClock",
    "ServiceConformance",
    "compatibility_report",
    "free_port",
    "run_checks",
    "serve",
    "wait_for_port",
    "wait_until",
]

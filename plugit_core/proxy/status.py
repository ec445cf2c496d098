"""The proxy's own status URLs: ``/_plugit/health``, ``/_plugit/ready``, ``/_plugit/metrics``."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from werkzeug.wrappers import Request, Response

from ..config import ProxyConfig
from ..kinds.mail import MailBackend
from ..metrics import MetricsBoard
from ..stores import StoreGuard, StoreUnavailable, guards_of
from .api import json_response
from .health import bind_metrics, render_services, render_stores
from .upstream import ServiceClient

__all__ = ["HealthRoutes"]


class HealthRoutes:
    """What a load balancer and a metrics scraper ask: is the process alive, may it serve, and
    how are its services and stores doing.

    ``stores`` gives the proxy's stores (users, billing, sessions, cache, mail, auth backends);
    it is asked per request, since a plugin may wrap the session backend after start-up.
    """

    def __init__(
        self,
        config: ProxyConfig,
        *,
        clients: Mapping[str, ServiceClient],
        stores: Callable[[], list[object]],
        mail: MailBackend | None,
    ) -> None:
        self.config = config
        self.clients = clients
        self._stores = stores
        self.mail = mail
        # One answer per scrape for all the worker processes when PLUGIT_METRICS_DIR is set
        # (plugit proxy sets it): plugit_core/metrics.py.
        self.board = MetricsBoard.from_environment()
        gauges = [mail.gauges] if mail is not None and hasattr(mail, "gauges") else []
        bind_metrics(self.board, clients.values(), self.store_guards(), gauges)

    def store_guards(self) -> list[StoreGuard]:
        """The guards of every store the proxy uses (plugit_core/stores.py)."""
        return guards_of(*self._stores())

    def mail_backlog(self) -> dict[str, int] | None:
        """The mail outbox by state (None without mail, or when the queue cannot be read)."""
        if self.mail is None:
            return None
        try:
            return dict(self.mail.store.counts().get("outbox", {}))
        except StoreUnavailable:
            return None

    def health(self, request: Request) -> Response:
        """``/_plugit/health``: the process is alive and answering."""
        return json_response({"status": "ok"})

    def ready(self, request: Request) -> Response:
        """``/_plugit/ready``: the state of every store and service.

        Each store is checked (a cheap query, within its wait; at once while it is known to be
        down).  Answers 503 when a store marked ``required`` (the directory and the session
        store by default) is unavailable: this process cannot log anyone in or recognise them.
        A service makes it 503 only when marked ``required`` (one dead service must not take the
        whole site out of a load balancer, unless the site is that service); ``ready`` is false
        for a service that is incompatible or whose circuit is open.  With mail, ``smtp`` is the
        SMTP server's state as last seen (never waited for; 503 when ``smtp_required``).
        """
        stores = {guard.store: guard.check() for guard in self.store_guards()}
        services = {}
        for name, client in self.clients.items():
            circuit = client.breaker.state
            services[name] = {
                "ready": client.compatible is not False and circuit != "open",
                "protocol": {True: "ok", False: "incompatible", None: "unknown"}[client.compatible],
                "circuit": circuit,
                "in_flight": client.in_flight,
            }
        for mount in self.config.services:  # the main build of each (variants and shadows not)
            services[mount.name]["required"] = mount.required
        body: dict[str, Any] = {"status": "ok", "stores": stores, "services": services}
        components = dict(stores)  # what may be required: the stores, the SMTP server
        if self.mail is not None:
            backlog = self.mail_backlog()
            body["mail"] = {"ready": backlog is not None, "outbox": backlog}
            if hasattr(self.mail, "smtp_status"):  # never waits for the SMTP server
                body["smtp"] = components["smtp"] = self.mail.smtp_status()
        missing = sorted(
            name for name, state in components.items() if state["required"] and not state["ready"]
        ) + sorted(
            f"service:{mount.name}"
            for mount in self.config.services
            if mount.required and not services[mount.name]["ready"]
        )
        if missing:
            body["status"] = "unavailable"
            body["unavailable"] = missing
        return json_response(body, 503 if missing else 200)

    def metrics(self, request: Request) -> Response:
        """``/_plugit/metrics``: per-service and per-store metrics in the Prometheus text
        format, the totals of every worker process sharing the metrics directory."""
        series = self.board.collect()
        text = render_services(series, self.clients)
        stores = [guard.store for guard in self.store_guards()]
        text += render_stores(series, stores, self.mail_backlog())
        return Response(text, mimetype="text/plain", headers={"Cache-Control": "no-store"})

    def close(self) -> None:
        self.board.close()

"""The proxy's clients of its services, by name, and what decides which one answers a page.

Every mount has a client (``"<service>"``), one per variant (``"<service>:<variant>"``, chosen per
request by :meth:`ServiceClients.select`) and one for its shadow target (``"<service>:shadow"``,
sent a copy of read-only calls, never waited for).  Each client knows whether its service speaks
PlugIt protocol 1; one not known to is asked again now and then
(:meth:`ServiceClients.check_compatible`), so a service fixed and redeployed comes back without
restarting the proxy.
"""

from __future__ import annotations

import concurrent.futures
import logging
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from ..config import ProxyConfig, ServiceMount
from .upstream import ServiceClient, ServiceError

if TYPE_CHECKING:
    from werkzeug.wrappers import Request

    from ..users import PlugItUser
    from .upstream import UpstreamRequest

__all__ = ["ServiceClients"]

log = logging.getLogger("plugit.proxy")


class ServiceClients(Mapping[str, ServiceClient]):
    """Every client of the proxy's services, by name (a read-only mapping)."""

    #: Seconds between two ``version`` checks of a service not yet reached, and of one refused.
    recheck_unknown = 10.0
    recheck_refused = 30.0

    def __init__(self, config: ProxyConfig) -> None:
        self._clients: dict[str, ServiceClient] = {}
        for mount in config.services:
            self._add(config, mount)
            for variant in mount.variants:
                self._add(
                    config,
                    replace(
                        mount,
                        name=f"{mount.name}:{variant.name}",
                        url=variant.url,
                        secret=variant.secret or mount.secret,
                    ),
                )
            if mount.shadow_url:
                self._add(
                    config,
                    replace(
                        mount,
                        name=f"{mount.name}:shadow",
                        url=mount.shadow_url,
                        secret=mount.shadow_secret or mount.secret,
                        max_concurrency=4,
                    ),
                )
        self._shadow_pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=2, thread_name_prefix="plugit-shadow"
        )
        self._last_version_check: dict[str, float] = {}
        self._version_lock = threading.Lock()

    def _add(self, config: ProxyConfig, mount: ServiceMount) -> None:
        self._clients[mount.name] = ServiceClient(
            mount, http_client=config.http_client, cache_meta=not config.dev_mode
        )

    def __getitem__(self, name: str) -> ServiceClient:
        return self._clients[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._clients)

    def __len__(self) -> int:
        return len(self._clients)

    def select(
        self, mount: ServiceMount, request: Request, user: PlugItUser
    ) -> tuple[ServiceClient, str]:
        """The client for this request: the first variant whose rules match, else the service's."""
        for variant in mount.variants:
            if _variant_matches(variant, mount, request, user):
                return self._clients[f"{mount.name}:{variant.name}"], variant.name
        return self._clients[mount.name], ""

    def shadow(self, mount: ServiceMount, upstream: UpstreamRequest) -> None:
        """Send a copy of a read-only call to the mount's shadow target; its answer is dropped.

        Never waits: when the shadow is busy (its concurrency cap is reached) the copy is not
        sent.
        """
        client = self._clients.get(f"{mount.name}:shadow")
        if client is None or upstream.method not in ("GET", "HEAD"):
            return
        copy = replace(upstream, headers=dict(upstream.headers), params=list(upstream.params))

        def send() -> None:
            try:
                reply = client.send(copy, stream=True)
                if reply.close is not None:
                    reply.close()  # the answer is not wanted: drop it and the connection
            except ServiceError as error:
                log.debug("shadow of %s: %s", mount.name, error.message)

        if client.in_flight < client.mount.max_concurrency:
            self._shadow_pool.submit(send)

    def check_all(self) -> dict[str, tuple[bool, str]]:
        """Ask every service's ``version``, in parallel; log and return what each answered."""
        if not self._clients:
            return {}
        workers = min(8, len(self._clients))
        with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
            futures = {
                name: pool.submit(client.check_version) for name, client in self._clients.items()
            }
        results = {name: future.result() for name, future in futures.items()}
        now = time.monotonic()
        for name, (ok, message) in results.items():
            self._last_version_check[name] = now
            if ok:
                log.info("service %s: %s", name, message)
            elif self._clients[name].compatible is False:
                log.error(
                    "service %s does not speak PlugIt protocol 1 and is disabled: %s", name, message
                )
            else:
                log.warning("service %s is not reachable at start-up: %s", name, message)
        return results

    def check_compatible(self, client: ServiceClient) -> None:
        """Refuse calls to a service known to speak another protocol.

        A service whose protocol is unknown (unreachable so far) is asked again at most every
        :attr:`recheck_unknown` seconds, and one that was refused at most every
        :attr:`recheck_refused` seconds.
        """
        if client.compatible is not True:
            every = self.recheck_unknown if client.compatible is None else self.recheck_refused
            with self._version_lock:
                now = time.monotonic()
                last = self._last_version_check.get(client.name)  # None: never asked
                due = last is None or now - last > every
                if due:
                    self._last_version_check[client.name] = now
            if due:
                ok, message = client.check_version()
                if ok:
                    log.info("service %s: %s", client.name, message)
        if client.compatible is False:
            raise ServiceError(
                client.name, "incompatible", "the service does not speak PlugIt protocol 1"
            )

    def close(self) -> None:
        """Stop the shadow copies and close every client's connections."""
        self._shadow_pool.shutdown(wait=False, cancel_futures=True)
        for client in self._clients.values():
            client.close()


def _variant_matches(variant: Any, mount: ServiceMount, request: Request, user: PlugItUser) -> bool:
    if variant.cookie is not None and request.cookies.get(variant.cookie[0]) == variant.cookie[1]:
        return True
    if not user.is_authenticated:
        return False
    if user.username in variant.users:
        return True
    if variant.orgas and any(o.name in variant.orgas for o in user.orgas):
        return True
    roles = set()
    if user.is_member(mount.name):
        roles.add("member")
    if user.is_admin(mount.name):
        roles.add("admin")
    if user.is_superuser:
        roles.add("superuser")
    return bool(roles & set(variant.roles))
